"""One training run on disk: a progress line and a checkpoint every epoch, metrics.json at
the end. What `python -m training.train` and the search's retrain both call."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from models import ArchConfig
from training.artifacts import write_json
from training.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.data import DataSplits
from training.loop import TrainResult, TrainState, train

logger = logging.getLogger(__name__)


def check_writable_dir(path: Path) -> None:
    """Fail before any work if `path` cannot be created or written (creates nothing)."""
    existing = path.resolve()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"cannot write the output folder {path}: {existing} is not a writable folder; "
            "pass an --out you can write to"
        )


def epoch_line(metrics: dict[str, Any], total_epochs: int, elapsed: float) -> str:
    """One line per epoch with a progress bar: it reads the same in a terminal and in the
    log lines Ray forwards from a remote task."""
    epoch = int(metrics["epoch"])
    left = (total_epochs - epoch) * metrics["epoch_seconds"]
    done = round(20 * epoch / total_epochs)
    val = (
        f"  val {metrics['val_acc']:.2%} ({metrics['val_loss']:.3f})"
        if "val_acc" in metrics
        else ""
    )
    # fp16's loss scaler skips a step whose gradients overflowed: a few early on are normal.
    skipped = metrics.get("skipped_steps", 0)
    skips = f"  {skipped} steps skipped (inf/NaN gradients)" if skipped else ""
    return (
        f"[{'#' * done}{'.' * (20 - done)}] epoch {epoch:>3}/{total_epochs}  "
        f"train {metrics['train_acc']:.2%} ({metrics['train_loss']:.3f}){val}  "
        f"lr {metrics['lr']:.4g}  {metrics['images_per_sec']:,.0f} img/s  "
        f"{elapsed:.0f}s, ~{left:.0f}s left{skips}"
    )


def log_epoch(metrics: dict[str, Any], total_epochs: int, started: float) -> None:
    if "compile_seconds" in metrics:
        logger.info(
            "torch.compile: %.1fs, before the first epoch's clock", metrics["compile_seconds"]
        )
    logger.info(epoch_line(metrics, total_epochs, time.perf_counter() - started))


def run_training(
    arch: ArchConfig,
    cfg: TrainConfig,
    splits: DataSplits,
    out: Path,
    *,
    device: str = "auto",
    resume: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train with a per-epoch progress line and checkpoint; write metrics.json at the end.
    `checkpoint_extra` is plain data stored in every checkpoint (e.g. what defines the split)."""
    started = time.perf_counter()

    def report(metrics: dict[str, Any], state: TrainState) -> None:
        save_checkpoint(out / "checkpoint.pt", {**state.checkpoint(), **(checkpoint_extra or {})})
        log_epoch(metrics, cfg.epochs, started)
        test = splits.test
        if metrics["epoch"] >= cfg.epochs and test is not None and test.labels is not None:
            # What follows the last epoch's line, silent otherwise (a minute on a CPU).
            logger.info("testing on %s test images", f"{len(test):,}")

    result = train(arch, cfg, splits, report=report, device=device, resume=resume)
    metrics = {
        **result.metrics,
        "arch": arch.to_dict(),
        "train_config": cfg.to_dict(),
        "sizes": {name: len(s) for name, s in vars(splits).items() if s is not None},
        "history": result.history,
        **(extra or {}),
    }
    write_json(out / "metrics.json", metrics)
    return result
