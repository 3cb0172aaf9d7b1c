"""Shared fixtures: tiny synthetic CIFAR-like data that a small network can learn quickly."""

from __future__ import annotations

import contextlib
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import ImageSet
from training.logs import configure_logging

# The tensors here are tiny: one thread avoids OpenMP spin-waiting against other processes
# (Ray workers, a second pytest) on a 2-core machine, which made steps 30x slower.
torch.set_num_threads(1)


def separable_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, 3, 32, 32) images whose class sets the mean colour of the whole image
    (so crops, flips and cutout keep it), plus noise; labels cycle through 0..9."""
    palette = np.random.default_rng(12345).integers(30, 225, size=(10, 3))
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    noise = rng.normal(0, 12, size=(n, 3, 32, 32))
    images = palette[labels][:, :, None, None] + noise
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64)


def separable_set(n: int, seed: int = 0) -> ImageSet:
    images, labels = separable_images(n, seed)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), torch.arange(n))


def write_python_batches(root: Path, n_train: int = 200, n_test: int = 100) -> Path:
    """A cifar-10-batches-py folder of separable images; returns the folder."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    images, labels = separable_images(n_train + n_test)
    flat = images.reshape(len(images), -1)
    per_batch = n_train // 5
    for i in range(5):
        part = slice(i * per_batch, (i + 1) * per_batch)
        batch = {b"data": flat[part], b"labels": labels[part].tolist()}
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    test = {b"data": flat[n_train:], b"labels": labels[n_train:].tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    return folder


@pytest.fixture(autouse=True)
def project_logging() -> None:
    """Every test sees the project's log lines as a user of its commands would (INFO and up,
    on stdout and stderr), whatever an earlier test's command set."""
    configure_logging(logging.INFO)


@pytest.fixture
def cifar_batches(tmp_path: Path) -> Path:
    return write_python_batches(tmp_path / "data")


@contextlib.contextmanager
def interrupted_after_epoch(monkeypatch, epoch: int):
    """Inside the block, a training run is interrupted (KeyboardInterrupt, as Ctrl-C) right
    after it logs `epoch`, whose checkpoint is then on disk; the block must end that way."""
    from training import run as training_run

    real_log = training_run.log_epoch

    def interrupting(metrics, total, started):
        real_log(metrics, total, started)
        if metrics["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(training_run, "log_epoch", interrupting)
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        monkeypatch.setattr(training_run, "log_epoch", real_log)


def scheduled_lrs(cfg, steps_per_epoch: int) -> list[float]:
    """The learning rate of every step of `cfg`'s schedule, as the training loop builds it."""
    from training.loop import _make_scheduler

    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=cfg.lr)
    scheduler = _make_scheduler(optimizer, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out
