"""The search's duration estimate, measured and said: a Ray Tune callback that, once the
first epochs are in, prints how long the whole command will take (tune.estimate) and keeps
it in the experiment (estimate.json), where the end of the command adds what it really took
and the report shows both."""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import asdict
from typing import Any

from ray import tune as ray_tune

from training.artifacts import write_json
from tune.estimate import Shape, Timings, summary
from tune.rungs import asha_brackets, asha_milestones
from tune.settings import SearchSettings

logger = logging.getLogger(__name__)
ESTIMATE_FILE = "estimate.json"


def shape_of(
    settings: SearchSettings,
    concurrency: int,
    retrain_scale: float,
    retrain: bool = True,
    baseline_done: bool = False,
    external_baseline: bool = False,
) -> Shape:
    """The work the settings make, at `concurrency` trials at once."""
    brackets = asha_brackets(settings.max_epochs, settings.grace_period, settings.reduction_factor)
    rungs = asha_milestones(
        settings.max_epochs, settings.grace_period, settings.reduction_factor, brackets
    )
    return Shape(
        trials=settings.num_samples,
        max_epochs=settings.max_epochs,
        rungs=rungs,
        reduction_factor=settings.reduction_factor,
        concurrency=concurrency,
        finalists=settings.finalists,
        finalist_seeds=settings.finalist_seeds,
        retrain_seeds=settings.retrain_seeds if retrain else 0,
        retrain_epochs=settings.retrain_epochs,
        retrain_scale=retrain_scale,
        # On GPUs the seeds run as trials do; on CPUs all at once, sharing the cores: at the
        # trials' pace either way.
        retrain_slots=max(1, min(settings.retrain_seeds, concurrency)),
        baseline=settings.baseline == "seeds" and not external_baseline,
        baseline_done=baseline_done,
        time_budget_s=settings.time_budget_s,
    )


class DurationEstimate(ray_tune.Callback):
    """Prints the estimate once the first `epochs` epoch results are in (one per trial that
    runs at once, at least two), from their median time, and saves it."""

    def __init__(self, settings: SearchSettings, shape: Shape, before_s: float) -> None:
        self.settings = settings
        self.shape = shape
        self.before_s = before_s
        self.needed = max(2, min(shape.concurrency, shape.trials))
        self.epoch_s: list[float] = []
        self.start_s: list[float] = []  # each first trial's start before its first epoch
        self.started: dict[str, float] = {}
        self.done = False

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any):
        self.started.setdefault(trial.trial_id, time.monotonic())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any):
        seconds = result.get("time_this_iter_s")
        if self.done or not seconds or "epoch" not in result:
            return
        self.epoch_s.append(float(seconds))
        began = self.started.pop(trial.trial_id, None)
        if began is not None and result.get("training_iteration") == 1:
            self.start_s.append(max(0.0, time.monotonic() - began - float(seconds)))
        if len(self.epoch_s) >= self.needed:
            self.done = True
            self.say()

    def say(self) -> None:
        timings = Timings(
            epoch_s=statistics.median(self.epoch_s),
            before_s=self.before_s,
            trial_start_s=statistics.median(self.start_s) if self.start_s else 0.0,
        )
        est, text = summary(timings, self.shape)
        logger.info(text)
        path = self.settings.storage.local_dir / ESTIMATE_FILE
        if path.exists():  # a resumed search: the first command's estimate stands
            return
        write_json(
            path,
            {
                "estimated_s": est.total_s,
                "parts_s": {
                    "before": est.before_s,
                    "baseline": est.baseline_s,
                    "search": est.search_s,
                    "finalists": est.finalists_s,
                    "retrains": est.retrain_s,
                },
                "epochs_measured": self.epoch_s,
                "timings": asdict(timings),
                "shape": asdict(self.shape),
                "text": text,
            },
        )
        self.settings.storage.push(ESTIMATE_FILE)


def record_actual(settings: SearchSettings, seconds: float, resumed: bool) -> dict | None:
    """Add what the command really took to the estimate; the estimate, or None."""
    path = settings.storage.local_dir / ESTIMATE_FILE
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    saved["actual_s"] = seconds
    saved["resumed"] = resumed or saved.get("resumed", False)
    write_json(path, saved)
    settings.storage.push(ESTIMATE_FILE)
    return saved
