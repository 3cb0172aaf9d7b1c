"""What the search's Optuna study records and what the report draws from it."""

from __future__ import annotations

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from tune.study import MIN_TRIALS_FOR_IMPORTANCES, param_importances

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trial(lr: float, width: float, curve: list[float], state: TrialState):
    return create_trial(
        params={"lr": lr, "width": width},
        distributions={"lr": FloatDistribution(0.01, 1.0), "width": FloatDistribution(0, 1)},
        value=curve[-1] if state == TrialState.COMPLETE else None,
        intermediate_values=dict(enumerate(curve, start=1)),
        state=state,
    )


def test_importances_come_from_a_rung_every_trial_reached_when_few_completed():
    study = optuna.create_study(direction="maximize")
    # Accuracy follows the learning rate alone; ASHA stopped most trials after epoch 2.
    trials = [
        _trial(lr, w, [lr / 2, lr], TrialState.PRUNED)
        for lr, w in [(0.02, 0.3), (0.05, 0.9), (0.1, 0.1), (0.3, 0.6), (0.6, 0.4), (0.8, 0.8)]
    ]
    trials.append(_trial(0.9, 0.5, [0.45, 0.9, 0.95, 0.97], TrialState.COMPLETE))
    study.add_trials(trials)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) < MIN_TRIALS_FOR_IMPORTANCES

    importances, basis = param_importances(study)
    assert basis == "all 7 trials at epoch 2"
    assert max(importances, key=importances.get) == "lr"


def test_importances_use_the_completed_trials_when_there_are_enough():
    study = optuna.create_study(direction="maximize")
    study.add_trials(
        [_trial(lr, 1 - lr, [lr], TrialState.COMPLETE) for lr in (0.1, 0.2, 0.4, 0.6, 0.8, 0.9)]
    )
    importances, basis = param_importances(study)
    assert basis == "the 6 completed trials" and importances


def test_no_importances_from_too_few_trials():
    study = optuna.create_study(direction="maximize")
    study.add_trials([_trial(0.1 * i, 0.5, [0.1 * i], TrialState.PRUNED) for i in range(1, 4)])
    assert param_importances(study) == ({}, "")


def test_optunas_plots_work_as_the_readme_says():
    import optuna.visualization

    study = optuna.create_study(direction="maximize")
    study.add_trials([_trial(lr, 0.5, [lr], TrialState.COMPLETE) for lr in (0.1, 0.5)])
    figure = optuna.visualization.plot_optimization_history(study)  # needs plotly
    assert len(figure.data) >= 1


def test_tensorboard_marks_the_hyperparameters_that_differ_between_trials(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.backend_context import Context
    from torch.utils.tensorboard import SummaryWriter

    from tune.trainable import start_hparams_session

    for name, lr in (("trial_a", 0.1), ("trial_b", 0.2)):
        writer = SummaryWriter(str(tmp_path / name))
        end = start_hparams_session(writer, {"lr": lr, "block": "basic", "params": 1000})
        writer.add_scalar("hparam/val_acc", lr, 1)
        writer.file_writer.add_summary(end)
        writer.close()
    content = {}
    for run in ("trial_a", "trial_b"):
        acc = EventAccumulator(str(tmp_path / run))
        acc.Reload()
        content[run] = acc.PluginTagToContent("hparams")
    # TensorBoard's own HParams backend, as its dashboard asks it.
    experiment = Context(None).experiment_from_metadata(None, "", False, content, None)
    differs = {info.name: info.differs for info in experiment.hparam_infos}
    assert differs == {"lr": True, "block": False, "params": False}


def test_a_trial_that_raised_stays_open_for_a_resume_and_fails_only_when_the_search_ends(tmp_path):
    from tune.storage import ExperimentStorage
    from tune.study import close_study, open_study, tell_outcome

    storage = ExperimentStorage(str(tmp_path), "x")
    storage.local_dir.mkdir(parents=True)
    study = open_study(storage, seed=0, n_startup_trials=1)
    raised, resumed = study.ask({"lr": FloatDistribution(0.01, 1.0)}), study.ask()
    for trial in (raised, resumed):
        trial.report(0.4, 1)
        tell_outcome(study, trial.number, None, True, max_epochs=2)  # Ray gave up on both
    assert {t.state for t in study.trials} == {TrialState.RUNNING}
    # Resumed, Ray retries one and it trains to the end: the study says what it did.
    tell_outcome(
        study, resumed.number, {"val_acc": 0.5, "training_iteration": 2}, False, max_epochs=2
    )
    assert study.trials[resumed.number].state == TrialState.COMPLETE
    # The search ends with the other still errored: FAIL, with the reason.
    closed = close_study(storage, max_epochs=2)
    assert closed.trials[raised.number].state == TrialState.FAIL
    assert closed.trials[raised.number].user_attrs["failure"] == "raised an error"


def test_an_epoch_trained_twice_counts_with_the_value_of_the_run_that_continued(tmp_path):
    """A trial resumed from its checkpoint at epoch 16 trains epochs 17-19 again, to other
    values (as on a GPU): the study, its score and trials.parquet all take the second pass."""
    import pandas as pd
    import pytest

    from tune.compare import final_value
    from tune.results import TrialRecord, trials_table
    from tune.searcher import StudySearcher
    from tune.storage import ExperimentStorage

    max_epochs = 20  # the score is the mean of epochs 19 and 20
    ExperimentStorage(str(tmp_path), "twice").local_dir.mkdir(parents=True)
    searcher = StudySearcher(
        space="tiny", budget=1_000_000, seed=0, max_epochs=max_epochs, storage_path=str(tmp_path),
        name="twice", n_startup_trials=4,
    )  # fmt: skip
    config = searcher.suggest("ray-1")
    first = {e: 0.40 + e / 100 for e in range(1, 20)}  # killed after reporting epoch 19
    first[18] = 0.95  # the best value of all, superseded
    second = {e: 0.30 + e / 100 for e in range(17, max_epochs + 1)}
    rows = []
    for values in (first, second):
        for epoch, acc in values.items():
            result = {"val_acc": acc, "training_iteration": epoch, "epoch": epoch}
            rows.append(result)
            if epoch < max_epochs:
                searcher.on_trial_result("ray-1", result)
    searcher.on_trial_complete("ray-1", rows[-1])

    latest = {**first, **second}
    study = optuna.load_study(study_name="twice", storage=f"sqlite:///{tmp_path}/twice/study.db")
    trial = study.trials[config["trial_number"]]
    assert trial.intermediate_values == latest
    assert trial.value == pytest.approx((second[19] + second[20]) / 2)
    assert trial.value == pytest.approx(final_value(latest, max_epochs))

    record = TrialRecord("ray-1", config, pd.DataFrame(rows))
    [row] = trials_table([record], max_epochs).to_dict("records")
    assert row["score"] == pytest.approx(trial.value)
    assert row["best_val_acc"] == pytest.approx(max(latest.values()))  # not the superseded 0.95
    assert row["best_epoch"] == max(latest, key=latest.get)
    assert row["final_val_acc"] == pytest.approx(second[20])
