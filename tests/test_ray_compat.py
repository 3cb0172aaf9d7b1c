"""The ASHA rung refill of a resumed search, on Ray's real scheduler with stand-in results."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pandas as pd
import pytest
from ray.tune.schedulers import ASHAScheduler

from tune.ray_compat import refill_asha_rungs


def _tuner(scheduler, histories: dict[str, list[float]], metric="val_acc", mode="max"):
    results = [
        SimpleNamespace(
            metrics_dataframe=pd.DataFrame(
                {
                    "trial_id": trial_id,
                    "training_iteration": range(1, len(values) + 1),
                    metric: values,
                }
            )
        )
        for trial_id, values in histories.items()
    ]
    config = SimpleNamespace(scheduler=scheduler, metric=metric, mode=mode)
    return SimpleNamespace(
        _local_tuner=SimpleNamespace(_tune_config=config), get_results=lambda: results
    )


def _recorded(scheduler) -> dict[int, dict[str, float]]:
    """milestone -> {trial: value} over all brackets."""
    out: dict[int, dict[str, float]] = {}
    for bracket in scheduler._brackets:
        for milestone, recorded in bracket._rungs:
            out.setdefault(int(milestone), {}).update(recorded)
    return out


@pytest.mark.parametrize(("mode", "sign"), [("max", 1.0), ("min", -1.0)])
def test_rungs_get_the_value_at_each_milestone_with_the_modes_sign(mode, sign):
    # Metric and mode come from the TuneConfig, as the search passes them.
    scheduler = ASHAScheduler(max_t=8, grace_period=2, reduction_factor=2)
    histories = {"a": [0.1, 0.2, 0.3, 0.4, 0.5], "b": [0.9, 0.8], "c": [0.5]}
    filled = refill_asha_rungs(_tuner(scheduler, histories, mode=mode))
    recorded = _recorded(scheduler)
    assert recorded[2] == {"a": sign * 0.2, "b": sign * 0.8}  # c never reached epoch 2
    assert recorded[4] == {"a": sign * 0.4}
    assert filled == 3


def test_each_trial_lands_in_exactly_one_bracket():
    scheduler = ASHAScheduler(max_t=8, grace_period=1, reduction_factor=2, brackets=3)
    histories = {f"t{i}": [0.1 * i] * 4 for i in range(12)}
    refill_asha_rungs(_tuner(scheduler, histories))
    homes = {
        trial: [
            i for i, b in enumerate(scheduler._brackets) if any(trial in r for _, r in b._rungs)
        ]
        for trial in histories
    }
    assert all(len(h) == 1 for h in homes.values()), homes
    assert len({h[0] for h in homes.values()}) > 1  # spread, not all in one bracket


def test_an_unknown_scheduler_resumes_with_empty_rungs_and_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="tune")
    proxy = SimpleNamespace()  # e.g. what Ray Client hands back
    assert refill_asha_rungs(_tuner(proxy, {"a": [0.5, 0.6]})) == 0
    assert "rungs start empty" in caplog.text
