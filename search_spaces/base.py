"""What a search space is.

A space is declared once, as an Optuna define-by-run function (`suggest`) that asks for
raw parameters, plus a `build` function that turns those parameters into the typed
`ArchConfig` and `TrainConfig`. Everything else derives from that declaration:

- the Ray Tune / Optuna search space (`sample`, handed to Ray's OptunaSearch);
- the budget: `sample` builds the sampled network and fits it to the budget
  (`models.budget.fit_to_budget`) once; the parameter count and the width scale it found
  travel with the trial's config, and `configs` rebuilds the same network from them
  without searching again. A sample is never rejected, so no trial is wasted, and no
  network over the budget is ever built for training;
- the smallest model of the space (`smallest_params`): the declaration run with every
  parameter at its lowest value (or its first choice: spaces list the cheapest choice
  first), then scaled to the narrowest widths. A budget below it is refused up front.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models import ArchConfig, BudgetTooSmallError, count_params, scale_widths
from models.budget import apply_width_scale, fit_to_budget
from training.config import TrainConfig

# Keys a search adds to every trial's config beside the sampled parameters.
CONSTANT_KEYS = ("space", "budget", "params", "width_scale", "seed", "trial_number")


def raw_params(config: dict[str, Any]) -> dict[str, Any]:
    """The sampled parameters of a trial's config, without the search's constants."""
    return {k: v for k, v in config.items() if k not in CONSTANT_KEYS}


def trial_configs(
    config: dict[str, Any], max_epochs: int | None = None
) -> tuple[ArchConfig, TrainConfig]:
    """(ArchConfig, TrainConfig) of a trial's config: the network its sample was fitted to
    (the width scale travels in the config; nothing is searched again)."""
    from search_spaces.spaces import get_space

    space = get_space(config["space"])
    return space.configs(raw_params(config), config.get("width_scale", 1.0), max_epochs)


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
        """Suggest one configuration and fit it to the budget; return the constants that
        travel with it: its exact parameter count and the width scale that fits it."""
        self.suggest(trial)
        arch, _ = self.build(dict(trial.params))
        _, params, scale = fit_to_budget(arch, budget)
        return {"space": self.name, "budget": budget, "params": params, "width_scale": scale}

    def configs(
        self, raw: Params, width_scale: float, max_epochs: int | None = None
    ) -> tuple[ArchConfig, TrainConfig]:
        """The network and training config a sample trains: `build`, then the width scale
        `sample` found, then the run's length (epoch-valued settings keep their share)."""
        arch, cfg = self.build(raw)
        arch = apply_width_scale(arch, width_scale)
        if max_epochs is not None:
            cfg = cfg.with_epochs(max_epochs)
        return arch, cfg

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
