"""The campaign's preflight, in seconds: is the GPU there, does Ray start and see it, how
long does a Ray worker take to start, do the data load, and (--check-compile) does
torch.compile work?

    python -m benchmarks.preflight --data DIR [--need-gpu] [--check-compile] --out FILE

Writes (and prints) one JSON object: versions, each check's result and seconds, and
`failed` with the first failure's reason (exit status 1), so that a campaign stops at once
with the reason instead of spending a lease on a machine that cannot run it. Its own wall
time is what a search command takes to start (Python, torch, Ray, the data), and the
worker's start what each Ray worker adds: the campaign's plan counts both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any


def _import_like_a_trial() -> float:
    """In a new Ray worker: import what a trial's worker imports before it trains."""
    import torch  # noqa: F401

    import training.loop  # noqa: F401
    import tune.trainable  # noqa: F401

    return time.time()


def check_compile(device: str) -> dict[str, Any]:
    """torch.compile of a small network, forward and backward, as the `speedrun` recipe's
    loop compiles: inductor writes C++ (on a CPU) or Triton kernels (on CUDA) and builds them,
    so it needs a C compiler, and Triton on CUDA. Its seconds, or `failed` with the reason."""
    import torch

    # Inductor takes $CXX if set, else looks for a C++ compiler on PATH.
    cxx = os.environ.get("CXX")
    found = shutil.which(cxx) if cxx else shutil.which("c++") or shutil.which("g++")
    out: dict[str, Any] = {"c_compiler": found}
    if device == "cuda":
        try:
            import triton

            out["triton"] = triton.__version__
        except ImportError as e:
            out["failed"] = f"torch.compile on CUDA needs Triton, which does not import: {e}"
            return out
    started = time.perf_counter()
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).to(device)
    try:
        loss = torch.compile(model)(torch.randn(4, 3, 16, 16, device=device)).sum()
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
    except Exception as e:  # inductor raises many kinds; each means the recipe cannot run
        compiler = found or f"none{f' at CXX={cxx}' if cxx else ''} (install g++ or set CXX)"
        out["failed"] = (
            f"torch.compile of a small network failed on {device} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); the speedrun recipe compiles its "
            f"network: it needs a working C compiler (found: {compiler})"
            + (" and Triton" if device == "cuda" else "")
        )
        return out
    out["compile_seconds"] = time.perf_counter() - started
    return out


def run_checks(data: str, need_gpu: bool, compile_check: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"python": platform.python_version()}
    started = time.perf_counter()
    import torch
    import torchvision

    out.update(torch=torch.__version__, torchvision=torchvision.__version__)
    out["cuda"] = torch.cuda.is_available()
    if out["cuda"]:
        out["gpu"] = torch.cuda.get_device_name(0)
    out["import_seconds"] = time.perf_counter() - started
    if need_gpu and not out["cuda"]:
        out["failed"] = (
            f"no CUDA device visible to torch {torch.__version__} (built for CUDA "
            f"{torch.version.cuda}); the campaign needs a GPU (or pass --rehearse for the "
            "CPU rehearsal)"
        )
        return out

    started = time.perf_counter()
    from tune.runner import cluster_gpus, start_ray

    nodes = start_ray(None, quiet=True)
    import ray

    try:
        out["ray"] = ray.__version__
        out["ray_gpus"] = cluster_gpus(nodes)
        out["ray_cpus"] = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
        out["ray_auth_mode"] = os.environ.get("RAY_AUTH_MODE")
        out["ray_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        ray.get(ray.remote(num_cpus=0)(_import_like_a_trial).remote())
        out["worker_seconds"] = time.perf_counter() - started
    finally:
        ray.shutdown()
    if need_gpu and out["ray_gpus"] < 1:
        out["failed"] = "torch sees a GPU but Ray does not (no GPU resource on the local node)"
        return out

    if compile_check:
        compiled = check_compile("cuda" if out["cuda"] else "cpu")
        out["compile"] = compiled
        if "failed" in compiled:
            out["failed"] = compiled["failed"]
            return out

    started = time.perf_counter()
    from training.data import load_cifar10

    loaded = load_cifar10(data)
    out["train_images"], out["test_images"] = len(loaded.train), len(loaded.test)
    out["data_seconds"] = time.perf_counter() - started
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        allow_abbrev=False, prog="python -m benchmarks.preflight", description=__doc__
    )
    p.add_argument("--data", required=True)
    p.add_argument("--need-gpu", action="store_true")
    p.add_argument(
        "--check-compile",
        action="store_true",
        help="also compile a small network with torch.compile (the speedrun recipe does)",
    )
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    try:
        result = run_checks(args.data, args.need_gpu, args.check_compile)
    except Exception as e:  # any failure is the preflight's answer, with its reason
        result = {"failed": f"{type(e).__name__}: {e}"}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if "failed" in result else 0


if __name__ == "__main__":
    sys.exit(main())
