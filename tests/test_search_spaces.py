import optuna
import pytest

from models import BudgetTooSmallError, count_params, fit_to_budget
from search_spaces import get_space, list_spaces
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
        # The network a trial trains is rebuilt from the constants, without a new fit.
        arch, cfg = space.configs(raw, constants["width_scale"])
        assert count_params(arch) == constants["params"] <= budget
        assert arch == fit_to_budget(space.build(raw)[0], budget)[0]
        assert isinstance(cfg, TrainConfig)
        scaled += constants["width_scale"] < 1.0
    if name == "tiny":
        assert scaled > 0  # the small budget really bit, and those samples still ran


def test_configs_are_deterministic_and_set_the_run_length():
    space, samples = _sample("efficient_resnet", 1_000_000, 3)
    raw, constants = samples[0]
    a = space.configs(raw, constants["width_scale"], max_epochs=7)
    b = space.configs(raw, constants["width_scale"], max_epochs=7)
    assert a == b
    assert a[1].epochs == 7 and count_params(a[0]) == constants["params"] <= 1_000_000


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
