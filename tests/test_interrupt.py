"""Ctrl-C and SIGTERM stop a search (and its retrain) cleanly; resumed, the search finishes, and
its Optuna study agrees trial by trial with what trained."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest

from tests.conftest import write_python_batches
from tests.searchrun import (
    ROOT,
    SEARCH_TIMEOUT,
    check_ok,
    cli,
    end_leftovers,
    kill,
    read_results,
    read_table,
    search,
    start,
    trial_dirs,
)
from tune.interrupt import SearchInterrupted, StopSignals

STOP_WITHIN_S = 30  # from the signal to the exit, on a busy 2-core machine


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return write_python_batches(tmp_path / "data", n_train=400, n_test=100)


def _wait_for(condition, proc: subprocess.Popen, out: Path, what: str) -> None:
    deadline = time.monotonic() + SEARCH_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    log = (out / "stdout.txt").read_text()[-3000:] + (out / "stderr.txt").read_text()[-3000:]
    pytest.fail(f"the search ended (or hung) before {what}:\n{log}")


def _signal_and_wait(proc: subprocess.Popen, marker: str, sig: int) -> float:
    """Send `sig` as a terminal's Ctrl-C does (SIGINT: to the whole process group, Ray's
    processes included) or as `kill PID` does (else: to the driver); seconds until it exited."""
    sent = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=STOP_WITHIN_S + 30)
    except subprocess.TimeoutExpired:
        kill(proc, marker)
        pytest.fail(f"the search did not stop within {STOP_WITHIN_S + 30} s of signal {sig}")
    finally:
        end_leftovers(marker)
    return time.monotonic() - sent


def _resume_line(stderr: str) -> list[str]:
    lines = [line for line in stderr.splitlines() if "resume with: " in line]
    assert len(lines) == 1, stderr[-3000:]
    return shlex.split(lines[0].split("resume with: ", 1)[1])


def _epochs_reported(exp: Path) -> int:
    return sum(len(read_results(d)) for d in trial_dirs(exp))


@pytest.mark.slow
def test_ctrl_c_stops_the_search_and_its_retrain_and_the_resumed_study_agrees_with_the_table(
    tmp_path: Path, data_dir: Path
) -> None:
    storage, name, num_samples, max_epochs = tmp_path / "exp", "ctrlc", 4, 3
    args = cli(
        space="tiny",
        data=data_dir,
        num_samples=num_samples,
        max_epochs=max_epochs,
        grace_period=max_epochs,  # ASHA stops none: any PRUNED trial would be the interruption's
        subset=200,
        finalists=0,
        retrain_seeds=1,
        retrain_epochs=40,  # long enough to be interrupted
        cpus_per_trial=2,  # one trial at a time
        storage_path=storage,
        name=name,
    )
    exp = storage / name

    # 1. Ctrl-C while trials run: the search exits within seconds, non-zero, with the command
    # to resume, and writes nothing that belongs to a finished search.
    marker = uuid.uuid4().hex
    out = tmp_path / "first"
    proc = start(args, out, marker)
    _wait_for(lambda: _epochs_reported(exp) >= 2, proc, out, "two epochs were reported")
    seconds = _signal_and_wait(proc, marker, signal.SIGINT)
    stderr = (out / "stderr.txt").read_text()
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert seconds < STOP_WITHIN_S, seconds
    resume = _resume_line(stderr)
    # Run by the Python that ran the search (which need not be on PATH), named as the shell
    # that started it (in the search's folder) finds it: relative where the venv lies inside.
    named, ran = ROOT / resume[0], Path(sys.executable)  # the venv's python is a symlink
    assert (named.parent.resolve(), named.name) == (ran.parent.resolve(), ran.name), resume[0]
    assert resume[1:3] == ["-m", "tune.search"] and resume[3:] == args
    assert "Tuner.restore" not in stderr + (out / "stdout.txt").read_text()
    for artifact in ("trials.parquet", "best_config.json", "final", "report.md"):
        assert not (exp / artifact).exists(), artifact
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp}/study.db")
    # Cut-off trials are neither PRUNED nor FAIL: they continue on resume.
    assert {t.state.name for t in study.trials} <= {"RUNNING", "COMPLETE"}

    # 2. Resumed, the trials finish; then SIGTERM during the retrain stops that too.
    marker = uuid.uuid4().hex
    out = tmp_path / "second"
    proc = start(resume[3:], out, marker)
    _wait_for(
        lambda: any((exp / "final").glob("seed_*/checkpoint.pt")), proc, out, "the retrain began"
    )
    seconds = _signal_and_wait(proc, marker, signal.SIGTERM)
    stderr = (out / "stderr.txt").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert seconds < STOP_WITHIN_S, seconds
    assert _resume_line(stderr)[3:] == args
    assert not (exp / "report.md").exists()
    assert not (exp / "final" / "metrics.json").exists()

    # 3. Resumed again, the retrain continues from its checkpoint and the search finishes.
    run = search(resume[3:], tmp_path / "third", timeout=2 * SEARCH_TIMEOUT)
    check_ok(run)
    assert "resuming after epoch" in run.stdout, run.stdout[-3000:]
    assert (exp / "report.md").exists() and (exp / "final" / "metrics.json").exists()

    # After Ctrl-C, SIGTERM and two resumes, the study says what trained, trial by trial.
    table = read_table(exp)
    assert len(table) == num_samples
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{exp}/study.db")
    by_number = {t.number: t for t in study.trials}
    expected_state = {"completed": "COMPLETE", "stopped_early": "PRUNED"}
    for row in table.to_dict("records"):
        trial = by_number[row["config/trial_number"]]
        assert trial.state.name == expected_state[row["status"]], (row["trial_id"], row["status"])
        assert len(trial.intermediate_values) == row["epochs_run"], row["trial_id"]
        epochs = {r["training_iteration"]: r["val_acc"] for r in read_results(Path(row["path"]))}
        assert trial.intermediate_values == epochs, row["trial_id"]
        if trial.state.name == "COMPLETE":
            assert row["epochs_run"] == max_epochs
            assert trial.value == pytest.approx(row["score"])
    metrics = json.loads((exp / "final" / "metrics.json").read_text())
    assert metrics["epochs"] == 40


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once(tmp_path: Path, data_dir: Path) -> None:
    args = cli(
        space="tiny",
        data=data_dir,
        num_samples=2,
        max_epochs=50,
        subset=200,
        storage_path=tmp_path / "exp",
        name="twice",
    )
    marker = uuid.uuid4().hex
    out = tmp_path / "run"
    proc = start(args, out, marker)
    _wait_for(lambda: _epochs_reported(tmp_path / "exp" / "twice") >= 1, proc, out, "an epoch")
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        assert time.monotonic() - sent < 5
    finally:
        kill(proc, marker)
    assert proc.returncode == 128 + signal.SIGINT, (out / "stderr.txt").read_text()[-3000:]
    assert "again: exiting now" in (out / "stderr.txt").read_text()


def test_outside_ray_tune_the_first_signal_raises_where_the_program_is() -> None:
    stop = StopSignals()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.install()
        with pytest.raises(SearchInterrupted):
            signal.raise_signal(signal.SIGTERM)
        assert stop.interrupted and stop.name == "SIGTERM"
    finally:
        stop.uninstall()  # the process-wide handler, Ray's variables and its log filter
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_inside_ray_tune_the_first_signal_asks_ray_tune_to_stop() -> None:
    stop = StopSignals()
    asked = []
    previous = {
        sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    }
    try:
        stop.install()
        signal.signal(signal.SIGUSR1, lambda sig, frame: asked.append(sig))  # as Ray Tune does
        with stop.during_fit():
            assert not stop.loop_started()  # Ray Tune's loop begins (our callback's setup)
            signal.raise_signal(signal.SIGINT)  # no exception: Ray Tune stops its loop
        assert asked == [signal.SIGUSR1]
        assert stop.interrupted and stop.name == "SIGINT"
    finally:
        stop.uninstall()  # the process-wide handler, Ray's variables and its log filter
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_between_two_ray_tune_runs_a_signal_is_not_lost_to_the_previous_runs_handler() -> None:
    """Ray Tune leaves its SIGUSR1 handler in place after a run; a Ctrl-C while the next run
    is prepared (before its loop starts) must stop the command, not that stale handler."""
    stop = StopSignals()
    stale = []
    previous = {
        sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    }
    try:
        stop.install()
        signal.signal(signal.SIGUSR1, lambda sig, frame: stale.append(sig))  # the last run's
        with pytest.raises(SearchInterrupted), stop.during_fit():
            signal.raise_signal(signal.SIGINT)  # the next run's Tuner is being restored
        assert stale == [] and stop.name == "SIGINT"
    finally:
        stop.uninstall()  # the process-wide handler, Ray's variables and its log filter
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def test_after_a_run_our_handlers_are_back_and_a_signal_noted_before_the_loop_reaches_it() -> None:
    stop = StopSignals()
    previous = {
        sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
    }
    try:
        stop.install()
        with stop.during_fit():
            signal.signal(signal.SIGINT, signal.default_int_handler)  # as a run may leave it
            with stop.deferred():  # inside Ray's core: only noted
                signal.raise_signal(signal.SIGTERM)
            assert stop.loop_started()  # the callback passes it on to Ray Tune's loop
        assert signal.getsignal(signal.SIGINT) == stop._handle
        with pytest.raises(SearchInterrupted):
            stop.raise_if_interrupted()
    finally:
        stop.uninstall()  # the process-wide handler, Ray's variables and its log filter
        for sig, handler in previous.items():
            signal.signal(sig, handler)


BOUNDARY_OPTIONS = {
    # boundary: what the search must run to get there
    "baselines": {},
    "search": {},
    "finalists": {"finalists": 1, "finalist_seeds": 1},
    "retrain": {"skip_retrain": False},
}


@pytest.mark.slow
@pytest.mark.parametrize("boundary", list(BOUNDARY_OPTIONS))
def test_one_ctrl_c_at_each_boundary_between_ray_runs_stops_the_command(
    tmp_path: Path, data_dir: Path, boundary: str
) -> None:
    """A real Ctrl-C (SIGINT to the process group) while the command pauses at a boundary
    (RESNET_TUNE_PAUSE_AT, tune.faults.pause_at): exit 130 within seconds with the resume
    line, whichever Ray run came before."""
    name = f"pause-{boundary}"
    options = {
        "space": "tiny",
        "data": data_dir,
        "num_samples": 2,
        "max_epochs": 2,
        "subset": 200,
        "finalists": 0,
        "skip_retrain": True,
        "retrain_seeds": 1,
        "retrain_epochs": 30,
        "cpus_per_trial": 2,
        "storage_path": tmp_path / "exp",
        "name": name,
        **BOUNDARY_OPTIONS[boundary],
    }
    args = cli(**{k: v for k, v in options.items() if v is not False})
    paused = tmp_path / "paused"
    marker = uuid.uuid4().hex
    out = tmp_path / "run"
    proc = start(
        args,
        out,
        marker,
        {"RESNET_TUNE_PAUSE_AT": boundary, "RESNET_TUNE_PAUSE_FILE": str(paused)},
    )
    _wait_for(paused.exists, proc, out, f"it paused at {boundary}")
    seconds = _signal_and_wait(proc, marker, signal.SIGINT)
    stderr = (out / "stderr.txt").read_text()
    assert proc.returncode == 128 + signal.SIGINT, stderr[-3000:]
    assert seconds < STOP_WITHIN_S, seconds
    assert _resume_line(stderr)[3:] == args
    assert not (tmp_path / "exp" / name / "report.md").exists()
