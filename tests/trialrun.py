"""One trial's function (`tune.trainable.run_trial`) run in this process without Ray: what
Ray gives a trial (its report, its checkpoint to resume from, the node's id, its folder, the
data in the object store) replaced by stand-ins, so that a test sees exactly what the trial
would send to Ray. `python -m tests.trialrun` runs one in a fresh process and prints it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models import count_params
from search_spaces import trial_configs
from training.data import DataSplits
from tune.trainable import TrialData, TrialSettings

from .conftest import separable_set

ROOT = Path(__file__).resolve().parents[1]
# What differs between two runs of the same trial without saying anything about its training.
UNTIMED = ("seconds", "per_sec", "started_at", "node_id", "report_seconds", "code_version")


def trial_config(space: str, point: dict[str, Any], seed: int, rung_epochs: list[int]) -> dict:
    """A search trial's config for `point` of `space` at its narrowest widths."""
    config = {**point, "space": space, "width_scale": 0.0, "seed": seed, "trial_number": 0}
    config["rung_epochs"] = rung_epochs
    config["params"] = count_params(trial_configs(config)[0])
    return config


def small_splits() -> DataSplits:
    return DataSplits(train=separable_set(96), val=separable_set(48, seed=1))


def run_trial_here(
    config: dict[str, Any],
    splits: DataSplits,
    settings: TrialSettings,
    trial_dir: Path,
    train: Callable[..., Any] | None = None,
) -> list[dict[str, Any]]:
    """The metrics the trial reported, in order. The same `splits` object is the same data
    in the object store: a second trial in this process finds it on its device, as a reused
    worker does. `train` replaces the training loop."""
    import ray
    from ray import tune as ray_tune

    from tune import trainable

    reported: list[dict[str, Any]] = []

    class Context:
        def get_node_id(self) -> str:
            return "node-1"

    fetch_original = trainable.worker_data

    def worker_data(data: TrialData, device: torch.device) -> DataSplits:
        return fetch_original(data, device, fetch=lambda ref: splits)

    stand_ins = {
        (ray_tune, "report"): lambda metrics, checkpoint=None: reported.append(dict(metrics)),
        (ray_tune, "get_checkpoint"): lambda: None,
        (ray, "get_runtime_context"): Context,
        (trainable, "local_trial_dir"): lambda: trial_dir,
        (trainable, "worker_data"): worker_data,
    }
    if train is not None:
        stand_ins[(trainable, "train")] = train
    saved = {key: getattr(*key) for key in stand_ins}
    threads = torch.get_num_threads()
    try:
        for (owner, name), value in stand_ins.items():
            setattr(owner, name, value)
        data = TrialData(ref="splits", key=f"splits-{id(splits)}")
        trainable.run_trial(config, data, settings)
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)
        torch.set_num_threads(threads)
    return reported


def trained_values(reported: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each report without its timings and node: what training computed."""
    return [
        {k: v for k, v in m.items() if not any(part in k for part in UNTIMED)} for m in reported
    ]


def main() -> None:
    """Run the trial whose (config, max_epochs) JSON is argv[1] in a fresh process, in folder
    argv[2]; print what it trained as JSON."""
    config, max_epochs = json.loads(sys.argv[1])
    settings = TrialSettings(max_epochs=max_epochs, max_batch_size=32, use_gpu=False, threads=1)
    reported = run_trial_here(config, small_splits(), settings, Path(sys.argv[2]))
    print(json.dumps(trained_values(reported)))


if __name__ == "__main__":
    main()
