"""Search spaces by name; each declaration drives the Optuna space and the budget check."""

from search_spaces.base import (
    BudgetTooSmallError,
    SearchSpace,
    fit_to_budget,
    scale_widths,
)
from search_spaces.spaces import SPACES, get_space, list_spaces

__all__ = [
    "SPACES",
    "BudgetTooSmallError",
    "SearchSpace",
    "fit_to_budget",
    "get_space",
    "list_spaces",
    "scale_widths",
]
