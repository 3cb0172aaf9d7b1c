"""Where ASHA's rungs sit in a run of `--max-epochs` epochs (Ray-free: the trials evaluate a
decay branch at exactly these epochs, see `training.config.TrainConfig.decay_eval_epochs`).

The first rung is at about a ninth of the run, and never before epoch 2: measured on the
reduced CPU task, the accuracy after one epoch ranks configurations clearly worse than after
two (Spearman 0.88 against 0.97, docs/results.md). With reduction factor 3 a 30-epoch run
has rungs at 4 and 12, a 15-epoch one at 2 and 6, the reduced 6-epoch one at 2.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

DEFAULT_REDUCTION_FACTOR = 3
MIN_GRACE_PERIOD = 2


def default_grace_period(max_epochs: int) -> int:
    """Epochs before ASHA's first rung: max(2, ceil(max_epochs / 9)), at most the run."""
    return min(max_epochs, max(MIN_GRACE_PERIOD, math.ceil(max_epochs / 9)))


def _rung_count(max_epochs: int, grace_period: int, reduction_factor: int, bracket: int) -> int:
    """Rungs of bracket `bracket` as Ray's ASHA (Ray 2.60, `_Bracket`) counts them: the last
    may sit at `max_epochs` itself."""
    return int(math.log(max_epochs / grace_period) / math.log(reduction_factor) - bracket + 1)


def asha_milestones(
    max_epochs: int, grace_period: int, reduction_factor: int, brackets: int = 1
) -> tuple[int, ...]:
    """The epochs at which Ray's ASHA (AsyncHyperBandScheduler, Ray 2.60) compares trials,
    over all its brackets, below `max_epochs` (a trial there has finished anyway). Bracket s
    has rungs at grace * rf**(k + s): the brackets share the first bracket's epochs."""
    rungs = set()
    for s in range(brackets):
        count = _rung_count(max_epochs, grace_period, reduction_factor, s)
        rungs.update(grace_period * reduction_factor ** (k + s) for k in range(max(0, count)))
    return tuple(sorted(r for r in rungs if r < max_epochs))


def asha_brackets(max_epochs: int, grace_period: int, reduction_factor: int) -> int:
    """Two brackets where the second has a rung of its own before the end of the run, else
    one. Measured (docs/results.md, 12 good configurations, 15 epochs): the first rung
    (epoch 2) ranks them barely better than chance even with the decay branch (Spearman 0.19),
    the second (epoch 6) well (0.54; regret 0.5 points): a second bracket, whose first rung is
    the first bracket's second, lets about a quarter of the trials (Ray weighs brackets by
    their rungs) skip the unreliable early cut. In a run too short for that (the reduced
    6-epoch run) its trials would never be stopped, which only costs time."""
    second = asha_milestones(max_epochs, grace_period, reduction_factor, 2)
    first = asha_milestones(max_epochs, grace_period, reduction_factor, 1)
    return 2 if len(first) >= 2 and second == first else 1


@dataclass(frozen=True)
class Bracket:
    """One ASHA bracket: the epochs below the end of the run at which it judges its trials
    (where they evaluate a decay branch), and its share of the trials."""

    rungs: tuple[int, ...]
    weight: float


def asha_bracket_plan(
    max_epochs: int, grace_period: int, reduction_factor: int, brackets: int
) -> tuple[Bracket, ...]:
    """Each bracket's rungs and share, as Ray's ASHA weighs them (a softmax over the number
    of rungs each bracket has, `AsyncHyperBandScheduler.on_trial_add`)."""
    counts = [
        max(0, _rung_count(max_epochs, grace_period, reduction_factor, s)) for s in range(brackets)
    ]
    weights = [math.exp(c - max(counts)) for c in counts]
    return tuple(
        Bracket(
            rungs=tuple(
                r
                for r in (grace_period * reduction_factor ** (k + s) for k in range(counts[s]))
                if r < max_epochs
            ),
            weight=weights[s] / sum(weights),
        )
        for s in range(brackets)
    )


def choose_bracket(plan: tuple[Bracket, ...], seed: int, trial_number: int) -> int:
    """The bracket of the search's trial `trial_number`, drawn with Ray's shares but from the
    search's seed and the trial's number: the same in a resumed search as in one never
    stopped (Ray draws it anew each time a trial is added, a restored one too)."""
    if len(plan) <= 1:
        return 0
    draw = random.Random(f"bracket-{seed}-{trial_number}").random()
    total = 0.0
    for index, bracket in enumerate(plan):
        total += bracket.weight
        if draw < total:
            return index
    return len(plan) - 1
