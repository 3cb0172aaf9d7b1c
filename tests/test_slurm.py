"""scripts/slurm/search.sbatch, run the way Slurm runs it, with a job's environment:
1. at the signal time before the time limit Slurm sends the batch shell alone SIGUSR1
   (--signal=B:USR1@120): the shell passes the search SIGTERM, the search saves and stops,
   and the shell requeues the job;
2. the requeued job (the same script, environment and job id) is pre-empted: Slurm sends
   SIGTERM to every process of the job, the search's Ray processes too, and requeues it;
3. requeued again, the job finishes the search with nothing trained twice.
`scontrol` is a stand-in that records its calls; the README's Slurm section says how the
script ran under a real single-node Slurm."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest

from tests.conftest import write_python_batches
from tests.searchrun import (
    MARKER_VAR,
    ROOT,
    SEARCH_TIMEOUT,
    end_leftovers,
    marked_pids,
    read_results,
    read_table,
    search_env,
    trial_dirs,
)

SCRIPT = ROOT / "scripts" / "slurm" / "search.sbatch"
JOB_ID = "4242"


def job_env(tmp_path: Path, data: Path, marker: str) -> dict[str, str]:
    """What Slurm gives the batch shell, the script's settings, and `scontrol` stood in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "scontrol"
    stub.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.calls"}\n')
    stub.chmod(0o755)
    args = (
        "--num-samples 3 --max-epochs 3 --grace-period 3 --subset 200 --finalists 0 "
        "--retrain-seeds 1 --cpus-per-trial 2 --checkpoint-every 0"
    )
    return search_env(
        marker,
        {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "SLURM_JOB_ID": JOB_ID,
            "SLURM_SUBMIT_DIR": str(ROOT),
            "DATA": str(data),
            "STORAGE": str(tmp_path / "exp"),
            "SPACE": "tiny",
            "PYTHON": sys.executable,
            "SEARCH_ARGS": args,
        },
    )


def run_job(env: dict[str, str], out: Path) -> subprocess.Popen:
    with open(out.with_suffix(".out"), "w") as log:
        return subprocess.Popen(
            ["bash", str(SCRIPT)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def epochs_reported(exp: Path) -> int:
    return sum(len(read_results(d)) for d in trial_dirs(exp))


def signal_job(
    env: dict[str, str],
    out: Path,
    exp: Path,
    epochs: int,
    send: Callable[[subprocess.Popen], None],
) -> tuple[int, str]:
    """Run the job until `epochs` epochs are reported in all, `send` its signal, and wait for
    the job to end; (its exit status, its output)."""
    marker = env[MARKER_VAR]
    job = run_job(env, out)
    try:
        deadline = time.monotonic() + SEARCH_TIMEOUT
        while epochs_reported(exp) < epochs and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert job.poll() is None, out.with_suffix(".out").read_text()[-3000:]
        send(job)
        job.wait(timeout=90)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        end_leftovers(marker)
    return job.returncode, out.with_suffix(".out").read_text()


@pytest.mark.slow
def test_a_job_signalled_and_requeued_finishes_the_search_with_nothing_repeated(
    tmp_path: Path,
) -> None:
    data = write_python_batches(tmp_path / "data", n_train=400, n_test=100)
    marker = uuid.uuid4().hex
    env = job_env(tmp_path, data, marker)
    exp = tmp_path / "exp" / f"search-{JOB_ID}"

    # 1. The signal before the time limit, to the batch shell only, while trials train.
    status, log = signal_job(
        env, tmp_path / "first", exp, 2, lambda job: job.send_signal(signal.SIGUSR1)
    )
    assert status == 128 + signal.SIGTERM, log[-3000:]
    assert "resume with: " in log and "requeueing job 4242" in log, log[-3000:]
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", JOB_ID]
    assert not (exp / "report.md").exists()

    # 2. Requeued, then pre-empted: SIGTERM to every process of the job at once (Slurm then
    # requeues it). Ray's own processes end at once too, so the search may not get to print
    # its resume line (under a real Slurm it did not): what counts is that the job ends and
    # its requeue continues from what was saved.
    def preempt(job: subprocess.Popen) -> None:
        for pid in marked_pids(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    reported = epochs_reported(exp)
    status, log = signal_job(env, tmp_path / "second", exp, reported + 2, preempt)
    assert status != 0 and "resuming the search" in log, (status, log[-3000:])
    assert not (exp / "report.md").exists()
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", JOB_ID]
    first = {d.name: [r["training_iteration"] for r in read_results(d)] for d in trial_dirs(exp)}
    assert sum(map(len, first.values())) >= reported + 2

    # 3. Requeued again: the same script, environment and job id, to the end.
    job = run_job(env, tmp_path / "third")
    try:
        job.wait(timeout=2 * SEARCH_TIMEOUT)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
        end_leftovers(marker)
    log = (tmp_path / "third.out").read_text()
    assert job.returncode == 0, log[-3000:]
    assert "resuming the search" in log and (exp / "report.md").exists()
    assert (tmp_path / "scontrol.calls").read_text().split() == ["requeue", JOB_ID]

    # Nothing repeated: every trial reported each epoch once (a checkpoint after every epoch),
    # what the first job reported is kept as it was, and the study agrees with the table.
    table = read_table(exp)
    assert len(table) == 3 and (table["epochs_run"] == 3).all()
    study = optuna.load_study(study_name=exp.name, storage=f"sqlite:///{exp}/study.db")
    by_number = {t.number: t for t in study.trials}
    for row in table.to_dict("records"):
        epochs = [r["training_iteration"] for r in read_results(Path(row["path"]))]
        assert epochs == [1, 2, 3], (row["trial_id"], epochs)
        assert epochs[: len(first.get(Path(row["path"]).name, []))] == first.get(
            Path(row["path"]).name, []
        )
        trial = by_number[row["config/trial_number"]]
        assert trial.state.name == "COMPLETE" and len(trial.intermediate_values) == 3
        assert trial.value == pytest.approx(row["score"])
