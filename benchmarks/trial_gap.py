"""How long a search spends between trials: from one trial's end to the next one's first step.

    python -m benchmarks.trial_gap --out gap.json                # this checkout's code
    python -m benchmarks.trial_gap --code /tmp/old --out old.json  # another checkout's code

Runs a search of the `tiny` space one trial at a time (`--max-concurrent-trials 1`) on a
few hundred random images as a subprocess, then reads each trial's TensorBoard events, which
every version of the trainable writes: the trial ends at its hparams session-end event (its
`finally`), and its first step is its first epoch's scalar event minus that epoch's
`epoch_seconds` (from Ray's result.json). The gap is the next trial's first step minus the
previous trial's end, over trials ordered by start. Where trials.parquet has `started_at`,
`ended_at` and `worker_pid` those are printed too (whether a worker process was reused).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def write_random_batches(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A cifar-10-batches-py folder of random images (speed does not depend on content)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    flat = rng.integers(0, 256, size=(n_train + n_test, 3 * 32 * 32), dtype=np.uint8)
    labels = (np.arange(n_train + n_test) % 10).tolist()
    per_batch = n_train // 5
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        batch = {b"data": flat[part], b"labels": labels[part]}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    test = {b"data": flat[n_train:], b"labels": labels[n_train:]}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    return folder


def _events(trial_dir: Path) -> tuple[float | None, float | None]:
    """(wall time of the epoch-1 train/loss scalar, wall time of the session-end event)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    first_scalar = end = None
    for path in sorted((trial_dir / "tensorboard").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.tag == "train/loss" and event.step == 1 and first_scalar is None:
                    first_scalar = event.wall_time
                if value.tag == "_hparams_/session_end_info":
                    end = event.wall_time
    return first_scalar, end


def trial_spans(experiment: Path) -> list[dict[str, Any]]:
    """Per trial: its first step and its end (seconds since the epoch), ordered by start."""
    spans = []
    for trial_dir in sorted(p for p in experiment.glob("trial_*") if p.is_dir()):
        lines = (trial_dir / "result.json").read_text().splitlines()
        first = json.loads(lines[0])
        scalar, end = _events(trial_dir)
        if scalar is None or end is None:
            continue
        spans.append(
            {
                "trial": trial_dir.name,
                "first_step": scalar - first["epoch_seconds"],
                "end": end,
                "epochs": len(lines),
                "pid": json.loads(lines[-1]).get("pid"),
            }
        )
    return sorted(spans, key=lambda s: s["first_step"])


def gaps(spans: list[dict[str, Any]]) -> list[float]:
    return [b["first_step"] - a["end"] for a, b in zip(spans, spans[1:], strict=False)]


def run(code: Path, trials: int, images: int, work: Path) -> dict[str, Any]:
    data = write_random_batches(work / "data", images + 200, 100)
    name = "gap"
    cmd = [
        sys.executable, "-m", "tune.search", "--space", "tiny", "--data", str(data),
        "--num-samples", str(trials), "--max-epochs", "2", "--grace-period", "2",
        "--subset", str(images),
        "--max-concurrent-trials", "1", "--cpus-per-trial", "1", "--skip-retrain",
        "--storage-path", str(work / "exp"), "--name", name, "-q",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(code), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=code, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the search failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    experiment = work / "exp" / name
    spans = trial_spans(experiment)
    found = gaps(spans)
    result: dict[str, Any] = {
        "command": " ".join(cmd),
        "code": str(code),
        "search_seconds": time.monotonic() - started,
        "trials": len(spans),
        "gaps": found,
        "median_gap": statistics.median(found) if found else None,
        # Ray's own `pid` of each trial's worker, in trial order: one pid = reused workers.
        "worker_pids": [s["pid"] for s in spans],
    }
    table = experiment / "trials.parquet"
    if table.exists():
        import pandas as pd

        df = pd.read_parquet(table)
        for column in ("worker_pid", "started_at", "ended_at"):
            if column in df:
                result.setdefault("table", {})[column] = df[column].tolist()
        if {"started_at", "ended_at"} <= set(df):
            df = df.sort_values("started_at")
            table_gaps = df["started_at"].iloc[1:].values - df["ended_at"].iloc[:-1].values
            result["median_gap_started_at"] = float(statistics.median(table_gaps))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m benchmarks.trial_gap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--code", type=Path, default=ROOT, help="checkout whose code runs the search")
    p.add_argument("--trials", type=int, default=8, help="trials of the search")
    p.add_argument("--images", type=int, default=500, help="training images")
    p.add_argument("--out", type=Path, help="JSON file for the result")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        result = run(args.code.resolve(), args.trials, args.images, Path(work))
    print(
        f"{result['trials']} trials in {len(set(result['worker_pids']))} worker process(es), "
        f"median gap {result['median_gap']:.2f} s; gaps: "
        + ", ".join(f"{g:.2f}" for g in result["gaps"])
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
