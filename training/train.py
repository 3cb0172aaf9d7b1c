"""Train one model with one recipe, no Ray needed.

    python -m training.train --model efficient_resnet --recipe default --data DIR --out runs/x

Writes OUT/checkpoint.pt (after every epoch, so an interrupted run continues with
--resume) and OUT/metrics.json (val/test accuracy, params, epochs, seconds, configs).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models import ArchConfig, count_params, get_arch
from training.artifacts import write_json
from training.checkpoint import (
    CheckpointError,
    configs_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from training.config import TrainConfig
from training.data import CifarData, DataError, load_cifar10, split_train_val, subset_stratified
from training.loop import DataSplits, TrainResult, TrainState, resolve_device, train
from training.recipes import get_recipe, list_recipes


@dataclass(frozen=True)
class SubsetSizes:
    train: int
    val: int
    test: int


def subset_sizes(subset: int | None, cfg: TrainConfig, test_size: int) -> SubsetSizes | None:
    """--subset N: train on N images, validate on N/4 (at most val_size), test on N."""
    if subset is None:
        return None
    return SubsetSizes(
        train=subset, val=min(cfg.val_size, subset // 4), test=min(test_size, subset)
    )


def make_splits(
    data: CifarData, cfg: TrainConfig, subset: int | None = None, seed: int = 0
) -> DataSplits:
    """Carve the seeded, stratified validation split out of the training images."""
    sizes = subset_sizes(subset, cfg, len(data.test))
    val_size = cfg.val_size if sizes is None else sizes.val
    train_set, val_set = split_train_val(data.train, val_size, seed=seed)
    test_set = data.test
    if sizes is not None:
        train_set = subset_stratified(train_set, min(sizes.train, len(train_set)), seed)
        test_set = subset_stratified(test_set, sizes.test, seed)
    return DataSplits(train=train_set, val=val_set, test=test_set)


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


def print_epoch(metrics: dict[str, float], total_epochs: int, started: float) -> None:
    """One line per epoch with a progress bar: it reads the same in a terminal and in the
    log lines Ray forwards from a remote task."""
    if "compile_seconds" in metrics:
        print(f"torch.compile: {metrics['compile_seconds']:.1f}s, before the first epoch's clock")
    epoch = int(metrics["epoch"])
    elapsed = time.perf_counter() - started
    left = (total_epochs - epoch) * metrics["epoch_seconds"]
    done = round(20 * epoch / total_epochs)
    val = (
        f"  val {metrics['val_acc']:.2%} ({metrics['val_loss']:.3f})"
        if "val_acc" in metrics
        else ""
    )
    print(
        f"[{'#' * done}{'.' * (20 - done)}] epoch {epoch:>3}/{total_epochs}  "
        f"train {metrics['train_acc']:.2%} ({metrics['train_loss']:.3f}){val}  "
        f"lr {metrics['lr']:.4g}  {metrics['images_per_sec']:,.0f} img/s  "
        f"{elapsed:.0f}s, ~{left:.0f}s left",
        flush=True,
    )


def run_training(
    arch: ArchConfig,
    cfg: TrainConfig,
    splits: DataSplits,
    out: Path,
    *,
    device: str = "auto",
    resume: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train with a per-epoch progress line and checkpoint; write metrics.json at the end."""
    started = time.perf_counter()

    def report(metrics: dict[str, float], state: TrainState) -> None:
        save_checkpoint(out / "checkpoint.pt", state.checkpoint())
        print_epoch(metrics, cfg.epochs, started)

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m training.train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default="efficient_resnet", help="registered model (models.summary --list)"
    )
    p.add_argument(
        "--recipe", default="default", help=f"training recipe: {', '.join(list_recipes())}"
    )
    p.add_argument("--data", help="CIFAR-10 folder or archive; omit to download with torchvision")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--val-size", type=int, help="validation images (default: the recipe's, 5000)")
    p.add_argument("--subset", type=int, help="train on N images (validate on N/4, test on N)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, default=0, help="seeds the split, init and augmentation")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.epochs is not None and args.epochs < 1:
            raise ValueError(f"--epochs {args.epochs} must be at least 1")
        arch = get_arch(args.model)
        overrides: dict[str, Any] = {"seed": args.seed}
        if args.epochs is not None:
            overrides["epochs"] = args.epochs
        if args.batch_size is not None:
            overrides["batch_size"] = args.batch_size
        if args.compile:
            overrides["compile"] = True
        if args.val_size is not None:
            overrides["val_size"] = args.val_size
        cfg = get_recipe(args.recipe, **overrides)
        check_writable_dir(args.out)
        if args.subset is not None and args.subset < 10:
            raise ValueError(f"--subset {args.subset} is too small; use at least 10 images")
        device = resolve_device(args.device)
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2

    resume = None
    if args.resume:
        # The checkpoint's own configs win: a resumed run must be the run that stopped.
        try:
            resume = load_checkpoint(args.out / "checkpoint.pt")
        except CheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        arch, cfg = configs_from_checkpoint(resume)
        print(f"resuming from {args.out / 'checkpoint.pt'} after epoch {resume['epoch']}")
    try:
        data = load_cifar10(args.data)
        splits = make_splits(data, cfg, args.subset, seed=args.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    print(
        f"{args.model} ({count_params(arch):,} params), "
        f"recipe {args.recipe}, {cfg.epochs} epochs on {device}; "
        f"train {len(splits.train):,} / val {len(splits.val):,} / test {len(splits.test):,} "
        f"images from {data.source}",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_training(
        arch,
        cfg,
        splits,
        args.out,
        device=str(device),
        resume=resume,
        extra={"model": args.model, "recipe": args.recipe, "data": data.source},
    )
    m = result.metrics
    test = f", test {m['test_acc']:.2%}" if "test_acc" in m else ""
    val = f"val {m['val_acc']:.2%}" if "val_acc" in m else "no val split"
    print(f"done in {m['seconds']:.0f}s: {val}{test}; wrote {args.out}/checkpoint.pt, metrics.json")
    return 0


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    sys.exit(main())
