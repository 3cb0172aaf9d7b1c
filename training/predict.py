"""Predict labels with a trained checkpoint.

    python -m training.predict --checkpoint runs/x/checkpoint.pt \\
        --input cifar_test_nolabel.pkl --out predictions.csv [--no-tta]

--input is a Kaggle-style unlabeled pickle (b'data', b'ids'), or any labeled CIFAR-10
dataset the trainer reads (its test split is predicted and the accuracy printed).
Writes a CSV with the header `ID,Labels`, one row per id.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from training.checkpoint import (
    CheckpointError,
    configs_from_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
)
from training.data import DataError, load_images
from training.logs import add_verbosity_flags, configure_logging, level_from_flags
from training.loop import resolve_device
from training.precision import (
    UnsupportedGpuError,
    check_gpu_supported,
    device_info,
    plan_precision,
)
from training.predictions import predict_labels, write_predictions

logger = logging.getLogger("training.predict")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m training.predict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--input", required=True, help="unlabeled pickle or labeled dataset")
    p.add_argument("--out", required=True, type=Path, help="CSV to write (ID,Labels)")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average with the mirrored image (default: as the checkpoint's recipe was tested)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_verbosity_flags(p)
    args = p.parse_args(argv)
    configure_logging(level_from_flags(args))
    try:
        device = resolve_device(args.device)
        check_gpu_supported(device)
        ckpt = load_checkpoint(args.checkpoint, map_location=device)
        model = model_from_checkpoint(ckpt, device, where=str(args.checkpoint))
        _, train_cfg = configs_from_checkpoint(ckpt, str(args.checkpoint))
        images = load_images(args.input)
    except (CheckpointError, DataError, ValueError, UnsupportedGpuError) as e:
        logger.error(e)
        return 2
    # At the precision the run trained with, chosen for this device as training chose it.
    plan = plan_precision(
        train_cfg.precision, device_info(device), channels_last=train_cfg.channels_last
    )
    # The test accuracy a run reports was measured with its recipe's flip TTA: predict the same.
    recipe_tta = bool(ckpt.get("train_config", {}).get("tta_flip", False))
    tta = recipe_tta if args.tta is None else args.tta
    labels = predict_labels(model, images, tta_flip=tta, device=device, precision=plan)
    meta = {
        "checkpoint": str(args.checkpoint),
        "input": str(args.input),
        "tta_flip": tta,
        "precision": plan.precision,
        "images": len(images),
        **{k: ckpt[k] for k in ("arch", "train_config", "params", "seed", "code_version")},
    }
    if images.labels is not None:
        meta["accuracy"] = (labels == images.labels).float().mean().item()
        logger.info(f"accuracy {meta['accuracy']:.2%} on {len(images):,} labeled images")
    write_predictions(args.out, images.ids, labels, meta)
    logger.info(f"wrote {len(images):,} predictions to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
