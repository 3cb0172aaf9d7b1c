"""Search spaces by name; each declaration drives the Optuna space and the budget check."""

from search_spaces.base import (
    CONSTANT_KEYS,
    SearchSpace,
    ask_fitting,
    derive_seed,
    raw_params,
    trial_configs,
)
from search_spaces.spaces import SPACES, get_space, list_spaces

__all__ = [
    "CONSTANT_KEYS",
    "SPACES",
    "SearchSpace",
    "ask_fitting",
    "derive_seed",
    "get_space",
    "list_spaces",
    "raw_params",
    "trial_configs",
]
