"""Every GPU measurement that fits one lease, in one command that ends before its deadline.

    python -m benchmarks.campaign --data DIR --out DIR [--deadline 540]   # part 1, on a GPU
    python -m benchmarks.campaign --data DIR --out DIR --part 2            # a later lease
    python -m benchmarks.campaign --data DIR --out DIR --rehearse          # on CPU (CI)
    python -m benchmarks.campaign --what-if --epoch 1.0 ...                # a plan, no run

Part 1, in order of value: a preflight (CUDA visible, Ray starts and sees the GPU, a Ray
worker's start, the data load); the preset's epoch time (our loop, bf16, against the usual
loop) with one epoch of each seed network at its own recipe, and packing 1/2/4 trials of a
median-sized sample of the space; then the seed baselines and an `efficient_resnet` search
at the same epoch count E, both retrained with the same seeds, and the search's report
comparing its winner with the best seed network. E, the trials, the trials per GPU, the
finalists, the search's --time-budget and each step's limit are planned from the
measurements (`plan_search`; the plan is printed, for this mode's worst plausible machine,
before the first step, and again from the measurements before the seeds step). The seeds
step (baselines, the best one's retrain, its report) ends before the search starts, and
the search's --time-budget, set from the time really left when it starts, leaves room for
its finalists, its retrain and its report.
Part 2 (what does not fit the first lease): a preflight that also compiles a small network
with torch.compile, the space's largest samples, the profile, the `speedrun` recipe.

The campaign never passes `--deadline` (seconds of wall time from its start): each step's
limit is the smaller of its own and what is left minus `--reserve` for writing the results;
a step that cannot get its minimum is skipped and says so; a step past its limit gets
SIGINT, then SIGKILL, and is waited for a bounded time. The results go to `--out` as
they come, in at most 8 files, none deeper than OUT/a/b, no checkpoints (what comes back
from a lent GPU machine): results.json (every figure, the plan and its inputs, every
command exactly as it ran, each step's estimate, limit, seconds and status, the
comparison), results.md, campaign.log (progress, the plans, each step's output tail), and
the search's report.md, trials.parquet, seeds_trials.parquet and two plots. The
experiments themselves (checkpoints included) stay in `--work`.

`--rehearse` is the same campaign on a CPU, shaped like the lease: the same steps, plan and
limits, at CPU sizes (200 training images, networks of the reduced 60,000-parameter budget,
E of 2-4, at most 4 trials), with real command starts of tens of seconds and the seed
recipes planned at no less than 3x the preset's epoch (a GPU's proportion; on a CPU they
cost about the same per image). CI runs it as a user's shell would (no RAY_* variables, a
new HOME).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from training.artifacts import code_version, write_json, write_text
from tune.cli import PRECISION_NAMES, REDUCED
from tune.rungs import (
    DEFAULT_REDUCTION_FACTOR,
    asha_brackets,
    asha_milestones,
    default_grace_period,
)

PART1_FILES = ("report.md", "trials.parquet", "params_vs_acc.png", "curves.png")
MAX_FILES = 8  # what comes back from a lent GPU machine: 8 files, 16 MiB each, OUT/a/b/file
MAX_FILE_BYTES = 16 * 2**20
KILL_GRACE_S = 5.0  # after SIGINT, before SIGKILL of a step's whole process group
KILL_WAIT_S = 5.0  # after SIGKILL, the most the campaign waits for the step's process to go

# What the plan counts on top of the measured training epochs (each a share of an epoch):
VALIDATION_SHARE = 0.1  # the validation pass after each epoch (5,000 images of 50,000)
# A retrain seed's test, with and without flip TTA (3 passes over 10,000 images at the large
# evaluation batch: about 0.2 of the preset's training epoch), and its checkpoint.
TEST_EVAL_EPOCHS = 0.5
DECAY_FRACTION = 0.2  # a decay branch: this share of the epochs before its rung (the space's)
# A step's limit: its estimated work, plus MARGIN of what is extrapolated from measured
# speeds (training, retrains, the trials running at the budget's end), plus STEP_SLACK_S.
# The starts are measured as they are (the preflight's), and the search's --time-budget is
# its own limit: no margin on those.
MARGIN = 0.25
STEP_SLACK_S = 10.0
FIXED_PARTS = ("command start", "Ray workers' start", "report")
# A search command's start beyond the preflight's: it imports Ray Tune, Optuna and pandas
# and probes its storage (on the shared 2-core CPU: its Tuner started ~40 s after the
# command, where the preflight took 31 s).
SEARCH_START_EXTRA_S = 10.0


@dataclass(frozen=True)
class Assumed:
    """The worst plausible machine of a mode, for the plan made before anything is measured."""

    epoch_s: float  # the preset's epoch on the retrain's images
    seed_slowdown: float  # the seed recipes' epoch over the preset's
    packing: tuple[tuple[int, float], ...]  # (trials at once, total over one alone)
    startup_s: float  # a command's start
    worker_start_s: float  # a Ray worker's start


@dataclass(frozen=True)
class Sizes:
    """What a campaign runs and what its plan assumes: the lease's, or the CPU rehearsal's."""

    need_gpu: bool
    bench_args: tuple[str, ...]  # added to every benchmarks.bench command
    search_args: tuple[str, ...]  # added to both searches (e.g. --subset)
    min_epochs: int
    max_epochs: int
    max_trials: int
    min_trials: int  # the least search: this many trials reach the first rung, one goes on
    retrain_seeds: int  # of both sides: 2 are the fewest that give the comparison's interval
    finalists: int  # at most (and one round of them: no more than run at once)
    seed_gpu_share: float  # the five baselines run at once, this share of the GPU each
    trial_images: int  # images of a trial's epoch (seed baselines too)
    retrain_images: int  # images of a retrain epoch (train + validation)
    # The fixed steps' (estimated work, limit), seconds.
    preflight_s: tuple[float, float]
    bench_models_s: tuple[float, float]
    bench_packing_s: tuple[float, float]
    startup_s: float  # least a command's start (Python, torch, Ray, data) is taken to be
    worker_start_s: float  # least a Ray worker's start (imports, the data) is taken to be
    trial_overhead_s: float  # a trial's own setup in a reused worker, and its first steps
    report_s: float  # the results table, the report and its plots
    stop_s: float  # Ray ending the trials at --time-budget and saving the experiment
    winner_epoch_factor: float  # the winner's epoch over the preset's, at most
    # Smaller training sets for both sides, largest first, where no E fits on all the images.
    subsets: tuple[int, ...]
    # The seed recipes' epoch is taken as at least this times the preset's: 1 on the lease
    # (measured there); on a CPU, where batch size hardly changes an image's cost, a stand-in
    # for what a GPU shows at batch 128-256 against 512, so the rehearsal plans like the lease.
    seed_slowdown_floor: float
    assumed: Assumed  # the plan printed before the first step, before any measurement


LEASE = Sizes(
    need_gpu=True,
    bench_args=("--space-samples", "60", "--packing-targets", "median", "--seed-recipes"),
    search_args=(),
    min_epochs=2,
    max_epochs=30,
    max_trials=200,
    min_trials=4,  # the space's three starting points and one sampled trial
    retrain_seeds=2,
    finalists=3,
    seed_gpu_share=0.2,
    trial_images=45_000,
    retrain_images=50_000,
    preflight_s=(40, 90),
    bench_models_s=(75, 120),
    bench_packing_s=(80, 150),
    startup_s=20,
    worker_start_s=5,
    trial_overhead_s=2,
    report_s=10,
    stop_s=10,
    winner_epoch_factor=2.0,  # the space's largest samples' target is 2 s to the preset's 1 s
    subsets=(40_000, 30_000, 20_000, 15_000, 10_000, 5_000),
    seed_slowdown_floor=1.0,
    # A GPU three times slower than the preset's 1 s target: compute-bound, so the seed
    # recipes' small batches cost only twice as much, and packing gains little.
    assumed=Assumed(3.0, 2.0, ((1, 1.0), (2, 1.2), (4, 1.3)), startup_s=40, worker_start_s=15),
)
REHEARSAL = Sizes(
    need_gpu=False,
    # What the rehearsal's searches train: the preset and the seed networks fitted to the
    # reduced budget, samples of efficient_resnet, one CPU thread each (as a trial has).
    bench_args=tuple(
        "--tiny --device cpu --threads 1 --models efficient_resnet --fit-presets --budget "
        f"{REDUCED.budget} --space efficient_resnet --seed-recipes --packing-targets median "
        "--packing-counts 1 2".split()
    ),
    search_args=("--subset", "200"),
    min_epochs=2,
    max_epochs=4,
    max_trials=4,
    min_trials=2,
    retrain_seeds=2,
    finalists=1,
    seed_gpu_share=0.0,
    trial_images=200,
    retrain_images=250,
    preflight_s=(30, 90),
    bench_models_s=(50, 150),
    bench_packing_s=(45, 150),
    startup_s=20,
    worker_start_s=5,
    trial_overhead_s=3,
    report_s=15,
    stop_s=10,
    winner_epoch_factor=2.0,
    subsets=(),  # it trains on --subset 200 already
    seed_slowdown_floor=3.0,
    assumed=Assumed(2.0, 3.0, ((1, 1.0), (2, 1.0)), startup_s=40, worker_start_s=15),
)


@dataclass(frozen=True)
class Measured:
    """The plan's inputs, in seconds: measured by the steps before it, or assumed."""

    left_s: float  # to the deadline, less the reserve, when the plan is made
    startup_s: float  # a search command's start before its Tuner: Python, torch, Ray, data
    worker_start_s: float  # a new Ray worker's start before it trains: imports
    epoch_s: float  # the preset's epoch (our loop) on the retrain's images
    seed_epoch_s: tuple[float, ...]  # each seed network's epoch, its own recipe, retrain images
    sample_epoch_s: float  # a median sample of the space, alone, on a trial's images
    packing: tuple[tuple[int, float], ...]  # (trials at once, their total over one alone)
    trials_at_once: int  # k: search trials sharing the GPU (1 / --gpus-per-trial)
    seed_slots: int  # seed trials at once (5 at 0.2 GPU each; the CPUs without a GPU)
    retrain_slots: int  # retrain seeds at once (k on a GPU; the CPUs without one)

    def gain(self, at_once: int) -> float:
        """Total throughput of `at_once` trials over one alone: the measurement at the most
        trials at once that is not above it (1 without one)."""
        measured = [g for n, g in self.packing if n <= at_once]
        return max(1.0, measured[-1]) if measured else 1.0


@dataclass
class StepPlan:
    """One step: what it does, each part's estimated seconds, and its limit."""

    name: str
    work: dict[str, float]
    limit_s: float

    @property
    def work_s(self) -> float:
        return sum(self.work.values())


@dataclass
class Plan:
    """E, the trials and each step's work and limit, with the arithmetic behind them."""

    epochs: int  # E: every baseline, trial and both retrains
    trials: int  # --num-samples of the search (its --time-budget may end it first)
    trials_at_once: int
    gpus_per_trial: float
    finalists: int
    search_seconds: int  # --time-budget of the search: its trials and finalists
    subset: int | None  # --subset of both sides where all the images do not fit; None: all
    least_trials: int  # the least search it was planned for
    rung: bool  # whether the search's trials meet a first ASHA rung with a decay branch
    fits: bool  # whether every step's limit covers its estimated work before the deadline
    steps: list[StepPlan] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def step(self, name: str) -> StepPlan:
        return next(s for s in self.steps if s.name == name)


@dataclass(frozen=True)
class _Costs:
    """The plan's arithmetic at one E."""

    epochs: int
    subset: int | None  # training images of both sides; None: all
    least_trials: int  # the least search: this many trials to the first rung
    seeds: dict[str, float]
    search_fixed: dict[str, float]  # the search step but its --time-budget
    trial_epoch_s: float  # one trial's epoch, k sharing the GPU, validation included
    first_rung: int | None  # epoch of the first rung with a decay branch; None: none
    rungs: tuple[int, ...]
    per_trial_s: float  # a trial's expected seconds under ASHA
    finalists: int
    finalists_s: float
    least_search_s: float  # min_trials to the first rung, rounds of k, then one to the end
    budget_s: float  # what is left for --time-budget: the trials and the finalists
    reserve_epoch_s: float  # a trial's seconds per epoch as the budget's reserve counts it

    @property
    def seeds_limit_s(self) -> float:
        return limit_for(self.seeds)

    @property
    def search_fixed_limit_s(self) -> float:
        return limit_for(self.search_fixed)

    @property
    def reserve_s(self) -> float:
        """What tune.time_budget.TimeBudget keeps of the budget for the finalists: their
        rounds x E x the median seconds per epoch of the trials (time_total_s over the
        epochs, so a trial's setup and decay branches count), at most half the budget."""
        if not self.finalists:
            return 0.0
        return min(self.budget_s / 2, self.epochs * self.reserve_epoch_s)

    @property
    def trials_s(self) -> float:  # the search's own trials: the budget less that reserve
        return self.budget_s - self.reserve_s

    @property
    def fits(self) -> bool:
        # TimeBudget keeps at most half of the budget for the finalists.
        return self.trials_s >= self.least_search_s and self.finalists_s <= self.budget_s / 2

    @property
    def epoch_dependent_s(self) -> float:
        """What grows with E besides the search's trials: the baselines, both retrains, the
        finalists and the last epoch of a stopped trial."""
        seeds = sum(v for k, v in self.seeds.items() if k not in FIXED_PARTS) * (1 + MARGIN)
        search = sum(v for k, v in self.search_fixed.items() if k not in FIXED_PARTS)
        return seeds + search * (1 + MARGIN) + self.finalists_s


def limit_for(work: dict[str, float]) -> float:
    """A step's limit for its estimated work (see MARGIN)."""
    variable = sum(v for k, v in work.items() if k not in FIXED_PARTS)
    return sum(work.values()) + MARGIN * variable + STEP_SLACK_S


def _costs(
    m: Measured,
    sizes: Sizes,
    e: int,
    subset: int | None = None,
    least_trials: int | None = None,
    finalists: int | None = None,
    left_s: float | None = None,
) -> _Costs:
    """The arithmetic at E epochs, on `subset` training images (None: all), with a least
    search of `least_trials` (default: min_trials) and at most `finalists` (default: the
    sizes'). With `left_s`, the search's alone (the seeds step is done): its budget from
    what is left now."""
    least_trials = sizes.min_trials if least_trials is None else least_trials
    finalists = sizes.finalists if finalists is None else finalists
    rf = DEFAULT_REDUCTION_FACTOR
    startup = max(m.startup_s, sizes.startup_s)
    worker = max(m.worker_start_s, sizes.worker_start_s)
    trial_images = subset or sizes.trial_images
    # A subset validates on a quarter as many (at most 5,000, training.data.subset_sizes),
    # and the retrain trains on both; the test split stays whole.
    retrain_images = (
        trial_images + min(5_000, trial_images // 4) if subset else sizes.retrain_images
    )
    retrain_scale = retrain_images / sizes.retrain_images
    per_trial_image = trial_images / sizes.retrain_images  # a trial's epoch in retrain epochs
    seed_epochs = [max(s, sizes.seed_slowdown_floor * m.epoch_s) for s in m.seed_epoch_s]
    slowest = max(seed_epochs)
    seeds_at_once = max(1, min(len(seed_epochs), m.seed_slots))

    def retrain(epoch_s: float, slots: int) -> float:
        seeds, together = sizes.retrain_seeds, max(1, min(sizes.retrain_seeds, slots))
        work = e * retrain_scale * epoch_s + TEST_EVAL_EPOCHS * m.epoch_s
        return work * seeds / m.gain(together)

    # The five run at once: no faster than the slowest alone, nor than all their work at
    # the packing gain of as many trials at once.
    baselines = (
        e
        * (1 + VALIDATION_SHARE)
        * per_trial_image
        * max(slowest, sum(seed_epochs) / m.gain(seeds_at_once))
        + math.ceil(len(seed_epochs) / seeds_at_once) * sizes.trial_overhead_s
    )
    seeds = {
        "command start": startup,
        "Ray workers' start": worker,
        f"{len(seed_epochs)} baselines x E epochs": baselines,
        f"retrain of the best, {sizes.retrain_seeds} seeds": worker
        + retrain(slowest, m.seed_slots),
        "report": sizes.report_s,
    }

    k = m.trials_at_once
    trial_epoch = (
        m.sample_epoch_s * trial_images / sizes.trial_images * k / m.gain(k)
        * (1 + VALIDATION_SHARE)
    )  # fmt: skip
    grace = default_grace_period(e)
    rungs = asha_milestones(e, grace, rf, asha_brackets(e, grace, rf))
    # A rung's decay branch runs only before the main run's own decay (training.loop).
    branched = [r for r in rungs if r < (1 - DECAY_FRACTION) * e]
    first_rung = branched[0] if branched else None
    # Expected epochs of a trial: all reach the first rung, a third of them the next, ...
    epochs, survive, before = 0.0, 1.0, 0
    for r in rungs:
        epochs += survive * (r - before + (DECAY_FRACTION * r if r in branched else 0))
        survive, before = survive / rf, r
    epochs += survive * (e - before)
    per_trial = epochs * trial_epoch + sizes.trial_overhead_s
    to_rung = (first_rung * (1 + DECAY_FRACTION) if first_rung else e) * trial_epoch
    full = (e + DECAY_FRACTION * sum(branched)) * trial_epoch + sizes.trial_overhead_s
    least = worker + math.ceil(least_trials / k) * (to_rung + sizes.trial_overhead_s) + full
    finalists = min(finalists, k)
    # One round, all at once.
    finalists_s = e * trial_epoch + sizes.trial_overhead_s if finalists else 0.0
    sample_alone = m.sample_epoch_s * sizes.retrain_images / sizes.trial_images
    winner_epoch = sizes.winner_epoch_factor * max(m.epoch_s, sample_alone)
    search_fixed = {
        "command start": startup,
        "the trials running at the budget's end": (1 + DECAY_FRACTION * max(rungs, default=0))
        * trial_epoch
        + sizes.stop_s,
        f"retrain of the winner, {sizes.retrain_seeds} seeds": worker
        + retrain(winner_epoch, m.retrain_slots),
        "report": sizes.report_s,
    }
    left = m.left_s if left_s is None else left_s
    seeds_limit = limit_for(seeds) if left_s is None else 0.0
    budget = left - seeds_limit - limit_for(search_fixed)
    # Most trials end at the first rung: their setup spreads over its epochs.
    reserve_epoch = trial_epoch * (1 + DECAY_FRACTION) + sizes.trial_overhead_s / (first_rung or e)
    return _Costs(
        e, subset, least_trials, seeds, search_fixed, trial_epoch, first_rung, rungs,
        per_trial, finalists, finalists_s, least, budget, reserve_epoch,
    )  # fmt: skip


def _trials(c: _Costs, sizes: Sizes, k: int) -> int:
    fit = int(max(0.0, c.trials_s) * k / c.per_trial_s)
    return max(min(c.least_trials, sizes.max_trials), min(sizes.max_trials, fit))


def _choose(every: list[_Costs]) -> tuple[_Costs, str] | None:
    """E at one data size, by the rule of `plan_search`; None if no E fits."""
    fitting = [c for c in every if c.fits]
    with_rung = [c for c in fitting if c.first_rung]
    # The trials' time falls and the rest grows with E: the balanced E are the smallest.
    balanced = [c for c in with_rung if c.trials_s >= c.epoch_dependent_s]
    if balanced:
        return balanced[-1], (
            "the largest E whose search has a first rung with a decay branch and gets at "
            "least as much time for its trials as the rest of what grows with E"
        )
    if with_rung:
        return with_rung[0], (
            "the least E with a first rung with a decay branch (its trials get less time "
            "than the rest of what grows with E, at any E with a rung)"
        )
    if fitting:
        return fitting[-1], (
            "NO RUNG: at no E with a first rung does the least search fit; ASHA stops no "
            "trial and no decay branch runs"
        )
    return None


def plan_search(m: Measured, sizes: Sizes) -> Plan:
    """E, the trials, the finalists, the search's --time-budget and each step's limit.

    Each step's limit covers all of its estimated work with a margin: the seeds step the
    five baselines at their own recipes' measured cost, the best one's retrain and the
    report; the search step its start, its --time-budget (trials and one round of
    finalists), the trials still running when it ends, the winner's retrain and the report.
    E is the largest in [min_epochs, max_epochs] whose search has a first ASHA rung with a
    decay branch and gets at least as much time for its trials as everything else that grows
    with E (the baselines, both retrains, the finalists); else the least E with such a rung
    whose least search (min_trials to the rung, one of them to the end) fits; else the
    largest E that fits without a rung (the plan says so). Where no E fits on all the
    training images, both sides train on the largest `--subset` in `sizes.subsets` at which
    one does, and below that the search is one trial (a known-good start) with no finalists:
    the comparison (both sides, E epochs, retrained alike) is never what is cut. Where
    nothing fits even so, the plan says DOES NOT FIT and by how much: the seeds step keeps
    its limit and the search's is what is left."""
    k = max(1, m.trials_at_once)
    epochs = range(sizes.min_epochs, sizes.max_epochs + 1)
    # What gives way, in turn: E (inside _choose), the data, then the search's size.
    smallest = sizes.subsets[-1] if sizes.subsets else None
    levels = [(subset, None, None) for subset in (None, *sizes.subsets)]
    levels.append((smallest, 1, 0))  # one trial (a known-good start), no finalists
    chosen = None
    for subset, least_trials, finalists in levels:
        chosen = _choose([_costs(m, sizes, e, subset, least_trials, finalists) for e in epochs])
        if chosen:
            break
    if chosen is None:
        chosen = (
            _costs(m, sizes, sizes.min_epochs, smallest, 1, 0),
            (
                "DOES NOT FIT: not even the least E, data and search fit in the time left; "
                "the seeds step keeps its limit and the search gets what is left"
            ),
        )
    c, why = chosen
    budget = max(0.0, c.budget_s)
    trials = _trials(c, sizes, k)
    seeds = StepPlan("seeds", dict(c.seeds), c.seeds_limit_s)
    search_work = {
        "command start": c.search_fixed["command start"],
        f"--time-budget: {trials} trials, {k} at once, then {c.finalists} finalist(s)": budget,
        **{key: v for key, v in c.search_fixed.items() if key != "command start"},
    }
    search_limit = budget + c.search_fixed_limit_s
    if not c.fits:  # what is left after the seeds step, which is less than its work
        search_work[next(iter(k_ for k_ in search_work if k_.startswith("--time")))] = (
            c.least_search_s + c.finalists_s
        )
        search_limit = max(0.0, m.left_s - c.seeds_limit_s)
    search = StepPlan("search", search_work, search_limit)
    plan = Plan(
        epochs=c.epochs,
        trials=trials,
        trials_at_once=k,
        gpus_per_trial=1.0 / k,
        finalists=c.finalists,
        search_seconds=max(1, int(budget)),
        subset=c.subset,
        least_trials=c.least_trials,
        rung=c.first_rung is not None,
        fits=c.fits,
        steps=[seeds, search],
    )
    gains = ", ".join(f"{n}: {g:.2f}x" for n, g in m.packing)
    seed_text = ", ".join(f"{s:.2f}" for s in m.seed_epoch_s)
    rung_text = (
        f"first rung at epoch {c.first_rung} with a decay branch (rungs {list(c.rungs)})"
        if c.first_rung
        else f"no rung with a decay branch at E={c.epochs} (rungs {list(c.rungs)})"
    )
    data = (
        f"--subset {c.subset} for both sides: no E fits on all the training images"
        if c.subset
        else "all the training images"
    )
    plan.lines = [
        f"inputs: {m.left_s:.0f} s left for the seeds and the search; a command starts in "
        f"{max(m.startup_s, sizes.startup_s):.0f} s, a Ray worker in "
        f"{max(m.worker_start_s, sizes.worker_start_s):.0f} s; preset epoch {m.epoch_s:.2f} s; "
        f"seed recipes' epochs {seed_text} s (taken as at least {sizes.seed_slowdown_floor:g}x "
        f"the preset's); median sample {m.sample_epoch_s:.2f} s alone; packing gains {gains}",
        f"E = {c.epochs}: {why}; {rung_text}; {data}",
        f"search: {k} trial(s) at once ("
        + (f"--gpus-per-trial {1 / k:g}" if sizes.need_gpu else f"--max-concurrent-trials {k}")
        + f"), a trial's epoch "
        f"{c.trial_epoch_s:.2f} s, ~{c.per_trial_s:.1f} s a trial under ASHA -> {trials} trials "
        f"(at most {sizes.max_trials}); --time-budget {plan.search_seconds} s of which "
        f"{c.reserve_s:.0f} s kept for {c.finalists} finalist(s) (~{c.finalists_s:.0f} s); "
        f"the least search ("
        f"{c.least_trials} trial(s) to the first rung, one to the end) needs "
        f"{c.least_search_s:.0f} s",
    ]
    for step in plan.steps:
        parts = "; ".join(f"{k_}: {v:.0f} s" for k_, v in step.work.items())
        plan.lines.append(
            f"step {step.name}: estimated {step.work_s:.0f} s, limit {step.limit_s:.0f} s ({parts})"
        )
    if not plan.fits:
        short = c.least_search_s - c.trials_s
        plan.lines.append(
            f"short by {short:.0f} s: the search's limit is below its estimated work; expect "
            "it to be cut, or to end without a trial that trained every epoch"
        )
    return plan


def replan_search(plan: Plan, m: Measured, sizes: Sizes) -> tuple[int, int, list[str]]:
    """At the search's start: its --time-budget and trials from the time really left, so
    that its retrain and report keep their room: more than planned where the seeds step
    ended before its limit, less where it overran it (a cut and its kill)."""
    c = _costs(m, sizes, plan.epochs, plan.subset, plan.least_trials, plan.finalists, m.left_s)
    budget = max(1, int(c.budget_s))
    trials = _trials(c, sizes, plan.trials_at_once)
    line = (
        f"at the search's start {m.left_s:.0f} s are left: --time-budget {budget} s (planned "
        f"{plan.search_seconds} s), {trials} trials (planned {plan.trials})"
    )
    return budget, trials, [line]


def search_commands(
    plan: Plan,
    data: str,
    storage: Path,
    sizes: Sizes,
    python: str = sys.executable,
    search_seconds: int | None = None,
    trials: int | None = None,
    precision: str = "auto",
) -> list[tuple[str, list[str]]]:
    """The seed baselines and the search at the same E, in one storage folder, with the same
    data, subset, seed and retrain seeds: the search's report compares its winner with the
    best seed network only when all of these match, both retrained alike."""
    common = ["--data", data, "--max-epochs", str(plan.epochs), "--storage-path", str(storage)]
    common += [*sizes.search_args, *(["--subset", str(plan.subset)] if plan.subset else []), "-q"]
    common += ["--precision", precision]
    seed_gpus = ["--gpus-per-trial", f"{sizes.seed_gpu_share:g}"] if sizes.need_gpu else []
    if sizes.need_gpu:
        trial_gpus = ["--gpus-per-trial", f"{plan.gpus_per_trial:g}"]
    else:  # on CPUs, each trial holds one; the packing measurement says how many at once
        trial_gpus = ["--max-concurrent-trials", str(plan.trials_at_once)]
    seeds = [python, "-m", "tune.search", "--space", "seeds", "--name", "seeds"]
    # No finalists among the seed networks: the best of five runs is the baseline, as
    # `--baseline seeds` picks it.
    seeds += [*common, *seed_gpus, "--retrain-seeds", str(sizes.retrain_seeds), "--finalists", "0"]
    search = [python, "-m", "tune.search", "--space", "efficient_resnet", "--name", "search"]
    search += [*common, *trial_gpus, "--num-samples", str(trials or plan.trials)]
    search += ["--time-budget", f"{search_seconds or plan.search_seconds}s"]
    search += ["--finalists", str(plan.finalists), "--finalist-seeds", "1"]
    search += ["--retrain-seeds", str(sizes.retrain_seeds)]
    return [("seeds", seeds), ("search", search)]


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = REHEARSAL if args.rehearse else LEASE
        self.out: Path = args.out
        self.work: Path = args.work
        self.started = time.monotonic()
        self.results: dict[str, Any] = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": "python -m benchmarks.campaign " + " ".join(args.argv),
            "code_version": code_version(),
            "part": args.part,
            "precision": args.precision,
            "rehearsal": args.rehearse,
            "deadline_s": args.deadline,
            "reserve_s": args.reserve,
            "sizes": asdict(self.sizes),
            "steps": [],
            "figures": {},
        }

    # --- time and records

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        """Seconds a step may still use: to the deadline, less the reserve for the results
        (which also covers ending a cut step: KILL_GRACE_S + KILL_WAIT_S)."""
        return self.args.deadline - self.elapsed() - self.args.reserve

    def log(self, message: str) -> None:
        line = f"[{self.elapsed():6.1f}s] {message}"
        print(line, flush=True)
        with open(self.out / "campaign.log", "a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        self.results["elapsed_s"] = self.elapsed()
        write_json(self.out / "results.json", self.results)
        write_text(self.out / "results.md", format_results(self.results))

    def record(self, name: str, **fields: Any) -> dict[str, Any]:
        step = {"name": name, **fields}
        self.results["steps"].append(step)
        self.save()
        return step

    # --- steps

    def run(
        self, name: str, cmd: list[str], own_s: float, min_s: float, estimate_s: float = 0.0
    ) -> dict[str, Any]:
        """Run one step as a subprocess (its own process group) within the smaller of `own_s`
        and what is left; skipped when that is under `min_s`. A step over its limit gets
        SIGINT, then SIGKILL for its whole group, and is recorded as cut."""
        limit = min(own_s, self.left())
        if limit < min_s:
            reason = (
                f"cut: {max(0.0, self.left()):.0f} s left before the deadline, needs {min_s:.0f} s"
            )
            self.log(f"skip {name}: {reason}")
            return self.record(name, command=cmd, status="skipped", reason=reason)
        planned = f", estimated {estimate_s:.0f} s" if estimate_s else ""
        self.log(f"start {name} (limit {limit:.0f} s{planned}): {' '.join(cmd)}")
        log_path = self.work / f"{name}.log"
        started = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
            )
            try:
                rc = proc.wait(timeout=limit)
                status = "ok" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                rc, status = _end_group(proc), "cut"
        seconds = time.monotonic() - started
        tail = log_path.read_text(errors="replace").splitlines()[-30:]
        with open(self.out / "campaign.log", "a") as f:
            f.write(f"--- {name}: last lines of its output\n" + "\n".join(tail) + "\n")
        reason = ""
        if status == "cut":
            reason = f"cut after {seconds:.0f} s: its limit ({limit:.0f} s, the deadline's share)"
        elif status == "failed":
            reason = f"exit {rc}: " + (tail[-1] if tail else "")
        versus = f" (estimated {estimate_s:.0f} s, limit {limit:.0f} s)" if estimate_s else ""
        self.log(f"end {name}: {status} after {seconds:.0f} s{versus} {reason}")
        return self.record(
            name, command=cmd, limit_s=limit, estimate_s=estimate_s, seconds=seconds, exit=rc,
            status=status, reason=reason,
        )  # fmt: skip

    def preflight(self, check_compile: bool = False) -> bool:
        path = self.work / "preflight.json"
        cmd = [sys.executable, "-m", "benchmarks.preflight", "--data", self.args.data]
        cmd += ["--out", str(path)] + (["--need-gpu"] if self.sizes.need_gpu else [])
        cmd += ["--check-compile"] if check_compile else []
        estimate, limit = self.sizes.preflight_s
        step = self.run("preflight", cmd, limit, 10, estimate)
        found = json.loads(path.read_text()) if path.exists() else {}
        self.results["preflight"] = found
        if step["status"] != "ok":
            reason = found.get("failed") or step.get("reason") or step["status"]
            self.results["stopped"] = f"preflight failed: {reason}"
            self.log(f"stop: preflight failed: {reason}")
            self.save()
            return False
        return True

    def bench(
        self, name: str, mode: str, own: tuple[float, float], extra: tuple[str, ...] = ()
    ) -> dict:
        path = self.work / f"{name}.json"
        cmd = [sys.executable, "-m", "benchmarks.bench", "--mode", mode, "--out", str(path)]
        cmd += [*self.sizes.bench_args, *extra]
        self.run(name, cmd, own[1], 15, own[0])
        found = json.loads(path.read_text()) if path.exists() else {}
        self.results["figures"][name] = found
        self.save()
        return found

    def fixed_steps_s(self) -> float:
        """The estimated work of the steps before the plan (the preflight and benchmarks)."""
        return sum(s[0] for s in (self.sizes.preflight_s, self.sizes.bench_models_s,
                                  self.sizes.bench_packing_s))  # fmt: skip

    def log_plan(self, label: str, plan: Plan) -> None:
        for line in plan.lines:
            self.log(f"plan ({label}): {line}")

    def part1(self) -> None:
        storage = self.work / "exp"
        self.log_plan("assumed, before any measurement", self.assumed_plan())
        if not self.preflight():
            return
        models = self.bench("bench_models", "models", self.sizes.bench_models_s)
        packing = self.bench("bench_packing", "packing", self.sizes.bench_packing_s)
        measured = self.measured(models, packing)
        if measured is None:
            return
        plan = plan_search(measured, self.sizes)
        self.log_plan("measured", plan)
        self.results["plan"] = {"inputs": asdict(measured), **asdict(plan)}
        self.save()

        # The seeds step first, with its retrain: what the comparison needs of it is on disk
        # before the search starts, and the search's --time-budget leaves room for its own.
        (_, seeds_cmd), _ = search_commands(
            plan, self.args.data, storage, self.sizes, precision=self.args.precision
        )
        seeds = plan.step("seeds")
        self.run("seeds", seeds_cmd, seeds.limit_s, self.sizes.startup_s + 10, seeds.work_s)
        self.collect(storage)

        now = replace(measured, left_s=self.left())
        budget, trials, lines = replan_search(plan, now, self.sizes)
        for line in lines:
            self.log(f"plan (search): {line}")
        self.results["search_start"] = {"left_s": now.left_s, "time_budget_s": budget,
                                        "trials": trials}  # fmt: skip
        _, (_, search_cmd) = search_commands(
            plan,
            self.args.data,
            storage,
            self.sizes,
            search_seconds=budget,
            trials=trials,
            precision=self.args.precision,
        )
        search = plan.step("search")
        estimate = search.work_s + budget - plan.search_seconds
        self.run("search", search_cmd, self.left(), self.sizes.startup_s + 10, estimate)
        self.collect(storage)

    def assumed_plan(self) -> Plan:
        """The plan for this mode's worst plausible machine, before anything is measured."""
        sz, a = self.sizes, self.sizes.assumed
        left = self.args.deadline - self.args.reserve - self.fixed_steps_s()
        k = a.packing[-1][0] if sz.need_gpu else 1
        assumed = Measured(
            left_s=left, startup_s=a.startup_s, worker_start_s=a.worker_start_s,
            epoch_s=a.epoch_s, seed_epoch_s=(a.epoch_s * a.seed_slowdown,) * 5,
            sample_epoch_s=a.epoch_s / 2 * sz.trial_images / sz.retrain_images,
            packing=a.packing, trials_at_once=k, seed_slots=5 if sz.need_gpu else 2,
            retrain_slots=k if sz.need_gpu else 2,
        )  # fmt: skip
        plan = plan_search(assumed, sz)
        fixed = [
            f"step {name}: estimated {est:.0f} s, limit {lim:.0f} s"
            for name, (est, lim) in (("preflight", sz.preflight_s),
                                     ("bench_models", sz.bench_models_s),
                                     ("bench_packing", sz.bench_packing_s))
        ]  # fmt: skip
        plan.lines = fixed + plan.lines
        return plan

    def measured(self, models: dict, packing: dict) -> Measured | None:
        """The plan's inputs from the preflight and the two benchmarks; None (and the
        campaign stops, saying why) without an epoch time or a packing measurement."""
        from benchmarks.bench import pick_gpus_per_trial

        sz = self.sizes
        try:
            preset = next(iter(models["models"].values()))
            epoch_s = preset["variants"]["ours"]["epoch_seconds"] * (
                sz.retrain_images / models["train_images"]
            )
            seed_epoch_s = tuple(
                r["epoch_seconds"] * sz.retrain_images / r["images"]
                for r in models["seed_recipes"].values()
            )
            rows = next(v for k, v in packing["packing"].items() if k.startswith("median"))
        except (KeyError, StopIteration, TypeError):
            reason = "no epoch time, seed recipe or packing measurement to plan the searches from"
            self.results["stopped"] = reason
            self.log(f"stop: {reason}")
            self.save()
            return None
        alone = rows[0]["total_images_per_sec"]
        gains = tuple((r["concurrent"], r["total_images_per_sec"] / alone) for r in rows)
        k = round(1 / pick_gpus_per_trial(rows))
        cpus = int(self.results.get("preflight", {}).get("ray_cpus") or 1)
        preflight = next((s for s in self.results["steps"] if s["name"] == "preflight"), {})
        worker = float(self.results["preflight"].get("worker_seconds", 0.0))
        return Measured(
            left_s=self.left(),
            # The preflight starts Python, torch and Ray and loads the data, as a search does
            # (and a Ray worker, which the plan counts on its own).
            startup_s=float(preflight.get("seconds", sz.startup_s)) - worker + SEARCH_START_EXTRA_S,
            worker_start_s=worker,
            epoch_s=epoch_s,
            seed_epoch_s=seed_epoch_s,
            sample_epoch_s=sz.trial_images / alone,
            packing=gains,
            trials_at_once=k,
            seed_slots=5 if sz.need_gpu else min(5, cpus),
            retrain_slots=k if sz.need_gpu else cpus,
        )

    def collect(self, storage: Path) -> None:
        """Copy what comes back (report, tables, two plots) and the searches' own figures:
        trial gaps, worker reuse, the report overhead, the retrains' test accuracy, and the
        comparison of the winner with the best seed network."""
        search, seeds = storage / "search", storage / "seeds"
        for name in PART1_FILES:
            if (search / name).is_file():
                shutil.copyfile(search / name, self.out / name)
        if (seeds / "trials.parquet").is_file():
            shutil.copyfile(seeds / "trials.parquet", self.out / "seeds_trials.parquet")
        for label, exp in (("seeds", seeds), ("search", search)):
            if exp.is_dir():
                self.results["figures"][label] = experiment_figures(exp)
        comparison = compare_retrains(search, seeds)
        if comparison:
            self.results["comparison"] = comparison
        self.save()

    def part2(self) -> None:
        if not self.preflight(check_compile=True):
            return
        for mode in ("space", "profile"):
            self.bench(f"bench_{mode}", mode, (self.left(), self.left()))
        cmd = [sys.executable, "-m", "training.train", "--model", "efficient_resnet"]
        cmd += ["--recipe", "speedrun", "--data", self.args.data, "--out"]
        cmd += [
            str(self.work / "speedrun"),
            *(["--subset", "200", "--epochs", "1"] if self.args.rehearse else []),
        ]
        self.run("speedrun", cmd, self.left(), 30)
        metrics = self.work / "speedrun" / "metrics.json"
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            self.results["figures"]["speedrun"] = {
                k: m.get(k) for k in ("test_acc", "val_acc", "seconds", "epochs", "params")
            } | {"history": [{k: h.get(k) for k in ("epoch", "val_acc", "train_seconds")}
                             for h in m.get("history", [])]}  # fmt: skip
            self.save()

    def main(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        mode = " (CPU rehearsal)" if self.args.rehearse else ""
        self.log(f"campaign part {self.args.part}{mode}, deadline {self.args.deadline:.0f} s")
        self.save()
        self.part1() if self.args.part == 1 else self.part2()
        self.results["done"] = True
        self.log(f"done in {self.elapsed():.0f} s (deadline {self.args.deadline:.0f} s)")
        self.save()
        problems = check_returnable(self.out)
        if problems:
            self.log("the output folder would not come back whole: " + "; ".join(problems))
        failed = [s["name"] for s in self.results["steps"] if s["status"] != "ok"]
        return 1 if "stopped" in self.results or failed or problems else 0


ROOT = Path(__file__).resolve().parents[1]


def _end_group(proc: subprocess.Popen) -> int | None:
    """SIGINT to the step's process group (a search then stops and saves its experiment),
    SIGKILL to whatever of the group is still there after KILL_GRACE_S, and at most
    KILL_WAIT_S more for the step's process to go (one stuck in the kernel is left behind,
    not waited for: the deadline holds). Its exit status, or None if it had not gone."""
    with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGINT)
        return proc.wait(timeout=KILL_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        return proc.wait(timeout=KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        return None


def compare_retrains(search: Path, seeds: Path) -> dict[str, Any] | None:
    """The winner against the best seed network, as the search's report states it: each
    side's test accuracy per seed, with and without flip TTA, and Welch's interval and
    sentence. None until both retrains are on disk."""
    from tune.compare import welch

    paths = {side: exp / "final" / "metrics.json" for side, exp in
             (("winner", search), ("best_seed", seeds))}  # fmt: skip
    if not all(p.is_file() for p in paths.values()):
        return None
    finals = {side: json.loads(p.read_text()) for side, p in paths.items()}
    out: dict[str, Any] = {}
    for side, best in (("winner", search), ("best_seed", seeds)):
        config = best / "best_config.json"
        chosen = json.loads(config.read_text()) if config.is_file() else {}
        out[side] = {
            "trial_id": chosen.get("trial_id"),
            "stages": chosen.get("stages"),
            "preset": chosen.get("config", {}).get("preset"),
            "params": finals[side].get("params"),
            "test_acc_tta": finals[side].get("test_acc_tta"),
            "test_acc_plain": finals[side].get("test_acc_plain"),
        }
    for key in ("test_acc_tta", "test_acc_plain"):
        a, b = finals["winner"].get(key), finals["best_seed"].get(key)
        result = welch(a, b) if a and b else None
        if result is not None:
            out[key] = {**asdict(result), "sentence": result.sentence()}
    return out


def experiment_figures(exp: Path) -> dict[str, Any]:
    """From a search's folder: trials by status, the best validation accuracy, the gap
    between trials (started_at / ended_at), how many worker processes ran the trials, the
    report + checkpoint share of training time, and the retrain's test accuracy."""
    out: dict[str, Any] = {}
    table_path = exp / "trials.parquet"
    if table_path.is_file():
        import pandas as pd

        table = pd.read_parquet(table_path)
        out["trials"] = len(table)
        out["status"] = table["status"].value_counts().to_dict()
        out["best_val_acc"] = float(table["best_val_acc"].max())
        out["train_seconds"] = float(table["train_seconds"].sum())
        if {"started_at", "ended_at"} <= set(table):
            t = table.dropna(subset=["started_at", "ended_at"]).sort_values("started_at")
            gaps = t["started_at"].values[1:] - t["ended_at"].values[:-1]
            gaps = [float(g) for g in gaps if g > 0]  # concurrent trials overlap
            # From one trial function's return to the next one's call (no model build in it)
            out["median_gap_end_to_start_s"] = statistics.median(gaps) if gaps else None
            out["span_s"] = float(t["ended_at"].max() - t["started_at"].min()) if len(t) else None
    pids, report_s, train_s = set(), 0.0, 0.0
    for trial in exp.glob("trial_*/result.json"):
        lines = [json.loads(x) for x in trial.read_text().splitlines() if x.strip()]
        pids.update(line.get("pid") for line in lines if "pid" in line)
        epochs = [line for line in lines if "epoch_seconds" in line]
        if epochs:
            report_s += epochs[-1].get("report_seconds", 0.0)
            train_s += epochs[-1].get("train_seconds", 0.0)
    out["worker_processes"] = len(pids)
    if train_s:
        out["report_share_of_training"] = report_s / train_s
    final = exp / "final" / "metrics.json"
    if final.is_file():
        m = json.loads(final.read_text())
        out["retrain"] = {
            k: m.get(k) for k in ("test_acc_mean", "test_acc_std", "epochs", "params", "seconds")
        }
    return out


def check_returnable(root: Path) -> list[str]:
    """Why `root` would not come back from a lent GPU machine whole (empty: it would)."""
    problems, files = [], []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_symlink():
            problems.append(f"{rel}: a link")
        elif p.is_file():
            files.append(p)
            if len(rel.parts) > 3:
                problems.append(f"{rel}: deeper than OUT/a/b/file")
            if p.stat().st_size > MAX_FILE_BYTES:
                problems.append(f"{rel}: over 16 MiB")
        if not all(part.replace(".", "").replace("_", "").replace("-", "").isalnum()
                   and part.isascii() for part in rel.parts):  # fmt: skip
            problems.append(f"{rel}: a name other than letters, digits, '.', '_', '-'")
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files > {MAX_FILES}")
    return problems


def format_results(r: dict[str, Any]) -> str:
    lines = [
        f"# Campaign, part {r['part']}"
        + (" (CPU rehearsal, not a speed claim)" if r.get("rehearsal") else ""),
        "",
        f"{r['date']}; `{r['command']}`; code {r['code_version']}; deadline {r['deadline_s']:.0f} s,"
        f" {r.get('elapsed_s', 0):.0f} s used{'; finished' if r.get('done') else '; still running'}.",
    ]
    pre = r.get("preflight", {})
    if pre:
        lines += [
            "",
            f"Preflight: torch {pre.get('torch')}, torchvision {pre.get('torchvision')}, "
            f"Python {pre.get('python')}, GPU {pre.get('gpu', 'none')}, Ray GPUs "
            f"{pre.get('ray_gpus')}, {pre.get('train_images')} training images.",
        ]
    if r.get("stopped"):
        lines += ["", f"**Stopped**: {r['stopped']}"]
    lines += [
        "",
        "| step | status | seconds | estimated | limit | command |",
        "|---|---|---|---|---|---|",
    ]
    for s in r["steps"]:
        why = f" ({s['reason']})" if s.get("reason") else ""
        lines.append(
            f"| {s['name']} | {s['status']}{why} | {s.get('seconds', 0):.0f} | "
            f"{s.get('estimate_s', 0):.0f} | {s.get('limit_s', 0):.0f} | "
            f"`{' '.join(s['command'])}` |"
        )
    f = r["figures"]
    models = f.get("bench_models", {}).get("models", {})
    for name, m in models.items():
        ours, usual = m.get("variants", {}).get("ours"), m.get("usual")
        if ours:
            lines += ["", f"`{name}` ({m['params']:,} params): {ours['epoch_seconds']:.2f} s per "
                      f"epoch of {f['bench_models']['train_images']:,} images with our loop"
                      + (f", {usual['epoch_seconds']:.1f} s with the usual loop "
                         f"({m['speedup']:.1f}x)" if usual else "") + "."]  # fmt: skip
    for label, rows in f.get("bench_packing", {}).get("packing", {}).items():
        cells = ", ".join(f"{x['concurrent']}: {x['total_images_per_sec']:,.0f}" for x in rows)
        lines += ["", f"Packing, {label}: total img/s by concurrent trials: {cells}."]
    if r.get("plan"):
        lines += ["", "Plan:", ""] + [f"- {line}" for line in r["plan"]["lines"]]
    comparison = r.get("comparison", {})
    for key, label in (("test_acc_tta", "flip TTA"), ("test_acc_plain", "no TTA")):
        if comparison.get(key):
            lines += ["", f"The winner against the best seed network, {label}: "
                      f"{comparison[key]['sentence']}"]  # fmt: skip
    for label in ("seeds", "search"):
        if f.get(label):
            lines += ["", f"{label}: `{json.dumps(f[label], default=str)}`"]
    return "\n".join(lines) + "\n"


def _packing(text: str) -> tuple[int, float]:
    at_once, _, gain = text.partition(":")
    return int(at_once), float(gain)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m benchmarks.campaign",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", help="CIFAR-10 folder or archive (required but with --what-if)")
    p.add_argument(
        "--out", type=Path, help="results folder, what comes back (required but with --what-if)"
    )
    p.add_argument(
        "--work",
        type=Path,
        help="experiments, checkpoints and step logs (default: a new temporary folder)",
    )
    p.add_argument(
        "--deadline", type=float, default=540.0, help="seconds of wall time in all (default 540)"
    )
    p.add_argument(
        "--reserve",
        type=float,
        default=15.0,
        help="seconds kept for writing the results after the last step (default 15)",
    )
    p.add_argument("--part", type=int, choices=[1, 2], default=1, help="1: this lease; 2: later")
    p.add_argument(
        "--precision",
        choices=PRECISION_NAMES,
        default="auto",
        help="the seeds' and the search's --precision (default: %(default)s, by the GPU)",
    )
    p.add_argument(
        "--rehearse",
        "--smoke",
        action="store_true",
        help="the CPU rehearsal: the lease's steps and plan at CPU sizes (what CI runs)",
    )
    w = p.add_argument_group(
        "--what-if: print the plan for given measurements and the two commands, run nothing"
    )
    w.add_argument("--what-if", action="store_true", help="plan only")
    w.add_argument("--epoch", type=float, help="the preset's epoch on 50,000 images, seconds")
    w.add_argument(
        "--seed-slowdown",
        type=float,
        nargs="+",
        default=[3.0],
        help="each seed recipe's epoch over the preset's (one value: all five; default 3)",
    )
    w.add_argument(
        "--median-share",
        type=float,
        default=0.5,
        help="a median sample's epoch over the preset's, alone (default 0.5)",
    )
    w.add_argument(
        "--packing",
        type=_packing,
        nargs="+",
        default=[(1, 1.0), (2, 1.5), (4, 2.0)],
        help="AT_ONCE:GAIN, total throughput of that many trials over one (default 1:1 2:1.5 4:2)",
    )
    w.add_argument("--startup", type=float, default=40.0, help="a search command's start (40)")
    w.add_argument("--worker-start", type=float, default=10.0, help="a Ray worker's start (10)")
    w.add_argument(
        "--left",
        type=float,
        help="seconds left for the seeds and the search (default: the deadline less the "
        "reserve and the preflight's and benchmarks' estimates)",
    )
    return p


def what_if(args: argparse.Namespace) -> int:
    """Print the plan for stated measurements, and the commands it would run."""
    from benchmarks.bench import pick_gpus_per_trial

    sizes = REHEARSAL if args.rehearse else LEASE
    fixed = sum(s[0] for s in (sizes.preflight_s, sizes.bench_models_s, sizes.bench_packing_s))
    slowdowns = args.seed_slowdown * (5 if len(args.seed_slowdown) == 1 else 1)
    packing = tuple(sorted(args.packing))
    rows = [{"concurrent": n, "total_images_per_sec": g} for n, g in packing]
    k = round(1 / pick_gpus_per_trial(rows)) if sizes.need_gpu else 1
    measured = Measured(
        left_s=args.left if args.left is not None else args.deadline - args.reserve - fixed,
        startup_s=args.startup,
        worker_start_s=args.worker_start,
        epoch_s=args.epoch,
        seed_epoch_s=tuple(args.epoch * x for x in slowdowns),
        sample_epoch_s=args.epoch * args.median_share * sizes.trial_images / sizes.retrain_images,
        packing=packing,
        trials_at_once=k,
        seed_slots=5 if sizes.need_gpu else 2,
        retrain_slots=k if sizes.need_gpu else 2,
    )
    plan = plan_search(measured, sizes)
    for line in plan.lines:
        print(f"plan: {line}")
    cmds = search_commands(
        plan, "DATA", Path("WORK/exp"), sizes, python="python", precision=args.precision
    )
    for name, cmd in cmds:
        print(f"{name}: {' '.join(cmd)}")
    return 0 if plan.fits else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    if args.what_if:
        if args.epoch is None or args.epoch <= 0:
            parser.error("--what-if needs --epoch SECONDS (the preset's epoch, > 0)")
        return what_if(args)
    if not args.data or args.out is None:
        parser.error("--data and --out are required (but with --what-if)")
    if args.work is None:
        args.work = Path(tempfile.mkdtemp(prefix="campaign-"))
    if math.isnan(args.deadline) or args.deadline <= args.reserve:
        parser.error(f"--deadline {args.deadline:g} must exceed --reserve {args.reserve:g}")
    return Campaign(args).main()


if __name__ == "__main__":
    sys.exit(main())
