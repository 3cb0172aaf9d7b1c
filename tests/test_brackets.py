"""ASHA's brackets: each trial's bracket is drawn from the search's seed and kept in its
config, a resumed search judges every trial at its own bracket's rungs with the value of
the rung's own epoch, and a trial evaluates decay branches at its own bracket's rungs only."""

from __future__ import annotations

import copy
import time
import uuid
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.trial_scheduler import TrialScheduler

from search_spaces import raw_params, trial_configs
from tests.conftest import write_python_batches
from tests.searchrun import (
    check_ok,
    cli,
    kill,
    read_results,
    read_table,
    search,
    start,
    trial_dirs,
)
from tune.ray_compat import refill_asha_rungs
from tune.rungs import asha_bracket_plan, choose_bracket, default_grace_period
from tune.schedulers import SearchScheduler

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def _scheduler(max_t: int = 15, brackets: int = 2) -> SearchScheduler:
    return SearchScheduler(
        time_attr="training_iteration",
        metric="val_acc",
        mode="max",
        max_t=max_t,
        grace_period=default_grace_period(max_t),
        reduction_factor=3,
        brackets=brackets,
    )


def _trial(trial_id: str, bracket: int | None = None) -> SimpleNamespace:
    config = {} if bracket is None else {"bracket": bracket}
    return SimpleNamespace(trial_id=trial_id, config=config)


def _report(scheduler, trial, iteration: int, value: float) -> str:
    result = {"training_iteration": iteration, "val_acc": value}
    return scheduler.on_trial_result(None, trial, result)


@pytest.mark.parametrize(("max_t", "grace", "brackets"), [(15, 2, 2), (30, 4, 2), (6, 2, 1)])
def test_the_plan_has_rays_rungs_and_shares(max_t, grace, brackets):
    plan = asha_bracket_plan(max_t, grace, 3, brackets)
    ray = ASHAScheduler(max_t=max_t, grace_period=grace, reduction_factor=3, brackets=brackets)
    assert [b.rungs for b in plan] == [
        tuple(sorted(m for m, _ in bracket._rungs if m < max_t)) for bracket in ray._brackets
    ]
    sizes = [len(bracket._rungs) for bracket in ray._brackets]
    assert sum(b.weight for b in plan) == pytest.approx(1.0)
    if brackets == 2:  # Ray's softmax over the rungs: e^0 : e^-(difference)
        assert plan[1].weight / plan[0].weight == pytest.approx(
            2.718281828 ** (sizes[1] - sizes[0])
        )


def test_a_trials_bracket_depends_on_the_seed_and_its_number_alone():
    plan = asha_bracket_plan(15, 2, 3, 2)
    drawn = [choose_bracket(plan, 7, n) for n in range(3000)]
    assert drawn == [choose_bracket(plan, 7, n) for n in range(3000)]
    assert drawn != [choose_bracket(plan, 8, n) for n in range(3000)]
    assert Counter(drawn)[1] / len(drawn) == pytest.approx(plan[1].weight, abs=0.03)


def test_a_readded_trial_keeps_the_bracket_its_config_names():
    scheduler = _scheduler()
    trials = [_trial(f"t{i}", bracket=1) for i in range(40)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    # A restored experiment (or a trial requeued after its worker died) adds them again, to
    # the scheduler as it was pickled when the experiment started.
    restored = copy.deepcopy(_scheduler())
    for trial in trials:
        restored.on_trial_add(None, trial)
    for s in (scheduler, restored):
        assert all(s._trial_info[t.trial_id] is s._brackets[1] for t in trials)


def test_a_trial_without_a_bracket_gets_rays_draw():
    scheduler = _scheduler()
    scheduler.on_trial_add(None, _trial("x"))
    assert scheduler._trial_info["x"] in scheduler._brackets


def test_a_trial_is_judged_at_a_rung_only_by_that_rungs_epoch():
    scheduler = _scheduler()
    for i in range(3):  # three trials set a high bar at the first rung (epoch 2)
        trial = _trial(f"good{i}", bracket=0)
        scheduler.on_trial_add(None, trial)
        assert _report(scheduler, trial, 2, 0.8 + i / 100) == CONTINUE
    # A trial resumed from a checkpoint past epoch 2 that the rung never judged: its epoch-4
    # value is its main run's, not a decay branch's; the rung does not judge it...
    resumed = _trial("resumed", bracket=0)
    scheduler.on_trial_add(None, resumed)
    assert _report(scheduler, resumed, 4, 0.1) == CONTINUE
    assert all("resumed" not in recorded for _, recorded in scheduler._brackets[0]._rungs)
    # ...its next rung (epoch 6) does.
    assert _report(scheduler, resumed, 5, 0.1) == CONTINUE
    assert _report(scheduler, resumed, 6, 0.1) == CONTINUE  # the rung at 6 is still empty
    assert dict(scheduler._brackets[0]._rungs)[6] == {"resumed": 0.1}
    # A trial at the rung's own epoch is judged there as ASHA does.
    weak = _trial("weak", bracket=0)
    scheduler.on_trial_add(None, weak)
    assert _report(scheduler, weak, 2, 0.1) == STOP


def test_a_resumed_second_bracket_trial_is_not_judged_at_the_first_brackets_rung():
    scheduler = _scheduler()
    for i in range(3):
        trial = _trial(f"good{i}", bracket=0)
        scheduler.on_trial_add(None, trial)
        _report(scheduler, trial, 2, 0.9)
    second = _trial("second", bracket=1)
    restored = copy.deepcopy(scheduler)
    restored.on_trial_add(None, second)
    for epoch in (3, 4, 5):
        assert _report(restored, second, epoch, 0.2) == CONTINUE
    assert dict(restored._brackets[1]._rungs)[6] == {}
    assert _report(restored, second, 6, 0.2) == CONTINUE
    assert dict(restored._brackets[1]._rungs)[6] == {"second": 0.2}


def _results(histories: dict[str, tuple[int, list[float]]]) -> SimpleNamespace:
    results = [
        SimpleNamespace(
            config={"bracket": bracket},
            metrics_dataframe=pd.DataFrame(
                {
                    "trial_id": trial_id,
                    "training_iteration": range(1, len(values) + 1),
                    "val_acc": values,
                }
            ),
        )
        for trial_id, (bracket, values) in histories.items()
    ]
    config = SimpleNamespace(metric="val_acc", mode="max")
    return SimpleNamespace(
        _local_tuner=SimpleNamespace(_tune_config=config), get_results=lambda: results
    )


def test_the_rungs_are_refilled_into_each_trials_own_bracket():
    scheduler = _scheduler()
    histories = {f"b{i}": (i % 2, [0.1 * i] * 7) for i in range(20)}
    refill_asha_rungs(_results(histories), scheduler)
    rungs = [dict(b._rungs) for b in scheduler._brackets]
    assert set(rungs[0][2]) == set(rungs[0][6]) == {f"b{i}" for i in range(0, 20, 2)}
    assert set(rungs[1][6]) == {f"b{i}" for i in range(1, 20, 2)}


def test_a_trial_evaluates_decay_branches_at_its_own_brackets_rungs_only(tmp_path):
    from tune.searcher import StudySearcher
    from tune.storage import ExperimentStorage

    ExperimentStorage(str(tmp_path), "b").local_dir.mkdir(parents=True)
    plan = asha_bracket_plan(15, 2, 3, 2)
    searcher = StudySearcher(
        space="tiny",
        budget=20_000,
        seed=3,
        max_epochs=15,
        storage_path=str(tmp_path),
        name="b",
        n_startup_trials=4,
        rung_epochs=(2, 6),
        brackets=plan,
    )
    configs = [searcher.suggest(f"r{i}") for i in range(12)]
    assert {c["bracket"] for c in configs} == {0, 1}
    for number, config in enumerate(configs):
        assert config["bracket"] == choose_bracket(plan, 3, number)
        assert config["rung_epochs"] == list(plan[config["bracket"]].rungs)
        _, cfg = trial_configs(config, 15, rungs=True)
        assert cfg.decay_eval_epochs == ((2, 6) if config["bracket"] == 0 else (6,))
        assert "bracket" not in raw_params(config)  # a constant, not a searched parameter


# --- end to end: a two-bracket search killed after its first rung and resumed ----------------

MAX_EPOCHS = 15  # the default grace period (2) and reduction factor (3) make two brackets
SAMPLES = 6


def _seed_with_two_second_bracket_trials() -> tuple[int, int]:
    """A search seed under which two of the first SAMPLES - 1 trials are in the second
    bracket; (seed, the number of the later one), the trial the test kills the search in."""
    plan = asha_bracket_plan(MAX_EPOCHS, default_grace_period(MAX_EPOCHS), 3, 2)
    for seed in range(100):
        second = [n for n in range(SAMPLES - 1) if choose_bracket(plan, seed, n) == 1]
        if len(second) >= 2 and second[1] >= 2:
            return seed, second[1]
    raise AssertionError("no seed found")


def _decisions(exp: Path, up_to: int) -> dict[int, tuple[int, int, str]]:
    """trial number -> (bracket, epochs run, status): where ASHA stopped it, or that it ran
    to the end, is each of its rung decisions."""
    table = read_table(exp)
    table = table[table["config/trial_number"] <= up_to]
    return {
        int(row["config/trial_number"]): (
            int(row["config/bracket"]),
            int(row["epochs_run"]),
            str(row["status"]),
        )
        for _, row in table.iterrows()
    }


@pytest.mark.slow
def test_a_resumed_two_bracket_search_decides_every_rung_as_an_uninterrupted_one(tmp_path):
    seed, killed_in = _seed_with_two_second_bracket_trials()
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=50)
    storage = tmp_path / "exp"
    common = dict(
        space="tiny", data=data, num_samples=SAMPLES, max_epochs=MAX_EPOCHS, subset=300,
        seed=seed, skip_retrain=True, finalists=0, max_concurrent_trials=1,
        checkpoint_every=0, storage_path=storage,
    )  # fmt: skip

    check_ok(search(cli(**common, name="whole"), tmp_path / "whole", timeout=900))
    whole = _decisions(storage / "whole", killed_in)
    assert {bracket for bracket, _, _ in whole.values()} == {0, 1}

    # The same search, killed while trial `killed_in` (second bracket) is past the first
    # bracket's rung (epoch 2) and before its own (epoch 6), then resumed.
    marker = uuid.uuid4().hex
    proc = start(cli(**common, name="cut"), tmp_path / "cut", marker)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            reports = [
                r
                for d in trial_dirs(storage / "cut")
                for r in read_results(d)
                if r.get("config", {}).get("trial_number") == killed_in
            ]
            if reports and reports[-1]["training_iteration"] >= 4:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the search ended before the kill"
        assert reports and reports[-1]["training_iteration"] < 6, reports
    finally:
        kill(proc, marker)
    check_ok(search(cli(**common, name="cut"), tmp_path / "resumed", timeout=900))

    assert _decisions(storage / "cut", killed_in) == whole
    # ASHA stopped each trial only at a rung of the bracket its config names.
    plan = asha_bracket_plan(MAX_EPOCHS, 2, 3, 2)
    for exp in ("whole", "cut"):
        for bracket, epochs, status in _decisions(storage / exp, SAMPLES).values():
            assert status != "stopped_early" or epochs in plan[bracket].rungs
    # Every trial evaluated decay branches at its own bracket's rungs only.
    for trial_dir in trial_dirs(storage / "whole"):
        reports = read_results(trial_dir)
        bracket = reports[-1]["config"]["bracket"]
        branches = [r["training_iteration"] for r in reports if "decay_branch_epochs" in r]
        expected = [e for e in plan[bracket].rungs if e <= reports[-1]["training_iteration"]]
        assert branches == expected, (trial_dir.name, bracket, branches)


def test_near_the_time_budgets_end_a_trial_gets_a_bracket_whose_first_rung_it_can_reach(tmp_path):
    from tune.searcher import StudySearcher
    from tune.storage import ExperimentStorage

    ExperimentStorage(str(tmp_path), "b").local_dir.mkdir(parents=True)
    plan = asha_bracket_plan(15, 2, 3, 2)  # first rungs at epochs 2 and 6
    searcher = StudySearcher(
        space="tiny", budget=20_000, seed=3, max_epochs=15, storage_path=str(tmp_path),
        name="b", n_startup_trials=4, rung_epochs=(2, 6), brackets=plan, time_budget_s=100.0,
    )  # fmt: skip
    now = [0.0]
    searcher.deadline.clock = lambda: now[0]
    searcher.deadline._start_clock()
    for epoch in (1, 2, 3):  # 5 s epochs: rung 2 takes 2 x (5 + 0.2 x 5) = 12 s, rung 6 36 s
        searcher.deadline.observe({"epoch_seconds": 5.0, "epoch": epoch, "val_acc": 0.5})
    early = [searcher.suggest(f"e{i}") for i in range(12)]
    assert {c["bracket"] for c in early} == {0, 1}  # each its drawn bracket
    now[0] = 70.0  # 70 + 12 <= 100 < 70 + 36
    late = [searcher.suggest(f"l{i}") for i in range(12)]
    drawn = [choose_bracket(plan, 3, c["trial_number"]) for c in late]
    assert 1 in drawn  # some were drawn into the second bracket ...
    assert {c["bracket"] for c in late} == {0}  # ... and run in the first
    assert all(c["rung_epochs"] == [2, 6] for c in late)
    now[0] = 90.0  # 90 + 12 > 100: no new trial at all
    assert searcher.suggest("x") is None  # the trials still run: any may need a retry alone
    for epoch in (4, 5, 6):  # faster epochs seen after that do not bring new trials back
        searcher.deadline.observe({"epoch_seconds": 0.1, "epoch": epoch, "val_acc": 0.5})
    for trial_id in [f"e{i}" for i in range(12)] + [f"l{i}" for i in range(12)]:
        assert searcher.suggest("x") is None
        searcher.on_trial_complete(trial_id, {"val_acc": 0.5, "training_iteration": 15})
    assert searcher.suggest("x") == "FINISHED"
