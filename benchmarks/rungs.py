"""Do ASHA's rungs rank good configurations as their finished runs do?

Trains a fixed set of good configurations (the efficient_resnet space's starting points and
variations of them from the better half of the space) to the end, records the validation
accuracy of every epoch, and reports for each epoch that could be a rung:
Spearman's rho between the accuracy there and the final accuracy, and the regret of keeping
the top third there (the best final accuracy of all, minus the best among those kept).

    python -m benchmarks.rungs --data data --mode before --out rungs-before.json
    python -m benchmarks.rungs --data data --mode after --out rungs-after.json

`--mode before`: each configuration with the schedule the space sampled before the rung
evaluation (cosine, one-cycle or step over the whole run, warm-up in epochs), reporting the
main run's accuracy at every epoch. `--mode after`: the same configurations with the
warm-up-stable-decay schedule, whose rung epochs report the accuracy of a short decay branch
(`TrainConfig.decay_eval_epochs`), as a search's trials do now.

Sized for a CPU: a few thousand images, networks of a 60k-parameter budget, batch 128.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models import ArchConfig, StageSpec
from models.budget import fit_to_target
from training.artifacts import code_version, write_json
from training.config import AugmentConfig, TrainConfig, cap_batch_size
from training.data import DataSplits, load_cifar10, make_splits
from training.loop import train

BATCH = 512  # the space's batch; capped to --max-batch as a reduced search caps it
OLD_STEP_FRACTION = 1 / 3  # the old space's step decay: x0.1 at 1/3 and 2/3 of the run


@dataclass(frozen=True)
class Candidate:
    """One configuration in the space's terms, plus the schedule the old space gave it."""

    name: str
    blocks: tuple[int, ...]
    growth: float  # width of each stage / the one before
    size: float  # parameters / budget
    lr: float  # per 256 images (SGD, Nesterov, momentum 0.9)
    weight_decay: float
    label_smoothing: float
    ema: bool
    warmup: float  # fraction of the run
    old_schedule: str  # cosine | onecycle | step
    se_reduction: int = 0  # 0: no SE
    dropout: float = 0.0
    mix: str = "none"  # none | mixup | cutmix
    mix_p: float = 0.0
    erasing_p: float = 0.0


CANDIDATES = (
    # The three starting points of efficient_resnet.
    Candidate("default@003", (4, 4, 3), 2.0, 0.94, 0.2, 5e-4, 0.1, True, 0.05, "cosine"),
    Candidate("airbench-like", (1, 1, 1), 2.0, 0.9, 0.4, 5e-4, 0.2, False, 0.2, "onecycle"),
    Candidate(
        "report003",
        (4, 4, 3),
        2.0,
        0.94,
        0.2,
        5e-4,
        0.0,
        False,
        0.0,
        "cosine",
        0,
        0.0,
        "mixup",
        0.5,
    ),
    # Variations from the better half of the space.
    Candidate("2-2-2 step", (2, 2, 2), 2.0, 0.8, 0.1, 5e-4, 0.1, True, 0.05, "step"),
    Candidate("4 stages", (2, 2, 2, 2), 1.6, 0.9, 0.3, 1e-3, 0.1, False, 0.1, "cosine"),
    Candidate("3-3-3 SE", (3, 3, 3), 2.0, 0.9, 0.15, 5e-4, 0.05, False, 0.1, "onecycle", 8),
    Candidate("low lr", (2, 3, 2), 2.5, 0.7, 0.05, 2e-4, 0.1, True, 0.05, "step"),
    Candidate(
        "high lr cutmix",
        (1, 2, 2),
        2.0,
        1.0,
        0.6,
        5e-4,
        0.15,
        False,
        0.15,
        "cosine",
        0,
        0.0,
        "cutmix",
        0.3,
    ),
    Candidate(
        "erasing",
        (3, 3, 2),
        1.8,
        0.6,
        0.25,
        1e-3,
        0.1,
        False,
        0.1,
        "onecycle",
        0,
        0.0,
        "none",
        0.0,
        0.25,
    ),
    Candidate("dropout", (2, 2, 2), 2.0, 0.9, 0.4, 5e-4, 0.1, False, 0.1, "step", 0, 0.1),
    Candidate("small wd", (4, 4, 3), 2.0, 0.5, 0.1, 1e-4, 0.1, True, 0.05, "cosine"),
    Candidate("4 stages SE", (2, 2, 1, 1), 2.0, 0.8, 0.2, 5e-4, 0.1, False, 0.1, "step", 16),
)


def arch_of(c: Candidate, budget: int) -> ArchConfig:
    widths = [64.0 * c.growth**i for i in range(len(c.blocks))]
    arch = ArchConfig(
        stages=tuple(
            StageSpec(b, round(w), 1 if i == 0 else 2)
            for i, (b, w) in enumerate(zip(c.blocks, widths, strict=True))
        ),
        stem_channels=64,
        block="basic",
        activation="relu",
        se=c.se_reduction > 0,
        se_reduction=c.se_reduction or 16,
        block_dropout=c.dropout,
    )
    return fit_to_target(arch, int(c.size * budget))[0]


def config_of(
    c: Candidate, mode: str, epochs: int, rungs: tuple[int, ...], max_batch: int
) -> TrainConfig:
    augment = AugmentConfig(
        mixup_p=c.mix_p if c.mix == "mixup" else 0.0,
        cutmix_p=c.mix_p if c.mix == "cutmix" else 0.0,
        mixup_alpha=1.0,
        cutmix_alpha=1.0,
        erasing_p=c.erasing_p,
    )
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=BATCH,
        optimizer="sgd",
        lr=c.lr * BATCH / 256,
        momentum=0.9,
        nesterov=True,
        weight_decay=c.weight_decay,
        label_smoothing=c.label_smoothing,
        weight_averaging="ema" if c.ema else "none",
        augment=augment,
        warmup_epochs=c.warmup * epochs,
        schedule=c.old_schedule,
        step_epochs=max(1, round(epochs * OLD_STEP_FRACTION)),
        tta_flip=False,
        seed=0,
    )
    if mode == "after":
        cfg = cfg.replace(schedule="wsd", decay_eval_epochs=rungs)
    return cap_batch_size(cfg, max_batch)


_SPLITS: DataSplits | None = None  # set before the pool forks; the workers read it


def _run(job: tuple[int, Candidate, str, int, tuple[int, ...], int, int]) -> dict[str, Any]:
    index, c, mode, epochs, rungs, max_batch, budget = job
    torch.set_num_threads(1)
    arch = arch_of(c, budget)
    cfg = config_of(c, mode, epochs, rungs, max_batch)
    curve: list[float] = []
    main: list[float] = []
    branch_epochs = 0.0

    def report(metrics: dict[str, float], _state: Any) -> None:
        nonlocal branch_epochs
        curve.append(metrics["val_acc"])
        main.append(metrics.get("stable_val_acc", metrics["val_acc"]))
        branch_epochs += metrics.get("decay_branch_epochs", 0.0)

    started = time.perf_counter()
    result = train(arch, cfg, _SPLITS, report=report, device="cpu")
    print(f"{c.name}: final {curve[-1]:.3f} in {time.perf_counter() - started:.0f} s", flush=True)
    return {
        "index": index,
        "name": c.name,
        "params": result.metrics["params"],
        "schedule": cfg.schedule,
        "val_acc": curve,
        "main_val_acc": main,
        "branch_epochs": branch_epochs,
        "seconds": time.perf_counter() - started,
        "candidate": c.__dict__,
    }


def rank_figures(curves: list[list[float]], epoch: int, keep: float = 1 / 3) -> dict[str, float]:
    """Spearman's rho between the accuracy at `epoch` and the final one, and the regret of
    keeping the top `keep` at that epoch (best final overall - best final among the kept)."""
    from scipy.stats import spearmanr

    at = [c[epoch - 1] for c in curves]
    final = [c[-1] for c in curves]
    kept = sorted(range(len(curves)), key=lambda i: at[i], reverse=True)
    kept = kept[: max(1, math.ceil(len(curves) * keep))]
    rho = float(spearmanr(at, final).statistic)
    return {"epoch": epoch, "rho": rho, "regret": max(final) - max(final[i] for i in kept)}


def rung_epochs(epochs: int, reduction_factor: int = 3) -> tuple[int, ...]:
    """The search's rungs for a run of `epochs` (tune.runner's rule, kept Ray-free here)."""
    from tune.rungs import asha_milestones, default_grace_period

    return asha_milestones(epochs, default_grace_period(epochs), reduction_factor)


def compare(before_path: str, after_path: str) -> str:
    """A markdown table of the two runs' figures side by side, epoch by epoch."""
    before = json.loads(Path(before_path).read_text())
    after = json.loads(Path(after_path).read_text())
    stable = [r["main_val_acc"] for r in after["runs"]]
    lines = [
        "| epoch | before: rho | before: regret | after: rho | after: regret "
        "| after, main run without the branch: rho | regret |",
        "|---|---|---|---|---|---|---|",
    ]
    for b, a in zip(before["figures"], after["figures"], strict=True):
        e = b["epoch"]
        rung = " (rung)" if e in after["rungs"] else ""
        s = rank_figures(stable, e)  # the last epoch has no branch: the same final
        lines.append(
            f"| {e}{rung} | {b['rho']:.2f} | {b['regret'] * 100:.1f} | {a['rho']:.2f} "
            f"| {a['regret'] * 100:.1f} | {s['rho']:.2f} | {s['regret'] * 100:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="print both runs")
    p.add_argument("--data", help="CIFAR-10 folder or archive")
    p.add_argument("--mode", choices=["before", "after"])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--val-images", type=int, default=1000)
    p.add_argument("--budget", type=int, default=60_000)
    p.add_argument("--max-batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="processes (one thread each)")
    p.add_argument("--out", help="JSON file for the curves and figures")
    args = p.parse_args(argv)
    if args.compare:
        print(compare(*args.compare))
        return 0
    if not (args.data and args.mode and args.out):
        p.error("--data, --mode and --out are required (or --compare BEFORE AFTER)")

    global _SPLITS
    data = load_cifar10(args.data)
    splits = make_splits(data, args.val_images, seed=0)
    from training.data import subset_stratified

    _SPLITS = DataSplits(
        train=subset_stratified(splits.train, args.train_images, 0), val=splits.val
    )
    rungs = rung_epochs(args.epochs) if args.mode == "after" else ()
    jobs = [
        (i, c, args.mode, args.epochs, rungs, args.max_batch, args.budget)
        for i, c in enumerate(CANDIDATES)
    ]
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        runs = sorted(pool.map(_run, jobs, chunksize=1), key=lambda r: r["index"])
    wall = time.perf_counter() - started
    curves = [r["val_acc"] for r in runs]
    figures = [rank_figures(curves, e) for e in range(1, args.epochs)]
    summary = {
        "command": "python -m benchmarks.rungs " + " ".join(argv or os.sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": f"{os.cpu_count()}-core CPU ({platform.machine()}), {args.workers} workers",
        "code_version": code_version(),
        "mode": args.mode,
        "epochs": args.epochs,
        "rungs": list(rung_epochs(args.epochs)),
        "train_images": len(_SPLITS.train),
        "val_images": len(_SPLITS.val),
        "wall_seconds": wall,
        "branch_epochs_per_run": sum(r["branch_epochs"] for r in runs) / len(runs),
        "runs": runs,
        "figures": figures,
    }
    write_json(Path(args.out), summary)
    print(f"{args.mode}: {len(runs)} configurations x {args.epochs} epochs in {wall:.0f} s")
    print(
        "| configuration | params | schedule | final val | "
        + " | ".join(f"ep {e}" for e in summary["rungs"])
        + " |"
    )
    for r in runs:
        at = " | ".join(f"{r['val_acc'][e - 1]:.3f}" for e in summary["rungs"])
        print(
            f"| {r['name']} | {r['params']:,} | {r['schedule']} | {r['val_acc'][-1]:.3f} | {at} |"
        )
    print("\n| epoch | rho(epoch, final) | regret of the top third |")
    for f in figures:
        mark = " (rung)" if f["epoch"] in summary["rungs"] else ""
        print(f"| {f['epoch']}{mark} | {f['rho']:.2f} | {f['regret'] * 100:.1f} points |")
    print(f"\nextra epochs of decay branches per run: {summary['branch_epochs_per_run']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
