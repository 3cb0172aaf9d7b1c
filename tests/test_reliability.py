"""Faults a search must survive and bad inputs it must refuse (docs/reliability.md)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch

from tests.conftest import separable_images, write_python_batches
from tests.searchrun import (
    MARKER_VAR,
    ROOT,
    check_ok,
    kill,
    marked_pids,
    read_results,
    read_table,
    search,
    tensorboard,
)
from training import artifacts
from training import predict as predict_cli
from training import train as train_cli
from training.checkpoint import load_checkpoint, save_checkpoint
from tune import runner
from tune import search as search_cli
from tune.callbacks import drop_repeated_epochs

# --- faults inside trials: a killed worker, a NaN loss, an out-of-memory error ---------------

FAULTS = [
    {"kind": "kill", "trial": 1, "epoch": 1},
    {"kind": "nan", "trial": 2, "epoch": 1},
    {"kind": "oom", "trial": 3, "epoch": 1},
]
MAX_EPOCHS = 3


@pytest.fixture(scope="module")
def faulty_search(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """One search of 5 trials in which trials 1-3 meet the faults above."""
    root = tmp_path_factory.mktemp("faults")
    data = write_python_batches(root / "data", n_train=400, n_test=100)
    args = [
        "--space", "tiny", "--data", str(data), "--num-samples", "5",
        "--max-epochs", str(MAX_EPOCHS), "--grace-period", str(MAX_EPOCHS), "--subset", "300",
        "--skip-retrain", "--storage-path", str(root / "exp"), "--name", "faults",
        "--checkpoint-every", "0",  # the killed trial restarts from its last epoch's checkpoint
    ]  # fmt: skip
    run = search(args, root / "run", env={"RESNET_TUNE_FAULTS": json.dumps(FAULTS)})
    check_ok(run)
    exp = root / "exp" / "faults"
    return exp, read_table(exp)


def _row(table: pd.DataFrame, trial_number: int) -> dict:
    return table[table["config/trial_number"] == trial_number].iloc[0].to_dict()


@pytest.mark.slow
def test_search_completes_with_every_requested_trial(faulty_search):
    _, table = faulty_search
    assert len(table) == 5 and table["trial_id"].is_unique
    healthy = table[table["config/trial_number"].isin([0, 1, 4])]
    assert (healthy["status"] == "completed").all(), healthy[["status", "error"]]


@pytest.mark.slow
def test_killed_worker_restarts_from_its_checkpoint_without_gaps(faulty_search):
    _, table = faulty_search
    row = _row(table, 1)
    assert row["status"] == "completed" and row["epochs_run"] == MAX_EPOCHS
    reports = read_results(Path(row["path"]))
    assert [r["epoch"] for r in reports] == [1, 2, 3]  # no gap, no repeated epoch
    # After the kill Ray restored the trial from its epoch-1 checkpoint: the iteration
    # count since the restore restarts, the epoch count does not.
    assert reports[1]["iterations_since_restore"] == 1 and reports[1]["epoch"] == 2
    scalars, _ = tensorboard(Path(row["path"]))
    assert [s for s, _ in scalars["val/acc"]] == [1, 2, 3]


@pytest.mark.slow
def test_nan_loss_fails_that_trial_alone_with_its_reason(faulty_search):
    _, table = faulty_search
    row = _row(table, 2)
    assert row["status"] == "failed"
    assert "NonFiniteLossError" in row["error"] and "epoch 2" in row["error"]
    assert row["epochs_run"] == 1  # stopped in the epoch the loss broke, not retried


@pytest.mark.slow
def test_out_of_memory_fails_that_trial_alone_with_its_reason(faulty_search):
    _, table = faulty_search
    row = _row(table, 3)
    assert row["status"] == "failed"
    assert "OutOfMemoryError" in row["error"] and "--gpus-per-trial" in row["error"]
    assert row["epochs_run"] == 1


@pytest.mark.slow
def test_the_study_records_failures_against_their_region_and_the_restarted_trial_as_complete(
    faulty_search,
):
    exp, table = faulty_search
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{exp}/study.db")
    states = {t.number: t.state.name for t in study.trials}
    # A failed configuration is PRUNED at its last epoch and infeasible, which TPE ranks
    # below every trial that trained (FAIL it would ignore).
    assert states == {0: "COMPLETE", 1: "COMPLETE", 2: "PRUNED", 3: "PRUNED", 4: "COMPLETE"}
    assert [n for n, t in enumerate(study.trials) if t.constraints] == [2, 3]
    assert all(v > 0 for n in (2, 3) for v in study.trials[n].constraints.values())
    assert study.trials[2].value == study.trials[2].intermediate_values[1]
    reasons = {t.number: t.user_attrs.get("failure", "") for t in study.trials}
    assert "NonFiniteLossError" in reasons[2] and "OutOfMemoryError" in reasons[3]
    # The killed and restarted trial reported each epoch once, in order.
    assert list(study.trials[1].intermediate_values) == [1, 2, 3]
    assert list(table.sort_values("config/trial_number")["optuna_state"]) == [
        states[n] for n in sorted(states)
    ]


# --- a trial that starts again lists each epoch once ----------------------------------------


def _write_ray_results(folder: Path, epochs: list[int], run: str, json_too: bool = True) -> None:
    """result.json and progress.csv as Ray's JSON and CSV loggers write them (a CSV field
    with a comma and a newline, as an error message may have)."""
    folder.mkdir(parents=True, exist_ok=True)
    if json_too:
        with open(folder / "result.json", "a") as f:
            for epoch in epochs:
                f.write(json.dumps({"run": run, "training_iteration": epoch}) + "\n")
    new = not (folder / "progress.csv").exists()
    with open(folder / "progress.csv", "a") as f:
        writer = csv.DictWriter(f, ["run", "note", "training_iteration"])
        if new:
            writer.writeheader()
        for epoch in epochs:
            writer.writerow({"run": run, "note": "a, b\nc", "training_iteration": epoch})


def _file_rows(folder: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(epoch, run) of each row of result.json, and of progress.csv."""
    with open(folder / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(row["note"] == "a, b\nc" for row in rows)
    return (
        [(r["training_iteration"], r["run"]) for r in read_results(folder)],
        [(int(row["training_iteration"]), row["run"]) for row in rows],
    )


@pytest.mark.parametrize(
    ("before", "again", "kept"),
    [
        ([1, 2, 3], 3, [1, 2]),  # resumed from epoch 2's checkpoint: epoch 3 again
        ([1, 2, 3, 4], 3, [1, 2]),  # two epochs past the checkpoint
        ([1, 2], 1, []),  # no checkpoint: started over
        ([1, 2], 3, [1, 2]),  # continued where it stopped: nothing to drop
    ],
)
def test_a_trial_started_again_keeps_one_row_per_epoch_while_ray_appends(
    tmp_path: Path, before: list[int], again: int, kept: list[int]
) -> None:
    folder = tmp_path / "trial_x"
    _write_ray_results(folder, before, "first")
    # Ray's JSON logger opened the file for appending when the trial started again.
    with open(folder / "result.json", "a") as appending:
        _write_ray_results(folder, [again], "again")
        drop_repeated_epochs(folder, again)
        appending.write(json.dumps({"run": "again", "training_iteration": again + 1}) + "\n")
    _write_ray_results(folder, [again + 1], "again", json_too=False)
    expected = [(e, "first") for e in kept] + [(again, "again"), (again + 1, "again")]
    assert _file_rows(folder) == (expected, expected)


def test_rows_are_dropped_only_behind_the_result_just_written(tmp_path: Path) -> None:
    folder = tmp_path / "trial_x"
    _write_ray_results(folder, [1, 2, 3], "first")
    assert drop_repeated_epochs(folder, 2) == 0  # the last row is not epoch 2's: not ours
    rows = [(e, "first") for e in (1, 2, 3)]
    assert _file_rows(folder) == (rows, rows)
    assert drop_repeated_epochs(tmp_path / "none", 2) == 0


@pytest.mark.slow
def test_a_trial_restarted_without_a_checkpoint_lists_each_epoch_once(tmp_path: Path) -> None:
    """The default --checkpoint-every (60 s) outlasts a tiny trial: killed after epoch 1, the
    trial starts over, and Ray's loggers append to the rows of its first start."""
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    args = [
        "--space", "tiny", "--data", str(data), "--num-samples", "2", "--max-epochs", "8",
        "--grace-period", "8", "--subset", "200", "--finalists", "0", "--skip-retrain",
        "--storage-path", str(tmp_path / "exp"), "--name", "again",
    ]  # fmt: skip
    faults = [{"kind": "kill", "trial": 1, "epoch": 1}]
    run = search(args, tmp_path / "run", env={"RESNET_TUNE_FAULTS": json.dumps(faults)})
    check_ok(run)
    # The kill lands KILL_DELAY_S after epoch 1's report: a tiny epoch takes about as long,
    # so one to a few epochs later, well before the trial's end.
    output = run.stdout + run.stderr
    assert re.search(r"started again at epoch 1: \d earlier result row", output), [
        line for line in output.splitlines() if "again" in line or "Kill" in line
    ]
    exp = tmp_path / "exp" / "again"
    table = read_table(exp)
    study = optuna.load_study(study_name="again", storage=f"sqlite:///{exp}/study.db")
    for row in table.to_dict("records"):
        folder = Path(row["path"])
        results = read_results(folder)
        epochs = list(range(1, 9))
        assert [r["training_iteration"] for r in results] == epochs, row["trial_id"]
        with open(folder / "progress.csv", newline="") as f:
            assert [int(r["training_iteration"]) for r in csv.DictReader(f)] == epochs
        trial = study.trials[int(row["config/trial_number"])]
        assert trial.intermediate_values == {r["training_iteration"]: r["val_acc"] for r in results}
        scalars, _ = tensorboard(folder)
        assert [s for s, _ in scalars["val/acc"]] == epochs


# --- every file the project writes appears whole or not at all ------------------------------


def test_interrupted_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "metrics.json"
    artifacts.write_json(target, {"version": 1})

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text('{"version": 2, "trunc')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        artifacts.atomic_write(target, half_then_crash)
    assert json.loads(target.read_text()) == {"version": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp left


def test_interrupted_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"arch": {}, "model": {"w": torch.ones(3)}, "epoch": 1})
    real_save = torch.save

    def crash_midway(obj, f, *a, **k):
        real_save({"partial": torch.zeros(1)}, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"arch": {}, "model": {"w": torch.zeros(3)}, "epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_written_files_have_normal_permissions(tmp_path):
    path = artifacts.write_text(tmp_path / "report.md", "# hi\n")
    assert path.stat().st_mode & 0o644 == 0o644


# --- bad input: one-paragraph errors naming the input and the fix, nothing written -----------


def _bad_datasets(root: Path) -> dict[str, tuple[Path, str]]:
    """name -> (dataset path, text the error must contain)."""
    good = write_python_batches(root / "good", n_train=100, n_test=50)
    cases: dict[str, tuple[Path, str]] = {}

    truncated = root / "truncated.tar.gz"
    with tarfile.open(truncated, "w:gz") as tar:
        tar.add(good, arcname="cifar-10-batches-py")
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    cases["truncated archive"] = (truncated, "truncated.tar.gz")

    def batches_with(name: str, test_batch: dict) -> Path:
        folder = root / name / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for f in good.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        (folder / "test_batch").write_bytes(pickle.dumps(test_batch))
        return folder

    images, labels = separable_images(20)
    flat = images.reshape(20, -1)
    cases["wrong keys"] = (
        batches_with("keys", {b"pixels": flat, b"labels": labels.tolist()}),
        "test_batch",
    )
    cases["wrong dtype"] = (
        batches_with("dtype", {b"data": flat.astype(np.float32), b"labels": labels.tolist()}),
        "test_batch",
    )
    cases["wrong shape"] = (
        batches_with("shape", {b"data": flat[:, :100], b"labels": labels.tolist()}),
        "test_batch",
    )
    cases["labels out of range"] = (
        batches_with("labels", {b"data": flat, b"labels": [12] * 20}),
        "test_batch",
    )
    return cases


@pytest.fixture(scope="module")
def bad_datasets(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    return _bad_datasets(tmp_path_factory.mktemp("bad"))


CASES = ["truncated archive", "wrong keys", "wrong dtype", "wrong shape", "labels out of range"]


@pytest.mark.parametrize("case", CASES)
def test_bad_data_stops_training_before_anything_is_written(tmp_path, bad_datasets, case, capsys):
    path, names = bad_datasets[case]
    out = tmp_path / "run"
    rc = train_cli.main(["--model", "tiny_resnet", "--data", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and names in err, err
    assert not out.exists()


@pytest.mark.parametrize("case", CASES)
def test_bad_data_stops_a_search_before_ray_starts(tmp_path, bad_datasets, case, capsys):
    path, names = bad_datasets[case]
    storage = tmp_path / "exp"
    rc = search_cli.main(["--space", "tiny", "--data", str(path), "--storage-path", str(storage),
                          "--name", "x"])  # fmt: skip
    assert rc == 2
    assert names in capsys.readouterr().err
    assert not storage.exists()  # nothing left behind, not even an empty experiment folder


def test_repeated_ids_in_a_file_to_predict(tmp_path, capsys):
    images, _ = separable_images(4)
    bad = tmp_path / "nolabel.pkl"
    bad.write_bytes(pickle.dumps({b"data": images.reshape(4, -1), b"ids": np.array([1, 2, 2, 3])}))
    data = write_python_batches(tmp_path / "d", n_train=100, n_test=20)
    run = tmp_path / "run"
    assert train_cli.main(["--model", "tiny_resnet", "--recipe", "smoke", "--data", str(data),
                           "--out", str(run), "--epochs", "1", "--device", "cpu", "--val-size", "20"]) == 0  # fmt: skip
    out = tmp_path / "p.csv"
    rc = predict_cli.main(["--checkpoint", str(run / "checkpoint.pt"), "--input", str(bad),
                           "--out", str(out)])  # fmt: skip
    assert rc == 2 and "repeat" in capsys.readouterr().err and not out.exists()


def test_unwritable_output_folders(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert train_cli.main(["--model", "tiny_resnet", "--out", str(blocker / "run")]) == 2
    assert "a_file" in capsys.readouterr().err
    data = write_python_batches(tmp_path / "d", n_train=100, n_test=20)
    rc = search_cli.main(["--space", "tiny", "--data", str(data), "--storage-path",
                          str(blocker / "exp")])  # fmt: skip
    assert rc == 2 and "a_file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "d"]  # nothing new


def test_unreachable_cloud_storage_stops_the_search_before_ray(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr("tune.storage.STAGING_ROOT", tmp_path / "cache")
    data = write_python_batches(tmp_path / "d", n_train=100, n_test=20)
    uri = "s3://no-such-bucket/exp?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    rc = search_cli.main(["--space", "tiny", "--data", str(data), "--storage-path", uri])
    err = capsys.readouterr().err
    assert rc == 2 and "no-such-bucket" in err and "--storage-path" in err
    assert not (tmp_path / "cache").exists()  # no staging folder left behind either


@pytest.mark.slow
def test_more_gpus_per_trial_than_the_cluster_has(tmp_path):
    data = write_python_batches(tmp_path / "d", n_train=100, n_test=20)
    run = search(["--space", "tiny", "--data", str(data), "--gpus-per-trial", "1",
                  "--storage-path", str(tmp_path / "exp"), "--name", "x"], tmp_path / "run", 120)  # fmt: skip
    assert run.returncode == 2
    assert "--gpus-per-trial 1" in run.stderr and "--gpus-per-trial 0 or less" in run.stderr
    assert not (tmp_path / "exp").exists()


# --- security -----------------------------------------------------------------------------


LOOPBACK_V4 = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it (little-endian hex)
LOOPBACK_V6 = ("00000000000000000000000001000000", "0000000000000000FFFF00000100007F")


def _listening_sockets(pids: list[int]) -> list[tuple[str, str, int]]:
    """(family, local address as /proc writes it, pid) of every TCP socket in LISTEN state
    that one of `pids` holds."""
    owners = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owners[link[len("socket:[") : -1]] = pid
        except OSError:  # the process ended meanwhile
            continue
    found = []
    for family in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{family}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owners:  # 0A: LISTEN
                found.append((family, fields[1], owners[fields[9]]))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_a_search_listens_on_loopback_only(tmp_path):
    """Run a real search (its own embedded Ray, as a user starts it) and, while its trials
    run, list every listening socket of every process it spawned, again and again: each
    must be bound to 127.0.0.1 (or ::1), or the test fails naming the socket and process."""
    data = write_python_batches(tmp_path / "data", n_train=200, n_test=50)
    args = ["--space", "tiny", "--data", str(data), "--num-samples", "3", "--max-epochs", "2",
            "--subset", "100", "--skip-retrain", "--storage-path", str(tmp_path / "exp"),
            "--name", "ports"]  # fmt: skip
    marker = uuid.uuid4().hex
    # The environment a user's shell has: none of the tests' own Ray settings.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    with open(tmp_path / "out.txt", "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tune.search", *args],
            cwd=ROOT,
            env={**env, MARKER_VAR: marker},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    seen: dict[tuple[str, str], str] = {}
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            for family, local, pid in _listening_sockets(marked_pids(marker)):
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
                    seen.setdefault((family, local), f"{cmd} (pid {pid})")
            time.sleep(0.2)
        assert proc.poll() == 0, (tmp_path / "out.txt").read_text()[-3000:]
    finally:
        kill(proc, marker)
    assert len(seen) >= 2, seen  # the GCS and the raylet at least: the scan works
    for (family, local), process in seen.items():
        address = local.split(":")[0]
        assert address == LOOPBACK_V4 or address in LOOPBACK_V6, (
            f"{process} listens on {family} {local}, not on loopback"
        )


def test_embedded_ray_starts_without_a_dashboard(monkeypatch):
    import ray

    seen = {}
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.setattr(ray, "nodes", lambda: [])
    runner.start_ray(None)
    assert seen["include_dashboard"] is False and seen["address"] == "local"
    runner.start_ray("127.0.0.1:6379")
    assert seen["include_dashboard"] is False and seen["address"] == "127.0.0.1:6379"


@pytest.mark.slow
def test_a_search_without_address_starts_its_own_ray_beside_a_ray_start_cluster(tmp_path):
    """`ray start` leaves its cluster's address where ray.init() looks when given none (and
    leaves it behind when its processes are killed): the search must not join that cluster,
    let alone wait forever for a dead one."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt"))  # short: Ray's socket paths must fit 107 bytes
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:9")  # nothing listens
        data = write_python_batches(tmp_path / "data", n_train=400, n_test=50)
        run = search(
            ["--space", "tiny", "--data", str(data), "--num-samples", "1", "--max-epochs", "1",
             "--subset", "300", "--skip-retrain", "--storage-path", str(tmp_path / "exp"), "--name", "own"],
            tmp_path / "run", timeout=150, env={"RAY_TMPDIR": str(ray_tmp)},
        )  # fmt: skip
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    check_ok(run)
    assert "existing Ray cluster" not in run.stderr
    assert len(read_table(tmp_path / "exp" / "own")) == 1


def test_a_ray_jobs_driver_joins_the_cluster_in_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # what a Ray job's driver is given
    assert search_cli.build_parser().parse_args([]).address == "10.0.0.5:6379"
    assert search_cli.build_parser().parse_args(["--address", "auto"]).address == "auto"
    monkeypatch.delenv("RAY_ADDRESS")
    assert search_cli.build_parser().parse_args([]).address is None
