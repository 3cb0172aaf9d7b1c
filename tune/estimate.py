"""How long a whole search command will take, from the first measured epochs: a pure model,
tested with stand-in timings (tests/test_estimate.py); tune.duration measures and prints it.

    est = estimate(Timings(epoch_s=12.0, before_s=40.0), shape_of(settings, concurrency, ...))

The parts, each at the trials' concurrency:
- the search: every trial starts (`trial_start_s`, measured) and trains the epochs ASHA lets it. Ray's ASHA (Ray 2.60) lets a trial
  arriving k-th at a rung continue when its value is at or above the (1 - 1/rf) percentile
  (numpy's linear interpolation) of the k values there so far, its own included. For values
  in random order that is (k - ceil(q (k - 1))) / k with q = 1 - 1/rf: the first trial at a
  rung always continues, and a small search keeps more than 1/rf of its trials (6 trials at
  rf 3 keep 3.1 on average, not 2). Each rung a trial reaches adds a decay branch of
  `decay_fraction` x the epochs so far. A `--time-budget` caps the search (with its
  finalists, which it makes room for);
- the seed baselines (`--baseline seeds`): the five seed networks, whole runs;
- the finalists' re-runs: whole runs, in rounds of `concurrency`;
- the retrains (the winner's, and the best seed network's with a baseline): whole runs on
  train + validation (`retrain_scale` x a trial's epoch), `retrain_slots` seeds at a time.
Every epoch is costed at the median epoch measured so far: trials of another size, and the
seed networks, take longer or shorter; the estimate says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LONG_S = 2 * 3600.0  # longer than this: say what fits in it
SEED_NETWORKS = 5  # the `seeds` space's fixed trials (--baseline seeds)


@dataclass(frozen=True)
class Timings:
    """What was measured: a trial's epoch (median, seconds, with its evaluation) and the
    command's time before the first trial trained (start, data, Ray)."""

    epoch_s: float
    before_s: float = 0.0
    # A trial's seconds beyond its epochs: from its start (a worker, the data, the model) to
    # its first epoch's start, as measured on the first trials.
    trial_start_s: float = 0.0


@dataclass(frozen=True)
class Shape:
    """What the settings make of the command: the work, and how much runs at once."""

    trials: int  # the search's trials (--num-samples; with only --time-budget, unbounded)
    max_epochs: int
    rungs: tuple[int, ...]  # ASHA's rung epochs below max_epochs (tune.rungs.asha_milestones)
    reduction_factor: int
    concurrency: int  # trials at once
    finalists: int = 0
    finalist_seeds: int = 1
    retrain_seeds: int = 0  # 0: --skip-retrain
    retrain_epochs: int = 0
    retrain_scale: float = 1.0  # a retrain epoch over a trial's (train + validation images)
    retrain_slots: int = 1  # retrain seeds at once
    baseline: bool = False  # --baseline seeds: the seed networks and their retrain
    baseline_done: bool = False  # the seed networks' trials already ran (in `before_s`)
    time_budget_s: float | None = None
    decay_fraction: float = 0.2  # a rung's decay branch, as a share of the epochs so far


@dataclass(frozen=True)
class Estimate:
    """Seconds of each part and in all, and the trials expected at each rung."""

    before_s: float
    baseline_s: float
    search_s: float
    finalists_s: float
    retrain_s: float
    survivors: tuple[tuple[int, float], ...]  # (rung epoch, trials expected to reach it)
    trial_epochs: float  # expected epochs (with decay branches) of one search trial
    capped: bool  # the search part is the --time-budget's

    @property
    def total_s(self) -> float:
        return self.before_s + self.baseline_s + self.search_s + self.finalists_s + self.retrain_s


def continue_probability(k: int, reduction_factor: int) -> float:
    """The chance that the k-th trial at an ASHA rung continues (values in random order)."""
    q = 1 - 1 / reduction_factor
    return (k - math.ceil(q * (k - 1) - 1e-12)) / k


def expected_survivors(arrivals: float, reduction_factor: int) -> float:
    """Trials expected to continue past a rung that `arrivals` trials reach (a fractional
    count counts its last trial in part)."""
    whole = int(arrivals)
    kept = sum(continue_probability(k, reduction_factor) for k in range(1, whole + 1))
    if arrivals > whole:
        kept += (arrivals - whole) * continue_probability(whole + 1, reduction_factor)
    return kept


def asha_survivors(trials: float, rungs: tuple[int, ...], reduction_factor: int) -> list[float]:
    """Trials expected to reach each rung, then the end; the first rung gets every trial."""
    reached, counts = float(trials), []
    for _ in rungs:
        counts.append(reached)
        reached = expected_survivors(reached, reduction_factor)
    return [*counts, reached]


def _rounds(runs: int, at_once: int) -> int:
    return -(-runs // max(1, at_once)) if runs > 0 else 0


def estimate(timings: Timings, shape: Shape) -> Estimate:
    """The whole command's duration for `shape` at `timings` (see the module's docstring)."""
    epoch = timings.epoch_s
    at_once = max(1, shape.concurrency)
    whole_run = shape.max_epochs * epoch + timings.trial_start_s
    finalist_runs = shape.finalists * shape.finalist_seeds
    finalists_s = _rounds(finalist_runs, at_once) * whole_run
    per_trial, survivors = _search_epochs(shape)
    trials = shape.trials
    # Trials run `at_once` at a time: the work shared out, and never less than one trial.
    one_trial = per_trial * epoch + timings.trial_start_s
    search_s = max(trials * one_trial / at_once, one_trial) if trials else 0.0
    capped = False
    if shape.time_budget_s is not None and search_s + finalists_s > shape.time_budget_s:
        # The budget ends the search early enough for its finalists (tune.time_budget).
        search_s = max(0.0, shape.time_budget_s - finalists_s)
        capped = True
        # The rungs see only the trials that fit in the budget, not --num-samples (unbounded
        # under a --time-budget alone); fewer trials keep a larger share, so settle the count.
        fitted = float(trials)
        for _ in range(4):
            fitted = min(fitted, search_s * at_once / max(one_trial, 1e-9))
            per_trial, survivors = _search_epochs(shape, fitted)
            one_trial = per_trial * epoch + timings.trial_start_s
    retrains = 2 if shape.baseline else 1
    retrain_run = shape.retrain_epochs * epoch * shape.retrain_scale
    retrain_s = retrains * _rounds(shape.retrain_seeds, shape.retrain_slots) * retrain_run
    baseline_s = 0.0
    if shape.baseline and not shape.baseline_done:
        baseline_s = _rounds(SEED_NETWORKS, at_once) * whole_run
    return Estimate(
        before_s=timings.before_s,
        baseline_s=baseline_s,
        search_s=search_s,
        finalists_s=finalists_s,
        retrain_s=retrain_s,
        survivors=tuple(zip((*shape.rungs, shape.max_epochs), survivors, strict=True)),
        trial_epochs=per_trial,
        capped=capped,
    )


def _search_epochs(shape: Shape, trials: float | None = None) -> tuple[float, list[float]]:
    """(expected epochs of one search trial, decay branches included; trials expected at
    each rung and at the end) for `trials` trials (default: the shape's)."""
    trials = shape.trials if trials is None else trials
    if trials <= 0:
        return 0.0, [0.0] * (len(shape.rungs) + 1)
    survivors = asha_survivors(trials, shape.rungs, shape.reduction_factor)
    epochs, start = 0.0, 0
    for rung, reached in zip(shape.rungs, survivors, strict=False):
        share = reached / trials
        epochs += share * (rung - start + shape.decay_fraction * rung)
        start = rung
    epochs += survivors[-1] / trials * (shape.max_epochs - start)
    return epochs, survivors


def trials_that_fit(timings: Timings, shape: Shape, seconds: float) -> int:
    """The most trials (`--num-samples`) whose command ends within `seconds`; 0 if none."""
    low, high = 0, max(1, shape.trials)
    while estimate(timings, _with_trials(shape, high)).total_s <= seconds and high < 100_000:
        low, high = high, high * 2
    while high - low > 1:
        mid = (low + high) // 2
        if estimate(timings, _with_trials(shape, mid)).total_s <= seconds:
            low = mid
        else:
            high = mid
    return low if estimate(timings, _with_trials(shape, low)).total_s <= seconds else 0


def _with_trials(shape: Shape, trials: int) -> Shape:
    from dataclasses import replace

    return replace(shape, trials=trials, time_budget_s=None)


def duration_text(seconds: float) -> str:
    """'45 s', '12 min', '3 h 05 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def budget_text(seconds: float) -> str:
    """A --time-budget value: whole minutes."""
    return f"{max(1, math.floor(seconds / 60))}m"


def advice(timings: Timings, shape: Shape, est: Estimate, limit_s: float = LONG_S) -> str:
    """What fits in `limit_s` when the estimate is longer, or ""."""
    if est.total_s <= limit_s:
        return ""
    fixed = est.before_s + est.baseline_s + est.finalists_s + est.retrain_s
    room = limit_s - fixed
    if room <= 0:
        return (
            f"even without a search, the finalists and retrains take "
            f"{duration_text(fixed)}, more than {duration_text(limit_s)}: pass fewer "
            "--finalists, --retrain-seeds or --max-epochs"
        )
    parts = [f"--time-budget {budget_text(room + est.finalists_s)}"]
    fit = trials_that_fit(timings, shape, limit_s)
    if fit:
        parts.append(f"or --num-samples {fit}")
    return (
        f"to end within {duration_text(limit_s)}: " + " ".join(parts) + " (the retrain, "
        f"{duration_text(est.retrain_s)}, runs after the budget)"
    )


def summary(timings: Timings, shape: Shape, limit_s: float = LONG_S) -> tuple[Estimate, str]:
    """The estimate and the lines that say it."""
    est = estimate(timings, shape)
    rungs = ", ".join(f"{n:.1f} at epoch {e}" for e, n in est.survivors)
    parts = [
        ("before the trials", est.before_s),
        ("seed baselines", est.baseline_s),
        ("search", est.search_s),
        ("finalists", est.finalists_s),
        ("retrains", est.retrain_s),
    ]
    shown = ", ".join(f"{name} {duration_text(s)}" for name, s in parts if s > 0)
    trials = f"{shape.trials} trials"
    if est.capped:
        trials = f"about {est.survivors[0][1]:.0f} trials, until the --time-budget"
    text = (
        f"estimated duration of the whole command: {duration_text(est.total_s)} ({shown}), "
        f"at {timings.epoch_s:.1f} s per trial epoch and {timings.trial_start_s:.1f} s per "
        f"trial's start (medians measured), {shape.concurrency} "
        f"trial(s) at once, {trials}; trials expected to reach each rung and the end: "
        f"{rungs}. Networks of other sizes "
        "train slower or faster, so take it as a guide"
    )
    more = advice(timings, shape, est, limit_s)
    return est, text + (f"; {more}" if more else "")


@dataclass(frozen=True)
class Update:
    """The whole command's duration estimated again once the search has run a while: what
    is left at the pace the search really kept (its wall seconds per trial epoch, with the
    time between trials, the load and the networks it drew), added to what has passed."""

    total_s: float  # the whole command, from its start
    left_s: float  # from now to its end
    pace_s: float  # wall seconds per trial epoch the search kept, all trials at once together


def reestimate(
    timings: Timings, shape: Shape, search_elapsed_s: float, epochs_done: float
) -> Update:
    """The estimate again `search_elapsed_s` into the search, after `epochs_done` trial
    epochs (decay branches counted by their length). `timings.epoch_s` is the mean epoch so
    far: a sum of epochs is what the time is. The search's remaining epochs go at its own
    pace; the finalists' whole runs at the same pace per epoch; the retrains at the epoch."""
    est = estimate(timings, shape)
    pace = search_elapsed_s / max(epochs_done, 1.0)
    at_once = max(1, shape.concurrency)
    if est.capped:  # the budget ends the search (its clock counts from the search's start)
        search_left = max(0.0, est.search_s - search_elapsed_s)
    else:
        expected = shape.trials * est.trial_epochs
        search_left = max(0.0, expected - epochs_done) * pace
    # A finalist's epoch, `at_once` running together, takes `pace x at_once` of wall time.
    slowdown = pace * at_once / timings.epoch_s if timings.epoch_s > 0 else 1.0
    left = search_left + est.finalists_s * max(1.0, slowdown) + est.retrain_s
    total = timings.before_s + search_elapsed_s + left
    return Update(total_s=total, left_s=left, pace_s=pace)
