"""Training and evaluation speed: this project's loop against the usual notebook loop.

    python -m benchmarks.bench                   # everything below, on the GPU
    python -m benchmarks.bench --mode models     # the presets: our loop, ablations, usual loop
    python -m benchmarks.bench --mode models --seed-recipes   # and the seed networks' recipes
    python -m benchmarks.bench --mode space      # the default space's largest samples
    python -m benchmarks.bench --mode packing    # 1, 2 and 4 concurrent trials on one GPU
    python -m benchmarks.bench --mode profile    # the top kernels and the GPU's busy share
    python -m benchmarks.bench --mode overhead   # a trial's per-epoch report + checkpoint cost
    python -m benchmarks.bench --tiny            # a tiny CPU version (what CI runs), no timing claims

For each preset: training images/s and seconds per epoch of `training.loop.train` (data
resident on the device, whole-batch augmentation, bf16, channels_last), the same without
bf16 and without channels_last (what each contributes), evaluation time of the test-set
size, peak GPU memory; then the same model under "the usual loop" (torchvision PIL
transforms, a DataLoader with worker processes, fp32, `.item()` every step, as the seed
reports trained), and the ratio; with --seed-recipes, one epoch of each seed network with
its own recipe (its batch, augmentation and optimizer, as a `seeds` search trains it; the
campaign plans its baselines from these). The space mode samples a few hundred networks of the
default search space under the budget, counts their multiply-adds on the meta device and
times the largest. Packing starts 1, 2 and 4 trials as separate processes that begin their
timed epoch together. Images are random pixels: speed does not depend on their content.

Results go to a JSON file (--out) and, with --docs FILE, as a dated section to a markdown
file (docs/benchmarks.md is where measured sections are kept).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models import DEFAULT_BUDGET, ArchConfig, count_macs, count_params, get_arch
from models.budget import fit_to_budget
from training.artifacts import code_version, write_json, write_text
from training.augment import CIFAR10_MEAN, CIFAR10_STD
from training.data import DataSplits, ImageSet
from training.logs import add_verbosity_flags, configure_logging, level_from_flags
from training.loop import TrainState, predict_logits, resolve_device, train
from training.recipes import get_recipe
from tune.cli import REDUCED

logger = logging.getLogger("benchmarks.bench")

MODES = ("all", "models", "space", "packing", "profile", "overhead")
PACKING_TIMEOUT_S = 600.0  # a packed trial that has not finished by then is reported and ended


@dataclass(frozen=True)
class BenchSize:
    train_images: int  # images per measured training epoch
    eval_images: int  # images of the timed evaluation (the test set's size)
    usual_steps: int  # steps timed for the usual loop (it is too slow for a whole epoch)
    batch_size: int  # training images per step, for every loop measured here
    usual_workers: int  # DataLoader worker processes of the usual loop
    packing_images: int  # images per epoch of each concurrent trial
    profile_images: int  # images of the profiled epoch
    space_samples: int  # networks drawn from the search space
    space_top: int  # of those, the ones with the most multiply-adds that are timed
    seed_images: int  # images per epoch of each seed recipe's timed epoch
    overhead_epochs: int = 4  # epochs of the report + checkpoint overhead measurement


FULL = BenchSize(
    train_images=50_000,
    eval_images=10_000,
    usual_steps=120,
    batch_size=512,
    usual_workers=8,
    packing_images=25_000,
    profile_images=10_240,
    space_samples=300,
    space_top=8,
    seed_images=10_240,
)
TINY = BenchSize(
    train_images=256,
    eval_images=256,
    usual_steps=4,
    batch_size=64,
    usual_workers=0,
    packing_images=128,
    profile_images=128,
    space_samples=6,
    space_top=2,
    seed_images=256,
)

# What each ablation turns off, relative to our loop as it trains (bf16 autocast and
# channels_last on CUDA; on a CPU both are ignored, so the rows only prove the code path).
VARIANTS: dict[str, dict[str, Any]] = {
    "ours": {},
    "ours, fp32": {"precision": "fp32"},
    "ours, no channels_last": {"channels_last": False},
}


def random_set(n: int, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageSet(images, labels, torch.arange(n))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _bench_config(size: BenchSize, n_images: int, **overrides: Any):
    return get_recipe(
        "default",
        epochs=2,
        batch_size=min(size.batch_size, n_images),
        warmup_epochs=0.0,
        weight_averaging="none",
        tta_flip=False,
        val_size=0,
    ).replace(**overrides)


def bench_fast(
    arch: ArchConfig,
    size: BenchSize,
    device: torch.device,
    *,
    evaluate: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """This project's loop: two epochs; the second is timed (the first pays cudnn autotuning
    and, with compile, compilation, which the loop reports on its own)."""
    cfg = _bench_config(size, size.train_images, **overrides)
    data = DataSplits(train=random_set(size.train_images))
    epochs: list[dict[str, float]] = []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    result = train(arch, cfg, data, report=lambda m, s: epochs.append(m), device=device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    timed = epochs[-1]
    row: dict[str, Any] = {
        "train_images_per_sec": timed["images_per_sec"],
        "epoch_seconds": timed["epoch_seconds"],
        "first_epoch_seconds": epochs[0]["epoch_seconds"],
        "compile_seconds": result.metrics.get("compile_seconds", 0.0),
        "peak_gpu_gib": peak,
    }
    if evaluate:
        row.update(bench_eval(result.model, size, device, cfg.eval_batch_size))
    return row


def bench_eval(
    model: torch.nn.Module, size: BenchSize, device: torch.device, batch_size: int
) -> dict[str, float]:
    """Evaluation of `eval_images` images (no test-time flip). One untimed pass first: cudnn
    autotunes each new batch shape, and the last batch of 10,000 is a shape of its own."""
    images = random_set(size.eval_images, seed=1).images.to(device)
    predict_logits(model, images, batch_size=batch_size, device=device)
    _sync(device)
    started = time.perf_counter()
    predict_logits(model, images, batch_size=batch_size, device=device)
    _sync(device)
    seconds = time.perf_counter() - started
    return {"eval_images_per_sec": len(images) / seconds, "eval_seconds": seconds}


class _PILDataset(torch.utils.data.Dataset):
    """CIFAR-10 as notebooks load it: PIL images through torchvision transforms."""

    def __init__(self, data: ImageSet) -> None:
        import torchvision.transforms as T

        self.images = data.images.permute(0, 2, 3, 1).numpy()
        self.labels = data.labels.tolist()
        self.transform = T.Compose(
            [
                T.RandomCrop(32, padding=4),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def bench_usual(arch: ArchConfig, size: BenchSize, device: torch.device) -> dict[str, Any]:
    """The usual loop: DataLoader workers, PIL transforms, fp32, a host sync every step."""
    from models import ResNet

    n = size.batch_size * (size.usual_steps + 5)
    loader = torch.utils.data.DataLoader(
        _PILDataset(random_set(n)),
        batch_size=size.batch_size,
        shuffle=True,
        num_workers=size.usual_workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=False,
    )
    model = ResNet(arch).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    started, seen, running = None, 0, 0.0
    for step, (x, y) in enumerate(loader):
        if step == 5:  # the first steps start workers and autotune; time the rest
            _sync(device)
            started, seen = time.perf_counter(), 0
        x, y = x.to(device), y.to(device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running += loss.item()  # what notebooks do for their progress bars
        seen += len(y)
    _sync(device)
    seconds = time.perf_counter() - started
    rate = seen / seconds
    return {"train_images_per_sec": rate, "epoch_seconds": size.train_images / rate}


def bench_seed_recipes(
    size: BenchSize, device: torch.device, budget: int, max_batch_size: int | None
) -> dict[str, dict[str, Any]]:
    """One timed epoch (after an untimed one) of each seed network with its own recipe, as a
    `seeds` search trial trains it: fitted to `budget` (the width scale a reduced run gives
    it), its recipe's batch (capped at `max_batch_size`, then at a tenth of the images, as a
    trial caps it), augmentation, optimizer and precision. The seed recipes run at batch
    128-256, one with AutoAugment: they cost several times the preset's epoch at batch 512,
    which the campaign's plan needs to know."""
    import optuna

    from search_spaces import get_space
    from training.config import cap_batch_size, fit_batch_to_data

    space = get_space("seeds")
    data = DataSplits(train=random_set(size.seed_images))
    out: dict[str, dict[str, Any]] = {}
    for point in space.fixed_trials:
        constants = space.sample(optuna.trial.FixedTrial(point), budget)
        arch, cfg = space.configs(point, constants["width_scale"], max_epochs=2)
        cfg = cap_batch_size(cfg, max_batch_size).replace(val_size=0, tta_flip=False)
        cfg, _ = fit_batch_to_data(cfg, size.seed_images)
        epochs: list[dict[str, float]] = []
        train(arch, cfg, data, report=lambda m, s, seen=epochs: seen.append(m), device=device)
        out[point["preset"]] = {
            "params": constants["params"],
            "batch_size": cfg.batch_size,
            "images": size.seed_images,
            "epoch_seconds": epochs[-1]["epoch_seconds"],
            "train_images_per_sec": epochs[-1]["images_per_sec"],
        }
        logger.info(
            f"seed recipe {point['preset']}: {epochs[-1]['epoch_seconds']:.2f} s per epoch of "
            f"{size.seed_images:,} images at batch {cfg.batch_size}"
        )
    return out


# --- The search space's networks.


def _resolve_sample(job: tuple[str, dict[str, Any], int]) -> dict[str, Any]:
    import optuna

    from search_spaces import get_space

    space_name, raw, budget = job
    space = get_space(space_name)
    constants = space.sample(optuna.trial.FixedTrial(raw), budget)  # fitted as a trial is
    arch, _ = space.configs(raw, constants["width_scale"])
    return {
        "arch": arch.to_dict(),
        "params": constants["params"],
        "width_scale": constants["width_scale"],
        "macs": count_macs(arch),
        "stages": " ".join(f"{s.blocks}x{s.channels}" for s in arch.stages),
    }


def sample_space(space_name: str, n: int, budget: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` networks of a search space as a search's random start draws them, each fitted to
    the budget as a trial would be, with its parameters and multiply-adds; most first."""
    import optuna

    from search_spaces import get_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    jobs = []
    for _ in range(n):
        trial = study.ask()
        space.suggest(trial)
        jobs.append((space_name, dict(trial.params), budget))
    workers = min(len(jobs), os.cpu_count() or 1, 16)
    if workers > 2 and len(jobs) > 20:  # fitting to the budget builds ~10 meta models each
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            samples = list(pool.map(_resolve_sample, jobs, chunksize=4))
    else:
        samples = [_resolve_sample(job) for job in jobs]
    return sorted(samples, key=lambda s: s["macs"], reverse=True)


def median_sample(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The sample with the median multiply-adds."""
    by_macs = sorted(samples, key=lambda s: s["macs"])
    return by_macs[len(by_macs) // 2]


# --- Packing several trials on one device.


def _packed_worker(
    arch_dict: dict[str, Any], size: BenchSize, device: str, barrier: Any, results: Any
) -> None:
    """One trial of the packing benchmark: an untimed epoch, then, once every trial has
    finished its own, a timed epoch that all of them run at the same time."""
    torch.set_num_threads(1)
    marks: dict[str, float] = {}

    def report(metrics: dict[str, float], state: TrainState) -> None:
        if metrics["epoch"] == 1:
            barrier.wait()
            marks["start"] = time.time()
        else:
            marks["end"] = time.time()

    cfg = _bench_config(size, size.packing_images)
    data = DataSplits(train=random_set(size.packing_images))
    try:
        train(ArchConfig.from_dict(arch_dict), cfg, data, report=report, device=device)
        results.put((marks["start"], marks["end"], size.packing_images))
    except BaseException as e:  # the parent must not wait forever for this trial
        barrier.abort()
        results.put(repr(e))
        raise


def _collect(procs: list[Any], results: Any, timeout_s: float) -> list[Any]:
    """One outcome per packed trial, waiting at most `timeout_s` in all. A child that died
    without one (killed, out of memory, a crash in native code) or ran past the timeout is
    reported at once; the remaining children are ended, never waited for."""
    import queue

    deadline = time.monotonic() + timeout_s
    outcomes: list[Any] = []
    try:
        while len(outcomes) < len(procs):
            try:
                outcomes.append(results.get(timeout=0.5))
                continue
            except queue.Empty:
                pass
            dead = [p for p in procs if not p.is_alive() and p.exitcode not in (0, None)]
            if dead:
                raise RuntimeError(
                    f"a packed trial died with exit code {dead[0].exitcode} before reporting "
                    f"({len(outcomes)} of {len(procs)} reported)"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"packed trials still running after {timeout_s:.0f} s "
                    f"({len(outcomes)} of {len(procs)} reported); ended them"
                )
    finally:
        for p in procs:
            p.join(timeout=5 if len(outcomes) == len(procs) else 0.1)
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    return outcomes


def bench_packing(
    arch: ArchConfig,
    size: BenchSize,
    device: torch.device,
    timeout_s: float = PACKING_TIMEOUT_S,
    counts: tuple[int, ...] = (1, 2, 4),
) -> list[dict[str, Any]]:
    """Total training images/s with 1, 2 and 4 trials sharing the device at once, counted
    from the first timed epoch's start to the last one's end (no credit for stragglers).
    Each count's trials get at most `timeout_s` (see `_collect`)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    rows = []
    for k in counts:
        barrier, results = ctx.Barrier(k), ctx.Queue()
        procs = [
            ctx.Process(
                target=_packed_worker, args=(arch.to_dict(), size, str(device), barrier, results)
            )
            for _ in range(k)
        ]
        for p in procs:
            p.start()
        outcomes = _collect(procs, results, timeout_s)
        failed = [o for o in outcomes if isinstance(o, str)]
        if failed:
            raise RuntimeError(f"a packed trial failed: {failed[0]}")
        start = min(o[0] for o in outcomes)
        end = max(o[1] for o in outcomes)
        total = sum(o[2] for o in outcomes) / (end - start)
        per_trial = [o[2] / (o[1] - o[0]) for o in outcomes]
        rows.append({"concurrent": k, "total_images_per_sec": total, "per_trial": per_trial})
        logger.info(f"  {k} concurrent: {total:,.0f} images/s in total")
    return rows


def pick_gpus_per_trial(packing_rows: list[dict[str, Any]], min_gain: float = 1.1) -> float:
    """The GPU share per trial that the packing measurement favours: the most concurrent
    trials whose total throughput beats the next fewer by at least `min_gain`."""
    best = packing_rows[0]
    for row in packing_rows[1:]:
        if row["total_images_per_sec"] >= min_gain * best["total_images_per_sec"]:
            best = row
    return 1.0 / best["concurrent"]


# --- What a search trial adds to each epoch: its report and checkpoints.


def bench_overhead(
    arch: ArchConfig, size: BenchSize, device: torch.device, epochs: int, every_s: float
) -> dict[str, Any]:
    """A search trial's per-epoch callback (`tune.trainable.EpochReporter`: TensorBoard
    scalars, the metrics, a checkpoint when due) around `epochs` epochs of our loop, with
    checkpoints every `every_s` seconds (0: every epoch, as trials did before). Ray's own
    report round trip is not in it (no Ray here); searches record it per trial as
    `report_seconds`. The share is the callback's seconds over the epochs' seconds."""
    from torch.utils.tensorboard import SummaryWriter

    from tune.trainable import EpochReporter

    cfg = _bench_config(size, size.train_images, epochs=epochs)
    data = DataSplits(train=random_set(size.train_images))
    sent: list[bool] = []
    epoch_seconds: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        writer = SummaryWriter(folder)
        reporter = EpochReporter(
            writer,
            lambda metrics, checkpoint=None: sent.append(checkpoint is not None),
            last_epoch=epochs,
            checkpoint_every_s=every_s,
            extra={"node_id": "bench", "device": str(device)},
        )

        def report(metrics: dict[str, float], state: TrainState) -> None:
            epoch_seconds.append(metrics["epoch_seconds"])
            reporter(metrics, state)

        train(arch, cfg, data, report=report, device=device)
        writer.close()
    train_seconds = sum(epoch_seconds)
    return {
        "checkpoint_every_s": every_s,
        "epochs": epochs,
        "checkpoints": sum(sent),
        "epoch_seconds": train_seconds / epochs,
        "report_seconds_per_epoch": reporter.seconds / epochs,
        "share": reporter.seconds / train_seconds,
    }


# --- Where the time of one epoch goes.


def profile_epoch(arch: ArchConfig, size: BenchSize, device: torch.device) -> dict[str, Any]:
    """torch.profiler over the second of two epochs: the kernels that take the most device
    time, and how much of the epoch's wall time the device spent running kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    profiler = profile(activities=activities)
    marks: dict[str, float] = {}

    def report(metrics: dict[str, float], state: TrainState) -> None:
        if metrics["epoch"] == 1:
            profiler.start()
        else:
            profiler.stop()
            marks["seconds"] = metrics["epoch_seconds"]

    cfg = _bench_config(size, size.profile_images)
    train(
        arch, cfg, DataSplits(train=random_set(size.profile_images)), report=report, device=device
    )
    events = profiler.key_averages()
    kernel_us = sum(e.self_device_time_total for e in events if e.device_type == DeviceType.CUDA)
    sort_by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return {
        "images": size.profile_images,
        "epoch_seconds_profiled": marks["seconds"],
        "kernel_seconds": kernel_us / 1e6,
        "device_busy_fraction": kernel_us / 1e6 / marks["seconds"],
        "top_kernels": events.table(sort_by=sort_by, row_limit=15, max_name_column_width=60),
    }


# --- Reporting.


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def format_tables(results: dict[str, Any]) -> str:
    lines: list[str] = []
    if results.get("models"):
        lines += [
            "| model | params | GMACs/image | ours: img/s | ours: s/epoch | eval s | peak GiB "
            "| usual: img/s | usual: s/epoch | speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results["models"].items():
            f, u = r["variants"].get("ours"), r.get("usual")
            ours = (
                f"{f['train_images_per_sec']:,.0f} | {f['epoch_seconds']:.2f} | "
                f"{f['eval_seconds']:.3f} | {f['peak_gpu_gib']:.2f}"
                if f
                else "failed | | |"
            )
            usual = (
                f"{u['train_images_per_sec']:,.0f} | {u['epoch_seconds']:.1f} | {r['speedup']:.1f}x"
                if u
                else "failed | |"
            )
            lines.append(f"| {name} | {r['params']:,} | {r['macs'] / 1e9:.2f} | {ours} | {usual} |")
        lines += [
            "",
            "| model | variant | img/s | s/epoch | relative to ours |",
            "|---|---|---|---|---|",
        ]
        for name, r in results["models"].items():
            base = r["variants"].get("ours", {}).get("train_images_per_sec")
            for variant, v in r["variants"].items():
                ratio = f"{v['train_images_per_sec'] / base:.2f}x" if base else ""
                lines.append(
                    f"| {name} | {variant} | {v['train_images_per_sec']:,.0f} | "
                    f"{v['epoch_seconds']:.2f} | {ratio} |"
                )
                if v.get("compile_seconds"):
                    lines.append(
                        f"| {name} | {variant}: torch.compile, once | | "
                        f"{v['compile_seconds']:.1f} s | |"
                    )
    if results.get("seed_recipes"):
        lines += [
            "",
            "The seed networks with their own recipes (one epoch, after an untimed one):",
            "",
            "| seed network | params | batch | img/s | s per epoch of 50,000 |",
            "|---|---|---|---|---|",
        ]
        for name, r in results["seed_recipes"].items():
            lines.append(
                f"| {name} | {r['params']:,} | {r['batch_size']} | "
                f"{r['train_images_per_sec']:,.0f} | {50_000 / r['train_images_per_sec']:.2f} |"
            )
    if results.get("space", {}).get("top"):
        s = results["space"]
        lines += [
            "",
            f"The {len(s['top'])} networks with the most multiply-adds among {s['samples']} "
            f"samples of space `{s['name']}` (budget {s['budget']:,}):",
            "",
            "| rank | stages | params | GMACs/image | img/s | s/epoch | peak GiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, t in enumerate(s["top"], 1):
            f = t["fast"]
            lines.append(
                f"| {i} | {t['stages']} | {t['params']:,} | {t['macs'] / 1e9:.2f} | "
                f"{f['train_images_per_sec']:,.0f} | {f['epoch_seconds']:.2f} | "
                f"{f['peak_gpu_gib']:.2f} |"
            )
        m = s["median"]
        lines.append(
            f"\nMedian sample: {m['stages']}, {m['params']:,} params, "
            f"{m['macs'] / 1e9:.2f} GMACs/image."
        )
    if results.get("packing"):
        lines += [
            "",
            f"Packing on one device ({results['packing_images']:,} images per trial-epoch):",
            "",
            "| model | concurrent trials | total img/s | gain over one |",
            "|---|---|---|---|",
        ]
        for label, rows in results["packing"].items():
            base = rows[0]["total_images_per_sec"]
            for row in rows:
                lines.append(
                    f"| {label} | {row['concurrent']} | {row['total_images_per_sec']:,.0f} | "
                    f"{row['total_images_per_sec'] / base:.2f}x |"
                )
    if results.get("overhead", {}).get("rows"):
        o = results["overhead"]
        lines += [
            "",
            f"A search trial's report + checkpoint per epoch, `{o['model']}` (no Ray round trip):",
            "",
            "| checkpoint every | epochs | checkpoints | s/epoch | report s/epoch | share |",
            "|---|---|---|---|---|---|",
        ]
        for r in o["rows"]:
            every = "epoch" if r["checkpoint_every_s"] <= 0 else f"{r['checkpoint_every_s']:g} s"
            lines.append(
                f"| {every} | {r['epochs']} | {r['checkpoints']} | {r['epoch_seconds']:.3f} | "
                f"{r['report_seconds_per_epoch']:.4f} | {r['share']:.2%} |"
            )
    if results.get("profile"):
        p = results["profile"]
        lines += [
            "",
            f"Profile of one epoch of `{p['model']}` on {p['images']:,} images: "
            f"{p['epoch_seconds_profiled']:.3f} s of wall time (profiler on), "
            f"{p['kernel_seconds']:.3f} s of kernels: the device was busy "
            f"{p['device_busy_fraction']:.0%} of the epoch.",
        ]
    for label, error in results.get("errors", {}).items():
        lines.append(f"\n**Failed**: {label}: {error}")
    return "\n".join(lines)


def append_docs(results: dict[str, Any], path: Path) -> None:
    header = "# Benchmarks\n\nEach section was written by `python -m benchmarks.bench`.\n"
    old = path.read_text() if path.exists() else header
    section = (
        f"\n## {results['date']} on {results['device']}\n\n"
        f"Command: `{results['command']}`; code {results['code_version']}; torch "
        f"{results['torch']}; batch {results['batch_size']}; "
        f"{results['train_images']:,} training images per epoch"
        f"{'; tiny CPU smoke run, not a speed claim' if results['tiny'] else ''}.\n\n"
        f"{format_tables(results)}\n"
    )
    write_text(path, old + section)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mode", choices=MODES, default="all")
    p.add_argument(
        "--models",
        nargs="*",
        help="registered model presets (default: efficient_resnet; tiny_resnet with --tiny)",
    )
    p.add_argument(
        "--space", help="search space to sample (default: efficient_resnet; tiny with --tiny)"
    )
    p.add_argument(
        "--budget",
        type=int,
        default=DEFAULT_BUDGET,
        help="parameter budget of the space's samples and the seed networks",
    )
    p.add_argument(
        "--fit-presets",
        action="store_true",
        help="models: fit each preset to --budget, as a reduced run scales the seed networks",
    )
    p.add_argument(
        "--seed-recipes",
        action="store_true",
        help="models: also one epoch of each seed network with its own recipe",
    )
    p.add_argument("--tiny", action="store_true", help="tiny CPU run for CI; no timing claims")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="add a torch.compile variant")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's; a search trial on a CPU has 1 per CPU it holds)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=60.0,
        help="overhead mode: a trial's checkpoint interval in seconds, beside every epoch",
    )
    p.add_argument(
        "--packing-targets",
        choices=["all", "median"],
        default="all",
        help="packing: the first preset and the median sample, or the median sample only",
    )
    p.add_argument(
        "--packing-counts", type=int, nargs="+", default=[1, 2, 4], help="concurrent trials"
    )
    p.add_argument("--space-samples", type=int, help="networks drawn from the space (300; 6 tiny)")
    p.add_argument("--out", type=Path, default=Path("bench_results.json"))
    p.add_argument("--docs", type=Path, help="markdown file to append a dated section to")
    add_verbosity_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(level_from_flags(args))
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = TINY if args.tiny or device.type == "cpu" else FULL
    if args.space_samples:
        size = replace(size, space_samples=args.space_samples)
    tiny = size.train_images == TINY.train_images
    models = args.models or (["tiny_resnet"] if tiny else ["efficient_resnet"])
    space_name = args.space or ("tiny" if tiny else "efficient_resnet")
    budget = args.budget
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name(device),
        "command": "python -m benchmarks.bench "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "code_version": code_version(),
        "torch": torch.__version__,
        "tiny": tiny,
        "train_images": size.train_images,
        "batch_size": size.batch_size,
        "models": {},
    }
    mode = args.mode
    variants = dict(VARIANTS)

    def preset(name: str) -> ArchConfig:
        arch = get_arch(name)
        return fit_to_budget(arch, budget)[0] if args.fit_presets else arch

    if args.compile:
        variants["ours, compiled"] = {"compile": True}
    errors: dict[str, str] = {}

    def measure(label: str, fn: Any) -> Any:
        """Run one measurement; a failure is recorded and the others still run. The JSON is
        rewritten after each, so a run stopped from outside keeps what it measured."""
        try:
            return fn()
        except Exception as e:  # any failure of one measurement (e.g. a worker crash)
            logger.exception("%s failed", label)
            errors[label] = f"{type(e).__name__}: {e}"
            results["errors"] = errors
            return None
        finally:
            write_json(args.out, results)

    if mode in ("all", "models"):
        for name in models:
            arch = preset(name)
            row: dict[str, Any] = {
                "params": count_params(arch),
                "macs": count_macs(arch),
                "variants": {},
            }
            results["models"][name] = row
            for variant, overrides in variants.items():
                logger.info(f"{name}: {variant}...")
                timed = measure(
                    f"{name}: {variant}",
                    lambda a=arch, o=overrides: bench_fast(a, size, device, **o),
                )
                if timed is None:
                    continue
                row["variants"][variant] = timed
                if overrides.get("compile"):
                    logger.info(
                        f"{name}: torch.compile took {timed['compile_seconds']:.1f} s "
                        "(not in any epoch time)"
                    )
            logger.info(f"{name}: the usual loop...")
            usual = measure(f"{name}: usual loop", lambda a=arch: bench_usual(a, size, device))
            if usual is not None and "ours" in row["variants"]:
                row["usual"] = usual
                row["speedup"] = (
                    row["variants"]["ours"]["train_images_per_sec"] / usual["train_images_per_sec"]
                )
    if mode in ("all", "models") and args.seed_recipes:
        # A search without a GPU caps every batch (tune.cli.REDUCED), and so its seed trials.
        cap = None if device.type == "cuda" else REDUCED.max_batch_size
        logger.info("the seed networks with their own recipes...")
        seeds = measure("seed recipes", lambda: bench_seed_recipes(size, device, budget, cap))
        if seeds is not None:
            results["seed_recipes"] = seeds
    median = None
    if mode in ("all", "space", "packing"):
        logger.info(f"sampling {size.space_samples} networks of space {space_name}...")
        samples = measure(
            "space sampling", lambda: sample_space(space_name, size.space_samples, budget)
        )
        if samples:
            median = median_sample(samples)
            results["space"] = {
                "name": space_name,
                "budget": budget,
                "samples": len(samples),
                "median": median,
                "top": [],
            }
        if samples and mode in ("all", "space"):
            for i, sample in enumerate(samples[: size.space_top], 1):
                logger.info(
                    f"space sample {i} ({sample['stages']}, {sample['macs'] / 1e9:.2f} GMACs)"
                )
                arch = ArchConfig.from_dict(sample["arch"])
                fast = measure(f"space sample {i}", lambda a=arch: bench_fast(a, size, device))
                if fast is not None:
                    results["space"]["top"].append({**sample, "fast": fast})
    if mode in ("all", "packing"):
        results["packing_images"] = size.packing_images
        results["packing"] = {}
        targets = {} if args.packing_targets == "median" else {models[0]: preset(models[0])}
        if median is not None:
            targets[f"median {space_name} sample"] = ArchConfig.from_dict(median["arch"])
        for label, arch in targets.items():
            logger.info(f"packing {label}:")
            rows = measure(
                f"packing {label}",
                lambda a=arch: bench_packing(a, size, device, counts=tuple(args.packing_counts)),
            )
            if rows is not None:
                results["packing"][label] = rows
    if mode in ("all", "overhead"):
        arch = preset(models[0])
        results["overhead"] = {"model": models[0], "rows": []}
        # Alternately, so both policies see the same machine load.
        for every in (0.0, args.checkpoint_every, 0.0, args.checkpoint_every):
            logger.info(f"overhead of {models[0]}, checkpoints every {every:g} s...")
            row = measure(
                f"overhead every {every:g} s",
                lambda a=arch, e=every: bench_overhead(a, size, device, size.overhead_epochs, e),
            )
            if row is not None:
                results["overhead"]["rows"].append(row)
    if mode in ("all", "profile"):
        logger.info(f"profiling one epoch of {models[0]}...")
        profile = measure("profile", lambda: profile_epoch(preset(models[0]), size, device))
        if profile is not None:
            results["profile"] = {"model": models[0], **profile}
            logger.info(profile["top_kernels"])
    print(format_tables(results))
    if errors:
        logger.error("failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items()))
    write_json(args.out, results)
    if args.docs:
        append_docs(results, args.docs)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
