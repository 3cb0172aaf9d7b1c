"""A finished search as an object: what `tune.api.search` returns and `load(folder)` reads
back from any finished experiment folder (STORAGE/NAME), with the same content either way.

The folder is the record; this reads it: trials.parquet (the trials), best_config.json (the
winner), final/metrics.json (the winner's retrain), baseline_final/metrics.json or a matching
`--space seeds` experiment (the seed network it is compared with), report.md and its plots.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tune.compare import Comparison, welch

# The leaderboard's columns, as the report's "Best trials" table shows them.
LEADERBOARD = ["trial_id", "status", "params", "stages", "score", "epochs_run", "train_seconds"]
PLOTS = ("params_vs_acc.png", "curves.png", "rungs.png", "importances.png")


class ResultError(ValueError):
    """A folder that is not a finished experiment, or a result without what was asked."""


@dataclass(frozen=True)
class Accuracy:
    """Test accuracy over the retrain's seeds (fractions, 0.9 is 90%)."""

    mean: float
    std: float
    per_seed: tuple[float, ...]

    def __str__(self) -> str:
        return f"{self.mean:.2%} ± {self.std:.2%} ({len(self.per_seed)} seed(s))"


@dataclass(frozen=True)
class Winner:
    """The configuration the search chose."""

    trial_id: str
    score: float  # validation: mean of its finalist re-runs where it has any, else its score
    params: int  # trainable parameters
    stages: str  # blocks x channels per stage, e.g. "1x8 1x16"
    arch: dict[str, Any]  # models.ArchConfig as a dict
    train_config: dict[str, Any]  # training.config.TrainConfig of the retrain, as a dict
    config: dict[str, Any]  # the trial's sampled configuration (Ray's config)


@dataclass(eq=False)
class SearchResult:
    """A finished search. `winner`, `trials` (trials.parquet), `test_acc_tta` and
    `test_acc_plain` (the retrain's test accuracy with and without flip TTA; None without a
    retrain), `baseline` and `comparison` (against the best seed network, when there is
    one), `folder`, `report`; `leaderboard()`, `plots`, `load_model()`, `predict()`."""

    folder: Path
    settings: dict[str, Any]  # search_settings.json
    winner: Winner
    trials: pd.DataFrame  # every trial; `role` tells the search's from re-runs and baselines
    final: dict[str, Any] | None  # final/metrics.json
    baseline: dict[str, Any] | None = None  # the best seed network and its retrain's metrics
    comparison: dict[str, Comparison | None] | None = None  # by "flip TTA" / "no TTA"
    _models: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchResult):
            return NotImplemented
        same = ("folder", "settings", "winner", "final", "baseline", "comparison")
        return all(getattr(self, k) == getattr(other, k) for k in same) and self.trials.equals(
            other.trials
        )

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def report(self) -> Path:
        return self.folder / "report.md"

    @property
    def plots(self) -> dict[str, Path]:
        """The report's figures that exist, by file name."""
        return {p: self.folder / p for p in PLOTS if (self.folder / p).is_file()}

    @property
    def test_acc_tta(self) -> Accuracy | None:
        return _accuracy(self.final, "test_acc_tta")

    @property
    def test_acc_plain(self) -> Accuracy | None:
        return _accuracy(self.final, "test_acc_plain")

    def leaderboard(self, n: int = 10) -> pd.DataFrame:
        """The search's best `n` trials by score (the trials stopped early, which have none,
        after them), with the report's columns."""
        search = self.trials
        if "role" in search:
            search = search[search["role"] == "search"]
        return search[[c for c in LEADERBOARD if c in search]].head(n).reset_index(drop=True)

    def summary(self) -> str:
        w = self.winner
        lines = [
            f"search {self.name} ({self.settings.get('space')}): "
            f"{int((self.trials.get('role', pd.Series(dtype=str)) == 'search').sum())} trials",
            f"winner: trial {w.trial_id}, {w.stages}, {w.params:,} params, validation "
            f"{w.score:.2%}",
        ]
        if self.final:
            lines.append(f"test with flip TTA: {self.test_acc_tta}")
            lines.append(f"test without TTA: {self.test_acc_plain}")
        else:
            lines.append("not retrained (skip_retrain)")
        if self.baseline and self.comparison:
            lines.append(f"against the best seed network ({self.baseline.get('preset')}):")
            for label, comparison in self.comparison.items():
                text = comparison.sentence() if comparison else "needs 2 seeds per side"
                lines.append(f"  {label}: {text}")
        lines.append(f"report: {self.report}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"<SearchResult {self.folder}: winner trial {self.winner.trial_id}>"

    def _repr_markdown_(self) -> str:  # a notebook shows this for a cell's last value
        return "```\n" + self.summary() + "\n```"

    def checkpoints(self) -> list[Path]:
        """The retrained seeds' checkpoints (final/seed_*/checkpoint.pt)."""
        if not self.final:
            raise ResultError(
                f"{self.folder} has no retrained network (the search ran with skip_retrain); "
                "run it again without skip_retrain (same name) to retrain the winner"
            )
        return [self.folder / "final" / f"seed_{s}" / "checkpoint.pt" for s in self.final["seeds"]]

    def load_model(self, seed: int | None = None, device: str = "cpu") -> Any:
        """The winner retrained with `seed` (default: the first retrain seed), a torch
        network in eval mode, with its averaged weights where the run kept them."""
        from training.checkpoint import load_checkpoint, model_from_checkpoint

        paths = self.checkpoints()
        seeds = list(self.final["seeds"])  # type: ignore[index]
        if seed is not None and seed not in seeds:
            raise ResultError(f"no retrain seed {seed}; the retrain seeds are {seeds}")
        path = paths[seeds.index(seed) if seed is not None else 0]
        return model_from_checkpoint(load_checkpoint(path, map_location=device), device, str(path))

    def predict(
        self,
        images: np.ndarray | Any | str | os.PathLike | Sequence[str | os.PathLike],
        *,
        tta: bool | None = None,
        device: str = "auto",
    ) -> np.ndarray:
        """Labels 0-9 (`training.data.CLASSES` names them) for `images`: a uint8 array
        (N, 32, 32, 3) or one image (32, 32, 3), as numpy or PIL give them, or image files
        (a path or a list of paths; JPEG, PNG, ...). Every retrain seed's network predicts
        and their outputs are averaged, as final/predictions.csv is made; with flip TTA if
        the recipe tested with it (`tta` overrides)."""
        import torch

        from training.config import TrainConfig
        from training.loop import resolve_device
        from tune.retrain import _logits

        batch = _as_images(images)
        dev = resolve_device(device)
        key = str(dev)
        if key not in self._models:
            self._models[key] = [self.load_model(s, dev) for s in self.final["seeds"]]  # type: ignore[index]
        cfg = TrainConfig.from_dict(self.winner.train_config)
        use_tta = cfg.tta_flip if tta is None else tta
        with torch.no_grad():
            logits = _logits(self._models[key], batch, cfg, dev, use_tta)
        return torch.stack(logits).mean(0).argmax(1).cpu().numpy()


def _as_images(images: Any) -> Any:
    """uint8 (N, 3, 32, 32) torch images from an array (N, 32, 32, 3) or image files."""
    import torch

    from training.data import read_image_files

    if isinstance(images, str | os.PathLike):
        return read_image_files([images])
    if isinstance(images, list | tuple) and images and isinstance(images[0], str | os.PathLike):
        return read_image_files(list(images))
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != (32, 32, 3):
        raise ValueError(
            f"images must be uint8 (N, 32, 32, 3) (height, width, RGB), got {array.dtype} "
            f"{array.shape}; or pass image files"
        )
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def _accuracy(metrics: dict[str, Any] | None, key: str) -> Accuracy | None:
    if not metrics or key not in metrics:
        return None
    return Accuracy(metrics[f"{key}_mean"], metrics[f"{key}_std"], tuple(metrics[key]))


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _baseline(folder: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The seed network compared with, with its retrain's metrics in "final": the one
    retrained in this experiment (--baseline seeds), else a matching `--space seeds`
    experiment in the same storage folder, as the report finds it."""
    own = _read_json(folder / "baseline_final" / "metrics.json")
    if own is not None:
        return {"experiment": f"{folder.name}/baseline", "preset": own.get("preset"), "final": own}
    from tune.finalize import find_seed_baseline
    from tune.settings import SearchSettings

    try:
        found = find_seed_baseline(SearchSettings.from_saved(settings, str(folder)))
    except (ValueError, TypeError):
        return None
    if not found or found.get("differences") or not found.get("final"):
        return None
    return found


def _preset(folder: Path, trials: pd.DataFrame) -> str | None:
    """The best seed network's preset in this experiment's baseline trials."""
    if "role" not in trials or "config/preset" not in trials:
        return None
    rows = trials[(trials["role"] == "baseline") & (trials["status"] == "completed")]
    rows = rows.dropna(subset=["score"]).sort_values("score", ascending=False, kind="stable")
    return str(rows["config/preset"].iloc[0]) if len(rows) else None


def load(folder: str | os.PathLike) -> SearchResult:
    """The SearchResult of a finished experiment folder (STORAGE/NAME)."""
    folder = Path(folder).expanduser().resolve()
    settings = _read_json(folder / "search_settings.json")
    best = _read_json(folder / "best_config.json")
    if settings is None or best is None or not (folder / "trials.parquet").is_file():
        raise ResultError(
            f"{folder} is not a finished experiment (it needs search_settings.json, "
            "trials.parquet and best_config.json); pass a folder STORAGE/NAME that a search "
            "finished in, or run the search again with the same name to finish it"
        )
    trials = pd.read_parquet(folder / "trials.parquet")
    winner = Winner(
        trial_id=str(best["trial_id"]),
        score=float(best.get("val_mean", best["score"])),
        params=int(best["params"]),
        stages=str(best.get("stages", "")),
        arch=best["arch"],
        train_config=best["train_config"],
        config=best.get("config", {}),
    )
    final = _read_json(folder / "final" / "metrics.json")
    baseline = _baseline(folder, settings)
    if baseline is not None and baseline.get("preset") is None:
        baseline["preset"] = _preset(folder, trials)
    comparison = None
    if final and baseline:
        theirs = baseline["final"]
        with warnings.catch_warnings():  # SciPy's, when every seed of a side scored alike
            warnings.filterwarnings("ignore", message="Precision loss occurred")
            comparison = {
                label: welch(final[key], theirs[key]) if key in final and key in theirs else None
                for label, key in (("flip TTA", "test_acc_tta"), ("no TTA", "test_acc_plain"))
            }
    return SearchResult(folder, settings, winner, trials, final, baseline, comparison)
