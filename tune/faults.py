"""Fault drills: make chosen trials fail the way real ones do, to prove the search survives.

Set RESNET_TUNE_FAULTS to a JSON list of faults before starting a search (local Ray workers
inherit the driver's environment), e.g.

    [{"kind": "kill", "trial": 1, "epoch": 2},   # SIGKILL the trial's worker during epoch 3
     {"kind": "nan", "trial": 2, "epoch": 1},    # poison the weights: the next loss is NaN
     {"kind": "oom", "trial": 3, "epoch": 1}]    # raise torch.cuda.OutOfMemoryError

`"kind": "cudnn_oom"` raises cuDNN's allocation failure (a RuntimeError); `"shared_only":
true` makes a fault strike only a trial that shares its GPU (tune.trainable.use_gpu_shared),
not its retry alone.

`trial` is the Optuna trial number (the order of suggestion, from 0); `epoch` is the epoch
after which the fault strikes. A kill strikes once per trial (a marker file in the trial's
folder remembers it), so the restarted trial runs on. Unset, this module does nothing.

RESNET_TUNE_PAUSE_AT=<boundary> (`pause_at`) makes the search command pause at one of its
boundaries between steps, so a drill can send a real Ctrl-C exactly there.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

ENV = "RESNET_TUNE_FAULTS"
KILL_DELAY_S = 0.2  # the kill lands this long after the epoch's report: inside the next epoch


def planned_faults(trial_number: int | None) -> list[dict[str, Any]]:
    raw = os.environ.get(ENV)
    if not raw or trial_number is None:
        return []
    return [f for f in json.loads(raw) if f.get("trial") == trial_number]


def strike(
    faults: list[dict[str, Any]], epoch: int, model: torch.nn.Module, trial_dir: Path
) -> None:
    """Called after each epoch's report; triggers the faults planned for this epoch."""
    for fault in faults:
        if fault["epoch"] != epoch:
            continue
        if fault["kind"] == "kill":
            marker = trial_dir / f".fault_killed_{epoch}"
            if marker.exists():
                continue
            marker.write_text("killed once\n")
            pid = os.getpid()
            threading.Timer(KILL_DELAY_S, os.kill, (pid, signal.SIGKILL)).start()
        elif fault["kind"] == "nan":
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
        elif fault["kind"] == "oom":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fault drill)")
        elif fault["kind"] == "cudnn_oom":
            raise RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED (fault drill)")


PAUSE_ENV = "RESNET_TUNE_PAUSE_AT"  # a boundary of the search command (BOUNDARIES)
PAUSE_FILE_ENV = "RESNET_TUNE_PAUSE_FILE"  # written when the pause begins
PAUSE_S = 60.0
# Where the search command passes from one step to the next: before the seed baselines' run,
# before the search's run (after its Tuner is restored or made), before the finalists' run,
# and in the retrain (its data put in Ray's object store, its tasks not yet started).
BOUNDARIES = ("baselines", "search", "finalists", "retrain")


def pause_at(boundary: str) -> None:
    """With RESNET_TUNE_PAUSE_AT=`boundary`: write RESNET_TUNE_PAUSE_FILE and sleep
    PAUSE_S, as slow work at that boundary would, so a drill can send a signal there and
    know when. Unset, or another boundary: nothing."""
    if os.environ.get(PAUSE_ENV) != boundary:
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        Path(marker).write_text(f"paused at {boundary}\n")
    deadline = time.monotonic() + PAUSE_S
    while time.monotonic() < deadline:  # in slices, as work that does not check for a stop
        time.sleep(0.1)
