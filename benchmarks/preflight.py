"""The campaign's preflight, in seconds: is the GPU there, does Ray see it, do the data load?

    python -m benchmarks.preflight --data DIR [--need-gpu] --out FILE

Writes (and prints) one JSON object: versions, each check's result and seconds, and
`failed` with the first failure's reason (exit status 1), so that a campaign stops at once
with the reason instead of spending a lease on a machine that cannot run it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any


def run_checks(data: str, need_gpu: bool) -> dict[str, Any]:
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
            f"{torch.version.cuda}); the campaign needs a GPU (or pass --smoke for the CPU mode)"
        )
        return out

    started = time.perf_counter()
    import ray

    from tune.runner import cluster_gpus, start_ray

    try:
        nodes = start_ray(None, quiet=True)
        out["ray"] = ray.__version__
        out["ray_gpus"] = cluster_gpus(nodes)
        out["ray_cpus"] = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
    finally:
        ray.shutdown()
    out["ray_seconds"] = time.perf_counter() - started
    if need_gpu and out["ray_gpus"] < 1:
        out["failed"] = "torch sees a GPU but Ray does not (no GPU resource on the local node)"
        return out

    started = time.perf_counter()
    from training.data import load_cifar10

    loaded = load_cifar10(data)
    out["train_images"], out["test_images"] = len(loaded.train), len(loaded.test)
    out["data_seconds"] = time.perf_counter() - started
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.preflight", description=__doc__)
    p.add_argument("--data", required=True)
    p.add_argument("--need-gpu", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    try:
        result = run_checks(args.data, args.need_gpu)
    except Exception as e:  # any failure is the preflight's answer, with its reason
        result = {"failed": f"{type(e).__name__}: {e}"}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if "failed" in result else 0


if __name__ == "__main__":
    sys.exit(main())
