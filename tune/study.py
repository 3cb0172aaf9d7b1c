"""The search's Optuna study, in Optuna's own storage, driven by Ray Tune.

The study lives in the experiment folder as `study.db` (SQLite through Optuna's RDB
storage; the driver is its only writer), so `optuna-dashboard sqlite:///EXPERIMENT/study.db`
shows the search live and afterwards, `optuna.load_study(study_name=NAME,
storage="sqlite:///EXPERIMENT/study.db")` reads it from Python, and a resume continues it.

What a trial's outcome is, as Optuna understands it (`tell_outcome`): every epoch's
validation accuracy is an intermediate value, a trial that ASHA stopped is PRUNED, one that
ran to the end is COMPLETE with its score (`final_value`: the mean validation accuracy of its
last few epochs), one whose configuration failed (NaN loss, out of memory) is PRUNED and marked
infeasible, one that raised or never ran is FAIL. The Ray Tune searcher that drives the study
is `tune.searcher.StudySearcher`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search_spaces import derive_seed
from tune.compare import final_value
from tune.storage import ExperimentStorage

STUDY_FILE = "study.db"
METRIC = "val_acc"  # maximized


def study_url(storage: ExperimentStorage) -> str:
    return f"sqlite:///{storage.local_dir / STUDY_FILE}"


def running_trial(study: optuna.Study, number: int) -> optuna.Trial:
    """The live Trial object of a RUNNING trial, by number (after a resume the asking process
    is gone; Optuna builds these objects the same way in `Study.ask`)."""
    return optuna.Trial(study, study.trials[number]._trial_id)


def record_epoch(trial: optuna.Trial, epoch: int, value: float) -> None:
    """Record a trial's validation accuracy at `epoch`, replacing what an earlier pass over
    that epoch recorded. After a resume from a checkpoint the epochs since the checkpoint are
    trained again, and on a GPU (cuDNN's autotuning) to other values; the run that continued
    is the one whose weights went on to the later epochs, the score and any checkpoint the
    trial leaves, so its value is the epoch's, here as in trials.parquet
    (`tune.results.trials_table`). Optuna's `Trial.report` keeps an epoch's first value and
    ignores a repeat with a warning; its storage's `set_trial_intermediate_value` (Optuna 5.0)
    replaces it."""
    trial.storage.set_trial_intermediate_value(trial._trial_id, int(epoch), float(value))


# A failed trial (NaN loss, out of memory) is PRUNED with this constraint violated: TPE
# ranks infeasible trials below every feasible one, so its region counts as bad. Told FAIL,
# TPE would ignore it and keep proposing its neighbours.
FAILED_CONSTRAINT = "trained_without_failure"


def startup_trials(num_samples: int, starting_points: int) -> int:
    """Trials before TPE models the study: the space's starting points, then a tenth of the
    search drawn at random (at least 4, at most 16): TPE's density estimates need a handful
    of trials per region, and each random trial beyond that is one TPE did not choose."""
    return starting_points + max(4, min(16, num_samples // 10))


def make_sampler(seed: int, n_startup_trials: int) -> optuna.samplers.TPESampler:
    """Multivariate TPE over groups of parameters that appear together (so learning rate x
    weight decay x size is modelled jointly within each shape), with the constant liar, so
    that trials suggested while others run do not pile onto the same point. Every choice is
    explicit: Optuna's defaults have changed between versions (4.x: independent TPE)."""
    with warnings.catch_warnings():  # multivariate and group are "experimental" in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed,
            n_startup_trials=n_startup_trials,
            multivariate=True,
            group=True,
            constant_liar=True,
        )


def open_study(storage: ExperimentStorage, seed: int, n_startup_trials: int) -> optuna.Study:
    """The experiment's study, new or continued. A continued study's sampler is seeded from
    the search seed and the trials already in it: seeded as at the start, it would draw
    the start's random configurations again."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=storage.name,
        storage=study_url(storage),
        direction="maximize",
        sampler=make_sampler(seed, n_startup_trials),
        load_if_exists=True,
    )
    done = len(study.get_trials(deepcopy=False))
    if done:
        study.sampler = make_sampler(derive_seed(seed, done), n_startup_trials)
    return study


def tell_outcome(
    study: optuna.Study,
    number: int,
    result: dict[str, Any] | None,
    error: bool,
    max_epochs: int,
) -> None:
    """Tell the study how a trial ended: COMPLETE with its score (`final_value`) if it
    trained every epoch, PRUNED if it was stopped before (by ASHA, or by the time budget after
    at least one epoch). A configuration that failed (NaN loss, out of memory: the trial
    reports why) is PRUNED with its last value and the FAILED_CONSTRAINT violated, so that TPE
    counts it against its region; FAIL (which TPE ignores) is left for trials that raised or
    never ran, which says nothing about their configuration."""
    if study.trials[number].state != TrialState.RUNNING:
        return
    failure = (result or {}).get("failure")
    trained = bool(result) and METRIC in result and not failure
    if failure:
        trial = running_trial(study, number)
        trial.set_user_attr("failure", str(failure))
        trial.set_constraint(FAILED_CONSTRAINT, 1.0)
        study.tell(number, state=TrialState.PRUNED)
    elif error:
        # Ray gave up on it (after --max-failures retries), but a resume retries it
        # (resume_errored) and may finish it: it stays open until the search ends
        # (close_study), so the study never says FAIL of a trial that later trained.
        running_trial(study, number).set_user_attr("error", "raised an error")
    elif not trained:
        running_trial(study, number).set_user_attr("failure", "never ran")
        study.tell(number, state=TrialState.FAIL)
    elif (iteration := int(result.get("training_iteration", 0))) >= max_epochs:
        # Each epoch's latest value (`record_epoch`), the final result's the latest of all.
        values = {**study.trials[number].intermediate_values, iteration: float(result[METRIC])}
        study.tell(number, final_value(values, max_epochs))
    else:
        study.tell(number, state=TrialState.PRUNED)


def experiment_at(storage_path: str, experiment: str) -> ExperimentStorage:
    """The experiment --warm-start names: a name in `storage_path`, or the path (or URI) of
    its folder anywhere (`experiments/NAME`, relative to the working folder)."""
    if "/" not in experiment:
        return ExperimentStorage(storage_path, experiment)
    if "://" in experiment:
        parent, _, name = experiment.rstrip("/").rpartition("/")
        return ExperimentStorage(parent, name)
    folder = Path(experiment).expanduser().resolve()
    return ExperimentStorage(str(folder.parent), folder.name)


def finished_trials(storage_path: str, experiment: str) -> list[optuna.trial.FrozenTrial]:
    """The COMPLETE and PRUNED trials of `experiment` (a name in `storage_path`, or a path:
    `experiment_at`), ready for another study's `add_trials` (--warm-start): parameters,
    values, intermediate values, state and constraints kept, marked with a `warm_start` user
    attribute; the Ray trial ids of the other experiment dropped."""
    other = experiment_at(storage_path, experiment)
    other.pull(STUDY_FILE)
    url = study_url(other)
    # The study is named after its experiment; a folder renamed since holds it by its old
    # name, as the only study in its study.db.
    names = optuna.get_all_study_names(storage=url)
    study_name = other.name if other.name in names or len(names) != 1 else names[0]
    study = optuna.load_study(study_name=study_name, storage=url)
    copies = []
    for trial in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        attrs = {k: v for k, v in trial.user_attrs.items() if k != "ray_trial_id"}
        trial.user_attrs = {**attrs, "warm_start": other.name}
        copies.append(trial)
    return copies


def close_study(storage: ExperimentStorage, max_epochs: int) -> optuna.Study | None:
    """After a finished search (never after an interrupted one, whose open trials continue
    when it resumes): trials still RUNNING in the study become FAIL if they raised an error
    (`tell_outcome` leaves them open for a resume to retry), PRUNED if they reported an epoch
    (the time budget ended them, or Ray did without telling the searcher), else FAIL; then
    the study is copied to cloud storage. None if there is no study."""
    if not (storage.local_dir / STUDY_FILE).exists():
        return None
    study = optuna.load_study(study_name=storage.name, storage=study_url(storage))
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "error" in trial.user_attrs:
            running_trial(study, trial.number).set_user_attr("failure", trial.user_attrs["error"])
            study.tell(trial.number, state=TrialState.FAIL)
        elif trial.intermediate_values:
            study.tell(trial.number, state=TrialState.PRUNED)
        else:
            running_trial(study, trial.number).set_user_attr(
                "failure", "never ran: the search ended first"
            )
            study.tell(trial.number, state=TrialState.FAIL)
    storage.push(STUDY_FILE)
    return study


MIN_TRIALS_FOR_IMPORTANCES = 5  # fewer trials than this say nothing reliable


def param_importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """(How much each parameter mattered to the validation accuracy, most important first;
    which trials that was measured over). Optuna's PED-ANOVA, which needs no extra packages,
    over the completed trials; with too few of those (a short search, where ASHA stopped most
    trials), over every trial at the latest epoch that all trials with a value reached (at
    least the first rung), by their accuracy there. Empty when there are too few trials."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) >= MIN_TRIALS_FOR_IMPORTANCES:
        return _ped_anova(study), f"the {len(complete)} completed trials"
    reported = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.intermediate_values
    ]
    if len(reported) < MIN_TRIALS_FOR_IMPORTANCES:
        return {}, ""
    epoch = min(max(t.intermediate_values) for t in reported)
    at_epoch = optuna.create_study(direction="maximize")
    at_epoch.add_trials(
        [
            optuna.trial.create_trial(
                params=t.params,
                distributions=t.distributions,
                value=t.intermediate_values[epoch],
            )
            for t in reported
            if epoch in t.intermediate_values
        ]
    )
    importances = _ped_anova(at_epoch)
    return importances, f"all {len(at_epoch.trials)} trials at epoch {epoch}" if importances else ""


def _ped_anova(study: optuna.Study) -> dict[str, float]:
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    try:
        with warnings.catch_warnings():  # experimental-API and few-trials warnings
            warnings.simplefilter("ignore")
            return get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
    except (ValueError, RuntimeError):  # e.g. no parameter common to the trials
        return {}
