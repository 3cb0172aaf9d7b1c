"""Milliseconds per batch of TrivialAugment and AutoAugment (`training.augment`), optionally
beside an older copy of the module, timed alternately in one run so that both see the same
machine load:

    python -m benchmarks.augment_speed                                   # this code only
    python -m benchmarks.augment_speed --before OLD/training/augment.py   # and an older copy

Each repeat times `--batches` batches of `--batch-size` random uint8 images per policy and
implementation; the table shows the median over `--repeats` repeats.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from training import augment
from training.config import AugmentConfig

POLICIES = ("trivialaugment", "autoaugment")


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("augment_before", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_batches(module: ModuleType, policy: str, images: torch.Tensor, batches: int) -> float:
    """Milliseconds per batch of `module.augment_batch` with only `policy` on."""
    cfg = replace(AugmentConfig(crop_padding=0, flip_p=0.0), auto_augment=policy)
    generator = torch.Generator(device=images.device).manual_seed(0)
    module.augment_batch(images, cfg, generator)  # warm-up: tables, allocator
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(batches):
        module.augment_batch(images, cfg, generator)
    if images.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / batches * 1000


def measure(
    implementations: dict[str, ModuleType],
    batch_size: int,
    batches: int,
    repeats: int,
    device: torch.device,
) -> dict[str, dict[str, float]]:
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, device=device)
    samples: dict[str, dict[str, list[float]]] = {
        name: {p: [] for p in POLICIES} for name in implementations
    }
    for _ in range(repeats):
        for policy in POLICIES:
            for name, module in implementations.items():
                samples[name][policy].append(time_batches(module, policy, images, batches))
    return {
        name: {p: statistics.median(v) for p, v in by_policy.items()}
        for name, by_policy in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m benchmarks.augment_speed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--before", type=Path, help="an older training/augment.py to time beside")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--batches", type=int, default=10, help="batches per timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    p.add_argument("--out", type=Path, help="JSON file for the result")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    implementations = {"now": augment}
    if args.before:
        implementations = {"before": load_module(args.before), **implementations}
    result = measure(
        implementations, args.batch_size, args.batches, args.repeats, torch.device(args.device)
    )
    print(f"ms per batch of {args.batch_size} on {args.device}, median of {args.repeats}:")
    print("| policy | " + " | ".join(implementations) + " |")
    print("|---|" + "---|" * len(implementations))
    for policy in POLICIES:
        cells = " | ".join(f"{result[name][policy]:.1f}" for name in implementations)
        print(f"| {policy} | {cells} |")
    if args.out:
        record: dict[str, Any] = {
            "command": "python -m benchmarks.augment_speed " + " ".join(argv or sys.argv[1:]),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "ms_per_batch": result,
        }
        args.out.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
