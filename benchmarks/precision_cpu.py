"""bf16 autocast with channels_last against fp32 on this CPU, for the reduced run's trials:
what `--precision auto` on a CPU is decided from (training.precision, docs/benchmarks.md).

    python -m benchmarks.precision_cpu --data DIR --out precision_cpu.json

The trials are those every reduced (no GPU) search starts with: the efficient_resnet
space's starting points sized to the reduced budget (60,000 parameters), batch capped at 128,
5,000 training images, 6 epochs, one thread each (a trial's CPU share by default).
1. Speed: the first two epochs of each trial at each precision (no evaluation), alternating
   which precision goes first, `--repeats` times; per repeat the bf16/fp32 ratio of the
   adjacent pair, so a change of the machine's load between pairs does not enter it.
2. Learning: each trial's whole 6-epoch run per seed at each precision: validation accuracy
   (the trial's score) and test accuracy on the 10,000 test images.
The load average is recorded beside every measurement. Prints markdown tables; writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from search_spaces.spaces import get_space
from training.config import cap_batch_size, fit_batch_to_data
from training.data import DEFAULT_VAL_SIZE, DataSplits, load_cifar10, make_splits
from training.logs import add_verbosity_flags, configure_logging, level_from_flags
from training.loop import train
from tune.cli import REDUCED

logger = logging.getLogger("benchmarks.precision_cpu")
PRECISIONS = ("fp32", "bf16")


class _Stop(Exception):
    """Ends a timing run after the epochs it measures."""


def reduced_trials(starts: int) -> list[tuple[str, Any, Any]]:
    """(name, arch, cfg) of the first `starts` starting points, as a reduced search runs them."""
    space = get_space("efficient_resnet")
    trials = []
    for i, point in enumerate(space.starting_points[:starts]):
        constants = space.sample(optuna.trial.FixedTrial(point), REDUCED.budget)
        arch, cfg = space.configs(point, constants["width_scale"], REDUCED.max_epochs)
        cfg = cap_batch_size(cfg, REDUCED.max_batch_size)
        trials.append((f"start {i} ({constants['params']:,} params)", arch, cfg))
    return trials


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def time_epochs(arch: Any, cfg: Any, splits: DataSplits, precision: str, epochs: int) -> dict:
    seconds: list[float] = []

    def report(metrics: dict[str, Any], _state: Any) -> None:
        seconds.append(metrics["epoch_seconds"])
        if len(seconds) == epochs:
            raise _Stop

    load = os.getloadavg()[0]
    with contextlib.suppress(_Stop):
        train(arch, cfg.replace(precision=precision), splits, report=report, device="cpu")
    return {"epoch_seconds": seconds, "load_before": load, "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m benchmarks.precision_cpu",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", required=True, help="CIFAR-10 folder or archive")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    p.add_argument("--repeats", type=int, default=4, help="timing pairs per trial (4)")
    p.add_argument("--epochs", type=int, default=2, help="epochs timed per run (2)")
    p.add_argument("--seeds", type=int, default=2, help="learning runs per trial and precision")
    p.add_argument("--starts", type=int, default=3, help="starting points used (3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1, a trial's)")
    p.add_argument("--skip-learning", action="store_true", help="time only")
    add_verbosity_flags(p)
    args = p.parse_args(argv)
    configure_logging(level_from_flags(args) if (args.quiet or args.verbose) else logging.WARNING)
    torch.set_num_threads(args.threads)

    data = load_cifar10(args.data)
    # As a reduced search splits it: 5,000 training images, the test set whole.
    splits = make_splits(data, DEFAULT_VAL_SIZE, REDUCED.subset, seed=0, subset_test=False)
    no_val = DataSplits(train=splits.train, val=None)
    trials = [
        (name, arch, fit_batch_to_data(cfg, len(splits.train))[0])
        for name, arch, cfg in reduced_trials(args.starts)
    ]
    flags = {
        "avx512_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: None)()),
        "amx": bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: None)()),
    }
    results: dict[str, Any] = {
        "command": " ".join(["python -m benchmarks.precision_cpu", *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "cpu": cpu_name(),
        "cpu_flags": flags,
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "images": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)},
        "speed": {},
        "learning": {},
    }
    started = time.perf_counter()
    for name, arch, cfg in trials:
        rows = []
        for repeat in range(args.repeats):
            order = PRECISIONS if repeat % 2 == 0 else PRECISIONS[::-1]
            pair = {p: time_epochs(arch, cfg, no_val, p, args.epochs) for p in order}
            rows.append(pair)
            ratios = [
                b / f
                for f, b in zip(
                    pair["fp32"]["epoch_seconds"], pair["bf16"]["epoch_seconds"], strict=True
                )
            ]
            print(
                f"{name} repeat {repeat + 1}: fp32 {pair['fp32']['epoch_seconds']} s, "
                f"bf16 {pair['bf16']['epoch_seconds']} s, bf16/fp32 "
                f"{', '.join(f'{r:.2f}' for r in ratios)}, load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
        results["speed"][name] = {"batch_size": cfg.batch_size, "runs": rows}
    if not args.skip_learning:
        for name, arch, cfg in trials:
            runs = []
            for seed in range(args.seeds):
                order = PRECISIONS if seed % 2 == 0 else PRECISIONS[::-1]
                for precision in order:
                    load = os.getloadavg()[0]
                    result = train(
                        arch, cfg.replace(seed=seed, precision=precision), splits, device="cpu"
                    )
                    m = result.metrics
                    runs.append(
                        {
                            "seed": seed,
                            "precision": m["precision"],
                            "val_acc": m["val_acc"],
                            "test_acc": m["test_acc"],
                            "train_seconds": m["seconds"],
                            "load_before": load,
                        }
                    )
                    print(
                        f"{name} seed {seed} {precision}: val {m['val_acc']:.2%}, test "
                        f"{m['test_acc']:.2%}, {m['seconds']:.0f} s, load {load:.1f}",
                        flush=True,
                    )
            results["learning"][name] = runs
    results["wall_seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(results, indent=1))
    print(markdown(results))
    return 0


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| trial | batch | fp32 s/epoch (1st, 2nd) | bf16 s/epoch (1st, 2nd) | bf16/fp32, "
        "2nd epoch: median (range) | load |",
        "|---|---|---|---|---|---|",
    ]
    for name, speed in results["speed"].items():
        runs = speed["runs"]

        def med(p: str, e: int, runs: list = runs) -> float:
            return statistics.median(r[p]["epoch_seconds"][e] for r in runs)

        last = len(runs[0]["fp32"]["epoch_seconds"]) - 1
        ratios = [r["bf16"]["epoch_seconds"][last] / r["fp32"]["epoch_seconds"][last] for r in runs]
        loads = [r[p][k] for r in runs for p in PRECISIONS for k in ("load_before", "load_after")]
        lines.append(
            f"| {name} | {speed['batch_size']} | {med('fp32', 0):.1f}, {med('fp32', last):.1f} | "
            f"{med('bf16', 0):.1f}, {med('bf16', last):.1f} | {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {min(loads):.1f}-{max(loads):.1f} |"
        )
    if results["learning"]:
        lines += [
            "",
            "| trial | fp32 val acc | bf16 val acc | fp32 test acc | bf16 test acc | "
            "s per run fp32 / bf16 |",
            "|---|---|---|---|---|---|",
        ]
        for name, runs in results["learning"].items():

            def spread(p: str, key: str, runs: list = runs) -> str:
                values = [r[key] for r in runs if r["precision"] == p]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                each = ", ".join(f"{v:.1%}" for v in values)
                return f"{statistics.fmean(values):.1%} ± {std:.1%} ({each})"

            def secs(p: str, runs: list = runs) -> float:
                return statistics.fmean(r["train_seconds"] for r in runs if r["precision"] == p)

            lines.append(
                f"| {name} | {spread('fp32', 'val_acc')} | {spread('bf16', 'val_acc')} | "
                f"{spread('fp32', 'test_acc')} | {spread('bf16', 'test_acc')} | "
                f"{secs('fp32'):.0f} / {secs('bf16'):.0f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
