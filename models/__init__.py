"""The CIFAR-10 ResNet family: typed configs, a registry by name, and the parameter budget."""

from models.arch import ArchConfig, StageSpec, stages
from models.budget import (
    DEFAULT_BUDGET,
    BudgetTooSmallError,
    apply_width_scale,
    count_macs,
    count_params,
    fit_to_budget,
    fit_to_target,
    scale_widths,
)
from models.registry import (
    MODELS,
    SEED_MODELS,
    Registry,
    create_model,
    get_arch,
    list_models,
    register_model,
)
from models.resnet import ResNet

__all__ = [
    "DEFAULT_BUDGET",
    "MODELS",
    "SEED_MODELS",
    "ArchConfig",
    "BudgetTooSmallError",
    "Registry",
    "ResNet",
    "StageSpec",
    "apply_width_scale",
    "count_macs",
    "count_params",
    "create_model",
    "fit_to_budget",
    "fit_to_target",
    "get_arch",
    "list_models",
    "register_model",
    "scale_widths",
    "stages",
]
