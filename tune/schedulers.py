"""The search's trial scheduler: Ray's ASHA with each trial's bracket fixed when the trial is
created, so that a resumed (or restarted) trial is judged at its own bracket's rungs.

Ray's ASHA (Ray 2.60) draws a bracket at random every time a trial is added to it, and a
restored experiment adds every trial again (so does a trial requeued after its worker died):
a trial of the second bracket, resumed past the first bracket's rung, could be judged there
with its main run's accuracy against the decay-branch accuracies of the others. The searcher
draws each trial's bracket from the search's seed and the trial's number and puts it in the
trial's config (`bracket`), which Ray keeps with the trial; this scheduler reads it there.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune.schedulers import ASHAScheduler
from ray.tune.schedulers.trial_scheduler import TrialScheduler

logger = logging.getLogger(__name__)

BRACKET_KEY = "bracket"  # the trial's ASHA bracket, in its config


def config_bracket(config: dict[str, Any] | None, brackets: int) -> int | None:
    """The bracket a trial's config names, if it names one of `brackets`."""
    bracket = (config or {}).get(BRACKET_KEY)
    if isinstance(bracket, int) and 0 <= bracket < brackets:
        return bracket
    return None


class SearchScheduler(ASHAScheduler):
    """ASHA over the brackets the trials' configs name; a trial without one gets Ray's own
    random draw. A trial is judged at a rung only by the result of the rung's own epoch,
    the one that carries the rung's decay-branch accuracy: a result from past a rung it was
    never judged at (a trial resumed from a checkpoint past it) carries its main run's
    accuracy, which is not what the rung compares, so it passes that rung unjudged."""

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        bracket = config_bracket(getattr(trial, "config", None), len(self._brackets))
        if bracket is None:
            super().on_trial_add(tune_controller, trial)
            return
        if not self._metric or not self._metric_op:
            super().on_trial_add(tune_controller, trial)  # raises Ray's own error
        self._trial_info[trial.trial_id] = self._brackets[bracket]

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        if self._time_attr in result and self._metric in result:
            now = result[self._time_attr]
            stops_anyway = now >= self._max_t and self._stop_last_trials
            due = self._due_milestone(trial.trial_id, now)
            if not stops_anyway and due is not None and due != now:
                logger.info(
                    "trial %s reports %s %s past its rung at %s, which never judged it: not "
                    "judged there (its value is its main run's, the rung's are decay branches')",
                    trial.trial_id,
                    self._time_attr,
                    now,
                    due,
                )
                return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def _due_milestone(self, trial_id: str, now: float) -> float | None:
        """The rung Ray's bracket would judge this result at (`_Bracket.on_result`): the
        highest at or below `now` that has not recorded the trial."""
        bracket = self._trial_info.get(trial_id)
        if bracket is None:
            return None
        for milestone, recorded in bracket._rungs:  # highest first
            if now >= milestone and trial_id not in recorded:
                return milestone
        return None
