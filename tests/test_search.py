"""End-to-end tests of the search command, `python -m tune.search`, run as a user runs it.

Each search runs as a subprocess (Ray, its workers and its global state stay out of the
pytest process) on tiny separable CIFAR-format data with the `tiny` space. Every artifact
is read back with the tool a user would read it with: pandas for trials.parquet,
TensorBoard's EventAccumulator for the trials' logs, load_checkpoint for the retrained
models. Leftover processes are found by a marker variable in their environment and
ended by id, so a test never touches another Ray on the machine.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import statistics
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest

from models import count_params
from search_spaces import get_space, list_spaces, raw_params
from search_spaces.spaces import SPACES
from tests.conftest import separable_images, write_python_batches
from tests.searchrun import (
    PLOTS,
    PNG_MAGIC,
    SCALARS,
    SEARCH_TIMEOUT,
    check_ok,
    cli,
    kill,
    read_results,
    read_table,
    search,
    start,
    tensorboard,
    trial_dirs,
)
from training.checkpoint import load_checkpoint
from tune.cli import REDUCED

# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 training and 100 test images in the python-batches format."""
    return write_python_batches(tmp_path_factory.mktemp("cifar"), n_train=400, n_test=100)


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    """A Kaggle-style unlabeled pickle whose ids are neither sorted nor 0..N-1."""
    images, _ = separable_images(37, seed=11)
    ids = np.random.default_rng(3).permutation(np.arange(5000, 5037)).astype(np.int64)
    path = tmp_path_factory.mktemp("predict") / "nolabel.pkl"
    path.write_bytes(pickle.dumps({b"data": images.reshape(len(images), -1), b"ids": ids}))
    return path, ids.tolist()


# --- 1. a full search and every artifact it writes -----------------------------------------


@pytest.mark.slow
def test_full_search_writes_every_artifact(
    tmp_path: Path, data_dir: Path, unlabeled: tuple[Path, list[int]]
) -> None:
    predict_path, predict_ids = unlabeled
    storage, name, max_epochs, num_samples = tmp_path / "exp", "e2e", 3, 4
    run = search(
        cli(
            space="tiny",
            data=data_dir,
            num_samples=num_samples,
            max_epochs=max_epochs,
            grace_period=1,
            subset=300,
            retrain_seeds=2,
            predict=predict_path,
            storage_path=storage,
            name=name,
        ),
        tmp_path / "run",
    )
    check_ok(run)
    exp = storage / name
    budget = REDUCED.budget  # the default without a GPU
    assert f"--budget {budget:,}" in run.stdout and "pass --full" in run.stdout

    # trials.parquet: one row per trial, settings in the schema metadata.
    table = read_table(exp)
    assert len(table) == num_samples
    required = [
        "trial_id",
        "status",
        "params",
        "final_val_acc",
        "best_val_acc",
        "epochs_run",
        "seed",
        "code_version",
    ]
    assert set(required) <= set(table.columns), table.columns.tolist()
    for key in ("space", "budget", "seed", "params", "width_scale", "lr", "num_stages"):
        assert f"config/{key}" in table.columns, table.columns.tolist()
    assert table["trial_id"].is_unique
    assert (table["config/space"] == "tiny").all()
    # Best first: the trials that trained every epoch by score, then the others.
    scored = table["score"].notna()
    assert scored.is_monotonic_decreasing and table.loc[scored, "score"].is_monotonic_decreasing
    meta = json.loads(pq.read_schema(exp / "trials.parquet").metadata[b"resnet_tune"])
    assert meta["space"] == "tiny" and meta["name"] == name
    assert meta["num_samples"] == num_samples and meta["max_epochs"] == max_epochs
    assert meta["budget"] == budget and meta["retrain_seeds"] == 2
    assert meta["code_version"] == table["code_version"].iloc[0]
    assert Path(meta["predict"]) == predict_path.resolve()

    # ASHA (grace 1, reduction factor 2, max 3): stops only at its rungs, epoch 1 or 2.
    assert set(table["status"]) <= {"completed", "stopped_early"}, table["status"].tolist()
    assert (table["status"] == "completed").any(), "no trial reached --max-epochs"
    assert (table.loc[table["status"] == "completed", "epochs_run"] == max_epochs).all()
    assert table.loc[table["status"] == "stopped_early", "epochs_run"].isin([1, 2]).all()
    assert (table["params"] <= budget).all()

    # The Optuna study, in the experiment, read back with Optuna itself: every epoch is an
    # intermediate value, and each trial's state is what ASHA did to it.
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp}/study.db")
    trials = {t.number: t for t in study.trials}
    assert len(trials) == num_samples
    expected_state = {"completed": "COMPLETE", "stopped_early": "PRUNED"}
    for row in table.to_dict("records"):
        trial = trials[row["config/trial_number"]]
        assert trial.state.name == expected_state[row["status"]] == row["optuna_state"], row
        history = read_results(Path(row["path"]))
        assert trial.intermediate_values == {r["training_iteration"]: r["val_acc"] for r in history}
        if row["status"] == "completed":
            assert trial.value == pytest.approx(row["score"])
        assert trial.user_attrs["params"] == row["params"]
        assert trial.params["lr"] == pytest.approx(row["config/lr"])

    # Each trial's TensorBoard logs: one value per epoch it ran, and its hyperparameters.
    for row in table.to_dict("records"):
        trial_id, trial_dir = row["trial_id"], Path(row["path"])
        assert trial_dir.parent == exp and trial_dir.name == f"trial_{trial_id}"
        scalars, hp = tensorboard(trial_dir)
        steps = list(range(1, row["epochs_run"] + 1))
        for tag in SCALARS:
            assert [s for s, _ in scalars.get(tag, [])] == steps, (trial_id, tag, scalars)
            assert all(math.isfinite(v) for _, v in scalars[tag])
        val = [v for _, v in scalars["val/acc"]]
        assert max(val) == pytest.approx(row["best_val_acc"], abs=1e-6)
        assert val[-1] == pytest.approx(row["final_val_acc"], abs=1e-6)
        assert [r["training_iteration"] for r in read_results(trial_dir)] == steps
        # Sessions only: TensorBoard builds the experiment from them (and marks what differs).
        assert "session_start_info" in hp and "experiment" not in hp, (trial_id, hp)
        start = hp["session_start_info"]
        assert start["params"] == row["params"] and start["seed"] == row["seed"]
        assert start["lr"] == pytest.approx(row["config/lr"])
        # Written in the trial's `finally`, also when ASHA stops it.
        assert "session_end_info" in hp, f"trial {trial_id}: no hparams session end"

    # best_config.json: the best trial, within the budget, with what a retrain needs.
    best = json.loads((exp / "best_config.json").read_text())
    top = table.iloc[0]
    assert best["trial_id"] == top["trial_id"]
    assert best["best_val_acc"] == pytest.approx(top["best_val_acc"])
    assert best["params"] == top["params"] <= budget
    assert best["seed"] == top["seed"]
    assert best["config"]["space"] == "tiny" and best["config"]["lr"] == top["config/lr"]
    assert len(best["arch"]["stages"]) == best["config"]["num_stages"]
    assert best["train_config"]["epochs"] == max_epochs  # retrain epochs default
    assert best["train_config"]["lr"] == pytest.approx(best["config"]["lr"])
    assert best["code_version"] == meta["code_version"]

    # final/: one retrained model per seed, tested; the ensemble's predictions.
    final = json.loads((exp / "final" / "metrics.json").read_text())
    assert final["seeds"] == [0, 1]
    assert len(final["test_acc"]) == 2 and all(0 <= a <= 1 for a in final["test_acc"])
    assert final["test_acc_mean"] == pytest.approx(statistics.fmean(final["test_acc"]))
    assert final["test_acc_std"] == pytest.approx(statistics.stdev(final["test_acc"]))
    assert final["params"] == best["params"]
    assert final["gpu_seconds"] == 0.0  # no GPU here
    assert final["code_version"] == meta["code_version"]
    assert final["test_images"] == 100 and final["train_images"] == 300 + 75  # train + val
    for seed in (0, 1):
        ckpt = load_checkpoint(exp / "final" / f"seed_{seed}" / "checkpoint.pt")
        assert ckpt["epoch"] == max_epochs and ckpt["seed"] == seed
        assert ckpt["params"] == best["params"]
        assert json.loads(json.dumps(ckpt["arch"])) == best["arch"]  # tuples become lists

    lines = (exp / "final" / "predictions.csv").read_text().splitlines()
    assert lines[0] == "ID,Labels"
    predictions = pd.read_csv(exp / "final" / "predictions.csv")
    assert predictions["ID"].tolist() == predict_ids
    assert predictions["Labels"].between(0, 9).all()

    # report.md and its three plots.
    report = (exp / "report.md").read_text()
    for png in PLOTS:
        assert f"]({png})" in report, png
        assert (exp / png).read_bytes()[:8] == PNG_MAGIC, png
    assert best["trial_id"] in report
    for milestone in (1, 3):  # grace period 1, reduction factor 3 (the default), max 3
        reached = int((table["epochs_run"] >= milestone).sum())
        assert f"| {milestone} | {reached} |" in report


# --- 2. the parameter budget ----------------------------------------------------------------


@pytest.mark.slow
def test_every_trial_fits_a_small_budget(tmp_path: Path, data_dir: Path) -> None:
    budget, num_samples = 3000, 5
    space = get_space("tiny")
    assert space.smallest_params() <= budget
    # The widest choices of the space are far over it, so the search must scale widths.
    widest = {
        "num_stages": 2,
        "channels_0": 32,
        "channels_1": 32,
        "activation": "relu",
        "se": True,
        "lr": 0.1,
        "batch_size": 32,
    }
    assert count_params(space.build(widest)[0]) > 3 * budget

    storage = tmp_path / "exp"
    run = search(
        cli(
            space="tiny",
            data=data_dir,
            budget=budget,
            num_samples=num_samples,
            max_epochs=1,
            subset=200,
            skip_retrain=True,
            storage_path=storage,
            name="budget",
        ),
        tmp_path / "run",
    )
    check_ok(run)
    exp = storage / "budget"
    table = read_table(exp)
    assert len(table) == num_samples == len(trial_dirs(exp))
    assert (table["params"] <= budget).all(), table[["trial_id", "params"]]
    assert (table["status"] != "error").all(), table[["trial_id", "error"]]

    scaled = 0
    for row in table.to_dict("records"):
        config = {k.removeprefix("config/"): v for k, v in row.items() if k.startswith("config/")}
        config = {k: v for k, v in config.items() if not (isinstance(v, float) and math.isnan(v))}
        raw = raw_params(config)
        for key in ("num_stages", "channels_0", "channels_1", "batch_size"):
            if key in raw:
                raw[key] = int(raw[key])
        unscaled = count_params(space.build(raw)[0])
        # Scaled down exactly when the sampled network is over the budget.
        assert (row["width_scale"] < 1) == (unscaled > budget), (row, unscaled)
        scaled += row["width_scale"] < 1
        # The network each trial trained (its reported count) is the one recorded.
        trained = read_results(Path(row["path"]))
        assert trained and all(r["params"] == row["params"] for r in trained)
    assert scaled >= 1, "no sample was over the budget; the test exercises nothing"
    best = json.loads((exp / "best_config.json").read_text())
    assert best["params"] <= budget
    assert not (exp / "final").exists()  # --skip-retrain


# --- 3. resuming a killed search ------------------------------------------------------------


@pytest.mark.slow
def test_killed_search_resumes_without_rerunning_finished_trials(
    tmp_path: Path, data_dir: Path
) -> None:
    storage, name, num_samples, max_epochs = tmp_path / "exp", "resume", 6, 2
    args = cli(
        space="tiny",
        data=data_dir,
        num_samples=num_samples,
        max_epochs=max_epochs,
        grace_period=1,
        reduction_factor=2,  # rungs at epochs 1 and 2
        subset=200,
        skip_retrain=True,
        # Every epoch checkpointed: the interrupted trial must continue from its last epoch.
        checkpoint_every=0,
        # One trial at a time (2 CPUs each): the kill must land mid-search, and concurrent
        # tiny trials can finish between two syncs of the results to the storage folder.
        cpus_per_trial=2,
        storage_path=storage,
        name=name,
    )
    exp = storage / name

    def progress() -> tuple[list[Path], list[Path]]:
        """(trials that ended, the newest trial if it is between epochs). Trials run one at a
        time in the order of their Optuna number, so each trial before the newest has ended:
        reached --max-epochs or been stopped by ASHA."""
        started = sorted(
            (results[0]["config"]["trial_number"], d)
            for d in trial_dirs(exp)
            if (results := read_results(d))
        )
        if not started:
            return [], []
        ended = [d for _, d in started[:-1]]
        newest = started[-1][1]
        if read_results(newest)[-1]["training_iteration"] == max_epochs:
            return [*ended, newest], []
        return ended, [newest]

    # Kill once 3 trials have ended and, if it comes to that, while a fourth is between its
    # epochs, so the resume also continues an interrupted trial. A trial's result.json
    # reaches the storage folder in the same copy as Ray's experiment state (both are written
    # in the driver's staging folder, then synced), so a trial seen to end here has ended in
    # the state the resume reads; the short sleep lets that copy end.
    marker = uuid.uuid4().hex
    proc = start(args, tmp_path / "first", marker)
    try:
        deadline = time.monotonic() + SEARCH_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            finished, running = progress()
            if len(finished) >= 3:
                time.sleep(0.1)
                break
            time.sleep(0.05)
        assert proc.poll() is None, (
            "the search ended before it could be killed:\n"
            + (tmp_path / "first" / "stdout.txt").read_text()[-3000:]
        )
    finally:
        kill(proc, marker)
    finished, running = progress()
    done_before = {d.name: (d / "result.json").read_text() for d in finished}
    running_before = {d.name: (d / "result.json").read_text() for d in running}
    assert len(done_before) >= 3
    assert not (exp / "trials.parquet").exists(), "the first run was not interrupted"

    run = search(args, tmp_path / "second")
    check_ok(run)
    assert "continuing experiment" in run.stdout
    assert f"resuming the search in {exp}" in run.stdout
    match = re.search(r"scheduler (\w+); refilled (\d+) ASHA rung entries", run.stdout)
    assert match, run.stdout[-3000:]
    from tune.schedulers import SearchScheduler

    assert match.group(1) == SearchScheduler.__name__  # ASHA kept, not a FIFO fallback
    # Each ended trial recorded one rung entry per epoch it ran (the rungs are epochs 1 and 2).
    assert int(match.group(2)) >= sum(len(before.splitlines()) for before in done_before.values())

    table = read_table(exp)
    assert len(table) == num_samples
    assert table["trial_id"].is_unique
    assert sorted(f"trial_{t}" for t in table["trial_id"]) == [d.name for d in trial_dirs(exp)]
    assert {f"trial_{t}" for t in table["trial_id"]} >= set(done_before)
    assert (table["status"] != "error").all(), table[["trial_id", "error"]]
    for trial, before in done_before.items():
        # Not re-run: nothing was appended to its results, and they are what the table has.
        assert (exp / trial / "result.json").read_text() == before, trial
        row = table[table["trial_id"] == trial.removeprefix("trial_")].iloc[0]
        assert row["epochs_run"] == len(before.splitlines())
        last = json.loads(before.splitlines()[-1])
        assert row["final_val_acc"] == pytest.approx(last["val_acc"])
    for trial, before in running_before.items():
        # Interrupted between epochs: continued from its checkpoint, not started over (an
        # epoch reported after the last save of Ray's experiment state is trained again, and
        # listed once: tune.callbacks.OneRowPerEpoch).
        after = (exp / trial / "result.json").read_text()
        assert after.splitlines()[0] == before.splitlines()[0], trial
        epochs = [r["training_iteration"] for r in read_results(exp / trial)]
        assert epochs == list(range(1, len(epochs) + 1)), (trial, epochs)
    # The resume continued the same Optuna study: one trial per Ray trial, none left running,
    # and the ended trials' values are the ones they had before the kill.
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp}/study.db")
    assert sorted(t.number for t in study.trials) == list(range(num_samples))
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    for trial, before in done_before.items():
        number = json.loads(before.splitlines()[0])["config"]["trial_number"]
        epochs = {
            r["training_iteration"]: r["val_acc"] for r in map(json.loads, before.splitlines())
        }
        assert study.trials[number].intermediate_values == epochs, trial
    for row in table.to_dict("records"):
        # Every trial has one logged value per epoch it ran: none repeated, none missing.
        scalars, hp = tensorboard(Path(row["path"]))
        for tag in SCALARS:
            steps = [s for s, _ in scalars[tag]]
            assert steps == list(range(1, row["epochs_run"] + 1)), (row["trial_id"], tag, steps)
        assert {"session_start_info", "session_end_info"} <= set(hp), (row["trial_id"], hp)


# --- 4. bad inputs fail at once, before Ray starts --------------------------------------------


def _bad_input_cases(data: Path) -> list[tuple[list[str], list[str]]]:
    smallest = get_space("tiny").smallest_params()
    return [
        (["--space", "nope", "--data", str(data)], ["'nope'", *list_spaces()]),
        (
            ["--space", "tiny", "--data", str(data.parent / "missing")],
            ["--data", "missing", "does not exist", "CIFAR-10 folder or archive"],
        ),
        (
            ["--space", "tiny", "--data", str(data), "--budget", "1000"],
            ["--budget 1,000", f"at least {smallest:,}", "tiny"],
        ),
        (
            ["--space", "tiny", "--data", str(data), "--num-samples", "0"],
            ["--num-samples", "is 0", "positive"],
        ),
    ]


@pytest.mark.parametrize("case", range(4), ids=["space", "data", "budget", "num-samples"])
def test_bad_input_fails_before_ray_starts(tmp_path: Path, data_dir: Path, case: int) -> None:
    args, expected = _bad_input_cases(data_dir)[case]
    storage = tmp_path / "exp"
    # Ray makes its session folder under RAY_TMPDIR as it starts: none there, Ray never
    # started (a time bound would say it on a quiet machine only).
    ray_tmp = tmp_path / "ray-tmp"
    ray_tmp.mkdir()
    run = search(
        [*args, "--storage-path", str(storage), "--name", "x"],
        tmp_path / "run",
        120,
        env={"RAY_TMPDIR": str(ray_tmp)},
    )
    assert not any(ray_tmp.iterdir()), f"Ray was started: {sorted(ray_tmp.iterdir())}"
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert run.stderr.strip().splitlines()[-1].startswith("error: "), run.stderr
    for text in expected:
        assert text in run.stderr, (text, run.stderr)
    assert "Started a local Ray instance" not in run.stdout + run.stderr
    assert not storage.exists()


# --- 5. listing the spaces --------------------------------------------------------------------


def test_list_spaces_describes_each_space(tmp_path: Path) -> None:
    run = search(["--list-spaces"], tmp_path / "run", 60)
    check_ok(run)
    lines = run.stdout.strip().splitlines()
    assert len(lines) == len(SPACES) == 3
    for line, (name, space) in zip(lines, SPACES.items(), strict=True):
        assert line.split()[0] == name
        assert line.endswith(space.description) and len(space.description) > 20
    assert {"tiny", "seeds", "efficient_resnet"} <= set(SPACES)
