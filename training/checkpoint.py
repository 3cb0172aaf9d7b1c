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

from models import ArchConfig, ResNet, count_params
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


# A checkpoint's network is counted on the meta device before it is built: more than this
# many parameters (800 MB of float32 weights) is refused rather than allocated.
MAX_CHECKPOINT_PARAMS = 200_000_000
MAX_CHECKPOINT_BLOCKS = 512  # counting even on the meta device takes time per block


def arch_from_checkpoint(ckpt: dict[str, Any], where: str = "the checkpoint") -> ArchConfig:
    """The checkpoint's architecture, checked before anything is built: valid fields, a sane
    number of blocks, and a parameter count (on the meta device) under the limit. A small
    file claiming a network of 200,000 channels is refused, not allocated."""
    try:
        arch = ArchConfig.from_dict(dict(ckpt["arch"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: its architecture is not valid ({e})") from None
    blocks = sum(stage.blocks for stage in arch.stages)
    if blocks > MAX_CHECKPOINT_BLOCKS:
        raise CheckpointError(
            f"{where}: its architecture has {blocks:,} residual blocks, more than the "
            f"{MAX_CHECKPOINT_BLOCKS} this tool builds; it was not written by this project"
        )
    params = count_params(arch)
    if params > MAX_CHECKPOINT_PARAMS:
        raise CheckpointError(
            f"{where}: its architecture has {params:,} parameters, more than the "
            f"{MAX_CHECKPOINT_PARAMS:,} this tool builds from a checkpoint; it was not written "
            "by this project"
        )
    return arch


def configs_from_checkpoint(
    ckpt: dict[str, Any], where: str = "the checkpoint"
) -> tuple[ArchConfig, TrainConfig]:
    return arch_from_checkpoint(ckpt, where), TrainConfig.from_dict(ckpt["train_config"])


def model_from_checkpoint(
    ckpt: dict[str, Any], device: str | torch.device = "cpu", where: str = "the checkpoint"
) -> nn.Module:
    """The network to predict with: averaged (EMA/SWA) weights when the run kept them."""
    model = ResNet(arch_from_checkpoint(ckpt, where))
    weights = ckpt.get("inference_model") or ckpt["model"]
    model.load_state_dict(weights)
    return model.to(device).eval()
