"""The study's sampler, stated and pinned; resumes that draw anew; failures that teach TPE;
warm starts; and a time budget that starts only trials that can reach the first rung."""

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
from optuna.samplers._tpe.sampler import _split_trials
from optuna.trial import TrialState

from search_spaces import ask_fitting, get_space
from tune.storage import ExperimentStorage
from tune.study import (
    FAILED_CONSTRAINT,
    make_sampler,
    open_study,
    startup_trials,
    tell_outcome,
)

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 1_000_000


def _storage(root: Path, name: str) -> ExperimentStorage:
    storage = ExperimentStorage(str(root), name)
    storage.local_dir.mkdir(parents=True, exist_ok=True)
    return storage


def test_the_sampler_is_multivariate_grouped_tpe_with_the_constant_liar():
    sampler = make_sampler(0, 10)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    # Stated, not Optuna's defaults of the day (4.x: independent TPE, no liar).
    assert sampler._multivariate is True and sampler._group is True
    assert sampler._constant_liar is True and sampler._n_startup_trials == 10


def test_optuna_is_pinned_to_the_minor_version_tested():
    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [pin] = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "optuna"]
    major, minor = (int(x) for x in optuna.__version__.split(".")[:2])
    assert optuna.__version__ in pin.specifier and f"{major}.{minor}.99" in pin.specifier
    assert f"{major}.{minor + 1}.0" not in pin.specifier  # nor any later minor version


def test_startup_trials_grow_with_the_search_after_the_starting_points():
    assert startup_trials(6, 3) == 7  # the reduced run: its starting points, then random
    assert startup_trials(100, 3) == 13
    assert startup_trials(100_000, 3) == 19


_FIRST_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from search_spaces import ask_fitting, get_space
    from tune.storage import ExperimentStorage
    from tune.study import open_study
    storage = ExperimentStorage(sys.argv[1], "resumed")
    storage.local_dir.mkdir(parents=True)
    study = open_study(storage, seed=0, n_startup_trials=20)
    space = get_space("efficient_resnet")
    for _ in range(4):
        ask_fitting(study, space, 1_000_000)
    os.kill(os.getpid(), signal.SIGKILL)  # killed with its 4 trials running
    """
)


def test_a_killed_and_resumed_search_never_repeats_an_earlier_draw(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", _FIRST_RUN, str(tmp_path)], cwd=ROOT, capture_output=True
    )
    assert run.returncode == -9, run.stderr.decode()
    storage = ExperimentStorage(str(tmp_path), "resumed")
    study = open_study(storage, seed=0, n_startup_trials=20)
    first = [t.params for t in study.trials]
    assert len(first) == 4
    space = get_space("efficient_resnet")
    second = [ask_fitting(study, space, BUDGET)[0].params for _ in range(4)]
    for params in second:
        assert params not in first
        assert all(params["lr"] != p["lr"] for p in first)


def test_a_failed_configuration_is_ranked_below_every_trained_one(tmp_path):
    study = open_study(_storage(tmp_path, "f"), seed=0, n_startup_trials=4)
    space = get_space("efficient_resnet")
    numbers = []
    for value in (0.2, 0.3, 0.4, 0.35, 0.5):
        trial, _ = ask_fitting(study, space, BUDGET)
        trial.report(value, 1)
        numbers.append(trial.number)
    *complete, stopped, failed_number = numbers
    for number, value in zip(complete, (0.2, 0.3, 0.4), strict=True):
        tell_outcome(study, number, {"val_acc": value, "training_iteration": 3}, False, 3)
    # ASHA stopped one after epoch 1; the other had the best value at epoch 1, then a NaN loss
    # in epoch 2: the trial reports why.
    tell_outcome(study, stopped, {"val_acc": 0.35, "training_iteration": 1}, False, 3)
    failure = {"val_acc": math.nan, "failure": "NonFiniteLossError: nan", "training_iteration": 2}
    tell_outcome(study, failed_number, failure, False, 3)
    failed = study.trials[failed_number]
    assert failed.state == TrialState.PRUNED and failed.value == 0.5
    assert failed.constraints == {FAILED_CONSTRAINT: 1.0}
    assert "NonFiniteLossError" in failed.user_attrs["failure"]
    # TPE's split with one place below the three trained trials: an ordinary pruned trial at
    # the same epoch takes it, though the failure's value there was higher; a failure told
    # as a plain PRUNED trial would take it (TPE ranks pruned trials by their last value).
    below, above = _split_trials(study, study.trials, n_below=4)
    assert sorted(t.number for t in below) == sorted([*complete, stopped])
    assert failed_number in [t.number for t in above]
    # A trial that raised (a bug, a lost node) says nothing of its configuration: no PRUNED
    # with a constraint; it stays open for a resume to retry, and is FAIL (which TPE ignores)
    # if the search ends with it still errored (test_study_record.py).
    trial, _ = ask_fitting(study, space, BUDGET)
    tell_outcome(study, trial.number, None, True, 3)
    raised = study.trials[trial.number]
    assert raised.state == TrialState.RUNNING and not raised.constraints
    assert raised.user_attrs["error"] == "raised an error"


def test_a_failure_never_enters_an_asha_rung(tmp_path):
    from types import SimpleNamespace

    from ray.tune.schedulers import ASHAScheduler

    from training.loop import NonFiniteLossError
    from tune.trainable import TrialSettings

    from .trialrun import run_trial_here, small_splits, trial_config

    def nan_in_epoch_2(arch, cfg, splits, report, **kwargs):
        metrics = {"epoch": 1, "train_loss": 2.0, "train_acc": 0.2, "lr": 0.1,
                   "images_per_sec": 1.0, "val_loss": 2.0, "val_acc": 0.3}  # fmt: skip
        report(metrics, SimpleNamespace(model=None))
        raise NonFiniteLossError("loss is nan at epoch 2")

    # What a trial whose loss turned NaN sends Ray (tune.trainable), ...
    config = trial_config("tiny", dict(get_space("tiny").starting_points[0]), 1, [])
    settings = TrialSettings(max_epochs=3, max_batch_size=32, use_gpu=False, threads=1)
    *_, failed = run_trial_here(config, small_splits(), settings, tmp_path, train=nan_in_epoch_2)
    assert "NonFiniteLossError" in failed["failure"]

    # ... as ASHA's rung at epoch 3 sees it, beside three trials that trained.
    bracket = ASHAScheduler(max_t=9, grace_period=3, reduction_factor=3)._brackets[0]

    class T:
        def __init__(self, trial_id):
            self.trial_id = trial_id

    for i, acc in enumerate((0.4, 0.5, 0.6)):
        bracket.on_result(T(str(i)), 3, acc)
    milestone, recorded = bracket._rungs[-1]
    cutoff = bracket.cutoff(recorded)
    assert bracket.on_result(T("failed"), 3, failed["val_acc"]) == "CONTINUE"
    assert bracket.cutoff(recorded) == cutoff


def test_no_trial_starts_that_cannot_reach_the_first_rung_before_the_deadline(tmp_path):
    from ray.tune.search import Searcher

    from tune.searcher import StudySearcher

    _storage(tmp_path, "timed")
    searcher = StudySearcher(
        space="tiny",
        budget=BUDGET,
        seed=0,
        max_epochs=12,
        storage_path=str(tmp_path),
        name="timed",
        n_startup_trials=4,
        rung_epochs=(2, 6),
        time_budget_s=100.0,
    )
    assert isinstance(searcher.suggest("a"), dict)  # no epoch seen yet: nothing to judge by
    searcher.on_trial_result("a", {"epoch_seconds": 30.0, "val_acc": 0.3})
    # Epoch 2 and the decay branch there (a fifth of 2 epochs) take 2 x 30 + 0.4 x 30 s.
    searcher.deadline._before = 25.0  # 25 s spent: 25 + 72 <= 100
    assert isinstance(searcher.suggest("b"), dict)
    searcher.deadline._before = 30.0  # 30 + 72 > 100: it could not reach epoch 2
    assert searcher.suggest("c") is None  # a and b still run; one may need a retry alone
    for trial_id in ("a", "b"):
        searcher.on_trial_complete(trial_id, {"val_acc": 0.3, "training_iteration": 12})
    assert searcher.suggest("d") == Searcher.FINISHED
    # The epoch times seen survive the searcher's own checkpoint (a resumed search).
    searcher.save(str(tmp_path / "searcher.json"))
    saved = json.loads((tmp_path / "searcher.json").read_text())["epoch_seconds"]
    assert [epoch[0] for epoch in saved] == [30.0]
