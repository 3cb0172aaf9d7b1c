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

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from models import ArchConfig, BudgetTooSmallError, count_params, scale_widths
from models.budget import apply_width_scale, fit_to_budget, fit_to_target
from training.config import TrainConfig

# Keys a search adds to every trial's config beside the sampled parameters.
CONSTANT_KEYS = (
    "space",
    "budget",
    "params",
    "target_params",
    "width_scale",
    "seed",
    "trial_number",
    "rung_epochs",  # the search's ASHA rungs: the trial evaluates a decay branch at each
    "bracket",  # the trial's ASHA bracket (tune.schedulers), whose rungs rung_epochs are
    "retry_alone",  # run again alone on a whole GPU after running out of memory beside others
)


def raw_params(config: dict[str, Any]) -> dict[str, Any]:
    """The sampled parameters of a trial's config, without the search's constants."""
    return {k: v for k, v in config.items() if k not in CONSTANT_KEYS}


def derive_seed(base_seed: int, trial_number: int) -> int:
    """A trial's seed: it depends on the search seed and the trial's number only."""
    return zlib.crc32(f"{base_seed}:{trial_number}".encode()) & 0x7FFFFFFF


def trial_configs(
    config: dict[str, Any], max_epochs: int | None = None, *, rungs: bool = False
) -> tuple[ArchConfig, TrainConfig]:
    """(ArchConfig, TrainConfig) of a trial's config: the network its sample was fitted to
    (the width scale travels in the config; nothing is searched again). With `rungs`, the
    training config evaluates a decay branch at the search's rungs (the trial itself; a
    retrain of the configuration does not)."""
    from search_spaces.spaces import get_space

    space = get_space(config["space"])
    arch, cfg = space.configs(raw_params(config), config.get("width_scale", 1.0), max_epochs)
    if rungs and config.get("rung_epochs"):
        cfg = cfg.replace(decay_eval_epochs=tuple(int(e) for e in config["rung_epochs"]))
    return arch, cfg


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
    # The raw parameter that sets a sample's size as a fraction of the budget; its widths are
    # then solved to meet that size. None: `build` sets the widths, and a network over the
    # budget is scaled down to fit it.
    size_param: str | None = None

    def sample(self, trial: Suggester, budget: int) -> Params:
        """Suggest one configuration and size it; return the constants that travel with it:
        its exact parameter count, the size it was solved for and the width scale that gives
        it. Raises BudgetTooSmallError if the shape is over the budget (or, with a size
        parameter, over its sampled size) even at its narrowest widths (`ask_fitting` asks
        for another)."""
        self.suggest(trial)
        raw = dict(trial.params)
        arch, _ = self.build(raw)
        if self.size_param is None:
            _, params, scale = fit_to_budget(arch, budget)
            target = budget
        else:
            target = int(raw[self.size_param] * budget)
            _, params, scale = fit_to_target(arch, target)
            if params > target:
                # Only at scale 0: the narrowest widths are over the sampled size, so this
                # sample cannot be what it says; training it would tell Optuna one size and
                # train another.
                raise BudgetTooSmallError(
                    f"this shape has {params:,} parameters even at its narrowest widths, over "
                    f"its sampled size of {target:,} ({raw[self.size_param]:.3f} of the budget "
                    f"of {budget:,})"
                )
        return {
            "space": self.name,
            "budget": budget,
            "params": params,
            "target_params": target,
            "width_scale": scale,
        }

    def configs(
        self, raw: Params, width_scale: float, max_epochs: int | None = None
    ) -> tuple[ArchConfig, TrainConfig]:
        """The network and training config a sample trains: `build`, then the width scale
        `sample` found, then the run's length (epoch-valued settings keep their share)."""
        arch, cfg = self.build(raw)
        if self.size_param is None:
            arch = apply_width_scale(arch, width_scale)
        else:
            arch = scale_widths(arch, width_scale)
        if max_epochs is not None:
            cfg = cfg.with_epochs(max_epochs)
        return arch, cfg

    def lowest_params(self) -> Params:
        """Every parameter at its lowest value or first choice: the space's smallest network,
        as spaces list their cheapest choice first."""
        raw: Params = {}
        self.suggest(LowestTrial(raw))
        return raw

    def smallest_params(self) -> int:
        """Parameters of the smallest network the space can produce: its lowest choices (or
        its smallest fixed trial) at the narrowest widths."""
        candidates = self.fixed_trials or (self.lowest_params(),)
        return min(count_params(scale_widths(self.build(dict(raw))[0], 0.0)) for raw in candidates)

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


def ask_fitting(study: Any, space: SearchSpace, budget: int, tries: int = 20) -> tuple[Any, Params]:
    """(Optuna trial, its constants): the next trial of `study` whose network fits `budget`.

    A sample whose shape is over its sampled size (or the budget) even at its narrowest
    widths is told to the study as failed, with the reason in its `infeasible` user
    attribute, and another is asked for. After `tries` such samples the space's smallest
    shape at the whole budget is asked for, which fits every budget `check_budget` accepts:
    every trial that leaves here is the network its parameters say, and nothing is raised."""
    from optuna.trial import TrialState

    for _ in range(tries):
        trial = study.ask()
        try:
            return trial, space.sample(trial, budget)
        except BudgetTooSmallError as e:
            trial.set_user_attr("infeasible", str(e))
            study.tell(trial, state=TrialState.FAIL)
    fallback = space.lowest_params()
    if space.size_param is not None:
        fallback[space.size_param] = 1.0  # the whole budget, which check_budget says fits
    study.enqueue_trial(fallback)
    trial = study.ask()
    return trial, space.sample(trial, budget)
