"""Typed, frozen training configuration: optimizer, schedule, regularization, augmentation.

Units: learning rates are the peak rate per step; epochs count passes over the training
split; probabilities are per batch unless a field says per image.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from models.arch import known_fields
from training.data import DEFAULT_VAL_SIZE
from training.precision import PRECISIONS, Precision

Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["cosine", "onecycle", "step", "cosine_restarts", "constant", "wsd"]
AutoAugment = Literal["none", "autoaugment", "trivialaugment"]
WeightAveraging = Literal["none", "ema", "swa"]

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("cosine", "onecycle", "step", "cosine_restarts", "constant", "wsd")
AUTO_AUGMENTS: tuple[str, ...] = ("none", "autoaugment", "trivialaugment")
WEIGHT_AVERAGINGS: tuple[str, ...] = ("none", "ema", "swa")


@dataclass(frozen=True)
class AugmentConfig:
    """Whole-batch augmentation, applied on the training device."""

    crop_padding: int = 4  # random crop after reflect-padding by this many pixels; 0 = off
    flip_p: float = 0.5  # per-image probability of a horizontal flip
    auto_augment: AutoAugment = "none"  # torchvision policy applied to uint8 images
    brightness: float = 0.0  # color jitter strength, as torchvision's ColorJitter; 0 = off
    contrast: float = 0.0
    saturation: float = 0.0
    grayscale_p: float = 0.0  # per-image probability of converting to grayscale
    autocontrast_p: float = 0.0  # per-image probability of autocontrast
    cutout_size: int = 0  # side in pixels of one zeroed square per image; 0 = off
    erasing_p: float = 0.0  # per-image probability of random erasing
    erasing_scale: tuple[float, float] = (0.02, 0.33)  # erased area as a fraction of the image
    mixup_p: float = 0.0  # per-batch probability of mixup
    mixup_alpha: float = 1.0  # Beta(alpha, alpha) for the mixup weight
    cutmix_p: float = 0.0  # per-batch probability of cutmix (tried when mixup was not applied)
    cutmix_alpha: float = 1.0  # Beta(alpha, alpha) for the cutmix area
    mix_until: float = 1.0  # mixup/cutmix apply during this fraction of the epochs

    def __post_init__(self) -> None:
        problems = []
        for name in ("flip_p", "grayscale_p", "autocontrast_p", "erasing_p", "mixup_p", "cutmix_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                problems.append(f"{name}={p} must be in [0, 1]")
        if self.auto_augment not in AUTO_AUGMENTS:
            problems.append(
                f"auto_augment={self.auto_augment!r} is not one of {list(AUTO_AUGMENTS)}"
            )
        if self.crop_padding < 0 or self.cutout_size < 0:
            problems.append("crop_padding and cutout_size must be >= 0")
        if self.mixup_alpha <= 0 or self.cutmix_alpha <= 0:
            problems.append("mixup_alpha and cutmix_alpha must be > 0")
        lo, hi = self.erasing_scale
        if not 0.0 < lo <= hi < 1.0:
            problems.append(f"erasing_scale={self.erasing_scale} must satisfy 0 < min <= max < 1")
        if problems:
            raise ValueError("invalid AugmentConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 512  # training images per optimizer step
    optimizer: Optimizer = "sgd"
    lr: float = 0.2  # peak learning rate (after warm-up)
    momentum: float = 0.9  # SGD momentum; AdamW uses it as beta1
    nesterov: bool = True  # SGD only
    weight_decay: float = 5e-4  # decoupled for AdamW, L2 for SGD
    lookahead_k: int = 0  # Lookahead: sync slow weights every k steps; 0 = off
    lookahead_alpha: float = 0.5  # Lookahead: slow weights move this fraction toward fast ones
    schedule: Schedule = "cosine"
    warmup_epochs: float = 1.0  # linear warm-up from ~0 to lr (ignored by onecycle)
    onecycle_pct_start: float = 0.25  # fraction of steps rising to lr (onecycle only)
    step_epochs: int = 30  # step schedule: multiply lr by step_gamma every step_epochs
    step_gamma: float = 0.1
    restart_epochs: int = 10  # cosine_restarts: first period in epochs (T_0)
    restart_mult: int = 2  # cosine_restarts: period growth factor (T_mult)
    # wsd (warm-up, stable, decay): after the warm-up the rate holds at lr until the last
    # decay_fraction of the run, then falls linearly to 0. A decay branch (below) is as long
    # as this fraction of the epochs trained so far.
    decay_fraction: float = 0.2
    # After each of these epochs (1-based), a decay branch runs on a copy of the weights and
    # optimizer: decay_fraction x the epochs so far, the rate falling linearly from its
    # current value to 0; the epoch then reports the branch's val_acc/val_loss (what the run
    # would reach if it ended there) and the main run's as stable_val_acc/stable_val_loss.
    # The main run continues unchanged. A search sets these to its ASHA rungs; () = none.
    decay_eval_epochs: tuple[int, ...] = ()
    label_smoothing: float = 0.0
    grad_clip_value: float = 0.0  # clamp every gradient element to +-value; 0 = off
    grad_clip_norm: float = 0.0  # rescale gradients to this global L2 norm; 0 = off
    weight_averaging: WeightAveraging = "none"
    ema_decay: float = 0.999  # per-step decay of the EMA weights
    swa_start: float = 0.75  # SWA averages from this fraction of the epochs on
    swa_lr: float = 0.0  # SWA learning rate; 0 = keep the schedule's
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tta_flip: bool = True  # evaluate on the image and its mirror, average the logits
    eval_batch_size: int = 1024
    val_size: int = DEFAULT_VAL_SIZE  # training images held out for validation (stratified)
    # "auto": chosen for the device by training.precision (bf16 from CUDA compute capability
    # 8.0, fp16 with loss scaling on 7.x, fp32 below; on a CPU bf16 only where measured
    # faster); or "bf16", "fp16" (with loss scaling), "fp32" as asked.
    precision: Precision = "auto"
    # channels_last memory format on CUDA, and on a CPU with bf16 (ignored otherwise)
    channels_last: bool = True
    compile: bool = False  # torch.compile the model
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.epochs < 1:
            problems.append(f"epochs={self.epochs} must be >= 1")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            problems.append("batch_size and eval_batch_size must be >= 1")
        if self.lr <= 0:
            problems.append(f"lr={self.lr} must be > 0")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer={self.optimizer!r} is not one of {list(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule={self.schedule!r} is not one of {list(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision={self.precision!r} is not one of {list(PRECISIONS)}")
        if self.weight_averaging not in WEIGHT_AVERAGINGS:
            problems.append(
                f"weight_averaging={self.weight_averaging!r} is not one of {list(WEIGHT_AVERAGINGS)}"
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.val_size < 0:
            problems.append(f"val_size={self.val_size} must be >= 0")
        if self.lookahead_k < 0:
            problems.append(f"lookahead_k={self.lookahead_k} must be >= 0")
        if not 0.0 < self.decay_fraction < 1.0:
            problems.append(f"decay_fraction={self.decay_fraction} must be in (0, 1)")
        if any(e < 1 for e in self.decay_eval_epochs):
            problems.append(f"decay_eval_epochs={self.decay_eval_epochs} must all be >= 1")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if "bf16" in data:
            # A config or checkpoint from before `precision`: bf16 on CUDA was the device's
            # choice (what "auto" now makes), False asked for fp32.
            bf16 = data.pop("bf16")
            data.setdefault("precision", "auto" if bf16 else "fp32")
        values = known_fields(cls, data)
        if isinstance(values.get("augment"), dict):
            aug = dict(values["augment"])
            if "erasing_scale" in aug:
                aug["erasing_scale"] = tuple(aug["erasing_scale"])
            values["augment"] = AugmentConfig(**aug)
        if "decay_eval_epochs" in values:  # a list in JSON
            values["decay_eval_epochs"] = tuple(values["decay_eval_epochs"])
        return cls(**values)

    def with_epochs(self, epochs: int) -> TrainConfig:
        """The same recipe over `epochs` epochs: every epoch-valued setting (warm-up, step
        decay interval, warm-restart period) keeps its share of the run; the others are
        already fractions of it (SWA start, mixing, one-cycle rise, the wsd decay). The decay
        branches' epochs are a search's rungs, set for the run they are in: kept as they are."""
        scale = epochs / self.epochs
        return self.replace(
            epochs=epochs,
            warmup_epochs=self.warmup_epochs * scale,
            step_epochs=max(1, round(self.step_epochs * scale)),
            restart_epochs=max(1, round(self.restart_epochs * scale)),
        )

    def replace(self, **changes: Any) -> TrainConfig:
        """Copy with changes; keys prefixed `augment.` change the augmentation config."""
        aug_changes = {
            k.split(".", 1)[1]: v for k, v in changes.items() if k.startswith("augment.")
        }
        plain = {k: v for k, v in changes.items() if not k.startswith("augment.")}
        if aug_changes:
            plain["augment"] = replace(plain.get("augment", self.augment), **aug_changes)
        return replace(self, **plain)


def cap_batch_size(cfg: TrainConfig, cap: int | None) -> TrainConfig:
    """`cfg` with its batch size at most `cap` and the learning rate scaled by the square
    root of the same factor. The square-root rule (Krizhevsky 2014; Hoffer et al. 2017) and
    not the linear one: the runs that get capped are short ones on few images, which
    learned more with it (docs/results.md, short runs: 3 epochs of tiny_resnet on 2,000
    images, 24.0% test with the linear rule, 27.5% with the square root, same seed)."""
    if cap is None or cfg.batch_size <= cap:
        return cfg
    return cfg.replace(batch_size=cap, lr=cfg.lr * math.sqrt(cap / cfg.batch_size))


MIN_STEPS_PER_EPOCH = 10  # a batch may hold at most a tenth of the training images


def fit_batch_to_data(cfg: TrainConfig, images: int) -> tuple[TrainConfig, str]:
    """`cfg` with a batch of at most a tenth of the training images (and the learning rate
    scaled with it), so that a short run on a small set still takes enough steps to learn;
    and a sentence saying so, or "" if nothing changed."""
    cap = max(1, images // MIN_STEPS_PER_EPOCH)
    capped = cap_batch_size(cfg, cap)
    if capped is cfg:
        return cfg, ""
    return capped, (
        f"batch size {cfg.batch_size} is more than a tenth of the {images:,} training images: "
        f"{capped.batch_size} per step instead, learning rate {cfg.lr:.4g} -> {capped.lr:.4g}"
    )
