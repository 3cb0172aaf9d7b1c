"""Ray's live table of trials while a search runs: its columns, and the output engine that
prints them. Imported after Ray is started (it imports ray; see tune.runner.start_ray).

Ray 2.60's default output engine (ray.tune.experimental.output) ignores a progress reporter:
its table shows the first four metrics a trial happens to report (here the epoch, the
training loss and accuracy, the learning rate: no validation accuracy), and its "Current
best trial" ranks by the Tuner's metric, `val_acc`, which at a rung is the decay branch's
accuracy, so a trial's value drops the epoch after. The legacy engine prints the reporter's
columns, and this reporter ranks by the main run's accuracy.

In a notebook (`compact_progress`) the same reporter prints one line per trial as it ends
instead: a table every 30 s floods a notebook's output. A switch read when it reports, not a
reporter of its own: a resumed experiment reports through the reporter Ray pickled with it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from ray.tune import CLIReporter

# Ray reads it when a Tuner starts fitting; "0" selects the legacy engine. A user's own
# setting wins.
OUTPUT_ENGINE_ENV = "RAY_AIR_NEW_OUTPUT"
# Ray's name of a result key: the table's header for it.
COLUMNS = {
    "training_iteration": "epochs",
    "stable_val_acc": "val_acc (main run)",
    "train_loss": "train_loss",
    "time_total_s": "seconds",
}
PARAMETERS = {"params": "params"}
RANKED_BY = "stable_val_acc"  # the main run's validation accuracy, every epoch
REPORT_EVERY_S = 30  # as often as Ray's default engine prints its table
_compact = False  # one line per ended trial instead of the table (compact_progress)
_ENDED = ("TERMINATED", "ERROR")


@contextlib.contextmanager
def compact_progress(on: bool = True) -> Iterator[None]:
    """Inside the block, fits report a line per ended trial instead of the table."""
    global _compact
    before, _compact = _compact, on
    try:
        yield
    finally:
        _compact = before


def trial_line(trial: Any, ended: int, total: int | None) -> str:
    """One ended trial: its epochs, main-run validation accuracy, size and time."""
    result = trial.last_result or {}
    epochs = result.get("training_iteration", 0)
    acc = result.get(RANKED_BY, result.get("val_acc"))
    params = result.get("params", (trial.config or {}).get("params"))
    parts = [f"{epochs} epoch(s)"]
    if acc is not None:
        parts.append(f"val_acc (main run) {acc:.2%}")
    if params is not None:
        parts.append(f"{int(params):,} params")
    if result.get("time_total_s") is not None:
        parts.append(f"{result['time_total_s']:.0f} s")
    state = "failed" if trial.status == "ERROR" else "ended"
    count = f"{ended}/{total}" if total else str(ended)
    return f"[{count}] trial {trial.trial_id} {state}: " + ", ".join(parts)


class TrialTable(CLIReporter):
    """The table of trials with each one's main-run validation accuracy, and the current best
    trial by that accuracy."""

    def __init__(self, configurations: int | None = None) -> None:
        # --num-samples where the searcher counts the configurations (Ray's count is then
        # unlimited); None: Ray's count, or none with a --time-budget.
        self.configurations = configurations
        super().__init__(
            metric_columns=COLUMNS,
            parameter_columns=PARAMETERS,
            metric=RANKED_BY,
            mode="max",
            print_intermediate_tables=True,
            max_report_frequency=REPORT_EVERY_S,
        )

    def set_total_samples(self, total_samples: int | None) -> None:
        configurations = getattr(self, "configurations", None)  # a reporter pickled before it
        if configurations is not None:
            total_samples = configurations
        elif total_samples is not None and total_samples >= sys.maxsize:
            total_samples = None  # Ray's unlimited count
        super().set_total_samples(total_samples)

    def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
        # The Tuner's metric (val_acc, what ASHA and the searcher judge) would replace the
        # table's ranking, or raise since the table has its own: keep the table's.
        return True

    def should_report(self, trials: list, done: bool = False) -> bool:
        if not _compact:
            return super().should_report(trials, done)
        reported = getattr(self, "_lines_reported", set())
        return any(t.status in _ENDED and t.trial_id not in reported for t in trials)

    def report(self, trials: list, done: bool, *sys_info: str) -> None:
        if not _compact:
            return super().report(trials, done, *sys_info)
        # A pickled reporter (a resumed experiment) may predate the attribute.
        reported = self.__dict__.setdefault("_lines_reported", set())
        ended = [t for t in trials if t.status in _ENDED]
        for trial in ended:
            if trial.trial_id not in reported:
                reported.add(trial.trial_id)
                # The experiment's trial count, as Ray set it up (0 or None: unknown).
                total = getattr(self, "_total_samples", None)
                print(trial_line(trial, len(reported), total), flush=True)
        return None


def use_trial_table() -> None:
    """Make the next Tuner fit print its trials with `TrialTable` (the legacy engine)."""
    os.environ.setdefault(OUTPUT_ENGINE_ENV, "0")
