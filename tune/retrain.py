"""Retrain the best configuration on train + validation with several seeds, test it,
and predict. Each seed's run checkpoints every epoch and resumes if interrupted."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import torch

from models import ArchConfig
from training.artifacts import code_version, write_json
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig
from training.data import ImageSet
from training.loop import DataSplits, predict_logits, resolve_device
from training.predict import write_predictions
from training.train import run_training


def concat_sets(a: ImageSet, b: ImageSet) -> ImageSet:
    return ImageSet(
        torch.cat([a.images, b.images]),
        torch.cat([a.labels, b.labels]),
        torch.cat([a.ids, b.ids]),
    )


def retrain(
    arch: ArchConfig,
    cfg: TrainConfig,
    train: ImageSet,
    test: ImageSet,
    out: Path,
    *,
    seeds: list[int],
    device: str = "auto",
    predict: ImageSet | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one model per seed into out/seed_<s>/, then write out/metrics.json and, given
    `predict`, out/predictions.csv from the seeds' averaged logits."""
    device_obj = resolve_device(device)
    splits = DataSplits(train=train, val=None, test=test)
    per_seed = []
    for i, seed in enumerate(seeds):
        folder = out / f"seed_{seed}"
        seed_cfg = cfg.replace(seed=seed, val_size=0)
        done = folder / "metrics.json"
        if done.exists() and json.loads(done.read_text()).get("epochs") == seed_cfg.epochs:
            print(f"retrain seed {seed}: already finished, kept", flush=True)
            per_seed.append(
                {**json.loads(done.read_text()), "checkpoint": str(folder / "checkpoint.pt")}
            )
            continue
        resume = None
        if (folder / "checkpoint.pt").exists():
            resume = load_checkpoint(folder / "checkpoint.pt")
            print(f"retrain seed {seed}: resuming after epoch {resume['epoch']}", flush=True)
        print(f"retrain seed {seed} ({i + 1}/{len(seeds)}), {seed_cfg.epochs} epochs", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        result = run_training(
            arch, seed_cfg, splits, folder, device=str(device_obj), resume=resume, extra=extra
        )
        per_seed.append({**result.metrics, "checkpoint": str(folder / "checkpoint.pt")})

    accs = [r["test_acc"] for r in per_seed]
    metrics: dict[str, Any] = {
        "test_acc": accs,
        "test_acc_mean": statistics.fmean(accs),
        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "seeds": seeds,
        "epochs": cfg.epochs,
        "params": per_seed[0]["params"],
        "seconds": sum(r["seconds"] for r in per_seed),
        "gpu_seconds": sum(r["seconds"] for r in per_seed) if device_obj.type == "cuda" else 0.0,
        "device": str(device_obj),
        "train_images": len(train),
        "test_images": len(test),
        "arch": arch.to_dict(),
        "train_config": cfg.to_dict(),
        "code_version": code_version(),
        "checkpoints": [r["checkpoint"] for r in per_seed],
        **(extra or {}),
    }
    models = [
        model_from_checkpoint(load_checkpoint(c, map_location=device_obj), device_obj)
        for c in metrics["checkpoints"]
    ]
    if len(models) > 1:  # one seed's own test accuracy is already measured
        test_logits = _mean_logits(models, test.images, cfg, device_obj)
        metrics["ensemble_test_acc"] = (
            (test_logits.argmax(1).cpu() == test.labels).float().mean().item()
        )
    if predict is not None:
        labels = _mean_logits(models, predict.images, cfg, device_obj).argmax(1).cpu()
        write_predictions(out / "predictions.csv", predict.ids, labels, metrics)
        metrics["predictions"] = str(out / "predictions.csv")
    write_json(out / "metrics.json", metrics)
    return metrics


def _mean_logits(models: list, images: torch.Tensor, cfg: TrainConfig, device) -> torch.Tensor:
    return torch.stack(
        [
            predict_logits(
                m, images, batch_size=cfg.eval_batch_size, tta_flip=cfg.tta_flip, device=device
            )
            for m in models
        ]
    ).mean(0)


def retrain_in_storage(
    storage_path: str,
    name: str,
    arch: ArchConfig,
    cfg: TrainConfig,
    train: ImageSet,
    test: ImageSet,
    *,
    seeds: list[int],
    device: str,
    threads: int,
    predict: ImageSet | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`retrain` into the experiment's final/, wherever the experiment is stored: run as a
    Ray task, possibly on another node, it first fetches what an earlier, interrupted retrain
    left there, and copies everything back when done."""
    from tune.storage import ExperimentStorage

    torch.set_num_threads(threads)
    storage = ExperimentStorage(storage_path, name)
    storage.pull("final")
    metrics = retrain(
        arch,
        cfg,
        train,
        test,
        storage.local_dir / "final",
        seeds=seeds,
        device=device,
        predict=predict,
        extra=extra,
    )
    storage.push("final")
    return metrics
