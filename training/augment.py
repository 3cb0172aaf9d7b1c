"""Whole-batch augmentation on the device the batch lives on (airbench style).

Every per-image random choice is drawn as a tensor from the caller's `torch.Generator` and
applied with masks, index arithmetic and gathers, so the per-batch path never waits on the
device and a saved generator state replays the exact same augmentations. That includes
torchvision's AutoAugment and TrivialAugment policies, reimplemented here per image on the
whole batch from torchvision's own tables (see `_auto_augment`).

Order in `augment_batch`: crop + flip (one gather), auto_augment, color jitter, grayscale,
autocontrast, cutout, random erasing -- the order of the AutoAugment paper's CIFAR pipeline
(crop/flip, policy, cutout), with the extra color ops before the occluders.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from training.config import AugmentConfig

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

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
    """torchvision's TrivialAugmentWide or AutoAugment (CIFAR-10 policy) per image, drawn from
    the caller's generator, without a host sync.

    The images of a batch are split evenly among the policy's ops (TrivialAugment) or
    sub-policies (AutoAugment) by a random permutation: every image still gets a uniformly
    drawn op, while the group sizes depend on the batch size alone, so each op runs once per
    batch on a slice whose size the host knows without asking the device."""
    n, dev = images.shape[0], images.device
    table = _policy_tables(policy, images.shape[-2], images.shape[-1], dev)
    perm = torch.randperm(n, generator=generator, device=dev)
    shuffled = images.index_select(0, perm)
    if policy == "trivialaugment":
        names, magnitudes, signed = table
        level = torch.randint(magnitudes.shape[1], (n,), generator=generator, device=dev)
        flip = _rand(n, generator, dev) <= 0.5  # torchvision: rand <= 0.5 negates
        parts = []
        for k, (lo, hi) in enumerate(_even_slices(n, len(names))):
            magnitude = magnitudes[k, level[lo:hi]]
            if signed[k]:
                magnitude = torch.where(flip[lo:hi], -magnitude, magnitude)
            parts.append(_apply_op(names[k], shuffled[lo:hi], magnitude))
    else:
        # Stage by stage, the images are reordered (by an order the host derives from the
        # batch size alone) so that those whose sub-policy has the same op at this stage are
        # contiguous: one call per distinct op and stage, not one per sub-policy.
        coins = _rand((n, 2), generator, dev)
        flips = _rand((n, 2), generator, dev) <= 0.5
        x = shuffled
        for stage in range(2):
            order, runs, magnitude, probability = _autoaugment_stage(
                n, stage, *images.shape[-2:], dev
            )
            signs = torch.where(flips[order, stage] & (magnitude < 0), -1.0, 1.0)
            applied = coins[order, stage] <= probability
            xs, parts = x.index_select(0, order), []
            for name, lo, hi in runs:
                y = _apply_op(name, xs[lo:hi], magnitude[lo:hi].abs() * signs[lo:hi])
                parts.append(torch.where(applied[lo:hi].view(-1, 1, 1, 1), y, xs[lo:hi]))
            x = torch.empty_like(x).index_copy_(0, order, torch.cat(parts))
        parts = [x]
    return torch.empty_like(images).index_copy_(0, perm, torch.cat(parts))


@lru_cache
def _autoaugment_stage(
    n: int, stage: int, height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, list[tuple[str, int, int]], torch.Tensor, torch.Tensor]:
    """For a batch of n images split evenly among AutoAugment's sub-policies (in table
    order): the order that makes the images of each op at `stage` contiguous, those runs
    (op, lo, hi) in that order, and per image in that order its magnitude (negative: a signed
    op, whose sign is drawn) and probability."""
    pairs, magnitudes, signed = _policy_tables("autoaugment", height, width, torch.device("cpu"))
    policy_of = [k for k, (lo, hi) in enumerate(_even_slices(n, len(pairs))) for _ in range(lo, hi)]
    order = sorted(range(n), key=lambda i: pairs[policy_of[i]][stage][0])
    runs = []
    for i, position in enumerate(order):
        name = pairs[policy_of[position]][stage][0]
        if runs and runs[-1][0] == name:
            runs[-1][2] = i + 1
        else:
            runs.append([name, i, i + 1])
    k = [policy_of[position] for position in order]
    value = magnitudes[k, stage].abs()
    sign = torch.tensor([-1.0 if signed[j][stage] else 1.0 for j in k])
    probability = torch.tensor([pairs[j][stage][1] for j in k])
    return (
        torch.tensor(order, device=device),
        [tuple(r) for r in runs],
        (value * sign).to(device),
        probability.to(device),
    )


def _even_slices(n: int, k: int) -> list[tuple[int, int]]:
    """k consecutive [lo, hi) ranges covering n, their sizes differing by at most one."""
    bounds = [round(i * n / k) for i in range(k + 1)]
    return list(itertools.pairwise(bounds))


@lru_cache
def _policy_tables(policy: str, height: int, width: int, device: torch.device) -> tuple[Any, ...]:
    """torchvision's own tables of `policy`: for TrivialAugment the op names, their magnitude
    bins (a tensor on `device`) and whether each is signed; for AutoAugment each sub-policy's
    two (op, probability) pairs, their magnitudes (a tensor) and signs."""
    transform = _AUTO_AUGMENTS[policy]
    space = transform._AUGMENTATION_SPACE

    def magnitudes(name: str, bins: int) -> tuple[torch.Tensor, bool]:
        make, signed = space[name]
        values = make(bins, height, width)
        if values is None or not values.ndim:  # an op without a magnitude
            return torch.zeros(bins), False
        return values.float(), signed

    if policy == "trivialaugment":
        names = list(space)
        rows = [magnitudes(name, transform.num_magnitude_bins) for name in names]
        return names, torch.stack([m for m, _ in rows]).to(device), [s for _, s in rows]
    pairs, values, signs = [], [], []
    for pair in transform._policies:
        pairs.append([(name, p) for name, p, _ in pair])
        row = [magnitudes(name, 10) for name, _, _ in pair]  # AutoAugment's 10 bins
        values.append([float(m[level]) if level is not None else 0.0
                       for (m, _), (_, _, level) in zip(row, pair, strict=True)])  # fmt: skip
        signs.append([signed for _, signed in row])
    return pairs, torch.tensor(values, device=device), signs


def _affine_theta(name: str, magnitude: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per image, the inverse affine matrix (N, 2, 3) that torchvision's F.affine / F.rotate
    build for a geometric op, as its _get_inverse_affine_matrix computes it."""
    m = magnitude.double()
    zero = torch.zeros_like(m)
    rot = torch.deg2rad(-m) if name == "Rotate" else zero  # F.rotate passes -angle
    sx = torch.atan(m) if name == "ShearX" else zero
    sy = torch.atan(m) if name == "ShearY" else zero
    tx = m.trunc() if name == "TranslateX" else zero
    ty = m.trunc() if name == "TranslateY" else zero
    # The shears are about the top-left corner (center=[0, 0] in torchvision's pixel terms).
    shear = name in ("ShearX", "ShearY")
    cx, cy = (-0.5 * w, -0.5 * h) if shear else (0.0, 0.0)
    a = torch.cos(rot - sy) / torch.cos(sy)
    b = -torch.cos(rot - sy) * torch.tan(sx) / torch.cos(sy) - torch.sin(rot)
    c = torch.sin(rot - sy) / torch.cos(sy)
    d = -torch.sin(rot - sy) * torch.tan(sx) / torch.cos(sy) + torch.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = m0 * (-cx - tx) + m1 * (-cy - ty) + cx
    m5 = m3 * (-cx - tx) + m4 * (-cy - ty) + cy
    return torch.stack([m0, m1, m2, m3, m4, m5], dim=1).view(-1, 2, 3).float()


def _apply_op(name: str, images: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """torchvision's auto-augment op `name` on uint8 images (nearest interpolation, zero fill),
    each image with its own magnitude, as `_AutoAugmentBase._apply_image_or_video_transform`
    does it one call per magnitude."""
    n, c, h, w = images.shape
    dev = images.device
    if name == "Identity" or n == 0:
        return images
    if name in ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"):
        # One grid_sample for the slice, with the grid torchvision's _affine_grid builds.
        theta = _affine_theta(name, magnitude, h, w)
        xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=dev)
        ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=dev)
        base = torch.stack(
            [xs.expand(h, w), ys[:, None].expand(h, w), torch.ones(h, w, device=dev)], dim=-1
        ).view(1, h * w, 3)
        scale = torch.tensor([0.5 * w, 0.5 * h], device=dev)
        grid = base.expand(n, -1, -1).bmm(theta.transpose(1, 2) / scale).view(n, h, w, 2)
        x = F.grid_sample(images.float(), grid, mode="nearest", align_corners=False)
        return x.round().to(torch.uint8)
    if name == "Posterize":
        bits = magnitude.trunc().clamp(0, 8).long().view(n, 1, 1, 1)
        return images & ((255 << (8 - bits)) & 255).to(torch.uint8)  # the top `bits` bits
    if name == "Solarize":
        threshold = 255.0 * magnitude.view(n, 1, 1, 1)
        return torch.where(images >= threshold, 255 - images, images)
    if name == "Invert":
        return 255 - images
    if name == "Equalize":
        return v2.functional.equalize(images)  # batched already, per image and channel
    x = images.float()
    if name == "AutoContrast":
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        flat = hi == lo  # constant channels are left alone
        inv_scale = torch.where(flat, 1.0, (hi - lo) * (1.0 / 255.0))
        return ((x - torch.where(flat, 0.0, lo)) / inv_scale).clamp(0, 255).to(torch.uint8)
    # The blends toward a degenerate image by factor f = 1 + magnitude, in float64 first and
    # then rounded, as torchvision's Python floats are; clamped and truncated as its _blend.
    factor = 1.0 + magnitude.double().view(n, 1, 1, 1)
    ratio, rest = factor.float(), (1.0 - factor).float()
    if name == "Sharpness":
        # x + (1 - f) * (blur - x) inside the border, whose pixels stay, as torchvision writes it
        # Its 3x3 kernel (1 around a 5, over 13) as a box sum plus 4 x the centre: pooling
        # is far faster than a depthwise convolution on CPUs.
        inner = x[:, :, 1:-1, 1:-1]
        blurred = ((9.0 * F.avg_pool2d(x, 3, stride=1) + 4.0 * inner) / 13.0).round()
        out = x.clone()
        out[:, :, 1:-1, 1:-1] = inner + rest * (blurred - inner)
        return out.clamp(0, 255).to(torch.uint8)
    if name == "Brightness":
        degenerate = torch.zeros((), device=dev)
    elif name in ("Color", "Contrast"):
        degenerate = (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).floor()
        if name == "Contrast":
            degenerate = degenerate.mean(dim=(1, 2, 3), keepdim=True)
    else:
        raise ValueError(f"unknown auto-augment op {name!r}")
    return (x * ratio + degenerate * rest).clamp(0, 255).to(torch.uint8)


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
    shuffled = images.index_select(0, perm)
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
