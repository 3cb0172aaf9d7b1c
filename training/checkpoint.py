"""Checkpoints: written whole or not at all, read back with `weights_only=True`.

A checkpoint (see `training.loop.TrainState.checkpoint`) holds tensors and plain data only:
the model, optimizer, scheduler and RNG states, the epoch, both configs, the parameter
count, the seed and the code version. Loading never unpickles arbitrary objects, so a
checkpoint carrying code is refused instead of run.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models import ArchConfig, ResNet
from training.artifacts import atomic_write
from training.config import TrainConfig


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not one of this project's."""


def save_checkpoint(path: str | Path, ckpt: dict[str, Any]) -> Path:
    """torch.save into a temporary file that replaces `path` once complete."""
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass the checkpoint.pt that "
            "`python -m training.train --out DIR` wrote (DIR/checkpoint.pt)"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data and was "
            f"refused (it could run code when loaded): {str(e).splitlines()[0]}"
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {e}") from None
    if not isinstance(ckpt, dict) or "arch" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a checkpoint written by this project")
    return ckpt


def configs_from_checkpoint(ckpt: dict[str, Any]) -> tuple[ArchConfig, TrainConfig]:
    return ArchConfig.from_dict(ckpt["arch"]), TrainConfig.from_dict(ckpt["train_config"])


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """The network to predict with: averaged (EMA/SWA) weights when the run kept them."""
    model = ResNet(ArchConfig.from_dict(ckpt["arch"]))
    weights = ckpt.get("inference_model") or ckpt["model"]
    model.load_state_dict(weights)
    return model.to(device).eval()
