"""Labels from a trained network, and the `ID,Labels` file they are handed in as."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from training.artifacts import atomic_write, write_json
from training.data import ImageSet
from training.loop import predict_logits
from training.precision import PrecisionPlan


def predict_labels(
    model: torch.nn.Module,
    images: ImageSet,
    *,
    tta_flip: bool,
    device: torch.device,
    precision: str | PrecisionPlan = "auto",
) -> torch.Tensor:
    logits = predict_logits(
        model, images.images, tta_flip=tta_flip, device=device, precision=precision
    )
    return logits.argmax(1).cpu()


def write_predictions(
    path: str | Path, ids: torch.Tensor, labels: torch.Tensor, meta: dict
) -> Path:
    """The `ID,Labels` CSV, plus a JSON sidecar (same name, .json) with the run's metadata."""
    frame = pd.DataFrame({"ID": ids.cpu().numpy(), "Labels": labels.cpu().numpy()})
    path = Path(path)
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))
    write_json(path.with_suffix(path.suffix + ".json"), meta)
    return path
