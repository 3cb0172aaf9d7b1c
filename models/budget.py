"""Parameter and multiply-add counting, and the parameter budget.

Counts come from building the real network on the `meta` device: no memory is allocated,
no weights are initialised, and there is no formula to keep in sync with the model code.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.arch import ArchConfig
from models.resnet import ResNet

DEFAULT_BUDGET = 5_000_000  # trainable parameters


class BudgetError(ValueError):
    """An architecture has more trainable parameters than the budget allows."""

    def __init__(self, arch: ArchConfig, params: int, budget: int, stage_params: list[int]):
        largest = max(range(len(stage_params)), key=stage_params.__getitem__)
        spec = arch.stages[largest]
        self.arch, self.params, self.budget = arch, params, budget
        super().__init__(
            f"model has {params:,} trainable parameters, over the budget of {budget:,} "
            f"by {params - budget:,}; the largest stage is stage {largest} "
            f"({spec.blocks} blocks x {spec.channels} channels, {stage_params[largest]:,} "
            f"parameters): reduce its blocks or channels, or raise the budget"
        )


def trainable_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _meta_model(arch: ArchConfig) -> ResNet:
    with torch.device("meta"):
        return ResNet(arch)


def count_params(arch: ArchConfig) -> int:
    """Trainable parameters of the network `arch` describes."""
    return trainable_params(_meta_model(arch))


def count_macs(arch: ArchConfig, image_size: int = 32) -> int:
    """Multiply-adds of one forward pass of one image (convolutions, linear layers and
    attention: what torch's FlopCounterMode counts), traced on the meta device."""
    model = _meta_model(arch)
    image = torch.empty(1, arch.in_channels, image_size, image_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(image)
    return counter.get_total_flops() // 2


def stage_param_counts(arch: ArchConfig) -> list[int]:
    """Trainable parameters per stage, in stage order."""
    return [trainable_params(stage) for stage in _meta_model(arch).stages]


def check_budget(arch: ArchConfig, budget: int = DEFAULT_BUDGET) -> int:
    """Return the parameter count, or raise BudgetError if it exceeds `budget`."""
    model = _meta_model(arch)
    params = trainable_params(model)
    if params > budget:
        raise BudgetError(arch, params, budget, [trainable_params(s) for s in model.stages])
    return params
