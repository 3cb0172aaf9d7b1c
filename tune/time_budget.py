"""The search's --time-budget, kept across resumes.

Ray Tune's own `time_budget_s` starts again from zero when an experiment is restored, so a
search interrupted after 40 of its 45 minutes would run 45 more. `TimeBudget` is a Ray
stopper that counts the search's running time into `search_clock.txt` in the experiment
(one line of JSON) and, resumed, continues from what the clock says: once the total reaches the
budget, no trial starts and running trials stop, and the search goes on to its retrain.

With finalists to run after the search, the search stops earlier by the time they will
take (`reserve_rounds` rounds of a full trial at the median seconds per epoch seen so far, at
most half the budget), so that the finalists fit in the budget too.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune.stopper import Stopper

from training.artifacts import write_json
from training.config import TrainConfig
from tune.settings import CLOCK_FILE
from tune.storage import ExperimentStorage

WRITE_INTERVAL_S = 5.0  # how often the clock file is rewritten while the search runs
# A decay branch's length as a share of the epochs before it, until one is seen.
DECAY_FRACTION = TrainConfig.decay_fraction


def elapsed_before(storage: ExperimentStorage) -> float:
    """Seconds the search ran before this run (0 for a new experiment)."""
    path = storage.local_dir / CLOCK_FILE
    if not path.exists():
        return 0.0
    return float(json.loads(path.read_text())["elapsed_s"])


def finalists_reserve_s(
    budget_s: float, reserve_rounds: int, max_epochs: int, epoch_seconds: float
) -> float:
    """The seconds the search leaves the finalists: `reserve_rounds` rounds of full trials of
    `max_epochs` at `epoch_seconds` each, at most half the budget."""
    if not reserve_rounds:
        return 0.0
    return min(budget_s / 2, reserve_rounds * max_epochs * epoch_seconds)


class TimeBudget(Stopper):
    def __init__(
        self,
        budget_s: float,
        storage_path: str,
        name: str,
        reserve_rounds: int = 0,
        max_epochs: int = 0,
    ) -> None:
        self.budget_s = budget_s
        self.storage_path, self.name = storage_path, name
        # Rounds of full trials that run after the search (the finalists), each max_epochs long.
        self.reserve_rounds, self.max_epochs = reserve_rounds, max_epochs
        self._epoch_seconds: dict[str, float] = {}  # trial id -> its seconds per epoch
        self._start_clock()

    def _start_clock(self) -> None:
        self._before = elapsed_before(ExperimentStorage(self.storage_path, self.name))
        self._started = time.monotonic()
        self._written = 0.0

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled by Tuner.restore: this run's clock starts now, from the saved total.
        # (Experiments saved before finalists existed reserve nothing.)
        self.__dict__.update({"reserve_rounds": 0, "max_epochs": 0, "_epoch_seconds": {}})
        self.__dict__.update(state)
        self._start_clock()

    @property
    def elapsed_s(self) -> float:
        return self._before + time.monotonic() - self._started

    @property
    def reserve_s(self) -> float:
        """Seconds kept for the finalists: what their rounds of full trials will take."""
        if not self._epoch_seconds:
            return 0.0
        per_epoch = statistics.median(self._epoch_seconds.values())
        return finalists_reserve_s(self.budget_s, self.reserve_rounds, self.max_epochs, per_epoch)

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        iterations = result.get("training_iteration") or 0
        if iterations and result.get("time_total_s"):
            self._epoch_seconds[trial_id] = float(result["time_total_s"]) / iterations
        return False  # the budget is the experiment's, not a trial's

    def stop_all(self) -> bool:
        spent = self.elapsed_s >= self.budget_s - self.reserve_s
        if spent or time.monotonic() - self._written >= WRITE_INTERVAL_S:
            self.save_clock()
        return spent

    def save_clock(self) -> Path:
        storage = ExperimentStorage(self.storage_path, self.name)
        path = write_json(
            storage.local_dir / CLOCK_FILE,
            {"elapsed_s": self.elapsed_s, "budget_s": self.budget_s},
        )
        storage.push(CLOCK_FILE)
        self._written = time.monotonic()
        return path


class RungDeadline:
    """Whether a trial started now can reach ASHA's first rung before the search's trials are
    stopped, judged from the epoch times seen so far. A trial stopped before its first rung
    has taught ASHA nothing and TPE only that it was cut short, so the searcher starts none
    that would be (trials already running still use the time that is left).

    The trials stop where `TimeBudget` stops them: at --time-budget less the finalists'
    reserve (`reserve_rounds` rounds of full trials of `max_epochs`). Reaching the first rung
    takes its epochs and the decay branch evaluated there (a `decay_fraction` of the epochs
    so far: training.loop.decay_branch_steps). The search's elapsed time is counted as
    `TimeBudget` counts it (across resumes, from `search_clock.txt`); the times are those of
    the last RECENT epochs reported, which already include the slowdown of trials sharing a
    node: the median epoch, and the seconds per epoch of the branches among them. A trial's
    start-up (its worker, the data) is not counted."""

    RECENT = 50

    def __init__(
        self,
        budget_s: float,
        storage_path: str,
        name: str,
        first_rung: int,
        reserve_rounds: int = 0,
        max_epochs: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_s, self.first_rung = budget_s, first_rung
        self.reserve_rounds, self.max_epochs = reserve_rounds, max_epochs
        self.storage_path, self.name = storage_path, name
        self.clock = clock
        # Recent epochs: [seconds of the epoch, seconds of its decay branch (0: none), the
        # branch's length in epochs, the epoch's number].
        self.seen: list[list[float]] = []
        self._start_clock()

    def _start_clock(self) -> None:
        self._before = elapsed_before(ExperimentStorage(self.storage_path, self.name))
        self._started = self.clock()

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled by Tuner.restore. A deadline saved before the reserve and the branches
        # were counted reserves nothing and saw plain epoch seconds.
        self.__dict__.update({"reserve_rounds": 0, "max_epochs": 0, "clock": time.monotonic})
        self.__dict__.update(state)
        self.seen = [self.saved_epoch(x) for x in self.seen]
        self._start_clock()

    @staticmethod
    def saved_epoch(saved: Any) -> list[float]:
        """One epoch as saved (a number: its seconds alone, as searchers before saved it)."""
        if isinstance(saved, int | float):
            return [float(saved), 0.0, 0.0, 0.0]
        return [float(x) for x in saved]

    @property
    def elapsed_s(self) -> float:
        return self._before + self.clock() - self._started

    def observe(self, result: dict[str, Any]) -> None:
        if "epoch_seconds" not in result or result.get("failure"):
            return
        entry = [
            float(result["epoch_seconds"]),
            float(result.get("decay_branch_seconds", 0.0)),
            float(result.get("decay_branch_epochs", 0.0)),
            float(result.get("epoch", result.get("training_iteration", 0))),
        ]
        self.seen = [*self.seen, entry][-self.RECENT :]

    def epoch_seconds(self) -> float:
        """Median seconds of a training epoch seen so far (branches apart); 0 before any."""
        if not self.seen:
            return 0.0
        return statistics.median(e[0] for e in self.seen)

    def first_rung_seconds(self, first_rung: int | None = None) -> float:
        """Seconds a trial started now needs to its first rung's decision (`first_rung`, by
        default the search's earliest): the epochs to it and its decay branch. The branch's
        seconds per epoch and its length as a share of the epochs so far are those of the
        branches seen, else a training epoch's and DECAY_FRACTION."""
        per_epoch = self.epoch_seconds()
        branches = [e for e in self.seen if e[2] > 0]
        if branches:
            branch_per_epoch = sum(e[1] for e in branches) / sum(e[2] for e in branches)
            share = statistics.median(e[2] / e[3] for e in branches if e[3] > 0)
        else:
            branch_per_epoch, share = per_epoch, DECAY_FRACTION
        rung = self.first_rung if first_rung is None else first_rung
        return rung * (per_epoch + share * branch_per_epoch)

    def reserve_s(self) -> float:
        """The finalists' reserve `TimeBudget` keeps, from the epochs seen (branches
        included, as TimeBudget's seconds per epoch include them)."""
        if not self.seen:
            return 0.0
        per_epoch = sum(e[0] + e[1] for e in self.seen) / len(self.seen)
        return finalists_reserve_s(self.budget_s, self.reserve_rounds, self.max_epochs, per_epoch)

    def trials_stop_at_s(self) -> float:
        """When the search's trials stop: the budget less the finalists' reserve."""
        return self.budget_s - self.reserve_s()

    def can_reach_first_rung(self, first_rung: int | None = None) -> bool:
        """Whether a trial started now reaches `first_rung` (default: the earliest) in time."""
        return self.elapsed_s + self.first_rung_seconds(first_rung) <= self.trials_stop_at_s()
