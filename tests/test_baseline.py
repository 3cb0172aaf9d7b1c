"""The seed baselines and a search compared at equal epochs: in one command (`--baseline
seeds`: search, finalists, seed networks, both retrains and the comparison), and as two
experiments (`--space seeds`, then a time-budgeted search in the same storage folder whose
report sets the two side by side)."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

import optuna
import pytest

from models import SEED_MODELS
from search_spaces import SPACES, get_space
from tests.conftest import write_python_batches
from tests.searchrun import SEARCH_TIMEOUT, check_ok, cli, kill, read_table, search, start
from tune.cli import parse_duration
from tune.compare import welch
from tune.finalize import candidates, finalist_ranking
from tune.runner import trial_slots
from tune.settings import SearchSettings


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("45m", 2700), ("2h", 7200), ("30", 30), ("1.5m", 90)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "-5m", "0", "ten minutes", "5d"])
def test_parse_duration_refuses_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="45m"):
        parse_duration(text)


def _settings(gpus: float, cpus: float = 1) -> SearchSettings:
    fields = dict.fromkeys(SearchSettings.__dataclass_fields__)
    fields.update(gpus_per_trial=gpus, cpus_per_trial=cpus, time_budget_s=None)
    return SearchSettings(**fields)


@pytest.mark.parametrize(("gpus", "slots"), [(0.2, 5), (0.25, 4), (1 / 3, 3), (0.5, 2), (1, 1)])
def test_trial_slots_count_fractional_gpus_exactly(gpus: float, slots: int) -> None:
    node = {"Resources": {"CPU": 16.0, "GPU": 1.0}}
    assert trial_slots(_settings(gpus), [node]) == slots


@pytest.mark.parametrize("name", [n for n, s in SPACES.items() if s.starting_points])
def test_starting_points_are_valid_samples_of_their_space(name: str) -> None:
    space = get_space(name)
    for point in space.starting_points:
        trial = optuna.trial.FixedTrial(point)  # raises on a missing or out-of-range value
        constants = space.sample(trial, 5_000_000)
        assert set(trial.params) == set(point)  # every value is one the space asks for
        assert constants["params"] <= 5_000_000


@pytest.mark.slow
def test_seed_baselines_run_to_the_end_and_a_timed_search_is_compared_with_them(
    tmp_path: Path,
) -> None:
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    storage = tmp_path / "exp"
    common = ["--data", str(data), "--subset", "100", "--storage-path", str(storage)]

    # ASHA with grace period 1 would stop some of the five at epoch 1; fixed trials are
    # baselines and each runs all of --max-epochs.
    run = search(
        cli(space="seeds", max_epochs=2, grace_period=1, retrain_seeds=2, finalists=0)
        + ["--name", "seeds", *common],
        tmp_path / "seeds_run",
        timeout=600,
    )
    check_ok(run)
    seeds = read_table(storage / "seeds")
    assert sorted(seeds["config/preset"]) == sorted(SEED_MODELS.values())
    assert (seeds["status"] == "completed").all(), seeds[["config/preset", "status"]]
    assert (seeds["epochs_run"] == 2).all()
    seeds_final = json.loads((storage / "seeds" / "final" / "metrics.json").read_text())
    assert seeds_final["seeds"] == [0, 1] and seeds_final["epochs"] == 2
    assert seeds_final["wall_seconds"] > 0 and len(seeds_final["test_acc"]) == 2

    run = search(
        cli(space="tiny", max_epochs=2, time_budget="25s", retrain_seeds=2, finalists=0)
        + ["--name", "timed", *common],
        tmp_path / "timed_run",
    )
    check_ok(run)
    assert "for at most 0.4 min" in run.stdout
    exp = storage / "timed"
    table = read_table(exp)
    settings = json.loads((exp / "search_settings.json").read_text())
    assert settings["time_budget_s"] == 25 and settings["num_samples"] >= 1000
    assert 1 <= len(table) < 1000
    # Trials still waiting when the budget ended are recorded as such, not as early stops.
    assert (table.loc[table["epochs_run"] == 0, "status"] == "not_run").all()
    assert (table.loc[table["status"] == "not_run", "epochs_run"] == 0).all()
    best = json.loads((exp / "best_config.json").read_text())
    # Ray stops at the budget; its own start-up and the last trials' ends come on top.
    assert best["search_seconds"] < 25 + 60
    assert best["trials"] == len(table)

    # The space's starting point is its first trial.
    first = table[table["config/trial_number"] == 0].iloc[0]
    start = get_space("tiny").starting_points[0]
    for key, value in start.items():
        assert first[f"config/{key}"] == value, key

    # The seeds experiment matches this search's settings, so the report compares the two.
    report = (exp / "report.md").read_text()
    top = seeds.iloc[0]  # ranked by score: the seeds experiment's winner
    assert (
        json.loads((storage / "seeds" / "best_config.json").read_text())["trial_id"]
        == (top["trial_id"])
    )
    final = json.loads((exp / "final" / "metrics.json").read_text())
    assert f"best seed network (`{top['config/preset']}`)" in report
    assert f"{top['score']:.2%}" in report
    for key in ("test_acc_tta", "test_acc_plain"):
        for side in (final, seeds_final):
            assert f"{side[key + '_mean']:.2%} ± {side[key + '_std']:.2%} (2)" in report
        assert welch(final[key], seeds_final[key]).sentence() in report
    for preset in SEED_MODELS.values():
        assert f"`{preset}`" in report
    assert "not compared" not in report


@pytest.mark.slow
def test_one_command_runs_search_finalists_and_seed_baselines_and_compares_them(
    tmp_path: Path,
) -> None:
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    storage, max_epochs = tmp_path / "exp", 2
    args = [
        "--space", "tiny", "--baseline", "seeds", "--num-samples", "4",
        "--max-epochs", str(max_epochs), "--grace-period", "1", "--finalists", "2",
        "--finalist-seeds", "1", "--retrain-seeds", "2", "--subset", "100",
        "--data", str(data), "--storage-path", str(storage), "--name", "one",
    ]  # fmt: skip
    run = search(args, tmp_path / "run", timeout=600)
    check_ok(run)
    exp = storage / "one"
    table = read_table(exp, every_role=True)
    completed = int(((table["role"] == "search") & (table["status"] == "completed")).sum())
    assert completed >= 1, table[["trial_id", "status"]]
    roles = table["role"].value_counts().to_dict()
    assert roles == {"baseline": 5, "search": 4, "finalist": min(2, completed)}, roles

    # The seed networks: each report's recipe at the search's epochs, never stopped early,
    # trials of the experiment's baseline/ folder, scaled in width to the reduced budget.
    baseline = table[table["role"] == "baseline"]
    assert sorted(baseline["config/preset"]) == sorted(SEED_MODELS.values())
    assert (baseline["status"] == "completed").all() and (baseline["epochs_run"] == 2).all()
    assert all(Path(p).parent == exp / "baseline" for p in baseline["path"])
    assert (baseline["params"] <= 60_000).all()

    # The finalists: the top two candidates' configurations with new seeds, run to the end.
    search_rows = table[table["role"] == "search"]
    top2 = candidates(table).head(2)
    finalists = table[table["role"] == "finalist"]
    assert sorted(finalists["config/finalist_of"]) == sorted(top2["config/trial_number"])
    assert finalists["config/trial_number"].isna().all()  # no trials of the Optuna study
    assert (finalists["status"] == "completed").all()
    assert all(Path(p).parent == exp / "finalists" for p in finalists["path"])
    assert not set(finalists["seed"]) & set(search_rows["seed"])

    # What Optuna was told of a complete trial is its score in the table.
    study = optuna.load_study(study_name="one", storage=f"sqlite:///{exp}/study.db")
    values = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}
    for row in search_rows[search_rows["status"] == "completed"].to_dict("records"):
        assert values[row["config/trial_number"]] == pytest.approx(row["score"])

    # The winner: the best mean over the finalists' re-runs, a trial that ran every epoch.
    best = json.loads((exp / "best_config.json").read_text())
    ranking = finalist_ranking(table, 2)
    assert best["trial_id"] == ranking.iloc[0]["trial_id"]
    assert best["val_mean"] == pytest.approx(ranking.iloc[0]["val_mean"])
    assert len(best["val_runs"]) == 1  # its one re-run; the search run that chose it is not
    winner_row = table[table["trial_id"] == best["trial_id"]].iloc[0]
    assert winner_row["status"] == "completed" and winner_row["role"] == "search"

    # Both sides retrained with the same seeds and epochs, tested with and without flip TTA.
    final = json.loads((exp / "final" / "metrics.json").read_text())
    b_final = json.loads((exp / "baseline_final" / "metrics.json").read_text())
    assert final["seeds"] == b_final["seeds"] == [0, 1]
    assert final["epochs"] == b_final["epochs"] == max_epochs
    assert final["test_images"] == b_final["test_images"] == 100
    report = (exp / "report.md").read_text()
    for key in ("test_acc_tta", "test_acc_plain"):
        assert len(final[key]) == len(b_final[key]) == 2
        assert welch(final[key], b_final[key]).sentence() in report
    assert "95% CI" in report and "p = " in report
    assert "scaled in width to this run's budget of 60,000 parameters" in report

    # Run again: everything is finished, so nothing trains again.
    dirs = sorted(p.relative_to(exp) for p in exp.glob("**/trial_*") if p.is_dir())
    again = search(args, tmp_path / "again", timeout=600)
    check_ok(again)
    assert sorted(p.relative_to(exp) for p in exp.glob("**/trial_*") if p.is_dir()) == dirs
    assert again.stdout.count("already finished, kept") == 4
    assert read_table(exp, every_role=True)["trial_id"].tolist() == table["trial_id"].tolist()


@pytest.mark.slow
def test_a_resumed_search_gets_only_what_is_left_of_its_time_budget(tmp_path: Path) -> None:
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    storage, name, budget = tmp_path / "exp", "clock", 30
    args = [
        "--space", "tiny", "--data", str(data), "--subset", "100", "--max-epochs", "50",
        "--time-budget", f"{budget}s", "--skip-retrain", "--cpus-per-trial", "2", "--finalists", "0",
        "--storage-path", str(storage), "--name", name,
    ]  # fmt: skip
    clock = storage / name / "search_clock.txt"

    def elapsed() -> float:
        try:
            return json.loads(clock.read_text())["elapsed_s"]
        except (OSError, ValueError):
            return 0.0

    marker = uuid.uuid4().hex
    proc = start(args, tmp_path / "first", marker)
    try:
        deadline = time.monotonic() + SEARCH_TIMEOUT
        while elapsed() < 12 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, (tmp_path / "first" / "stdout.txt").read_text()[-3000:]
    finally:
        kill(proc, marker)
    before = elapsed()
    assert 12 <= before < budget

    run = search(args, tmp_path / "second")
    # How many of the tiny trials train all 50 epochs in 30 s depends on the machine; either
    # way the search ends by itself, with its report, and only a full run can be the winner.
    assert (storage / name / "report.md").exists()
    if run.returncode == 1:
        assert "no trial trained every epoch" in run.stderr + run.stdout
    else:
        check_ok(run)
        best = json.loads((storage / name / "best_config.json").read_text())
        winner = read_table(storage / name).set_index("trial_id").loc[best["trial_id"]]
        assert winner["status"] == "completed" and winner["epochs_run"] == 50
    # This run had what was left (about budget - before seconds), not a whole new budget: it
    # ends at the budget, or before it where a trial started then could not reach its first
    # rung in what was left (tune.time_budget.RungDeadline) and the running ones had ended.
    total = elapsed()
    assert before < total < budget + 20
    if total < budget:
        assert "no new trial: one started now would not reach its first rung" in (
            run.stdout + run.stderr
        ), run.stdout[-3000:]
