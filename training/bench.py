"""Training and evaluation speed: this project's loop against the usual notebook loop.

    python -m training.bench                 # every seed preset, then packing, on the GPU
    python -m training.bench --mode packing  # 1, 2 and 4 concurrent trials on one GPU
    python -m training.bench --tiny          # a tiny CPU version (what CI runs), no timing claims

For each model: training images/s and seconds per epoch of `training.loop.train` (data
resident on the device, whole-batch augmentation, bf16, channels_last), evaluation images/s,
peak GPU memory; then the same model under "the usual loop" (torchvision PIL transforms, a
DataLoader with worker processes, fp32, `.item()` every step, as the seed reports trained),
and the ratio. Images are random pixels: speed does not depend on their content.
Results go to a JSON file and, as a dated table with the device and command, to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models import SEED_MODELS, count_params, create_model, get_arch
from training.artifacts import code_version, write_json, write_text
from training.data import ImageSet
from training.loop import DataSplits, predict_logits, resolve_device, train
from training.recipes import get_recipe

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


@dataclass(frozen=True)
class BenchSize:
    train_images: int  # images per measured training epoch
    eval_images: int
    usual_steps: int  # steps timed for the usual loop (it is too slow for a whole epoch)
    batch_size: int
    usual_workers: int


FULL = BenchSize(
    train_images=50_000, eval_images=10_000, usual_steps=120, batch_size=512, usual_workers=8
)
TINY = BenchSize(train_images=256, eval_images=256, usual_steps=4, batch_size=64, usual_workers=0)


def random_set(n: int, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageSet(images, labels, torch.arange(n))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_fast(
    model_name: str, size: BenchSize, device: torch.device, compile: bool
) -> dict[str, Any]:
    """This project's loop: two epochs; the second is timed (the first pays cudnn autotuning
    and, with --compile, compilation, reported separately)."""
    cfg = get_recipe(
        "default",
        epochs=2,
        batch_size=size.batch_size,
        warmup_epochs=0.0,
        weight_averaging="none",
        tta_flip=False,
        compile=compile,
        val_size=0,
    )
    data = DataSplits(train=random_set(size.train_images))
    epochs: list[dict[str, float]] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = train(
        get_arch(model_name), cfg, data, report=lambda m, s: epochs.append(m), device=device
    )
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0

    images = random_set(size.eval_images, seed=1).images.to(device)
    predict_logits(result.model, images[: cfg.eval_batch_size], device=device)  # warm-up
    _sync(device)
    started = time.perf_counter()
    predict_logits(result.model, images, batch_size=cfg.eval_batch_size, device=device)
    _sync(device)
    eval_seconds = time.perf_counter() - started
    timed = epochs[-1]
    return {
        "train_images_per_sec": timed["images_per_sec"],
        "epoch_seconds": timed["epoch_seconds"],
        "first_epoch_seconds": epochs[0]["epoch_seconds"],
        "eval_images_per_sec": len(images) / eval_seconds,
        "eval_seconds": eval_seconds,
        "peak_gpu_gib": peak,
    }


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
                T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
            ]
        )

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def bench_usual(model_name: str, size: BenchSize, device: torch.device) -> dict[str, Any]:
    """The usual loop: DataLoader workers, PIL transforms, fp32, a host sync every step."""
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
    model = create_model(model_name).to(device).train()
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


def _packed_worker(args: tuple[str, int, str, int]) -> float:
    model_name, n_images, device, batch_size = args
    torch.set_num_threads(1)
    size = BenchSize(n_images, 512, 0, batch_size, 0)
    return bench_fast(model_name, size, torch.device(device), compile=False)["train_images_per_sec"]


def bench_packing(model_name: str, size: BenchSize, device: torch.device) -> list[dict[str, Any]]:
    """Total training images/s with 1, 2 and 4 trials sharing the device at once."""
    import multiprocessing as mp

    rows = []
    for k in (1, 2, 4):
        ctx = mp.get_context("spawn")
        with ctx.Pool(k) as pool:
            rates = pool.map(
                _packed_worker, [(model_name, size.train_images, str(device), size.batch_size)] * k
            )
        rows.append({"concurrent": k, "total_images_per_sec": sum(rates), "per_trial": rates})
        print(f"  {k} concurrent: {sum(rates):,.0f} images/s in total", flush=True)
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def format_tables(results: dict[str, Any]) -> str:
    lines = []
    if results.get("models"):
        lines += [
            "| model | params | ours: img/s | ours: s/epoch | eval img/s | eval s | peak GiB "
            "| usual: img/s | usual: s/epoch | speed-up |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in results["models"].items():
            f, u = r["fast"], r["usual"]
            lines.append(
                f"| {name} | {r['params']:,} | {f['train_images_per_sec']:,.0f} | "
                f"{f['epoch_seconds']:.2f} | {f['eval_images_per_sec']:,.0f} | "
                f"{f['eval_seconds']:.3f} | {f['peak_gpu_gib']:.2f} | "
                f"{u['train_images_per_sec']:,.0f} | {u['epoch_seconds']:.1f} | "
                f"{r['speedup']:.1f}x |"
            )
    if results.get("packing"):
        lines += [
            "",
            f"Packing `{results['packing_model']}` on one device:",
            "",
            "| concurrent trials | total img/s | gain over one |",
            "|---|---|---|",
        ]
        base = results["packing"][0]["total_images_per_sec"]
        for row in results["packing"]:
            lines.append(
                f"| {row['concurrent']} | {row['total_images_per_sec']:,.0f} | "
                f"{row['total_images_per_sec'] / base:.2f}x |"
            )
    return "\n".join(lines)


def append_docs(results: dict[str, Any], path: Path = DOCS) -> None:
    header = "# Benchmarks\n\nEach section was written by `python -m training.bench`.\n"
    old = path.read_text() if path.exists() else header
    section = (
        f"\n## {results['date']} on {results['device']}\n\n"
        f"Command: `{results['command']}`; code {results['code_version']}; "
        f"{results['train_images']:,} training images per epoch"
        f"{'; tiny CPU smoke run, not a speed claim' if results['tiny'] else ''}.\n\n"
        f"{format_tables(results)}\n"
    )
    write_text(path, old + section)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mode", choices=["all", "models", "packing"], default="all")
    p.add_argument("--models", nargs="*", default=sorted(SEED_MODELS.values()))
    p.add_argument("--packing-model", default="efficient_resnet")
    p.add_argument("--tiny", action="store_true", help="tiny CPU run for CI; no timing claims")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", action="store_true", help="torch.compile in our loop")
    p.add_argument("--out", type=Path, default=Path("bench_results.json"))
    p.add_argument("--docs", type=Path, default=DOCS, help="markdown file to append to")
    p.add_argument("--no-docs", action="store_true", help="do not append to the docs")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    size = TINY if args.tiny or device.type == "cpu" else FULL
    tiny = size is TINY
    models = (
        ["tiny_resnet"] if tiny and args.models == sorted(SEED_MODELS.values()) else args.models
    )
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "device": device_name(device),
        "command": "python -m training.bench "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "code_version": code_version(),
        "torch": torch.__version__,
        "tiny": tiny,
        "train_images": size.train_images,
        "models": {},
        "packing": [],
    }
    if args.mode in ("all", "models"):
        for name in models:
            print(f"{name}: our loop...", flush=True)
            fast = bench_fast(name, size, device, args.compile)
            print(f"{name}: the usual loop...", flush=True)
            usual = bench_usual(name, size, device)
            results["models"][name] = {
                "params": count_params(get_arch(name)),
                "fast": fast,
                "usual": usual,
                "speedup": fast["train_images_per_sec"] / usual["train_images_per_sec"],
            }
    if args.mode in ("all", "packing"):
        model = "tiny_resnet" if tiny else args.packing_model
        print(f"packing {model}:", flush=True)
        results["packing_model"] = model
        results["packing"] = bench_packing(model, size, device)
    print(format_tables(results))
    write_json(args.out, results)
    if not args.no_docs:
        append_docs(results, args.docs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
