"""Search spaces by name; each declaration drives the Optuna space and the budget check."""

from search_spaces.base import (
    CONSTANT_KEYS,
    BudgetTooSmallError,
    SearchSpace,
    fit_to_budget,
    raw_params,
    scale_widths,
)
from search_spaces.spaces import SPACES, get_space, list_spaces

__all__ = [
    "CONSTANT_KEYS",
    "SPACES",
    "BudgetTooSmallError",
    "SearchSpace",
    "fit_to_budget",
    "get_space",
    "list_spaces",
    "raw_params",
    "scale_widths",
]
