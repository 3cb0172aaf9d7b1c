"""Out of memory under packing: a trial that runs out of GPU memory beside other trials is
run again alone on a whole GPU before its configuration is called infeasible; cuDNN's and
cuBLAS's allocation failures (RuntimeErrors) count as out of memory. On CPU: the faults are
injected (tune.faults), the trial runs without Ray (tests.trialrun)."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search_spaces import get_space
from tests.trialrun import run_trial_here, small_splits, trial_config
from tune.faults import ENV
from tune.storage import ExperimentStorage
from tune.study import study_url
from tune.trainable import RETRY_ALONE_KEY, TrialResources, TrialSettings, is_out_of_memory


@pytest.mark.parametrize(
    ("error", "oom"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate`"), True),
        (RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False),
        (ValueError("CUDA out of memory"), False),
    ],
)
def test_what_counts_as_out_of_memory(error, oom):
    assert is_out_of_memory(error) is oom


def _settings(gpus: float) -> TrialSettings:
    # A CPU stand-in for a trial given `gpus` of a GPU: sharing is judged from the share.
    return TrialSettings(max_epochs=3, max_batch_size=32, use_gpu=False, threads=1, gpus=gpus)


def _config() -> dict:
    return trial_config("tiny", dict(get_space("tiny").starting_points[0]), seed=1, rung_epochs=[])


def test_a_shared_gpus_allocation_failure_asks_for_a_retry_alone(tmp_path, monkeypatch):
    fault = {"kind": "cudnn_oom", "trial": 0, "epoch": 1, "shared_only": True}
    monkeypatch.setenv(ENV, json.dumps([fault]))
    reported = run_trial_here(_config(), small_splits(), _settings(0.5), tmp_path / "shared")
    last = reported[-1]
    assert "CUDNN_STATUS_ALLOC_FAILED" in last["failure"] and "retried alone" in last["failure"]
    assert last[RETRY_ALONE_KEY] is True and math.isnan(last["val_acc"])
    # The retry alone (no neighbours, so no fault) trains every epoch.
    alone = {**_config(), RETRY_ALONE_KEY: True}
    reported = run_trial_here(alone, small_splits(), _settings(0.5), tmp_path / "alone")
    assert [r["epoch"] for r in reported] == [1, 2, 3] and "failure" not in reported[-1]


@pytest.mark.parametrize(("gpus", "retried"), [(1.0, False), (0.5, True)])
def test_out_of_memory_alone_is_the_configurations_own(tmp_path, monkeypatch, gpus, retried):
    monkeypatch.setenv(ENV, json.dumps([{"kind": "cudnn_oom", "trial": 0, "epoch": 1}]))
    config = _config() if gpus == 1.0 else {**_config(), RETRY_ALONE_KEY: True}
    last = run_trial_here(config, small_splits(), _settings(gpus), tmp_path)[-1]
    assert "CUDNN_STATUS_ALLOC_FAILED" in last["failure"] and "--gpus-per-trial" in last["failure"]
    assert RETRY_ALONE_KEY not in last


def test_a_retry_alone_asks_ray_for_a_whole_gpu():
    shared = TrialResources(cpus=2, gpus=0.25)
    assert shared({}).required_resources == {"CPU": 2, "GPU": 0.25}
    assert shared({RETRY_ALONE_KEY: True}).required_resources == {"CPU": 2, "GPU": 1.0}
    assert TrialResources(cpus=1, gpus=0)({RETRY_ALONE_KEY: True}).required_resources == {"CPU": 1}


def _searcher(tmp_path):
    from tune.searcher import StudySearcher

    ExperimentStorage(str(tmp_path), "oom").local_dir.mkdir(parents=True, exist_ok=True)
    return StudySearcher(
        space="tiny", budget=60_000, seed=0, max_epochs=3, storage_path=str(tmp_path),
        name="oom", n_startup_trials=4, rung_epochs=(),
    )  # fmt: skip


def _failure(config: dict, retry: bool) -> dict:
    result = {"val_acc": math.nan, "failure": "RuntimeError: CUDNN_STATUS_ALLOC_FAILED"}
    return {
        **result,
        "config": config,
        "training_iteration": 1,
        **({RETRY_ALONE_KEY: True} if retry else {}),
    }


def test_the_searcher_runs_the_configuration_again_alone_before_calling_it_infeasible(tmp_path):
    searcher = _searcher(tmp_path)
    first = searcher.suggest("a")
    searcher.on_trial_result("a", {"val_acc": 0.3, "training_iteration": 1, "epoch_seconds": 1})
    searcher.on_trial_complete("a", _failure(first, retry=True))
    study = optuna.load_study(study_name="oom", storage=study_url(searcher.storage))
    trial = study.trials[first["trial_number"]]
    assert trial.state == TrialState.RUNNING and not trial.constraints  # no verdict yet

    # The queue survives the searcher's checkpoint (a resumed search).
    searcher.save(str(tmp_path / "searcher.json"))
    resumed = _searcher(tmp_path)
    resumed.restore(str(tmp_path / "searcher.json"))
    again = resumed.suggest("b")
    assert again == {**first, RETRY_ALONE_KEY: True}
    # Alone, it fails again: now the configuration is infeasible.
    resumed.on_trial_complete("b", _failure(again, retry=False))
    study = optuna.load_study(study_name="oom", storage=study_url(searcher.storage))
    trial = study.trials[first["trial_number"]]
    assert trial.state == TrialState.PRUNED and trial.constraints
    assert trial.user_attrs["ray_trial_id"] == "b"
    assert resumed.suggest("c")["trial_number"] != first["trial_number"]  # something new


def test_the_searcher_waits_for_running_trials_before_it_finishes(tmp_path):
    """--num-samples counts configurations: with all of them given, the searcher waits (None)
    while a trial runs, since one may still need its retry alone, and a retry is no new
    configuration; FINISHED only once none runs. The wait survives a resumed searcher."""
    from ray.tune.search import Searcher

    searcher = _searcher(tmp_path)
    searcher.configurations = 2
    first, second = searcher.suggest("a"), searcher.suggest("b")
    assert first["trial_number"] != second["trial_number"]
    assert searcher.suggest("c") is None  # both given; a and b still run
    searcher.on_trial_complete("a", _failure(first, retry=True))
    searcher.save(str(tmp_path / "searcher.json"))
    resumed = _searcher(tmp_path)
    resumed.configurations = 2
    resumed.restore(str(tmp_path / "searcher.json"))
    assert resumed.suggest("d") == {**first, RETRY_ALONE_KEY: True}  # the retry, not a third
    assert resumed.suggest("e") is None  # b and d still run
    resumed.on_trial_complete("b", {"val_acc": 0.5, "training_iteration": 3})
    assert resumed.suggest("f") is None  # d still runs
    resumed.on_trial_complete("d", {"val_acc": 0.4, "training_iteration": 3})
    assert resumed.suggest("g") == Searcher.FINISHED
    study = optuna.load_study(study_name="oom", storage=study_url(searcher.storage))
    assert len(study.trials) == 2 and all(t.state.is_finished() for t in study.trials)


SEARCH_WITH_A_RETRY = """
import json, sys
import ray
from ray import tune as ray_tune
from tests.trialrun import small_splits
from tune.cli import build_parser
from tune.runner import make_tuner
from tune.settings import resolve_settings
from tune.storage import ExperimentStorage
from tune.trainable import TrialResources, TrialSettings, run_trial, share_trial_data

root = sys.argv[1]
args = build_parser().parse_args(
    ["--space", "tiny", "--num-samples", "3", "--max-epochs", "2", "--storage-path", root,
     "--name", "retry"]
)
settings = resolve_settings(args, ExperimentStorage(root, "retry"), have_gpu=False)
settings.storage.local_dir.mkdir(parents=True, exist_ok=True)
ray.init(num_cpus=2, include_dashboard=False, address="local")
# A CPU stand-in for trials that share a GPU: the trials judge sharing from their share.
shared = TrialSettings(max_epochs=2, max_batch_size=32, use_gpu=False, threads=1, gpus=0.5)
trainable = ray_tune.with_resources(
    ray_tune.with_parameters(run_trial, data=share_trial_data(small_splits()), settings=shared),
    TrialResources(cpus=1, gpus=0),
)
grid = make_tuner(settings, trainable, concurrency=2, verbose=0).fit()
print("trial numbers:", json.dumps([r.config.get("trial_number") for r in grid]))
"""


@pytest.mark.slow
def test_a_configuration_run_again_alone_is_not_another_of_num_samples(tmp_path):
    """Ray Tune as the search sets it up: trial 0 runs out of memory beside the others and
    runs again alone; the search still gives --num-samples configurations, then ends."""
    import subprocess
    import sys

    from tests.searchrun import ROOT, end_leftovers, search_env

    fault = {"kind": "cudnn_oom", "trial": 0, "epoch": 1, "shared_only": True}
    env = search_env("oom-retry", {ENV: json.dumps([fault]), "PYTHONPATH": str(ROOT)})
    try:
        run = subprocess.run(
            [sys.executable, "-c", SEARCH_WITH_A_RETRY, str(tmp_path)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        end_leftovers("oom-retry")
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("trial numbers:"))
    numbers = json.loads(line.removeprefix("trial numbers:"))
    assert sorted(numbers) == [0, 0, 1, 2]  # three configurations, the first one twice
    study = optuna.load_study(
        study_name="retry", storage=study_url(ExperimentStorage(str(tmp_path), "retry"))
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
