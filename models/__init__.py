"""The CIFAR-10 ResNet family: typed configs, a registry by name, and the parameter budget."""

from models.arch import ArchConfig, StageSpec, stages
from models.budget import (
    DEFAULT_BUDGET,
    BudgetError,
    check_budget,
    count_macs,
    count_params,
    stage_param_counts,
)
from models.registry import (
    SEED_MODELS,
    create_model,
    describe_model,
    get_arch,
    list_models,
    register_model,
)
from models.resnet import ResNet

__all__ = [
    "DEFAULT_BUDGET",
    "SEED_MODELS",
    "ArchConfig",
    "BudgetError",
    "ResNet",
    "StageSpec",
    "check_budget",
    "count_macs",
    "count_params",
    "create_model",
    "describe_model",
    "get_arch",
    "list_models",
    "register_model",
    "stage_param_counts",
    "stages",
]
