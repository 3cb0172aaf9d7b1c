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
from pathlib import Path
from typing import Any

from ray.tune.stopper import Stopper

from training.artifacts import write_json
from tune.settings import CLOCK_FILE
from tune.storage import ExperimentStorage

WRITE_INTERVAL_S = 5.0  # how often the clock file is rewritten while the search runs


def elapsed_before(storage: ExperimentStorage) -> float:
    """Seconds the search ran before this run (0 for a new experiment)."""
    path = storage.local_dir / CLOCK_FILE
    if not path.exists():
        return 0.0
    return float(json.loads(path.read_text())["elapsed_s"])


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
        if not self.reserve_rounds or not self._epoch_seconds:
            return 0.0
        per_epoch = statistics.median(self._epoch_seconds.values())
        return min(self.budget_s / 2, self.reserve_rounds * self.max_epochs * per_epoch)

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
    """Whether a trial started now can reach ASHA's first rung before --time-budget ends,
    judged from the epoch times seen so far. A trial stopped by the budget before its first
    rung has taught ASHA nothing and TPE only that it was cut short, so the searcher starts
    none that would be (trials already running still use the time that is left).

    The search's elapsed time is counted as `TimeBudget` counts it (across resumes, from
    `search_clock.txt`); the epoch time is the median over the last RECENT epochs reported
    (with their decay branches), which already includes the slowdown of trials sharing a
    node. A trial's start-up (its worker, the data) is not counted."""

    RECENT = 50

    def __init__(self, budget_s: float, storage_path: str, name: str, first_rung: int) -> None:
        self.budget_s, self.first_rung = budget_s, first_rung
        self.storage_path, self.name = storage_path, name
        self.seen: list[float] = []  # seconds of recent epochs, branches included
        self._start_clock()

    def _start_clock(self) -> None:
        self._before = elapsed_before(ExperimentStorage(self.storage_path, self.name))
        self._started = time.monotonic()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._start_clock()

    @property
    def elapsed_s(self) -> float:
        return self._before + time.monotonic() - self._started

    def observe(self, result: dict[str, Any]) -> None:
        if "epoch_seconds" not in result or result.get("failure"):
            return
        seconds = float(result["epoch_seconds"]) + float(result.get("decay_branch_seconds", 0))
        self.seen = [*self.seen, seconds][-self.RECENT :]

    def epoch_seconds(self) -> float:
        """Median seconds of an epoch seen so far; 0 before any."""
        if not self.seen:
            return 0.0
        ordered = sorted(self.seen)
        return ordered[len(ordered) // 2]

    def can_reach_first_rung(self) -> bool:
        needed = self.first_rung * self.epoch_seconds()
        return self.elapsed_s + needed <= self.budget_s
