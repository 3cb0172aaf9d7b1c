"""Running `python -m tune.search` as a user does, and reading back what it wrote.

Each search runs as a subprocess (Ray, its workers and its global state stay out of the
pytest process). Leftover processes are found by a marker variable in their environment
and ended by id, so a test never touches another Ray on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
MARKER_VAR = "RESNET_TUNE_TEST_RUN"  # set in each search's environment; Ray's processes inherit it
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ("params_vs_acc.png", "curves.png", "rungs.png")
SCALARS = ("train/loss", "val/acc", "lr", "images_per_sec")
SEARCH_TIMEOUT = 300  # seconds; a tiny search takes 20-40 s on 2 CPU cores


# --- running the command --------------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


# Ray binds its servers to the machine's network address unless told it runs on one
# machine only; tests keep every Ray process on the loopback interface.
RAY_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


def search_env(marker: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, **RAY_LOOPBACK_ENV, MARKER_VAR: marker, **(extra or {})}


def marked_pids(marker: str) -> list[int]:
    """Processes started by one search (the driver and every Ray process it spawned)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    wanted = f"{MARKER_VAR}={marker}".encode()
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if wanted in environ.split(b"\0"):
            pids.append(int(entry.name))
    return pids


def end_leftovers(marker: str, grace: float = 5.0) -> None:
    """Give a search's Ray processes `grace` seconds to exit by themselves (they do once
    their raylet is gone), then SIGKILL the rest by id. Ray's DashboardAgent and
    RuntimeEnvAgent can outlive a killed driver and ignore SIGTERM."""
    deadline = time.monotonic() + grace
    while marked_pids(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in marked_pids(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cli(**options: object) -> list[str]:
    """The command line for keyword options: `num_samples=4` is `--num-samples 4`,
    `skip_retrain=True` is `--skip-retrain`."""
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def start(
    args: list[str], out_dir: Path, marker: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    out_dir.mkdir(parents=True, exist_ok=True)
    # Files, not pipes: an orphaned Ray process holding a pipe open would block the reader.
    with open(out_dir / "stdout.txt", "w") as out, open(out_dir / "stderr.txt", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tune.search", *args],
            cwd=ROOT,
            env=search_env(marker, env),
            stdout=out,
            stderr=err,
            start_new_session=True,  # its own process group, killed as one
        )


def kill(proc: subprocess.Popen, marker: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    end_leftovers(marker)


def search(
    args: list[str],
    out_dir: Path,
    timeout: float = SEARCH_TIMEOUT,
    env: dict[str, str] | None = None,
) -> Run:
    """Run the command to its end; fail the test (with its output) if it overruns."""
    marker = uuid.uuid4().hex
    started = time.monotonic()
    proc = start(args, out_dir, marker, env)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc, marker)
        tail = (out_dir / "stdout.txt").read_text()[-3000:]
        tail += (out_dir / "stderr.txt").read_text()[-3000:]
        pytest.fail(f"search {args} ran over {timeout} s; output tail:\n{tail}")
    finally:
        end_leftovers(marker)
    return Run(
        proc.returncode,
        (out_dir / "stdout.txt").read_text(),
        (out_dir / "stderr.txt").read_text(),
        time.monotonic() - started,
    )


def check_ok(run: Run) -> None:
    assert run.returncode == 0, f"exit {run.returncode}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"


# --- reading artifacts -------------------------------------------------------------------


def read_results(trial_dir: Path) -> list[dict]:
    """The complete lines of a trial's result.json (one per reported epoch)."""
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    lines = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):  # a line still being written
            lines.append(json.loads(line))
    return lines


def tensorboard(trial_dir: Path) -> tuple[dict[str, list[tuple[int, float]]], dict[str, dict]]:
    """(scalars by tag as (step, value), hparams plugin data by kind) of a trial's logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(trial_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    plugin: dict[str, dict] = {}
    for raw in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        kind = data.WhichOneof("data")
        if kind == "session_start_info":
            plugin[kind] = {
                k: v.number_value
                if v.HasField("number_value")
                else v.bool_value
                if v.HasField("bool_value")
                else v.string_value
                for k, v in data.session_start_info.hparams.items()
            }
        else:
            plugin[kind] = {}
    return scalars, plugin


def read_table(exp: Path, every_role: bool = False) -> pd.DataFrame:
    """trials.parquet: the search's own trials, or with `every_role` also the finalists'
    re-runs and the seed baselines."""
    table = pd.read_parquet(exp / "trials.parquet")
    if every_role or "role" not in table:
        return table
    return table[table["role"] == "search"].reset_index(drop=True)


def trial_dirs(exp: Path) -> list[Path]:
    return sorted(p for p in exp.glob("trial_*") if p.is_dir())


# --- running a command as a user's shell runs it ----------------------------------------


def user_env(marker: str, home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a user's shell on a new machine: no RAY_* variable at all (not
    RAY_AUTH_MODE, not the loopback switch RAY_LOOPBACK_ENV sets) and a HOME of its own
    without ~/.ray; plus the marker that finds the run's processes."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "HOME": str(home), MARKER_VAR: marker, **(extra or {})}


def run_as_user(
    python_args: list[str],
    out_dir: Path,
    home: Path,
    timeout: float,
    extra: dict[str, str] | None = None,
) -> Run:
    """`python ARGS` (a module with -m, or -c CODE) in the repository, in `user_env`, to its
    end; fail the test (with its output) if it overruns. Its processes are ended after."""
    marker = uuid.uuid4().hex
    out_dir.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(out_dir / "stdout.txt", "w") as out, open(out_dir / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, *python_args],
            cwd=ROOT,
            env=user_env(marker, home, extra),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill(proc, marker)
        tail = (out_dir / "stdout.txt").read_text()[-3000:]
        tail += (out_dir / "stderr.txt").read_text()[-3000:]
        pytest.fail(f"{python_args[:3]} ran over {timeout} s; output tail:\n{tail}")
    finally:
        end_leftovers(marker)
    return Run(
        proc.returncode,
        (out_dir / "stdout.txt").read_text(),
        (out_dir / "stderr.txt").read_text(),
        time.monotonic() - started,
    )
