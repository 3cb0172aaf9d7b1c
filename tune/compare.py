"""The statistics of the search's claim: which trial is the winner, and the winner against
the best seed network.

A trial's score (`final_value`) is the mean validation accuracy of the last few epochs of its
schedule; it is what Optuna is told, the `score` column of trials.parquet, and what ranks
the candidates and the finalists.

Both sides are retrained with the same seeds and tested the same way; what can honestly be
said about the difference of their mean test accuracies is Welch's t-test (unequal
variances): the difference with its 95% confidence interval, the p-value, and one plain
sentence. Also how many seeds such a test needs (`seeds_for_power`), which sets the default
of --retrain-seeds, and which settings of a baseline found elsewhere make it incomparable.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

ALPHA = 0.05  # two-sided significance level of the comparison


def score_epochs(max_epochs: int) -> int:
    """How many last epochs a trial's score averages: about the last tenth of the schedule,
    1 to 3 epochs. Those are the annealed epochs of a decaying learning rate, where accuracy
    has settled; averaging them divides one evaluation's noise by up to sqrt(3) without
    reaching back into epochs where the rate is still high (1 for runs under 15 epochs)."""
    return min(3, max(1, round(max_epochs / 10)))


def final_value(values: Mapping[int, float], max_epochs: int) -> float:
    """A trial's score: the mean validation accuracy of the last `score_epochs` epochs of its
    schedule, from its per-epoch values (epoch -> accuracy). The same number is told to Optuna,
    written to trials.parquet (`score`) and ranks the candidates for the winner."""
    first = max_epochs - score_epochs(max_epochs) + 1
    # An epoch missing from the window (a value lost to a restart) leaves the others to say it.
    last = [float(v) for e, v in values.items() if first <= int(e) <= max_epochs and v == v]
    if not last:
        raise ValueError(
            f"no validation accuracy for epochs {first}-{max_epochs} (have epochs "
            f"{sorted(values)}): a score needs the end of the schedule"
        )
    return sum(last) / len(last)


@dataclass(frozen=True)
class Comparison:
    """Side A (the winner) minus side B (the baseline), in accuracy points (percent)."""

    diff: float  # mean of A minus mean of B, points
    low: float  # 95% confidence interval of the difference, points
    high: float
    p_value: float  # Welch's two-sided test of equal means
    n_a: int  # runs (retrain seeds) per side
    n_b: int

    @property
    def judged(self) -> bool:
        """False when neither side's runs vary at all: the seed-to-seed spread is then unknown
        (not zero: an accuracy is a multiple of one test image, and a few seeds can land on the
        same one), and a difference cannot be held against it."""
        return not math.isnan(self.p_value)

    @property
    def significant(self) -> bool:
        return self.judged and self.p_value < ALPHA

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def sentence(self, a: str = "the winner", b: str = "the best seed network") -> str:
        subject = f"{a[0].upper()}{a[1:]}"
        if not self.judged:
            return (
                f"{subject} and {b} cannot be compared from these runs: every seed gave the same "
                f"accuracy on each side ({self.n_a} and {self.n_b} seeds), so there is no spread "
                f"to judge the difference of {self.diff:+.2f} points against; more seeds (or "
                "more test images) would show one."
            )
        if self.significant:
            word = "better" if self.diff > 0 else "worse"
            return (
                f"{subject} is {word} than {b} by {abs(self.diff):.2f} ± "
                f"{self.half_width:.2f} points (95% CI {self.low:+.2f} to {self.high:+.2f}, "
                f"p = {self.p_value:.3g}); significant at 5%."
            )
        return (
            f"{subject} is not distinguishable from {b} at this number of seeds "
            f"({self.n_a} and {self.n_b}): the difference is {self.diff:+.2f} points, 95% CI "
            f"{self.low:+.2f} to {self.high:+.2f}, p = {self.p_value:.3g}."
        )


def welch(a: Sequence[float], b: Sequence[float]) -> Comparison | None:
    """Welch's t-test of accuracies `a` against `b` (fractions, one per seed); None when a side
    has fewer than two runs (its spread, hence any interval, is unknown)."""
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return None
    diff = (statistics.fmean(a) - statistics.fmean(b)) * 100
    if statistics.variance(a) == 0 and statistics.variance(b) == 0:
        # Welch's statistic is 0/0 or d/0: no interval and no p-value (`Comparison.judged`).
        return Comparison(diff, math.nan, math.nan, math.nan, len(a), len(b))
    result = stats.ttest_ind([x * 100 for x in a], [x * 100 for x in b], equal_var=False)
    ci = result.confidence_interval(1 - ALPHA)
    return Comparison(diff, float(ci.low), float(ci.high), float(result.pvalue), len(a), len(b))


def power(n: int, diff: float, sd: float, alpha: float = ALPHA) -> float:
    """Power of Welch's two-sided test (the one `welch` runs) with n runs per side, a true
    difference `diff` and a per-run standard deviation `sd` on both sides.

    Welch's test takes its degrees of freedom from the sample variances (Welch-Satterthwaite),
    so with few runs it is weaker than Student's test with 2n - 2 degrees of freedom (at 4 runs,
    0.5 point and sd 0.2: 0.80 against 0.84). Given the two sample variances, the test rejects
    when the mean difference, normal with sd * sqrt(2 / n), is beyond t(df) standard errors;
    that probability is averaged over the variances (each sd^2 * chi2(n - 1) / (n - 1)) by
    generalized Gauss-Laguerre quadrature (within 0.005 of a simulation of the test)."""
    from scipy import special, stats

    if n < 2:
        raise ValueError(f"power needs at least 2 runs per side (got {n})")
    k = n - 1
    nodes, weights = special.roots_genlaguerre(64, k / 2 - 1)
    weights = weights / special.gamma(k / 2)  # chi2(k) / 2 is Gamma(k / 2): weights sum to 1
    var_a, var_b = np.meshgrid(sd**2 * 2 * nodes / k, sd**2 * 2 * nodes / k, indexing="ij")
    se = np.sqrt((var_a + var_b) / n)
    df = (var_a + var_b) ** 2 / ((var_a**2 + var_b**2) / k)
    critical = stats.t.ppf(1 - alpha / 2, df) * se
    spread = sd * math.sqrt(2 / n)
    reject = stats.norm.sf((critical - diff) / spread) + stats.norm.cdf((-critical - diff) / spread)
    return float(np.sum(np.outer(weights, weights) * reject))


def seeds_for_power(diff: float, sd: float, target: float = 0.8, alpha: float = ALPHA) -> int:
    """The fewest runs per side with which Welch's test detects a true difference `diff` with
    probability `target`."""
    n = 2
    while power(n, diff, sd, alpha) < target:
        n += 1
    return n


# Settings that make two experiments' networks comparable, with how each is named in a
# command; a seed baseline that differs in any of them is not compared.
MATCHING = {
    "data": "--data",
    "subset": "--subset",
    "seed": "--seed",  # seeds the validation split and the retrain seeds
    "budget": "--budget",
    "max_epochs": "--max-epochs",
    "retrain_epochs": "--retrain-epochs",
    "retrain_seeds": "--retrain-seeds",
}


def setting_differences(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[str]:
    """'NAME: OURS here, THEIRS there' for every setting in MATCHING that differs."""
    return [
        f"{key.replace('_', ' ')}: {ours.get(key)} here, {theirs.get(key)} there"
        for key in MATCHING
        if ours.get(key) != theirs.get(key)
    ]


def matching_command(ours: Mapping[str, Any]) -> str:
    """A `--space seeds` command whose experiment matches ours, run by this Python."""
    from tune.cli import command_line

    parts = [command_line("tune.search", "--space", "seeds")]
    for key, flag in MATCHING.items():
        if ours.get(key) is not None:
            parts.append(f"{flag} {ours[key]}")
    parts.append(f"--storage-path {ours.get('storage_path')}")
    return " ".join(parts)
