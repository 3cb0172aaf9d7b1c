"""Training recipes by name: one per seed report (as its code ran), plus the project's own.

Seed recipes share their name with the seed's model preset, so a report is rerun with
`--model efficient_resnet --recipe efficient_resnet`. Where a report's code did something
this trainer does differently, the recipe's docstring says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.registry import Registry
from training.config import AugmentConfig, TrainConfig

RECIPES: Registry[Callable[[], TrainConfig]] = Registry("recipe")
register_recipe = RECIPES.register


def list_recipes() -> list[str]:
    return sorted(RECIPES)


def get_recipe(name: str, **overrides: Any) -> TrainConfig:
    """The named recipe, with `overrides` (TrainConfig fields, or `augment.<field>`)."""
    cfg = RECIPES[name]()
    return cfg.replace(**overrides) if overrides else cfg


# Seed reports ran no warm-up and no test-time flip; their recipes keep that.
_SEED = {"warmup_epochs": 0.0, "tta_flip": False}


@register_recipe
def preact_mish_transformer() -> TrainConfig:
    """Report 000: AdamW, one-cycle to 2e-3, 400 epochs, CutMix 0.25, label smoothing 0.05."""
    return TrainConfig(
        epochs=400,
        batch_size=128,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=5e-3,
        schedule="onecycle",
        onecycle_pct_start=0.1,
        label_smoothing=0.05,
        augment=AugmentConfig(
            brightness=0.1,
            contrast=0.1,
            saturation=0.1,
            erasing_p=0.1,
            erasing_scale=(0.02, 0.1),
            cutmix_p=0.25,
            cutmix_alpha=1.0,
        ),
        **_SEED,
    )


@register_recipe
def resnet_stem_se_4322() -> TrainConfig:
    """Report 001: SGD 0.1, cosine, 450 epochs (mixup off for the last 50), grad clip 0.1.

    The report's cosine ran over 400 epochs and then held its last rate for 50 more;
    here the cosine spans all 450.
    """
    return TrainConfig(
        epochs=450,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        schedule="cosine",
        grad_clip_value=0.1,
        augment=AugmentConfig(
            flip_p=0.2,
            grayscale_p=0.2,
            autocontrast_p=0.2,
            mixup_p=1.0,
            mixup_alpha=1.0,
            mix_until=400 / 450,
        ),
        **_SEED,
    )


@register_recipe
def se_mish_resnet() -> TrainConfig:
    """Report 002: SGD 0.05, cosine warm restarts (10, x2), 200 epochs, AutoAugment, erasing 0.5.

    The report lowered weight decay from 1e-3 to 1e-4 by hand part-way; here it stays 1e-3.
    """
    return TrainConfig(
        epochs=200,
        batch_size=256,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-3,
        schedule="cosine_restarts",
        restart_epochs=10,
        restart_mult=2,
        label_smoothing=0.1,
        augment=AugmentConfig(auto_augment="autoaugment", erasing_p=0.5),
        **_SEED,
    )


@register_recipe
def efficient_resnet() -> TrainConfig:
    """Report 003: SGD 0.1 with Lookahead (5, 0.5), cosine, 200 epochs, MixUp and CutMix.

    The report does not give its MixUp/CutMix settings; here each is tried with p 0.5, alpha 1.
    """
    return TrainConfig(
        epochs=200,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=5e-4,
        lookahead_k=5,
        lookahead_alpha=0.5,
        schedule="cosine",
        grad_clip_value=0.1,
        augment=AugmentConfig(mixup_p=0.5, mixup_alpha=1.0, cutmix_p=0.5, cutmix_alpha=1.0),
        **_SEED,
    )


@register_recipe
def resnet_dropout_3x4() -> TrainConfig:
    """Report 004: SGD 0.1, step decay x0.1 every 30 epochs, 150 epochs, crop and flip."""
    return TrainConfig(
        epochs=150,
        batch_size=128,
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=6e-4,
        schedule="step",
        step_epochs=30,
        step_gamma=0.1,
        **_SEED,
    )


# --- The project's own recipes.


@register_recipe
def default() -> TrainConfig:
    """Nesterov SGD, large batch, warm-up + cosine, label smoothing, EMA, flip TTA."""
    return TrainConfig(
        epochs=40,
        batch_size=512,
        optimizer="sgd",
        lr=0.4,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        warmup_epochs=2.0,
        label_smoothing=0.1,
        weight_averaging="ema",
        ema_decay=0.999,
        # Crop and flip only: cutout 12 cost a short run four points (docs/results.md).
        augment=AugmentConfig(),
        tta_flip=True,
    )


@register_recipe
def speedrun() -> TrainConfig:
    """The fastest route to ~94%: 20 one-cycle epochs, batch 512, label smoothing, flip TTA.

    Not yet measured on a GPU (docs/benchmarks.md says what is pending). Short runs favour
    a strong label smoothing and a one-cycle schedule over long warm-up and heavy mixing.
    """
    return TrainConfig(
        epochs=20,
        batch_size=512,
        optimizer="sgd",
        lr=0.4,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="onecycle",
        onecycle_pct_start=0.25,
        label_smoothing=0.2,
        augment=AugmentConfig(crop_padding=4, flip_p=0.5),
        tta_flip=True,
        compile=True,
    )


@register_recipe
def smoke() -> TrainConfig:
    """Two quick epochs for CPU smoke runs and tests: small batches, no warm-up."""
    return TrainConfig(
        epochs=2,
        batch_size=64,
        optimizer="sgd",
        lr=0.05,
        schedule="cosine",
        warmup_epochs=0.0,
        eval_batch_size=256,
        tta_flip=False,
    )
