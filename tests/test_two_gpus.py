"""Kaggle's 2xT4 (two GPUs, 4 CPUs in one machine): the search runs trials on both GPUs, one
per GPU with --gpus-per-trial 1, two per GPU with 0.5, and Ray gives each trial its own
GPU (CUDA_VISIBLE_DEVICES), so `cuda` in a trial is the GPU it was given."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.searchrun import ROOT, search_env
from tune.cli import build_parser
from tune.runner import trial_concurrency, trial_resources, trial_slots
from tune.settings import resolve_settings
from tune.storage import ExperimentStorage

KAGGLE_2XT4 = [{"Alive": True, "Resources": {"CPU": 4.0, "GPU": 2.0, "memory": 3e10}}]


def kaggle_settings(tmp_path: Path, *argv: str):
    args = build_parser().parse_args([*argv, "--storage-path", str(tmp_path)])
    return resolve_settings(args, ExperimentStorage(str(tmp_path), "x"), have_gpu=True)


# (options, trials at once on a 2xT4 machine with 4 CPUs)
CASES = [
    ((), 2),  # the default, 1 GPU per trial: one trial on each GPU
    (("--gpus-per-trial", "1"), 2),
    (("--gpus-per-trial", "0.5"), 4),  # two per GPU, one CPU each
    (("--gpus-per-trial", "0.5", "--cpus-per-trial", "2"), 2),  # the CPUs run out first
    (("--gpus-per-trial", "0.25"), 4),  # four CPUs: no more than four trials
]


@pytest.mark.parametrize(
    ("argv", "at_once"), CASES, ids=[" ".join(c[0]) or "default" for c in CASES]
)
def test_two_gpus_in_one_machine_run_trials_on_both(
    tmp_path: Path, argv: tuple[str, ...], at_once: int
) -> None:
    settings = kaggle_settings(tmp_path, *argv)
    assert trial_slots(settings, KAGGLE_2XT4) == at_once
    assert trial_concurrency(settings, KAGGLE_2XT4, None, None) == at_once


TUNE_ON_TWO_GPUS = """
import json, os, sys, time
import ray
from ray import tune as ray_tune
from tune.trainable import TrialResources

resources = TrialResources(**json.loads(sys.argv[1]))
ray.init(num_cpus=4, num_gpus=2, include_dashboard=False, address="local")

def trial(config):
    time.sleep(3)  # all at once: each holds its share while the others start
    ray_tune.report({"gpus": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "done": 1})

tuner = ray_tune.Tuner(
    ray_tune.with_resources(trial, resources),
    param_space={"i": ray_tune.grid_search(list(range(4)))},
    tune_config=ray_tune.TuneConfig(max_concurrent_trials=4, reuse_actors=True),
    run_config=ray_tune.RunConfig(storage_path=sys.argv[2], verbose=0),
)
print(json.dumps(sorted(r.metrics["gpus"] for r in tuner.fit())))
"""


@pytest.mark.slow
# Half a GPU each: four trials at once, two on each GPU (1 GPU each is the same, two at once).
@pytest.mark.parametrize("share", ["0.5"])
def test_ray_tune_spreads_trials_over_both_gpus(tmp_path: Path, share: str) -> None:
    """Ray Tune as the search uses it (the trials' resources, reused actors) on a node that
    declares two GPUs: every trial sees exactly one, and both are used."""
    resources = trial_resources(kaggle_settings(tmp_path, "--gpus-per-trial", share))
    fields = json.dumps(dataclasses.asdict(resources))
    run = subprocess.run(
        [sys.executable, "-c", TUNE_ON_TWO_GPUS, fields, str(tmp_path / "ray")],
        cwd=ROOT,
        env=search_env("two-gpus"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout.strip().splitlines()[-1])
    assert {g: seen.count(g) for g in seen} == {"0": 2, "1": 2}
