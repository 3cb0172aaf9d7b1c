"""The winner's ranking and the comparison's statistics, on synthetic tables and numbers."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from scipy import stats

from tune.cli import FULL
from tune.compare import (
    final_value,
    matching_command,
    power,
    score_epochs,
    seeds_for_power,
    setting_differences,
    welch,
)
from tune.finalize import candidates, finalist_ranking, find_seed_baseline
from tune.results import TrialRecord, trials_table, write_report
from tune.settings import SETTINGS_FILE, SearchSettings
from tune.study import tell_outcome


@pytest.mark.parametrize(("epochs", "k"), [(2, 1), (6, 1), (14, 1), (15, 2), (20, 2), (30, 3)])
def test_the_score_averages_about_the_last_tenth_of_the_schedule(epochs: int, k: int) -> None:
    assert score_epochs(epochs) == k
    values = {e: e / 100 for e in range(1, epochs + 1)}
    assert final_value(values, epochs) == pytest.approx(np.mean(list(values.values())[-k:]))


def test_the_score_needs_the_end_of_the_schedule() -> None:
    with pytest.raises(ValueError, match="epochs 28-30"):
        final_value({1: 0.5, 2: 0.6}, 30)


def test_optuna_is_told_the_score_of_a_complete_trial_and_nothing_for_a_stopped_one() -> None:
    study = optuna.create_study(direction="maximize")
    accs = [0.3, 0.5, 0.7, 0.65, 0.62, 0.66]  # epochs 25-30: the score is the last three
    for _ in range(2):
        trial = study.ask()
        for epoch, acc in enumerate(accs, start=25):
            trial.report(acc, epoch)
    last = {"val_acc": accs[-1], "training_iteration": 30}
    tell_outcome(study, 0, last, False, max_epochs=30)
    tell_outcome(study, 1, {"val_acc": 0.99, "training_iteration": 12}, False, max_epochs=30)
    assert study.trials[0].value == pytest.approx(np.mean(accs[-3:]))
    assert study.trials[1].state.name == "PRUNED"


def test_welch_matches_scipy_and_says_what_it_means() -> None:
    a, b = [0.935, 0.938, 0.941, 0.936, 0.939], [0.929, 0.931, 0.927, 0.930, 0.928]
    c = welch(a, b)
    ref = stats.ttest_ind(np.array(a) * 100, np.array(b) * 100, equal_var=False)
    assert c.p_value == pytest.approx(ref.pvalue)
    assert c.diff == pytest.approx((np.mean(a) - np.mean(b)) * 100)
    assert c.low < c.diff < c.high and c.low > 0
    assert c.significant
    assert c.sentence().startswith(
        "The winner is better than the best seed network by 0.88 ± 0.30 points"
    )
    assert "significant at 5%" in c.sentence()

    close = welch([0.935, 0.930, 0.940], [0.933, 0.928, 0.936])
    assert not close.significant and close.low < 0 < close.high
    assert "not distinguishable from the best seed network at this number of seeds" in (
        close.sentence()
    )
    assert "worse" in welch(b, a).sentence()
    assert welch([0.9], [0.8, 0.85]) is None  # one run has no spread to test against


@pytest.mark.parametrize(("n", "sd"), [(2, 0.2), (4, 0.2), (5, 0.2), (5, 0.25), (8, 0.4)])
def test_the_power_is_that_of_welchs_test_itself(n: int, sd: float) -> None:
    # Monte Carlo with Welch's test as `welch` runs it (scipy, unequal variances): 40,000 runs
    # put the simulated power within 0.006 (three standard errors) of the true one.
    rng = np.random.default_rng(n)
    a, b = rng.normal(0.5, sd, (40_000, n)), rng.normal(0.0, sd, (40_000, n))
    simulated = np.mean(stats.ttest_ind(a, b, axis=1, equal_var=False).pvalue < 0.05)
    assert power(n, 0.5, sd) == pytest.approx(simulated, abs=0.008)


def test_the_retrain_seed_default_detects_half_a_point_at_a_fifth_of_a_point_spread() -> None:
    # Welch's test with 4 seeds a side falls just short of 0.8 (Student's 2n - 2 degrees of
    # freedom would promise 0.84): 5 seeds are the fewest.
    assert power(4, 0.5, 0.2) < 0.8 <= power(5, 0.5, 0.2)
    assert seeds_for_power(0.5, 0.2) == 5 == FULL.retrain_seeds
    assert power(FULL.retrain_seeds, 0.5, 0.2) >= 0.9
    assert power(FULL.retrain_seeds, 0.5, 0.25) >= 0.75


def test_no_difference_is_called_significant_when_no_seed_varies() -> None:
    exact = welch([0.9, 0.9], [0.8, 0.8])
    assert not exact.judged and not exact.significant
    assert math.isnan(exact.p_value) and exact.diff == pytest.approx(10.0)
    assert "cannot be compared from these runs" in exact.sentence()
    assert "significant" not in exact.sentence() and "+10.00 points" in exact.sentence()
    assert not welch([0.9, 0.9], [0.9, 0.9]).significant
    # One side that varies gives the test its spread.
    assert welch([0.9, 0.9], [0.80, 0.81]).judged


def _record(trial_id, number, vals, role="search", status_epochs=None) -> TrialRecord:
    history = pd.DataFrame({"epoch": range(1, len(vals) + 1), "val_acc": vals})
    key = "finalist_of" if role == "finalist" else "trial_number"
    config = {key: number, "seed": number, "params": 1000, "preset": trial_id}
    return TrialRecord(trial_id, config, history, role=role)


def _table() -> pd.DataFrame:
    records = [
        # Stopped early at a high accuracy: never a candidate.
        _record("early", 0, [0.6, 0.9]),
        _record("a", 1, [0.5, 0.6, 0.70, 0.80]),  # score 0.80 (4 epochs: last 1)
        _record("b", 2, [0.5, 0.6, 0.68, 0.71]),
        _record("c", 3, [0.5, 0.6, 0.60, 0.65]),
        # The finalists' re-runs: b's are better than a's, though a's search run was best and
        # counted in, would keep a first: (0.80 + 0.70) / 2 > (0.71 + 0.72 + 0.73) / 3.
        _record("a1", 1, [0.5, 0.6, 0.6, 0.70], "finalist"),
        _record("b1", 2, [0.5, 0.6, 0.7, 0.72], "finalist"),
        _record("b2", 2, [0.5, 0.6, 0.7, 0.73], "finalist"),
        _record("b3", 2, [0.5, 0.6, 0.5, 0.55, 0.6][:3], "finalist"),  # failed to finish
        _record("s", 0, [0.3, 0.4, 0.5, 0.5], "baseline"),
    ]
    return trials_table(records, max_epochs=4)


def test_a_stopped_early_trial_is_never_the_winner_and_the_finalists_re_runs_decide(
    tmp_path: Path,
) -> None:
    table = _table()
    early = table[table["trial_id"] == "early"].iloc[0]
    assert early["status"] == "stopped_early" and math.isnan(early["score"])
    assert early["best_val_acc"] == 0.9  # the best single epoch of all: still not a candidate
    assert list(candidates(table)["trial_id"]) == ["a", "b", "c"]
    assert list(table["trial_id"])[:2] == ["a", "b2"]  # ranked by score, scored rows first

    alone = finalist_ranking(table[table["role"] == "search"], 0)
    assert list(alone["trial_id"]) == ["a"]  # without finalists, the best score wins
    assert list(alone["runs"]) == [0] and math.isnan(alone.iloc[0]["val_mean"])

    ranking = finalist_ranking(table, 2)
    # By the re-runs alone (the search runs chose them): b 0.725 over a 0.70.
    assert list(ranking["trial_id"]) == ["b", "a"]
    assert list(ranking["search_rank"]) == [2, 1] and list(ranking["rank"]) == [1, 2]
    assert list(ranking["runs"]) == [2, 1]  # b3 did not train every epoch: not a full run
    assert list(ranking["search_score"]) == pytest.approx([0.71, 0.80])
    assert ranking.iloc[0]["val_mean"] == pytest.approx(0.725)
    assert ranking.iloc[0]["val_std"] == pytest.approx(np.std([0.72, 0.73], ddof=1))
    assert math.isnan(ranking.iloc[1]["val_std"])  # one re-run has no spread

    settings = {"name": "x", "space": "tiny", "budget": 1000, "max_epochs": 4, "seed": 0,
                "finalists": 2, "finalist_seeds": 3}  # fmt: skip
    best = {"trial_id": "b", "params": 1000, "stages": "1x8", "val_mean": 0.725}
    out = tmp_path
    write_report(out, table, {}, [], best, None, None, settings, finalists=ranking)
    report = (out / "report.md").read_text()
    assert "| 1 | 2 | b |  | 1,000 | 71.00% | 2 | 72.50% ± 0.71% | 73.00%, 72.00% |" in report
    assert "| 2 | 1 | a |  | 1,000 | 80.00% | 1 | 70.00% | 70.00% |" in report
    assert "search score (not counted)" in report and "winner's curse" in report
    assert "The re-runs changed the order: trial b (rank 2 in the search) wins over trial a" in (
        report
    )
    assert "run this search with `--baseline seeds`" in report


def test_a_finalists_re_run_computes_no_decay_branches(tmp_path: Path) -> None:
    from search_spaces import get_space, trial_configs
    from tune.finalize import finalist_configs

    point = dict(get_space("efficient_resnet").starting_points[0])
    config = {**point, "space": "efficient_resnet", "width_scale": 0.5, "params": 1000,
              "rung_epochs": [2], "trial_number": 1, "seed": 5}  # fmt: skip
    history = pd.DataFrame({"epoch": range(1, 7), "val_acc": np.linspace(0.3, 0.6, 6)})
    records = [TrialRecord("a", config, history)]
    settings = replace(_settings(tmp_path), finalists=1, finalist_seeds=2)
    configs = finalist_configs(trials_table(records, 6), records, settings)
    assert [c["finalist_of"] for c in configs] == [1, 1]
    assert len({c["seed"] for c in configs} | {5}) == 3  # new seeds, never the search trial's
    for rerun in configs:  # trained as the trial is (tune.trainable: with rungs)
        assert trial_configs(rerun, 6, rungs=True)[1].decay_eval_epochs == ()
    assert trial_configs(config, 6, rungs=True)[1].decay_eval_epochs == (2,)


def _settings(tmp: Path, **changes) -> SearchSettings:
    base = SearchSettings(
        space="tiny", name="mine", storage_path=str(tmp), data="/data/cifar", budget=60_000,
        seed=0, num_samples=6, max_epochs=6, grace_period=2, reduction_factor=2,
        gpus_per_trial=0.0, cpus_per_trial=1.0, retrain_epochs=6, retrain_seeds=2, subset=5000,
        max_batch_size=128, predict=None, reduced="",
    )  # fmt: skip
    return replace(base, **changes)


def _seed_experiment(tmp: Path, name: str, settings: SearchSettings, tta: bool = True) -> Path:
    exp = tmp / name
    (exp / "final").mkdir(parents=True)
    table = pd.DataFrame(
        {
            "trial_id": ["t1", "t2"],
            "role": ["search", "search"],
            "status": ["completed", "completed"],
            "score": [0.61, 0.64],
            "params": [50_000, 52_000],
            "stages": ["2x8", "3x8"],
            "epochs_run": [6, 6],
            "config/space": ["seeds", "seeds"],
            "config/preset": ["se_mish_resnet", "efficient_resnet"],
        }
    )
    table.to_parquet(exp / "trials.parquet")
    (exp / SETTINGS_FILE).write_text(json.dumps({**settings.__dict__, "space": "seeds"}))
    final = {"test_acc": [0.6, 0.62], "test_acc_mean": 0.61, "test_acc_std": 0.014, "epochs": 6}
    if tta:
        for key in ("test_acc_tta", "test_acc_plain"):
            final |= {key: [0.6, 0.62], f"{key}_mean": 0.61, f"{key}_std": 0.014}
    (exp / "final" / "metrics.json").write_text(json.dumps(final))
    return exp


def test_a_baseline_with_other_settings_is_named_and_never_compared(tmp_path: Path) -> None:
    ours = _settings(tmp_path)
    assert setting_differences({"subset": 5000}, {"subset": None}) == [
        "subset: 5000 here, None there"
    ]
    _seed_experiment(tmp_path, "seeds-other", replace(ours, subset=None, max_epochs=30))
    found = find_seed_baseline(ours)
    assert found["experiment"] == "seeds-other"
    assert "subset: 5000 here, None there" in found["differences"]
    assert "max epochs: 6 here, 30 there" in found["differences"]
    assert found["command"] == matching_command(ours.__dict__)
    assert "--subset 5000 " in found["command"] and "--max-epochs 6 " in found["command"]

    best = {"trial_id": "w", "params": 40_000, "stages": "1x8", "val_mean": 0.7}
    write_report(tmp_path / "r", pd.DataFrame(), {}, [], best, None, found, ours.__dict__)
    report = (tmp_path / "r" / "report.md").read_text()
    assert "`seeds-other` is **not compared**" in report
    assert "subset: 5000 here, None there" in report and found["command"] in report
    assert "Welch" not in report and "best seed network (`" not in report

    # An older retrain, tested one way only, is not compared either.
    _seed_experiment(tmp_path, "seeds-old", ours, tta=False)
    assert "without flip TTA" in find_seed_baseline(ours)["differences"][-1]

    # A matching one is: its best network by score, its retrain.
    _seed_experiment(tmp_path, "seeds-same", ours)
    same = find_seed_baseline(ours)
    assert same["experiment"] == "seeds-same" and "differences" not in same
    assert same["preset"] == "efficient_resnet" and same["score"] == 0.64
    assert same["preset_params"] > same["params"]  # scaled to the budget: the report says so


def test_the_comparison_tests_both_sides_the_same_ways(tmp_path: Path) -> None:
    def side(tta: list[float], plain: list[float]) -> dict:
        out = {"epochs": 6, "test_acc": plain, "test_acc_mean": np.mean(plain)}
        out["test_acc_std"] = np.std(plain, ddof=1)
        for key, accs in (("test_acc_tta", tta), ("test_acc_plain", plain)):
            out |= {key: accs, f"{key}_mean": np.mean(accs), f"{key}_std": np.std(accs, ddof=1)}
        return out

    final = side([0.95, 0.951, 0.949, 0.952, 0.950], [0.945, 0.946, 0.944, 0.947, 0.945])
    b_final = side([0.940, 0.941, 0.939, 0.942, 0.940], [0.9445, 0.946, 0.944, 0.947, 0.945])
    baseline = {"experiment": "x/baseline", "preset": "efficient_resnet", "params": 4_697_742,
                "stages": "s", "score": 0.93, "epochs": 6, "seed_val_accs": {"a": 0.93},
                "final": b_final}  # fmt: skip
    best = {"trial_id": "w", "params": 4_000_000, "stages": "1x8", "val_mean": 0.95}
    settings = {"name": "x", "space": "tiny", "budget": 5_000_000, "max_epochs": 6, "seed": 0}
    write_report(tmp_path, pd.DataFrame(), {}, [], best, final, baseline, settings)
    report = (tmp_path / "report.md").read_text()
    with_tta = welch(final["test_acc_tta"], b_final["test_acc_tta"])
    without = welch(final["test_acc_plain"], b_final["test_acc_plain"])
    assert f"- flip TTA: {with_tta.sentence()}" in report and with_tta.significant
    assert f"- no TTA: {without.sentence()}" in report and not without.significant
    assert "95% CI" in report and "p = " in report
    assert "With and without TTA are two tests of the same networks, each at 5%" in report
    assert "95.04% ± 0.11% (5)" in report  # the winner's flip-TTA test accuracy, mean ± std
    assert "scaled in width" not in report  # full-size seed networks


def test_a_time_budget_keeps_time_for_the_finalists(tmp_path: Path) -> None:
    from tune.runner import finalist_rounds
    from tune.time_budget import TimeBudget

    settings = replace(_settings(tmp_path), finalists=3, finalist_seeds=2)
    assert finalist_rounds(settings, 4) == 2 and finalist_rounds(settings, 6) == 1
    assert finalist_rounds(replace(settings, finalists=0), 4) == 0

    budget = TimeBudget(100.0, str(tmp_path), "timed", reserve_rounds=2, max_epochs=5)
    assert budget.reserve_s == 0  # nothing measured yet
    budget("t1", {"training_iteration": 2, "time_total_s": 4.0})  # 2 s per epoch
    budget("t2", {"training_iteration": 1, "time_total_s": 2.0})
    assert budget.reserve_s == pytest.approx(2 * 5 * 2.0)  # two rounds of 5 epochs
    budget._before = 79.0 - (budget.elapsed_s - budget._before)
    assert not budget.stop_all()
    budget._before += 2.0
    assert budget.stop_all()  # 81 s spent: the last 20 are the finalists'
    for trial in ("t3", "t4"):  # slow trials make the median 50 s per epoch
        budget(trial, {"training_iteration": 1, "time_total_s": 50.0})
    assert budget.reserve_s == 50.0  # never more than half the budget


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--space", "seeds", "--baseline", "seeds"], "--space seeds already trains them"),
        (["--finalists", "-1"], "--finalists is -1"),
        (["--finalist-seeds", "0"], "--finalist-seeds is 0"),
    ],
)
def test_finalist_and_baseline_options_are_checked_before_ray_starts(argv, message) -> None:
    from tune.cli import UsageError, build_parser, validate_args

    with pytest.raises(UsageError, match=message):
        validate_args(build_parser().parse_args(argv))


def test_the_help_shows_the_new_defaults() -> None:
    from tune.cli import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "(3; 1 without a GPU; 0: the best score wins)" in text  # --finalists
    assert "new seeds per finalist (2; 2 without a GPU)" in text
    assert "(5; 2 without a GPU; 5 detects a 0.5-point difference" in text
