"""Ray's live table of trials while a search runs: its columns, and the output engine that
prints them. Imported after Ray is started (it imports ray; see tune.runner.start_ray).

Ray 2.60's default output engine (ray.tune.experimental.output) ignores a progress reporter:
its table shows the first four metrics a trial happens to report (here the epoch, the
training loss and accuracy, the learning rate: no validation accuracy), and its "Current
best trial" ranks by the Tuner's metric, `val_acc`, which at a rung is the decay branch's
accuracy, so a trial's value drops the epoch after. The legacy engine prints the reporter's
columns, and this reporter ranks by the main run's accuracy.
"""

from __future__ import annotations

import os

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


class TrialTable(CLIReporter):
    """The table of trials with each one's main-run validation accuracy, and the current best
    trial by that accuracy."""

    def __init__(self) -> None:
        super().__init__(
            metric_columns=COLUMNS,
            parameter_columns=PARAMETERS,
            metric=RANKED_BY,
            mode="max",
            print_intermediate_tables=True,
            max_report_frequency=REPORT_EVERY_S,
        )

    def set_search_properties(self, metric: str | None, mode: str | None) -> bool:
        # The Tuner's metric (val_acc, what ASHA and the searcher judge) would replace the
        # table's ranking, or raise since the table has its own: keep the table's.
        return True


def use_trial_table() -> None:
    """Make the next Tuner fit print its trials with `TrialTable` (the legacy engine)."""
    os.environ.setdefault(OUTPUT_ENGINE_ENV, "0")
