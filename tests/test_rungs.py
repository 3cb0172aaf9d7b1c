"""Rungs that judge finished schedules: the warm-up-stable-decay schedule, the decay branch a
trial evaluates at each rung, and where the rungs sit."""

import pytest
import torch

from models import get_arch
from training.config import TrainConfig
from training.data import DataSplits
from training.loop import train
from training.recipes import get_recipe
from tune.rungs import asha_milestones, default_grace_period

from .conftest import scheduled_lrs as _lrs
from .conftest import separable_set

TINY = get_arch("tiny_resnet")


def test_wsd_warms_up_holds_its_rate_then_decays_to_zero_over_its_last_fifth():
    cfg = TrainConfig(epochs=10, lr=1.0, schedule="wsd", warmup_epochs=1.0, decay_fraction=0.2)
    lrs = _lrs(cfg, steps_per_epoch=10)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # warm-up
    assert lrs[10:80] == [pytest.approx(1.0)] * 70  # stable until the last fifth
    decay = lrs[80:]
    assert all(a > b for a, b in zip(decay, decay[1:], strict=False))
    assert decay[0] == pytest.approx(1.0) and decay[-1] == pytest.approx(0.05)


def _run(cfg: TrainConfig):
    splits = DataSplits(train=separable_set(128), val=separable_set(60, seed=1))
    seen: list[dict] = []
    result = train(TINY, cfg, splits, report=lambda m, s: seen.append(dict(m)), device="cpu")
    return result, seen


@pytest.mark.parametrize("ema", [False, True])
def test_a_decay_branch_reports_its_accuracy_and_leaves_the_main_run_untouched(ema):
    base = get_recipe(
        "smoke",
        epochs=5,
        batch_size=32,
        lr=0.05,
        schedule="wsd",
        warmup_epochs=1.0,
        weight_averaging="ema" if ema else "none",
        **{"augment.mixup_p": 0.5},
    )
    plain, plain_seen = _run(base)
    branched, seen = _run(base.replace(decay_eval_epochs=(2, 3)))
    # The main run trained exactly the same weights, step for step.
    for key, value in plain.model.state_dict().items():
        torch.testing.assert_close(branched.model.state_dict()[key], value, rtol=0, atol=0)
    assert [m["train_loss"] for m in seen] == [m["train_loss"] for m in plain_seen]
    for epoch in (2, 3):
        rung, main = seen[epoch - 1], plain_seen[epoch - 1]
        # The main run's accuracy is kept beside the branch's, which the epoch reports.
        assert rung["stable_val_acc"] == main["val_acc"]
        assert rung["stable_val_loss"] == main["val_loss"]
        assert rung["val_loss"] != main["val_loss"]
        # 4 steps an epoch: a fifth of 2 epochs is 2 steps (0.5 epochs), of 3: 2 (0.5).
        assert rung["decay_branch_epochs"] == pytest.approx(0.5)
        assert rung["decay_branch_seconds"] > 0
    for m in (seen[0], seen[3], seen[4]):
        # No branch: the epoch's accuracy is the main run's, under both names.
        assert "decay_branch_epochs" not in m and m["stable_val_acc"] == m["val_acc"]
    assert branched.metrics["val_acc"] == plain.metrics["val_acc"]


def test_no_branch_once_the_main_run_decays_or_at_its_end():
    cfg = get_recipe("smoke", epochs=5, batch_size=32, schedule="wsd", decay_fraction=0.5)
    _, seen = _run(cfg.replace(decay_eval_epochs=(2, 3, 5)))
    # The run decays from epoch 2.5 on: at epoch 3 it is its own decay; 5 is its end.
    assert ["decay_branch_epochs" in m for m in seen] == [False, True, False, False, False]


def test_the_branch_of_a_high_stable_rate_is_what_a_finished_schedule_reaches():
    """Why the rungs evaluate a branch: at a high stable rate the running weights are far
    from where a decay takes them; the branch's loss is far below the main run's, as a
    finished run's is."""
    cfg = get_recipe("smoke", epochs=6, batch_size=32, lr=0.4, schedule="wsd", warmup_epochs=0)
    _, seen = _run(cfg.replace(decay_eval_epochs=(3,)))
    assert seen[2]["val_loss"] < seen[2]["stable_val_loss"]


@pytest.mark.parametrize(
    ("epochs", "grace", "rungs"),
    [(6, 2, (2,)), (15, 2, (2, 6)), (30, 4, (4, 12)), (200, 23, (23, 69))],
)
def test_rungs_scale_with_the_run(epochs, grace, rungs):
    assert default_grace_period(epochs) == grace
    assert default_grace_period(epochs) >= epochs / 9
    assert asha_milestones(epochs, grace, 3) == rungs


@pytest.mark.parametrize("brackets", [1, 2, 3])
@pytest.mark.parametrize(("max_t", "grace", "rf"), [(15, 2, 3), (30, 4, 3), (6, 2, 3), (100, 3, 2)])
def test_the_branch_epochs_are_exactly_the_asha_rungs_of_every_bracket(max_t, grace, rf, brackets):
    from ray.tune.schedulers import ASHAScheduler

    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_t,
        grace_period=grace,
        reduction_factor=rf,
        brackets=brackets,
    )
    ray_rungs = {m for b in scheduler._brackets for m, _ in b._rungs if m < max_t}
    assert set(asha_milestones(max_t, grace, rf, brackets)) == ray_rungs
    assert all(isinstance(m, int) for m in asha_milestones(max_t, grace, rf, brackets))


def test_a_trial_evaluates_branches_at_its_rungs_and_a_retrain_does_not(tmp_path):
    from search_spaces import get_space, trial_configs
    from tune.trainable import TrialSettings

    from .trialrun import run_trial_here, small_splits, trial_config

    config = trial_config(
        "efficient_resnet", dict(get_space("efficient_resnet").starting_points[0]), 5, [2, 3]
    )
    settings = TrialSettings(max_epochs=5, max_batch_size=32, use_gpu=False, threads=1)
    # The trial itself, as Ray runs it: a branch at each rung, reported beside the main run.
    reported = run_trial_here(config, small_splits(), settings, tmp_path)
    assert ["decay_branch_epochs" in m for m in reported] == [False, True, True, False, False]
    assert all("stable_val_acc" in m for m in reported[1:3])
    # Its retrain, from the same config: no branches.
    _, retrain_cfg = trial_configs(config, 30)
    assert retrain_cfg.decay_eval_epochs == () and retrain_cfg.schedule == "wsd"


@pytest.mark.parametrize(("epochs", "brackets"), [(6, 1), (15, 2), (30, 2)])
def test_a_second_bracket_only_where_it_has_a_rung_of_its_own(epochs, brackets):
    from ray.tune.schedulers import ASHAScheduler

    from tune.rungs import asha_brackets

    grace = default_grace_period(epochs)
    assert asha_brackets(epochs, grace, 3) == brackets
    scheduler = ASHAScheduler(max_t=epochs, grace_period=grace, reduction_factor=3, brackets=2)
    second = [m for m, _ in scheduler._brackets[1]._rungs if m < epochs]
    assert bool(second) == (brackets == 2)
