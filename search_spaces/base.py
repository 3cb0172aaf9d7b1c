"""What a search space is, and how the parameter budget is enforced.

A space is declared once, as an Optuna define-by-run function (`suggest`) that asks for
raw parameters, plus a `build` function that turns those parameters into the typed
`ArchConfig` and `TrainConfig`. Everything else derives from that declaration:

- the Ray Tune / Optuna search space (`define_by_run`, handed to Ray's OptunaSearch);
- the budget check: `resolve` builds the architecture, counts its parameters on the
  `meta` device, and, when it is over the budget, scales every channel width down by the
  largest factor that fits (channels stay multiples of 8, at least 8). A sample is never
  rejected, so no trial of the search is wasted, and no network over the budget is ever
  built for training. The sampler sees the raw parameters; the scale it led to is part
  of each trial's config (`width_scale`) and results;
- the smallest model of the space (`smallest_params`): the declaration run with every
  parameter at its lowest value (or its first choice: spaces list the cheapest choice
  first), then scaled to the narrowest widths. A budget below it is refused up front.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models import ArchConfig, StageSpec, count_params
from training.config import TrainConfig

CHANNEL_MULTIPLE = 8  # widths are rounded to multiples of this (tensor-core friendly)
MIN_CHANNELS = 8


# Keys a search adds to every trial's config beside the sampled parameters.
CONSTANT_KEYS = ("space", "budget", "params", "width_scale", "seed", "trial_number")


def raw_params(config: dict[str, Any]) -> dict[str, Any]:
    """The sampled parameters of a trial's config, without the search's constants."""
    return {k: v for k, v in config.items() if k not in CONSTANT_KEYS}


class BudgetTooSmallError(ValueError):
    """Even the smallest network of a space is over the budget."""


# What a define-by-run function receives: an optuna.Trial, or anything with its suggest_*.
Suggester = Any
Params = dict[str, Any]


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str  # one line, shown by --list-spaces
    suggest: Callable[[Suggester], None]  # define-by-run: asks for the raw parameters
    build: Callable[[Params], tuple[ArchConfig, TrainConfig]]  # raw parameters -> configs
    fixed_trials: tuple[Params, ...] = ()  # a fixed set of trials instead of sampling
    # Known-good raw parameters the search tries first (then samples as usual).
    starting_points: tuple[Params, ...] = ()

    def sample(self, trial: Suggester, budget: int) -> Params:
        """Suggest one configuration; return the constants OptunaSearch adds to it."""
        self.suggest(trial)
        _, _, params, scale = self.resolve(dict(trial.params), budget)
        return {"space": self.name, "budget": budget, "params": params, "width_scale": scale}

    def resolve(
        self, raw: Params, budget: int, max_epochs: int | None = None
    ) -> tuple[ArchConfig, TrainConfig, int, float]:
        """(arch within the budget, training config, parameter count, width scale)."""
        arch, cfg = self.build(raw)
        arch, params, scale = fit_to_budget(arch, budget)
        if max_epochs is not None:
            cfg = cfg.with_epochs(max_epochs)
        return arch, cfg, params, scale

    def smallest_params(self) -> int:
        raw: Params = {}
        self.suggest(LowestTrial(raw))
        arch, _ = self.build(raw)
        return count_params(scale_widths(arch, 0.0))

    def check_budget(self, budget: int) -> None:
        smallest = self.smallest_params()
        if budget < smallest:
            raise BudgetTooSmallError(
                f"--budget {budget:,} is smaller than the smallest network of space "
                f"{self.name!r} ({smallest:,} parameters at the narrowest widths); "
                f"raise --budget to at least {smallest:,} or pick a smaller space"
            )


def round_channels(channels: float) -> int:
    return max(MIN_CHANNELS, int(round(channels / CHANNEL_MULTIPLE)) * CHANNEL_MULTIPLE)


def scale_widths(arch: ArchConfig, scale: float) -> ArchConfig:
    """Every width (stem and stages) times `scale`, rounded; heads stay divisible."""
    new_stages = tuple(
        StageSpec(s.blocks, round_channels(s.channels * scale), s.stride) for s in arch.stages
    )
    return arch.replace(stem_channels=round_channels(arch.stem_channels * scale), stages=new_stages)


def fit_to_budget(arch: ArchConfig, budget: int) -> tuple[ArchConfig, int, float]:
    """(arch, params, scale): `arch` itself if it fits, else its widths scaled down by the
    largest factor (to 1e-3) that fits. Raises BudgetTooSmallError if none does."""
    params = count_params(arch)
    if params <= budget:
        return arch, params, 1.0
    narrowest = scale_widths(arch, 0.0)
    if count_params(narrowest) > budget:
        raise BudgetTooSmallError(
            f"even at the narrowest widths this network has {count_params(narrowest):,} "
            f"parameters, over the budget of {budget:,}"
        )
    lo, hi = 0.0, 1.0  # lo fits, hi does not
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2
        if count_params(scale_widths(arch, mid)) <= budget:
            lo = mid
        else:
            hi = mid
    fitted = scale_widths(arch, lo)
    return fitted, count_params(fitted), round(lo, 4)


class LowestTrial:
    """Stands in for an optuna.Trial and answers every suggestion with its lowest value."""

    def __init__(self, params: Params) -> None:
        self.params = params

    def suggest_int(self, name: str, low: int, high: int, **_: Any) -> int:
        self.params[name] = low
        return low

    def suggest_float(self, name: str, low: float, high: float, **_: Any) -> float:
        self.params[name] = low
        return low

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        self.params[name] = choices[0]
        return choices[0]
