"""The Ray Tune searcher that drives the experiment's Optuna study (tune.study): it asks the
study for configurations, sized to the budget, and tells it every epoch and every outcome."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from search_spaces import CONSTANT_KEYS, ask_fitting, derive_seed, get_space
from tune.rungs import Bracket, choose_bracket
from tune.schedulers import BRACKET_KEY
from tune.storage import ExperimentStorage
from tune.study import (
    METRIC,
    STUDY_FILE,
    finished_trials,
    open_study,
    record_epoch,
    running_trial,
    tell_outcome,
)
from tune.time_budget import RungDeadline
from tune.trainable import RETRY_ALONE_KEY

logger = logging.getLogger(__name__)

PUSH_INTERVAL_S = 60.0  # how often a study on cloud storage is copied there while it runs


class StudySearcher(Searcher):
    """Ray Tune searcher over the experiment's Optuna study (TPE, seeded).

    Ray pickles the searcher when the experiment starts and saves its state at every
    experiment checkpoint; the study itself is in study.db, so both hold only plain data:
    the settings to reopen the study and which Ray trial is which Optuna trial (JSON)."""

    def __init__(
        self,
        *,
        space: str,
        budget: int,
        seed: int,
        max_epochs: int,
        storage_path: str,
        name: str,
        n_startup_trials: int,
        rung_epochs: tuple[int, ...] = (),
        brackets: tuple[Bracket, ...] = (),
        time_budget_s: float | None = None,
        reserve_rounds: int = 0,
        warm_start: str | None = None,
        configurations: int | None = None,
    ) -> None:
        super().__init__(metric=METRIC, mode="max")
        # --num-samples: how many configurations the study gives (None: until --time-budget
        # ends the search). The searcher counts them, not Ray (whose num_samples is unlimited):
        # a configuration run again alone after running out of memory is not a new sample.
        self.configurations = configurations
        self.space, self.budget, self.seed, self.max_epochs = space, budget, seed, max_epochs
        self.storage_path, self.name = storage_path, name
        self.n_startup_trials = n_startup_trials
        # ASHA's rungs: every trial evaluates a decay branch at these epochs (what it would
        # reach if its schedule ended there), which is what the rungs compare.
        self.rung_epochs = tuple(rung_epochs)
        # With several ASHA brackets, each trial's own: it evaluates branches only at its
        # bracket's rungs (a branch at another bracket's rung is computed for nothing), and
        # the scheduler (tune.schedulers) judges it in that bracket, also after a resume.
        self.brackets = tuple(brackets)
        self.warm_start = warm_start  # an earlier experiment whose finished trials seed the study
        # With --time-budget: no trial starts that cannot reach the first rung before the
        # trials stop (the budget less the `reserve_rounds` rounds of finalists' re-runs).
        self.deadline = (
            RungDeadline(
                time_budget_s,
                storage_path,
                name,
                min(self.rung_epochs),
                reserve_rounds=reserve_rounds,
                max_epochs=max_epochs,
            )
            if time_budget_s and self.rung_epochs
            else None
        )
        self._numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        # (Optuna trial number, config) of configurations that ran out of memory on a GPU
        # shared with other trials, to run again alone on a whole GPU before anything new.
        self._retry_alone: list[tuple[int, dict[str, Any]]] = []
        # Ray trials suggested and not complete yet: once no new configuration may start,
        # the search waits for them (any may still need its retry alone), then finishes,
        # since Ray stops asking for trials once told FINISHED.
        self._unfinished: set[str] = set()
        self._said_no_new_trial = False
        self._study: optuna.Study | None = None
        self._live: dict[str, optuna.Trial] = {}  # Ray trial id -> its running Optuna trial
        self._pushed = 0.0

    # --- the study, opened lazily (also after Ray unpickles the searcher on resume)

    @property
    def storage(self) -> ExperimentStorage:
        return ExperimentStorage(self.storage_path, self.name)

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            study = open_study(self.storage, self.seed, self.n_startup_trials)
            if not study.trials:
                if self.warm_start:
                    earlier = finished_trials(self.storage_path, self.warm_start)
                    study.add_trials(earlier)
                    logger.info(
                        "warm start: %d finished trials of experiment %s added to the study",
                        len(earlier),
                        self.warm_start,
                    )
                # The known-good configurations first, unless a warm start already ran them.
                for point in get_space(self.space).starting_points:
                    study.enqueue_trial(dict(point), skip_if_exists=True)
            self._study = study
        return self._study

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_study"], state["_live"] = None, {}
        return state

    # --- Ray's Searcher interface

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        return (metric in (None, METRIC)) and (mode in (None, "max"))

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if getattr(self, "_retry_alone", None):
            return self._retry(trial_id)
        if self._no_new_trial():
            return None if self._unfinished_trials() else Searcher.FINISHED
        trial, constants = ask_fitting(self.study, get_space(self.space), self.budget)
        trial.set_user_attr("ray_trial_id", trial_id)
        for key, value in constants.items():
            trial.set_user_attr(key, value)
        self._numbers[trial_id] = trial.number
        self._live[trial_id] = trial
        self._unfinished_trials().add(trial_id)
        return {
            **trial.params,
            **constants,
            "seed": derive_seed(self.seed, trial.number),
            "trial_number": trial.number,
            **self._bracket_of(trial.number),
        }

    def _no_new_trial(self) -> bool:
        """Whether the configurations are all given (--num-samples), or one started now would
        not reach its first rung before --time-budget stops the trials."""
        configurations = getattr(self, "configurations", None)
        if configurations is not None and len(set(self._numbers.values())) >= configurations:
            return True
        if getattr(self, "_said_no_new_trial", False):
            return True  # final, as FINISHED would be, though epoch times seen later change
        if self.deadline is None or self.deadline.can_reach_first_rung():
            return False
        self._said_no_new_trial = True
        logger.info(
            "no new trial: one started now would not reach its first rung (epoch %d, "
            "%.0f s with its decay branch) before the trials stop (%.0f s into the "
            "search: --time-budget less the finalists' reserve)",
            self.deadline.first_rung,
            self.deadline.first_rung_seconds(),
            self.deadline.trials_stop_at_s(),
        )
        return True

    def _unfinished_trials(self) -> set[str]:
        # A searcher pickled before the attribute existed (a resumed experiment) has none.
        return self.__dict__.setdefault("_unfinished", set())

    def _bracket_of(self, number: int) -> dict[str, Any]:
        """The trial's bracket and the rungs it evaluates decay branches at. Near the end of a
        --time-budget, a trial drawn into a bracket whose first rung it could not reach in
        time goes to the bracket with the earliest first rung (which the deadline checked):
        the bracket is in its config, so a resume keeps it."""
        brackets = getattr(self, "brackets", ())  # a searcher pickled before brackets existed
        if not brackets:
            return {"rung_epochs": list(self.rung_epochs)}

        def first_rung(b: int) -> int:
            return brackets[b].rungs[0] if brackets[b].rungs else self.max_epochs

        bracket = drawn = choose_bracket(brackets, self.seed, number)
        deadline = self.deadline
        if (
            deadline
            and brackets[drawn].rungs
            and not deadline.can_reach_first_rung(first_rung(drawn))
        ):
            bracket = min(range(len(brackets)), key=first_rung)
            logger.info(
                "trial %d runs in ASHA bracket %d (first rung at epoch %d): its drawn bracket's "
                "first rung (epoch %d) would come after the trials stop",
                number,
                bracket,
                first_rung(bracket),
                first_rung(drawn),
            )
        return {BRACKET_KEY: bracket, "rung_epochs": list(brackets[bracket].rungs)}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.deadline is not None:
            self.deadline.observe(result)
        trial = self._trial(trial_id)
        if trial is None or result.get("failure") or METRIC not in result:
            return
        # An epoch reported again (trained again after a resume, or the final result) replaces
        # its earlier value.
        record_epoch(trial, int(result.get("training_iteration", 0)), float(result[METRIC]))
        self._push_now_and_then()

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self._unfinished_trials().discard(trial_id)
        number = self._numbers.get(trial_id)
        if number is None:
            return
        if result and not error and result.get(RETRY_ALONE_KEY):
            # Out of memory beside other trials: not the configuration's verdict yet. Its
            # Optuna trial stays open for the retry alone, which tells the outcome.
            config = {k: v for k, v in (result.get("config") or {}).items() if k != RETRY_ALONE_KEY}
            self._retry_alone = [
                *getattr(self, "_retry_alone", []),
                (number, config or self._config_of(number)),
            ]
            self._live.pop(trial_id, None)
            logger.warning(
                "trial %d ran out of GPU memory on a GPU shared with other trials: it runs "
                "again alone on a whole GPU before it may be called infeasible",
                number,
            )
            return
        if result and not error and not result.get("failure") and METRIC in result:
            self.on_trial_result(trial_id, result)
        tell_outcome(self.study, number, result, error, self.max_epochs)
        self._live.pop(trial_id, None)
        self._push_now_and_then()

    def save(self, checkpoint_path: str) -> None:
        """Which Ray trial is which Optuna trial, and the epoch times seen, as JSON (Ray names
        the file .pkl)."""
        state: dict[str, Any] = {
            "numbers": self._numbers,
            "retry_alone": getattr(self, "_retry_alone", []),
            "unfinished": sorted(self._unfinished_trials()),
        }
        if self.deadline is not None:
            state["epoch_seconds"] = self.deadline.seen
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        saved = json.loads(Path(checkpoint_path).read_text())
        self._numbers = {trial_id: int(n) for trial_id, n in saved["numbers"].items()}
        self._retry_alone = [(int(n), dict(c)) for n, c in saved.get("retry_alone", [])]
        self._unfinished = set(saved.get("unfinished", []))
        if self.deadline is not None:
            self.deadline.seen = [
                RungDeadline.saved_epoch(x) for x in saved.get("epoch_seconds", [])
            ]
        self._live = {}

    # --- helpers

    def _retry(self, trial_id: str) -> dict[str, Any]:
        """The next configuration to run again alone, as a new Ray trial of the same Optuna
        trial (its epochs replace the first attempt's)."""
        number, config = self._retry_alone.pop(0)
        trial = running_trial(self.study, number)
        trial.set_user_attr("ray_trial_id", trial_id)
        self._numbers[trial_id] = number
        self._live[trial_id] = trial
        self._unfinished_trials().add(trial_id)
        logger.info("trial %d runs again alone on a whole GPU", number)
        return {**config, RETRY_ALONE_KEY: True}

    def _config_of(self, number: int) -> dict[str, Any]:
        """A trial's config rebuilt from the study, as `suggest` made it."""
        frozen = self.study.trials[number]
        constants = {k: v for k, v in frozen.user_attrs.items() if k in CONSTANT_KEYS}
        return {
            **frozen.params,
            **constants,
            "seed": derive_seed(self.seed, number),
            "trial_number": number,
            **self._bracket_of(number),
        }

    def _trial(self, trial_id: str) -> optuna.Trial | None:
        """The running Optuna trial of a Ray trial, reopened after a resume."""
        if trial_id in self._live:
            return self._live[trial_id]
        number = self._numbers.get(trial_id)
        if number is None:
            return None
        if self.study.trials[number].state != TrialState.RUNNING:
            return None
        self._live[trial_id] = running_trial(self.study, number)
        return self._live[trial_id]

    def _push_now_and_then(self) -> None:
        """On cloud storage, copy the study there at most once a PUSH_INTERVAL_S."""
        if time.monotonic() - self._pushed >= PUSH_INTERVAL_S:
            self.storage.push(STUDY_FILE)
            self._pushed = time.monotonic()
