import optuna
import pytest

from models import count_params
from search_spaces import BudgetTooSmallError, fit_to_budget, get_space, list_spaces
from training.config import TrainConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _sample(space_name, budget, n, seed=0):
    space = get_space(space_name)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        constants = space.sample(trial, budget)
        study.tell(trial, 0.0)
        out.append((dict(trial.params), constants))
    return space, out


@pytest.mark.parametrize("name", ["efficient_resnet", "tiny"])
def test_every_sample_fits_the_budget_and_reports_its_exact_count(name):
    budget = 5_000_000 if name == "efficient_resnet" else 8_000
    space, samples = _sample(name, budget, 12)
    scaled = 0
    for raw, constants in samples:
        arch, cfg, params, scale = space.resolve(raw, budget)
        assert params == count_params(arch) == constants["params"]
        assert params <= budget
        assert isinstance(cfg, TrainConfig)
        scaled += scale < 1.0
    if name == "tiny":
        assert scaled > 0  # the small budget really bit, and those samples still ran


def test_resolve_is_deterministic_and_caps_epochs():
    space, samples = _sample("efficient_resnet", 5_000_000, 3)
    raw = samples[0][0]
    a = space.resolve(raw, 1_000_000, max_epochs=7)
    b = space.resolve(raw, 1_000_000, max_epochs=7)
    assert a == b
    assert a[1].epochs == 7 and a[2] <= 1_000_000


def test_dependent_parameters_follow_the_number_of_stages():
    _, samples = _sample("efficient_resnet", 5_000_000, 20, seed=3)
    for raw, _ in samples:
        n = raw["num_stages"]
        assert {f"channels_{i}" for i in range(n)} <= raw.keys()
        assert f"channels_{n}" not in raw
        assert ("sgd_lr" in raw) == (raw["optimizer"] == "sgd")


def test_budget_below_the_smallest_model_is_refused():
    space = get_space("efficient_resnet")
    smallest = space.smallest_params()
    space.check_budget(smallest)
    with pytest.raises(BudgetTooSmallError, match=f"{smallest:,}"):
        space.check_budget(smallest - 1)


def test_fit_to_budget_leaves_fitting_models_alone_and_shrinks_others():
    space = get_space("seeds")
    arch, _ = space.build({"preset": "efficient_resnet"})
    same, params, scale = fit_to_budget(arch, 5_000_000)
    assert same == arch and scale == 1.0 and params == 4_697_742
    small, params, scale = fit_to_budget(arch, 1_000_000)
    assert params <= 1_000_000 and scale < 1.0
    assert [s.blocks for s in small.stages] == [s.blocks for s in arch.stages]
    assert all(s.channels % 8 == 0 for s in small.stages)


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
