"""The search's duration estimate, measured and said: a Ray Tune callback that, once the
first epochs are in, prints how long the whole command will take (tune.estimate) and keeps
it in the experiment (estimate.json), where the end of the command adds what it really took
and the report shows both. Once trials have passed the first rung it says it again, at the
pace the search really kept (tune.estimate.reestimate)."""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import asdict
from typing import Any

from ray import tune as ray_tune

from training.artifacts import write_json
from tune.estimate import Shape, Timings, duration_text, reestimate, summary
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
        # For the update: the search's start, its epochs (branches by their length) and their
        # seconds; it comes once half the trials (under a time budget alone, two rounds of
        # trials) have reached the first rung (or halfway, without rungs).
        self.search_began = time.monotonic()
        self.epochs_done, self.seconds_done = 0.0, 0.0
        self.update_epoch = shape.rungs[0] if shape.rungs else max(1, shape.max_epochs // 2)
        self.update_after = max(
            self.needed,
            2 * shape.concurrency if shape.time_budget_s else math.ceil(shape.trials / 2),
        )
        self.at_update_epoch = 0
        self.updated = False
        self.wrote = False

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any):
        self.started.setdefault(trial.trial_id, time.monotonic())

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any):
        seconds = result.get("time_this_iter_s")
        if not seconds or "epoch" not in result:
            return
        self.epochs_done += 1 + float(result.get("decay_branch_epochs", 0.0))
        self.seconds_done += float(seconds)
        if result.get("training_iteration") == self.update_epoch:
            self.at_update_epoch += 1
            if self.done and not self.updated and self.at_update_epoch >= self.update_after:
                self.updated = True
                self.say_again()
        if self.done:
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
        self.wrote = True
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

    def say_again(self) -> None:
        """The estimate again, from the search's own pace so far. Not in a resumed search:
        its epochs before the resume are not in this run's count or clock."""
        if not self.wrote:
            return
        timings = Timings(
            epoch_s=self.seconds_done / self.epochs_done,
            before_s=self.before_s,
            trial_start_s=statistics.median(self.start_s) if self.start_s else 0.0,
        )
        elapsed = time.monotonic() - self.search_began
        update = reestimate(timings, self.shape, elapsed, self.epochs_done)
        logger.info(
            "estimated again after %d trials reached epoch %d: %s left, %s for the whole "
            "command (the search so far: %.0f trial epochs in %s, %.1f s each with %d at once)",
            self.at_update_epoch,
            self.update_epoch,
            duration_text(update.left_s),
            duration_text(update.total_s),
            self.epochs_done,
            duration_text(elapsed),
            update.pace_s * max(1, self.shape.concurrency),
            max(1, self.shape.concurrency),
        )
        path = self.settings.storage.local_dir / ESTIMATE_FILE
        if not path.exists():
            return
        saved = json.loads(path.read_text())
        saved["update"] = {
            "estimated_s": update.total_s,
            "at_s": self.before_s + elapsed,
            "trial_epochs_done": self.epochs_done,
            "pace_s": update.pace_s,
        }
        write_json(path, saved)
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
