import itertools
from collections import defaultdict

import optuna
import pytest

from models import BudgetTooSmallError, count_params, scale_widths
from search_spaces import SPACES, ask_fitting, get_space, list_spaces
from search_spaces.base import LowestTrial
from search_spaces.spaces import SIZE_RANGE
from training.config import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _samples(space_name: str, budget: int, n: int, seed: int = 0):
    """(raw parameters, constants) of n samples, drawn as a search's random start draws them."""
    space = get_space(space_name)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed))
    out = []
    for _ in range(n):
        trial, constants = ask_fitting(study, space, budget)
        study.tell(trial, 0.0)
        out.append((dict(trial.params), constants))
    return space, study, out


@pytest.mark.parametrize("budget", [30_000, 60_000, 1_000_000, 5_000_000])
def test_every_sample_is_one_network_of_its_sampled_size(budget):
    space, study, samples = _samples("efficient_resnet", budget, 100, seed=budget % 97)
    networks = defaultdict(list)
    for raw, constants in samples:
        # The network a trial trains is rebuilt from its constants, without a new search, and
        # it is the network that was counted: what Optuna is told is what trains.
        arch, cfg = space.configs(raw, constants["width_scale"])
        assert count_params(arch) == constants["params"] <= budget
        assert isinstance(cfg, TrainConfig)
        assert constants["target_params"] == int(raw["size"] * budget)
        # Never over its sampled size, even where the narrowest widths come close to it
        # (the reduced run's 60k budget): such samples are redrawn, not trained bigger.
        assert constants["params"] <= constants["target_params"], (raw, constants)
        networks[arch].append(raw)
    params = [c["params"] for _, c in samples]
    if budget >= 1_000_000:  # at these budgets every shape reaches its size
        for _, c in samples:
            # At most the target; below it only by the rounding of widths to multiples of 8,
            # which is coarse at the narrow end: a stage of 16 channels can only become 24
            # (1.5x the width, about 2x its parameters), so a few samples land near 0.6.
            assert 0.6 * c["target_params"] <= c["params"] <= c["target_params"]
        # Spread over the size range, not piled up at the budget.
        low, high = SIZE_RANGE[0] * budget, SIZE_RANGE[1] * budget
        assert min(params) < 1.5 * low and max(params) > 0.7 * high
        assert sum(p < 0.3 * budget for p in params) >= 20
    # Two different samples give the same network only through rounding: then they agree on
    # every discrete choice and differ only in the continuous widths and size.
    for raws in networks.values():
        for a, b in itertools.combinations(raws, 2):
            discrete = {k for k, v in a.items() if not isinstance(v, float)}
            assert {k: a[k] for k in discrete} == {k: b.get(k) for k in discrete}


@pytest.mark.parametrize("name", [n for n, s in SPACES.items() if not s.fixed_trials])
def test_a_budget_just_above_the_smallest_network_still_gives_only_fitting_samples(name):
    space = get_space(name)
    budget = space.smallest_params() + 300  # far below most shapes' narrowest networks
    _, study, samples = _samples(name, budget, 15, seed=1)
    for raw, constants in samples:
        arch, _ = space.configs(raw, constants["width_scale"])
        assert count_params(arch) == constants["params"] <= budget
    # The shapes that could not fit were told to Optuna as failed, with the reason.
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert all("narrowest" in t.user_attrs["infeasible"] for t in failed)


class _Choices(LowestTrial):
    """Records each categorical parameter's choices, answering with the first."""

    def __init__(self) -> None:
        super().__init__({})
        self.choices: dict[str, list] = {}

    def suggest_categorical(self, name, choices):
        self.choices[name] = list(choices)
        return super().suggest_categorical(name, choices)


class _OneChanged(LowestTrial):
    """The lowest value everywhere except one categorical parameter, set to `choice`."""

    def __init__(self, key: str, choice) -> None:
        super().__init__({})
        self.key, self.choice = key, choice

    def suggest_categorical(self, name, choices):
        value = self.choice if name == self.key else choices[0]
        self.params[name] = value
        return value


@pytest.mark.parametrize("name", list(SPACES))
def test_no_single_choice_builds_a_network_smaller_than_the_smallest(name):
    """Spaces list their cheapest choice first, so the budget pre-check is exact: changing any
    one categorical choice of the lowest configuration never gives a smaller network."""
    space = get_space(name)
    smallest = space.smallest_params()
    probe = _Choices()
    space.suggest(probe)
    assert probe.choices, "the space has no categorical parameter: the test checks nothing"
    for key, choices in probe.choices.items():
        for choice in choices[1:]:
            trial = _OneChanged(key, choice)
            space.suggest(trial)
            arch, _ = space.build(trial.params)
            assert count_params(scale_widths(arch, 0.0)) >= smallest, (key, choice)


def test_configs_are_deterministic_and_set_the_run_length():
    space, _, samples = _samples("efficient_resnet", 1_000_000, 3)
    raw, constants = samples[0]
    a = space.configs(raw, constants["width_scale"], max_epochs=7)
    b = space.configs(raw, constants["width_scale"], max_epochs=7)
    assert a == b
    assert a[1].epochs == 7 and count_params(a[0]) == constants["params"] <= 1_000_000


def test_dependent_parameters_follow_the_number_of_stages():
    _, _, samples = _samples("efficient_resnet", 5_000_000, 20, seed=3)
    for raw, _ in samples:
        n = raw["num_stages"]
        assert {f"blocks_{i}" for i in range(n)} <= raw.keys()
        assert f"blocks_{n}" not in raw
        assert ("mix_p" in raw) == (raw["mixing"] != "none")
        assert ("erasing_p" in raw) == raw["erasing"]


MAX_ACTIVE = 18


@pytest.mark.slow
def test_a_sample_has_at_most_18_active_parameters_and_mixing_can_be_all_off():
    space, _, samples = _samples("efficient_resnet", 1_000_000, 300, seed=5)
    active = [len(raw) for raw, _ in samples]
    assert max(active) <= MAX_ACTIVE
    assert max(active) == MAX_ACTIVE  # 4 stages with mixing and erasing on: all of them
    names = set().union(*(raw.keys() for raw, _ in samples))
    fixed = {"activation", "se_placement", "momentum", "nesterov", "mixup_alpha",
             "cutmix_alpha", "grad_clip_norm", "optimizer", "batch_size", "block"}  # fmt: skip
    assert not names & fixed
    plain = [
        space.configs(raw, c["width_scale"])[1]
        for raw, c in samples
        if raw["mixing"] == "none" and not raw["erasing"]
    ]
    # About a sixth of the samples train with no mixing and no erasing at all.
    assert len(plain) > 20
    for cfg in plain:
        aug = cfg.augment
        assert aug.mixup_p == aug.cutmix_p == aug.erasing_p == 0.0
    for raw, c in samples:
        cfg = space.configs(raw, c["width_scale"])[1]
        # One learning rate per 256 images, whatever the batch; one schedule.
        assert cfg.lr == pytest.approx(raw["lr"] * cfg.batch_size / 256)
        assert cfg.schedule == "wsd" and cfg.optimizer == "sgd"


def test_the_warm_up_is_a_fraction_of_the_run_whatever_its_length():
    space, _, samples = _samples("efficient_resnet", 1_000_000, 10, seed=2)
    for raw, c in samples:
        for epochs in (6, 30, 200):
            cfg = space.configs(raw, c["width_scale"], max_epochs=epochs)[1]
            assert cfg.warmup_epochs == pytest.approx(raw["warmup"] * epochs)


def test_budget_below_the_smallest_model_is_refused():
    space = get_space("efficient_resnet")
    smallest = space.smallest_params()
    space.check_budget(smallest)
    with pytest.raises(BudgetTooSmallError, match=f"{smallest:,}"):
        space.check_budget(smallest - 1)


def test_the_starting_points_are_the_known_recipes_in_the_spaces_terms():
    from training.recipes import get_recipe

    space = get_space("efficient_resnet")
    default_at_003, airbench, report_003 = space.starting_points
    for point in space.starting_points:
        # Each is a sample the space can draw: every parameter it has, in its range.
        optuna.trial.FixedTrial(point)  # noqa: B018
        probe = optuna.trial.FixedTrial(point)
        space.suggest(probe)
        assert probe.params == point
    arch, cfg = space.configs(default_at_003, space.sample(
        optuna.trial.FixedTrial(default_at_003), 5_000_000)["width_scale"])  # fmt: skip
    assert [(s.blocks, s.channels) for s in arch.stages] == [(4, 64), (4, 128), (3, 256)]
    assert arch.stem_channels == 64 and cfg.weight_averaging == "ema"
    # The `default` recipe at its own learning rate and batch, warm-up share and smoothing.
    default = get_recipe("default")
    assert (cfg.lr, cfg.batch_size) == (default.lr, default.batch_size)
    assert cfg.warmup_epochs / cfg.epochs == pytest.approx(default.warmup_epochs / default.epochs)
    assert cfg.label_smoothing == default.label_smoothing
    # Report 003's recipe: 0.1 at batch 128 is 0.2 per 256 images, with mixup, no smoothing.
    report = get_recipe("efficient_resnet")
    _, cfg003 = space.build(report_003)
    assert cfg003.lr / cfg003.batch_size == pytest.approx(report.lr / report.batch_size)
    assert cfg003.weight_decay == report.weight_decay and cfg003.label_smoothing == 0.0
    assert cfg003.augment.mixup_p == report.augment.mixup_p
    # airbench-like: shallow (one block a stage), high rate, strong smoothing.
    _, cfg_air = space.build(airbench)
    assert sum(airbench[f"blocks_{i}"] for i in range(3)) == 3
    assert cfg_air.label_smoothing == 0.2 and cfg_air.lr > cfg.lr


def test_seed_space_has_the_five_presets_as_fixed_trials():
    space = get_space("seeds")
    presets = [t["preset"] for t in space.fixed_trials]
    assert len(presets) == 5
    for preset in presets:
        arch, cfg = space.build({"preset": preset})
        assert count_params(arch) <= 5_000_000


def test_unknown_space_lists_valid_ones():
    with pytest.raises(KeyError) as err:
        get_space("nope")
    for name in list_spaces():
        assert name in str(err.value)
