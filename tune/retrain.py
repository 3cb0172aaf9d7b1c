"""Retrain the best configuration on train + validation with several seeds, test it,
and predict. Each seed's run checkpoints every epoch and resumes if interrupted; the seeds
can train one after the other (`retrain`) or as concurrent Ray tasks that share a GPU
(`retrain_seed_in_storage` per seed, then `summarize_in_storage`)."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from models import ArchConfig
from training.artifacts import code_version, write_json
from training.checkpoint import load_checkpoint, model_from_checkpoint
from training.config import TrainConfig, fit_batch_to_data
from training.data import DataSplits, ImageSet
from training.logs import configure_logging
from training.loop import predict_logits, resolve_device
from training.predictions import write_predictions
from training.run import run_training
from tune.storage import ExperimentStorage

logger = logging.getLogger(__name__)


def checked_device(device: str) -> torch.device:
    """The retrain's device; one that was given a GPU and sees none fails here, with the
    reason, rather than training on the CPU unnoticed (on a lent GPU that spends the lease)."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            "the retrain was given a GPU (--gpus-per-trial > 0) but sees no CUDA device (torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda}); fix the GPU setup, "
            "or pass --gpus-per-trial 0 to retrain on CPUs"
        )
    return resolve_device(device)


def concat_sets(a: ImageSet, b: ImageSet) -> ImageSet:
    return ImageSet(
        torch.cat([a.images, b.images]),
        torch.cat([a.labels, b.labels]),
        torch.cat([a.ids, b.ids]),
    )


def retrain_seed(
    arch: ArchConfig,
    cfg: TrainConfig,
    train: ImageSet,
    test: ImageSet,
    out: Path,
    seed: int,
    *,
    device: str = "auto",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one seed into out/seed_<seed>/ (continuing its checkpoint, or keeping it if it
    already finished) and return its metrics."""
    folder = out / f"seed_{seed}"
    seed_cfg, note = fit_batch_to_data(cfg.replace(seed=seed, val_size=0), len(train))
    if note:
        logger.info("retrain seed %d: %s", seed, note)
    done = folder / "metrics.json"
    if done.exists() and json.loads(done.read_text()).get("epochs") == seed_cfg.epochs:
        logger.info("retrain seed %d: already finished, kept", seed)
        return json.loads(done.read_text())
    resume = None
    if (folder / "checkpoint.pt").exists():
        resume = load_checkpoint(folder / "checkpoint.pt")
        logger.info("retrain seed %d: resuming after epoch %d", seed, resume["epoch"])
    logger.info(
        "retrain seed %d: %d epochs on %s images, then a test on %s images",
        seed,
        seed_cfg.epochs,
        f"{len(train):,}",
        f"{len(test):,}",
    )
    folder.mkdir(parents=True, exist_ok=True)
    splits = DataSplits(train=train, val=None, test=test)
    result = run_training(
        arch,
        seed_cfg,
        splits,
        folder,
        device=str(checked_device(device)),
        resume=resume,
        extra=extra,
    )
    return result.metrics


def summarize(
    arch: ArchConfig,
    cfg: TrainConfig,
    train_images: int,
    test: ImageSet,
    out: Path,
    per_seed: list[dict[str, Any]],
    *,
    seeds: list[int],
    device: str = "auto",
    gpu_share: float = 1.0,
    wall_seconds: float = 0.0,
    predict: ImageSet | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """out/metrics.json over the seeds' runs (test accuracy per seed, mean, std, the seeds'
    averaged predictions) and, given `predict`, out/predictions.csv from those averages.
    `test_acc` is as the recipe tests (its own flip TTA setting); `test_acc_tta` and
    `test_acc_plain` test every seed with and without flip TTA, whatever the recipe says,
    so two retrains compare under the same test-time augmentation."""
    device_obj = checked_device(device)
    accs = [r["test_acc"] for r in per_seed]
    seconds = sum(r["seconds"] for r in per_seed)
    metrics: dict[str, Any] = {
        "test_acc": accs,
        "test_acc_mean": statistics.fmean(accs),
        "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "seeds": seeds,
        "epochs": cfg.epochs,
        "params": per_seed[0]["params"],
        "seconds": seconds,  # training seconds, summed over the seeds
        # Each seed held `gpu_share` of a GPU while it trained.
        "gpu_seconds": seconds * gpu_share if device_obj.type == "cuda" else 0.0,
        "wall_seconds": wall_seconds,  # from the first seed's start to the last one's end
        "device": str(device_obj),
        "precision": per_seed[0].get("precision"),  # as the seeds trained ("auto" resolved)
        "train_images": train_images,
        "test_images": len(test),
        "arch": arch.to_dict(),
        # As the seeds trained it (a batch capped to the data shows here).
        "train_config": per_seed[0].get("train_config", cfg.to_dict()),
        "code_version": code_version(),
        "checkpoints": [str(out / f"seed_{seed}" / "checkpoint.pt") for seed in seeds],
        **(extra or {}),
    }
    models = [
        model_from_checkpoint(load_checkpoint(c, map_location=device_obj), device_obj)
        for c in metrics["checkpoints"]
    ]
    if device_obj.type == "cuda" and cfg.channels_last:  # as the seeds trained
        models = [m.to(memory_format=torch.channels_last) for m in models]
    # Each seed's test logits once with and once without flip TTA; the seeds' ensemble
    # averages those of the recipe's own setting.
    test_logits = _test_logits(models, seeds, test, cfg, device_obj)
    for key, tta in (("test_acc_tta", True), ("test_acc_plain", False)):
        per_model = [_accuracy(logits, test.labels) for logits in test_logits[tta]]
        metrics[key] = per_model
        metrics[f"{key}_mean"] = statistics.fmean(per_model)
        metrics[f"{key}_std"] = statistics.stdev(per_model) if len(per_model) > 1 else 0.0
    if len(models) > 1:  # one seed's own test accuracy is already measured
        ensemble = torch.stack(test_logits[cfg.tta_flip]).mean(0)
        metrics["ensemble_test_acc"] = _accuracy(ensemble, test.labels)
    if predict is not None:
        logger.info("predicting %s images with the %d seed(s)", f"{len(predict):,}", len(models))
        logits = _logits(models, predict.images, cfg, device_obj, cfg.tta_flip)
        labels = torch.stack(logits).mean(0).argmax(1).cpu()
        write_predictions(out / "predictions.csv", predict.ids, labels, metrics)
        metrics["predictions"] = str(out / "predictions.csv")
    write_json(out / "metrics.json", metrics)
    return metrics


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
    """Train one model per seed into out/seed_<s>/, one after the other, then write
    out/metrics.json and, given `predict`, out/predictions.csv."""
    started = time.perf_counter()
    per_seed = [
        retrain_seed(arch, cfg, train, test, out, seed, device=device, extra=extra)
        for seed in seeds
    ]
    return summarize(
        arch,
        cfg,
        len(train),
        test,
        out,
        per_seed,
        seeds=seeds,
        device=device,
        wall_seconds=time.perf_counter() - started,
        predict=predict,
        extra=extra,
    )


def _test_logits(
    models: list, seeds: list[int], test: ImageSet, cfg: TrainConfig, device: torch.device
) -> dict[bool, list[torch.Tensor]]:
    """{flip TTA: each seed's test logits}, one seed and one setting at a time, each pass
    logged: on a CPU the passes take minutes in all."""
    passes = [(tta, i) for tta in (True, False) for i in range(len(models))]
    logger.info(
        "testing the %d retrained seed(s) on %s test images with and without flip TTA (%d passes)",
        len(models),
        f"{len(test):,}",
        len(passes),
    )
    started = time.perf_counter()
    logits: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    for done, (tta, i) in enumerate(passes, 1):
        [seed_logits] = _logits([models[i]], test.images, cfg, device, tta)
        logits[tta].append(seed_logits)
        logger.info(
            "tested seed %d %s flip TTA (%d/%d): %.2f%%, %.0f s so far",
            seeds[i],
            "with" if tta else "without",
            done,
            len(passes),
            100 * _accuracy(seed_logits, test.labels),
            time.perf_counter() - started,
        )
    return logits


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1).cpu() == labels).float().mean().item()


def _logits(
    models: list, images: torch.Tensor, cfg: TrainConfig, device: Any, tta: bool
) -> list[torch.Tensor]:
    """Each model's logits, at the precision and memory format the seeds trained with."""
    return [
        predict_logits(
            m,
            images,
            batch_size=cfg.eval_batch_size,
            tta_flip=tta,
            device=device,
            precision=cfg.precision,
            channels_last=cfg.channels_last,
        )
        for m in models
    ]


def retrain_seed_in_storage(
    storage_path: str,
    name: str,
    arch: ArchConfig,
    cfg: TrainConfig,
    train: ImageSet,
    test: ImageSet,
    seed: int,
    *,
    device: str,
    threads: int,
    log_level: int = logging.INFO,
    extra: dict[str, Any] | None = None,
    out: str = "final",
) -> dict[str, Any]:
    """`retrain_seed` into the experiment's out/seed_<seed>/ (final/, or baseline_final/ for
    the seed baseline), wherever the experiment is stored: run as a Ray task, possibly on
    another node beside other seeds, it first fetches what an interrupted retrain of this seed
    left there, and copies its folder back."""
    configure_logging(log_level)
    torch.set_num_threads(threads)
    checked_device(device)  # before anything is fetched
    storage = ExperimentStorage(storage_path, name)
    folder = f"{out}/seed_{seed}"
    storage.pull(folder)
    metrics = retrain_seed(
        arch, cfg, train, test, storage.local_dir / out, seed, device=device, extra=extra
    )
    storage.push(folder)
    return metrics


def summarize_in_storage(
    storage_path: str,
    name: str,
    arch: ArchConfig,
    cfg: TrainConfig,
    train_images: int,
    test: ImageSet,
    per_seed: list[dict[str, Any]],
    *,
    seeds: list[int],
    device: str,
    threads: int,
    gpu_share: float,
    wall_seconds: float,
    log_level: int = logging.INFO,
    predict: ImageSet | None = None,
    extra: dict[str, Any] | None = None,
    out: str = "final",
) -> dict[str, Any]:
    """`summarize` the seeds' runs in the experiment's `out` folder, wherever it is stored."""
    configure_logging(log_level)
    torch.set_num_threads(threads)
    storage = ExperimentStorage(storage_path, name)
    storage.pull(out)
    metrics = summarize(
        arch,
        cfg,
        train_images,
        test,
        storage.local_dir / out,
        per_seed,
        seeds=seeds,
        device=device,
        gpu_share=gpu_share,
        wall_seconds=wall_seconds,
        predict=predict,
        extra=extra,
    )
    storage.push(out)
    return metrics
