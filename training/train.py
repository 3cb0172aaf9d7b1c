"""Train one model with one recipe, no Ray needed.

    python -m training.train --model efficient_resnet --recipe default --data DIR --out runs/x

Writes OUT/checkpoint.pt (after every epoch, so an interrupted run continues with
--resume) and OUT/metrics.json (val/test accuracy, params, epochs, seconds, configs).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from models import count_params, get_arch
from training.checkpoint import CheckpointError, configs_from_checkpoint, load_checkpoint
from training.config import fit_batch_to_data
from training.data import (
    DataError,
    TooFewTrainingImages,
    fingerprint,
    load_cifar10,
    make_splits,
)
from training.logs import add_verbosity_flags, configure_logging, level_from_flags
from training.loop import resolve_device
from training.precision import (
    PRECISIONS,
    UnsupportedGpuError,
    check_compile,
    check_gpu_supported,
    device_info,
)
from training.recipes import RECIPES, get_recipe, list_recipes
from training.run import check_writable_dir, run_training

logger = logging.getLogger("training.train")


def build_parser() -> argparse.ArgumentParser:
    recipes = "\n".join(f"  {name:<24} {RECIPES.describe(name)}" for name in list_recipes())
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m training.train",
        description=__doc__,
        epilog=f"recipes:\n{recipes}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model", default="efficient_resnet", help="registered model (models.summary --list)"
    )
    p.add_argument("--recipe", default="default", help="training recipe (listed below)")
    p.add_argument("--data", help="CIFAR-10 folder or archive; omit to download with torchvision")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    p.add_argument("--val-size", type=int, help="validation images (default: the recipe's, 5000)")
    p.add_argument("--subset", type=int, help="train on N images (validate on N/4, test on N)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int, help="seeds the split, init and augmentation (0)")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="auto (the recipe's default): bf16 from CUDA compute capability 8.0, fp16 with "
        "loss scaling on 7.x, fp32 below, on a CPU bf16 where measured faster; or as given",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch.compile the model (default: as the recipe says)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    add_verbosity_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(level_from_flags(args))
    try:
        if args.epochs is not None and args.epochs < 1:
            raise ValueError(f"--epochs {args.epochs} must be at least 1")
        arch = get_arch(args.model)
        overrides: dict[str, Any] = {"seed": args.seed if args.seed is not None else 0}
        if args.batch_size is not None:
            overrides["batch_size"] = args.batch_size
        if args.compile is not None:
            overrides["compile"] = args.compile
        if args.precision is not None:
            overrides["precision"] = args.precision
        if args.val_size is not None:
            overrides["val_size"] = args.val_size
        cfg = get_recipe(args.recipe, **overrides)
        if args.epochs is not None:  # the recipe's schedule, stretched or shrunk to fit
            cfg = cfg.with_epochs(args.epochs)
        check_writable_dir(args.out)
        if args.subset is not None and args.subset < 10:
            raise ValueError(f"--subset {args.subset} is too small; use at least 10 images")
        device = resolve_device(args.device)
        # Before any data is read: a GPU this torch has no kernels for, or one too old for
        # torch.compile, stops here with what to do, not in a traceback from the first step.
        check_gpu_supported(device)
        if cfg.compile:
            check_compile(device_info(device))
    except (KeyError, ValueError, UnsupportedGpuError) as e:
        logger.error(e.args[0] if isinstance(e, KeyError) else e)
        return 2

    split = {"seed": cfg.seed, "subset": args.subset, "val_size": cfg.val_size}
    resume = None
    if args.resume:
        # The checkpoint's own configs and split win: a resumed run must be the run that
        # stopped, on the same images.
        path = args.out / "checkpoint.pt"
        try:
            resume = load_checkpoint(path)
            arch, cfg = configs_from_checkpoint(resume, str(path))
            if args.precision is not None:  # e.g. resumed on another GPU
                cfg = cfg.replace(precision=args.precision)
            if cfg.compile:
                check_compile(device_info(device))
            split = resumed_split(resume, args, str(path))
        except ValueError as e:  # CheckpointError, or compile refused
            logger.error(e)
            return 2
        logger.info("resuming from %s after epoch %d", path, resume["epoch"])
    try:
        data = load_cifar10(args.data)
        split["fingerprint"] = fingerprint(data)
        if resume is not None and resume.get("split", {}).get("fingerprint") not in (
            None,
            split["fingerprint"],
        ):
            raise DataError(
                f"{data.source} is not the data {args.out / 'checkpoint.pt'} was trained on "
                f"(it read {resume['split'].get('source')}); resume with the same --data, or "
                "start a new run with another --out"
            )
        splits = make_splits(data, split["val_size"], split["subset"], seed=split["seed"])
    except TooFewTrainingImages as e:
        logger.error("%s: pass a smaller --val-size, or --subset N (N/4 of it validates)", e)
        return 2
    except DataError as e:
        logger.error(e)
        return 2
    cfg, note = fit_batch_to_data(cfg, len(splits.train))
    if note:
        logger.info(note)

    logger.info(
        f"{args.model} ({count_params(arch):,} params), recipe {args.recipe}, {cfg.epochs} "
        f"epochs on {device}; train {len(splits.train):,} / val {len(splits.val):,} / test "
        f"{len(splits.test):,} images from {data.source}"
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
        checkpoint_extra={"split": {**split, "source": data.source}},
    )
    m = result.metrics
    test = f", test {m['test_acc']:.2%}" if "test_acc" in m else ""
    val = f"val {m['val_acc']:.2%}" if "val_acc" in m else "no val split"
    logger.info(
        f"done in {m['seconds']:.0f}s: {val}{test}; wrote {args.out}/checkpoint.pt, metrics.json"
    )
    return 0


def resumed_split(ckpt: dict[str, Any], args: argparse.Namespace, where: str) -> dict[str, Any]:
    """The split the checkpoint's run trained on. An option given now that contradicts it is
    refused: resumed on another split, the run would validate on images it trained on."""
    saved = ckpt.get("split")
    if saved is None:  # a checkpoint from before splits were saved: as the command line says
        return {
            "seed": args.seed or 0,
            "subset": args.subset,
            "val_size": ckpt["train_config"]["val_size"],
        }
    for option, key in (("--seed", "seed"), ("--subset", "subset"), ("--val-size", "val_size")):
        given = getattr(args, key)
        if given is not None and given != saved[key]:
            raise CheckpointError(
                f"{where} was trained with {option} {saved[key]}, not {given}; resume without "
                f"{option} (the run continues on its own split), or start a new run with another "
                "--out"
            )
    return {key: saved[key] for key in ("seed", "subset", "val_size")}


if __name__ == "__main__":
    sys.exit(main())
