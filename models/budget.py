"""The parameter budget: counting a network, and fitting one to a budget.

Counts come from building the real network on the `meta` device: no memory is allocated,
no weights are initialised, and there is no formula to keep in sync with the model code.
A network over the budget is not rejected: `fit_to_budget` scales every channel width down
by the largest factor that fits (channels stay multiples of 8, at least 8), and the scale
it found, applied with `apply_width_scale`, rebuilds the same network without searching.
`fit_to_target` scales a network's widths, up or down, to a given size instead.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from models.arch import ArchConfig, StageSpec
from models.resnet import ResNet

DEFAULT_BUDGET = 5_000_000  # trainable parameters
CHANNEL_MULTIPLE = 8  # scaled widths are rounded to multiples of this (tensor-core friendly)
MIN_CHANNELS = 8
SCALE_RESOLUTION = 1e-3  # the width scale is found to within this


class BudgetTooSmallError(ValueError):
    """Even the narrowest version of a network is over the budget."""


def trainable_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _meta_model(arch: ArchConfig) -> ResNet:
    with torch.device("meta"):
        return ResNet(arch, init_weights=False)


@lru_cache(maxsize=8192)
def count_params(arch: ArchConfig) -> int:
    """Trainable parameters of the network `arch` describes (memoized: fitting a network to
    a size counts the same rounded widths again and again)."""
    return trainable_params(_meta_model(arch))


def count_macs(arch: ArchConfig, image_size: int = 32) -> int:
    """Multiply-adds of one forward pass of one image (convolutions, linear layers and
    attention: what torch's FlopCounterMode counts), traced on the meta device."""
    model = _meta_model(arch)
    image = torch.empty(1, arch.in_channels, image_size, image_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        model(image)
    return counter.get_total_flops() // 2


def round_channels(channels: float) -> int:
    return max(MIN_CHANNELS, int(round(channels / CHANNEL_MULTIPLE)) * CHANNEL_MULTIPLE)


def scale_widths(arch: ArchConfig, scale: float) -> ArchConfig:
    """Every width (stem and stages) times `scale`, rounded to a multiple of 8."""
    new_stages = tuple(
        StageSpec(s.blocks, round_channels(s.channels * scale), s.stride) for s in arch.stages
    )
    return arch.replace(stem_channels=round_channels(arch.stem_channels * scale), stages=new_stages)


def apply_width_scale(arch: ArchConfig, scale: float) -> ArchConfig:
    """The network `fit_to_budget` returned for `arch` with this scale: `arch` itself at 1."""
    return arch if scale == 1.0 else scale_widths(arch, scale)


def fit_to_budget(arch: ArchConfig, budget: int) -> tuple[ArchConfig, int, float]:
    """(network, parameters, width scale): `arch` itself if it fits, else its widths scaled
    down by the largest factor that fits. The scale is exact (a binary fraction), so
    `apply_width_scale(arch, scale)` gives back the same network. Raises BudgetTooSmallError
    if not even the narrowest widths fit."""
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
    while hi - lo > SCALE_RESOLUTION:
        mid = (lo + hi) / 2
        if count_params(scale_widths(arch, mid)) <= budget:
            lo = mid
        else:
            hi = mid
    fitted = scale_widths(arch, lo)
    return fitted, count_params(fitted), lo


def fit_to_target(arch: ArchConfig, target: int) -> tuple[ArchConfig, int, float]:
    """(network, parameters, width scale): `arch` with its widths scaled by the largest factor
    (found to a relative 1e-3) whose network has at most `target` parameters, so that the
    count lands on the target up to the rounding of widths to multiples of 8. Scale 0 (the
    narrowest network, 8 channels everywhere) when even that is over the target: the caller
    decides whether that still fits its budget."""
    narrowest = scale_widths(arch, 0.0)
    if count_params(narrowest) >= target:
        return narrowest, count_params(narrowest), 0.0

    def fits(scale: float) -> bool:
        return count_params(scale_widths(arch, scale)) <= target

    # Parameters grow about as the square of the widths: bracket the scale around that guess.
    guess = math.sqrt(target / count_params(arch))
    lo, hi = guess / 2, guess * 2
    while not fits(lo):  # ends: near 0 every width is 8, and the narrowest network fits
        lo /= 2
    while fits(hi):
        hi *= 2
    while hi / lo > 1 + SCALE_RESOLUTION:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    fitted = scale_widths(arch, lo)
    return fitted, count_params(fitted), lo
