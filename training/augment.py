"""Whole-batch augmentation on the device the batch lives on (airbench style).

Every per-image random choice is drawn as a tensor from the caller's `torch.Generator` and
applied with masks, index arithmetic and gathers, so the per-batch path never waits on the
device and a saved generator state replays the exact same augmentations. The one exception is
the torchvision AutoAugment/TrivialAugment path (see `_auto_augment`).

Order in `augment_batch`: crop + flip (one gather), auto_augment, color jitter, grayscale,
autocontrast, cutout, random erasing -- the order of the AutoAugment paper's CIFAR pipeline
(crop/flip, policy, cutout), with the extra color ops before the occluders.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from training.config import AugmentConfig

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# torchvision's policies draw one op for a whole tensor; this many images share each draw.
AUTO_AUGMENT_GROUP = 16
ERASING_RATIO = (0.3, 3.3)  # aspect ratio range of random erasing, as torchvision
ERASING_TRIES = 10  # size proposals per image, as torchvision; drawn in parallel here
GAMMA_TRIES = 16  # parallel Marsaglia-Tsang proposals; all rejected has probability < 1e-20

_AUTO_AUGMENTS: dict[str, v2.Transform] = {
    "autoaugment": v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10),
    "trivialaugment": v2.TrivialAugmentWide(),
}


def augment_batch(
    images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """uint8 (N,3,H,W) -> uint8 (N,3,H,W); each op is drawn per image (auto_augment per group)."""
    if cfg.crop_padding > 0 or cfg.flip_p > 0:
        images = crop_flip(images, cfg.crop_padding, cfg.flip_p, generator)
    if cfg.auto_augment != "none":
        images = _auto_augment(images, cfg.auto_augment, generator)
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.grayscale_p or cfg.autocontrast_p:
        images = _color(images, cfg, generator)
    if cfg.cutout_size > 0:
        images = cutout(images, cfg.cutout_size, generator)
    if cfg.erasing_p > 0:
        images = random_erasing(images, cfg.erasing_p, cfg.erasing_scale, generator)
    return images


def _rand(
    size: int | tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    return torch.rand(size, generator=generator, device=device)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Map any integer index into [0, size) as reflect padding does (edge not repeated)."""
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index < size, index, period - index)


def crop_flip(
    images: torch.Tensor, padding: int, flip_p: float, generator: torch.Generator
) -> torch.Tensor:
    """Random crop of the reflect-padded image, then a horizontal flip, as a single gather."""
    n, c, h, w = images.shape
    dev = images.device
    dy = torch.randint(-padding, padding + 1, (n, 1), generator=generator, device=dev)
    dx = torch.randint(-padding, padding + 1, (n, 1), generator=generator, device=dev)
    rows = _reflect(torch.arange(h, device=dev) + dy, h)
    cols = torch.arange(w, device=dev).expand(n, w)
    flip = _rand(n, generator, dev)[:, None] < flip_p
    cols = _reflect(torch.where(flip, w - 1 - cols, cols) + dx, w)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return images.flatten(2).gather(2, index).view(n, c, h, w)


def _auto_augment(images: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    # torchvision samples its ops from the global CPU RNG. Seeding that from our generator, inside
    # fork_rng so the caller's global RNG is untouched, makes the policy draws reproducible and
    # resumable with the generator state. This path syncs with the host (the seed's int() here,
    # and torchvision's own Python-side sampling); acceptable for an opt-in, CPU-bound transform.
    seed = int(torch.randint(2**62, (), generator=generator, device=images.device))
    transform = _AUTO_AUGMENTS[policy]
    with torch.random.fork_rng(devices=[]):
        # Not torch.manual_seed: that would also reseed every CUDA generator, outside the fork.
        torch.default_generator.manual_seed(seed)
        return torch.cat([transform(group) for group in images.split(AUTO_AUGMENT_GROUP)])


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of a float (N,3,H,W) batch, shape (N,1,H,W), as torchvision."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _jitter_factors(
    strength: float, n: int, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    lo, hi = max(0.0, 1.0 - strength), 1.0 + strength
    return (lo + (hi - lo) * _rand(n, generator, device)).view(n, 1, 1, 1)


def _color(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Color jitter (fixed order brightness, contrast, saturation), grayscale, autocontrast.

    Works in float [0, 255] and rounds once at the end, instead of truncating after every op
    as torchvision does on uint8.
    """
    n, dev = images.shape[0], images.device
    x = images.float()
    if cfg.brightness > 0:
        x = (x * _jitter_factors(cfg.brightness, n, generator, dev)).clamp(0, 255)
    if cfg.contrast > 0:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = torch.lerp(mean, x, _jitter_factors(cfg.contrast, n, generator, dev)).clamp(0, 255)
    if cfg.saturation > 0:
        x = torch.lerp(_gray(x), x, _jitter_factors(cfg.saturation, n, generator, dev))
        x = x.clamp(0, 255)
    if cfg.grayscale_p > 0:
        to_gray = (_rand(n, generator, dev) < cfg.grayscale_p).view(n, 1, 1, 1)
        x = torch.where(to_gray, _gray(x).expand_as(x), x)
    if cfg.autocontrast_p > 0:
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        flat = hi == lo  # constant channels are left alone, as torchvision
        scale = torch.where(flat, 1.0, 255.0 / (hi - lo))
        stretched = ((x - torch.where(flat, 0.0, lo)) * scale).clamp(0, 255)
        apply = (_rand(n, generator, dev) < cfg.autocontrast_p).view(n, 1, 1, 1)
        x = torch.where(apply, stretched, x)
    return x.round().to(torch.uint8)


def _box_mask(
    top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Boolean (..., H, W) mask of the boxes [top, top+height) x [left, left+width)."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top[..., None]) & (rows < (top + height)[..., None])
    in_cols = (cols >= left[..., None]) & (cols < (left + width)[..., None])
    return in_rows[..., :, None] & in_cols[..., None, :]


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image; its centre is uniform, so it may be clipped."""
    n, _, h, w = images.shape
    dev = images.device
    cy = torch.randint(h, (n,), generator=generator, device=dev)
    cx = torch.randint(w, (n,), generator=generator, device=dev)
    side = torch.full((n,), size, device=dev)
    mask = _box_mask(cy - size // 2, cx - size // 2, side, side, h, w)
    return images.masked_fill(mask[:, None], 0)


def random_erasing(
    images: torch.Tensor, p: float, scale: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """torchvision's RandomErasing per image, filled with uniform random values.

    Random fill rather than zeros: it is the variant Zhong et al. found best, and it keeps
    erasing distinct from cutout, which already covers zero-filled boxes.
    """
    n, c, h, w = images.shape
    dev = images.device
    area = (
        h
        * w
        * (
            scale[0]
            + (scale[1] - scale[0]) * torch.rand(n, ERASING_TRIES, generator=generator, device=dev)
        )
    )
    log_lo, log_hi = math.log(ERASING_RATIO[0]), math.log(ERASING_RATIO[1])
    ratio = torch.exp(
        log_lo + (log_hi - log_lo) * torch.rand(n, ERASING_TRIES, generator=generator, device=dev)
    )
    heights = (area * ratio).sqrt().round().long()
    widths = (area / ratio).sqrt().round().long()
    fits = (heights < h) & (widths < w)
    # torchvision keeps the first proposal that fits and skips the image if none does.
    first = fits.int().argmax(dim=1, keepdim=True)
    height = heights.gather(1, first).squeeze(1)
    width = widths.gather(1, first).squeeze(1)
    top = (_rand(n, generator, dev) * (h - height + 1)).long()
    left = (_rand(n, generator, dev) * (w - width + 1)).long()
    apply = (_rand(n, generator, dev) < p) & fits.any(dim=1)
    mask = _box_mask(top, left, height, width, h, w) & apply[:, None, None]
    fill = torch.randint(256, images.shape, generator=generator, device=dev, dtype=torch.uint8)
    return torch.where(mask[:, None], fill, images)


def _log_gamma(
    shape: float, size: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """log of Gamma(shape, 1) samples: Marsaglia-Tsang with parallel proposals, no host sync."""
    boosted = shape + 1.0 if shape < 1.0 else shape
    d = boosted - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn(*size, GAMMA_TRIES, generator=generator, device=device)
    u = 1.0 - torch.rand(*size, GAMMA_TRIES, generator=generator, device=device)
    v = (1.0 + c * z).clamp_min(1e-6) ** 3
    accept = (1.0 + c * z > 0) & (u.log() < 0.5 * z * z + d - d * v + d * v.log())
    first = accept.int().argmax(dim=-1, keepdim=True)
    log_g = (d * v).log().gather(-1, first).squeeze(-1)
    if shape < 1.0:
        # Gamma(a) = Gamma(a + 1) * U^(1/a); kept in log space so tiny samples don't underflow.
        u = 1.0 - torch.rand(*size, generator=generator, device=device)
        log_g = log_g + u.log() / shape
    return log_g


def sample_beta(
    alpha: float, size: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """Beta(alpha, alpha) from the generator (torch.distributions cannot take one)."""
    log_g = _log_gamma(alpha, (2, *size), generator, device)
    return torch.sigmoid(log_g[0] - log_g[1])


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    cfg: AugmentConfig,
    generator: torch.Generator,
    active: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (p=mixup_p) else cutmix (p=cutmix_p) with a permutation of the batch.

    Returns the images and float32 soft targets (N, num_classes). The coin flips stay on the
    device: "not applied" is lambda = 1, so one code path covers every outcome.
    """
    targets = F.one_hot(labels, num_classes).float()
    if not active or (cfg.mixup_p == 0 and cfg.cutmix_p == 0):
        return images, targets
    n, _, h, w = images.shape
    dev = images.device
    coins = torch.rand(2, generator=generator, device=dev)
    use_mixup = coins[0] < cfg.mixup_p
    use_cutmix = ~use_mixup & (coins[1] < cfg.cutmix_p)
    perm = torch.randperm(n, generator=generator, device=dev)

    mixup_lam = torch.where(use_mixup, sample_beta(cfg.mixup_alpha, (), generator, dev), 1.0)

    # CutMix (Yun et al.): a box of area ~(1 - lam), clipped at the borders, then lam is
    # recomputed from the area actually pasted.
    cut = torch.sqrt(1.0 - sample_beta(cfg.cutmix_alpha, (), generator, dev))
    half_h = (h * cut).floor().long() // 2
    half_w = (w * cut).floor().long() // 2
    cy = torch.randint(h, (), generator=generator, device=dev)
    cx = torch.randint(w, (), generator=generator, device=dev)
    top, bottom = (cy - half_h).clamp(0, h), (cy + half_h).clamp(0, h)
    left, right = (cx - half_w).clamp(0, w), (cx + half_w).clamp(0, w)
    box = _box_mask(top, left, bottom - top, right - left, h, w) & use_cutmix
    cutmix_lam = 1.0 - box.sum() / (h * w)

    lam = mixup_lam * cutmix_lam  # at most one of the two differs from 1
    shuffled = images[perm]
    weight = mixup_lam.to(images.dtype)
    mixed = torch.where(box, shuffled, weight * images + (1.0 - weight) * shuffled)
    return mixed, lam * targets + (1.0 - lam) * targets[perm]


@lru_cache
def _stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-device constants so that normalize does not copy them to the device every call."""
    mean = torch.tensor(CIFAR10_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=device).view(1, 3, 1, 1)
    return mean, std


def normalize(images_uint8: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N,3,H,W) -> (x / 255 - mean) / std in `dtype` (computed in float32)."""
    mean, std = _stats(images_uint8.device)
    return ((images_uint8.float() / 255.0 - mean) / std).to(dtype)


def flip_tta_logits(model: nn.Module, images_float: torch.Tensor) -> torch.Tensor:
    """Mean of the logits on the images and on their horizontal mirrors."""
    return 0.5 * (model(images_float) + model(images_float.flip(-1)))
