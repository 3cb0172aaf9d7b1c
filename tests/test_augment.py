from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode, v2

from training import augment
from training.augment import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    augment_batch,
    flip_tta_logits,
    mix_batch,
    normalize,
    sample_beta,
)
from training.config import AugmentConfig

OFF = AugmentConfig(crop_padding=0, flip_p=0.0)
CPU = torch.device("cpu")


def only(**changes: object) -> AugmentConfig:
    """The all-off config with just these knobs on."""
    return AugmentConfig(**{"crop_padding": 0, "flip_p": 0.0, **changes})


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(256, (n, 3, 32, 32), generator=gen(seed), dtype=torch.uint8)


def constant_images(n: int, value: int) -> torch.Tensor:
    return torch.full((n, 3, 32, 32), value, dtype=torch.uint8)


def bounding_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), half-open, of the True pixels of an (H, W) mask."""
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


FULL = AugmentConfig(
    crop_padding=4,
    flip_p=0.5,
    brightness=0.4,
    contrast=0.4,
    saturation=0.4,
    grayscale_p=0.2,
    autocontrast_p=0.2,
    cutout_size=8,
    erasing_p=0.5,
)
SINGLE_OPS = {
    "crop": only(crop_padding=4),
    "flip": only(flip_p=0.5),
    "brightness": only(brightness=0.5),
    "contrast": only(contrast=0.5),
    "saturation": only(saturation=0.5),
    "grayscale": only(grayscale_p=0.5),
    "autocontrast": only(autocontrast_p=0.5),
    "cutout": only(cutout_size=8),
    "erasing": only(erasing_p=0.5),
    "full": FULL,
}


@pytest.mark.parametrize("name", list(SINGLE_OPS))
def test_each_op_keeps_shape_dtype_and_changes_images(name: str) -> None:
    x = random_images(64)
    y = augment_batch(x, SINGLE_OPS[name], gen())
    assert y.shape == (64, 3, 32, 32)
    assert y.dtype == torch.uint8
    assert not torch.equal(y, x)
    assert torch.equal(x, random_images(64))  # the input is not modified in place


def test_all_off_returns_input_unchanged() -> None:
    x = random_images(32)
    assert torch.equal(augment_batch(x, OFF, gen()), x)


def test_crop_is_a_window_of_the_reflect_padded_image() -> None:
    n, pad = 200, 4
    x = random_images(n)
    y = augment_batch(x, only(crop_padding=pad), gen())
    padded = F.pad(x.float(), (pad,) * 4, mode="reflect")
    windows = padded.unfold(2, 32, 1).unfold(3, 32, 1)  # (N, 3, 9, 9, 32, 32)
    matches = (windows == y.float()[:, :, None, None]).all(dim=(1, 4, 5))  # (N, 9, 9)
    assert torch.equal(matches.sum(dim=(1, 2)), torch.ones(n, dtype=torch.long))
    _, dy, dx = matches.nonzero(as_tuple=True)
    # every offset in [-pad, pad] occurs, so content really shifts, in both directions
    assert set(dy.tolist()) == set(range(2 * pad + 1))
    assert set(dx.tolist()) == set(range(2 * pad + 1))


def test_flip_p1_equals_torch_flip() -> None:
    x = random_images(16)
    y = augment_batch(x, only(flip_p=1.0), gen())
    assert torch.equal(y, torch.flip(x, dims=[3]))


def test_flip_half_flips_about_half() -> None:
    n = 4000
    x = random_images(n)
    y = augment_batch(x, only(flip_p=0.5), gen())
    same = (y == x).flatten(1).all(dim=1)
    flipped = (y == x.flip(3)).flatten(1).all(dim=1)
    assert bool((same ^ flipped).all())
    assert 0.45 < flipped.float().mean().item() < 0.55


@pytest.mark.parametrize("size", [8, 5])
def test_cutout_zeroes_one_square(size: int) -> None:
    n = 400
    y = augment_batch(constant_images(n, 200), only(cutout_size=size), gen())
    zero = y == 0
    assert torch.equal(zero, zero[:, :1].expand_as(zero))  # same pixels in every channel
    interior, clipped_sides = 0, set()
    for mask in zero[:, 0]:
        top, bottom, left, right = bounding_box(mask)
        assert int(mask.sum()) == (bottom - top) * (right - left) <= size * size
        assert bottom - top <= size and right - left <= size
        if top > 0 and left > 0 and bottom < 32 and right < 32:
            assert (bottom - top, right - left) == (size, size)
            interior += 1
        short_h, short_w = bottom - top < size, right - left < size
        sides = {"top": top == 0, "left": left == 0, "bottom": bottom == 32, "right": right == 32}
        short = {"top": short_h, "bottom": short_h, "left": short_w, "right": short_w}
        clipped_sides |= {side for side in sides if sides[side] and short[side]}
    # the centre is uniform over the image, so squares get clipped at every border
    assert interior > n // 4 and clipped_sides == {"top", "left", "bottom", "right"}


def test_random_erasing_p1_erases_one_box_per_image() -> None:
    n, (lo, hi) = 300, (0.02, 0.33)
    x = constant_images(n, 128)
    y = augment_batch(x, only(erasing_p=1.0, erasing_scale=(lo, hi)), gen())
    changed = (y != x).any(dim=1)
    fractions = []
    for mask in changed:
        top, bottom, left, right = bounding_box(mask)
        # a random fill equal to 128 in all three channels could hide a pixel (p = 2^-24)
        assert int(mask.sum()) >= (bottom - top) * (right - left) - 1
        fractions.append((bottom - top) * (right - left) / (32 * 32))
    fractions = torch.tensor(fractions)
    # side lengths are rounded, so the area can leave [lo, hi] by a little
    assert fractions.min() >= 0.5 * lo and fractions.max() <= 1.2 * hi
    assert fractions.max() - fractions.min() > 0.5 * (hi - lo)


def test_random_erasing_p_zero_is_identity() -> None:
    x = random_images(32)
    assert torch.equal(augment_batch(x, only(erasing_p=0.0), gen()), x)


def test_brightness_scales_each_image_by_one_factor_in_range() -> None:
    s = 0.4
    x = torch.randint(100, 150, (200, 3, 32, 32), generator=gen(1), dtype=torch.uint8)
    y = augment_batch(x, only(brightness=s), gen())
    ratio = y.float() / x.float()
    factor = ratio.flatten(1).median(dim=1).values
    assert torch.allclose(ratio, factor.view(-1, 1, 1, 1).expand_as(ratio), atol=0.01)
    assert factor.min() >= 1 - s - 0.01 and factor.max() <= 1 + s + 0.01
    assert factor.min() < 1 - s / 2 and factor.max() > 1 + s / 2  # spans [1 - s, 1 + s]
    assert factor.std() > 0.1  # per-image factors, not one per batch


def test_saturation_keeps_luma() -> None:
    x = torch.randint(80, 170, (50, 3, 32, 32), generator=gen(1), dtype=torch.uint8)
    y = augment_batch(x, only(saturation=0.5), gen())
    assert not torch.equal(x, y)
    luma = augment._gray
    assert (luma(y.float()) - luma(x.float())).abs().max() <= 1.0


def test_grayscale_p1_makes_channels_equal() -> None:
    y = augment_batch(random_images(16), only(grayscale_p=1.0), gen())
    assert torch.equal(y, y[:, :1].expand_as(y))


def test_autocontrast_p1_stretches_every_channel() -> None:
    x = torch.randint(60, 180, (16, 3, 32, 32), generator=gen(1), dtype=torch.uint8)
    y = augment_batch(x, only(autocontrast_p=1.0), gen())
    assert bool((y.amin(dim=(2, 3)) == 0).all()) and bool((y.amax(dim=(2, 3)) == 255).all())
    flat = constant_images(4, 77)
    assert torch.equal(augment_batch(flat, only(autocontrast_p=1.0), gen()), flat)


def test_same_seed_same_output_different_seed_different() -> None:
    x = random_images(64)
    a = augment_batch(x, FULL, gen(3))
    assert torch.equal(a, augment_batch(x, FULL, gen(3)))
    assert not torch.equal(a, augment_batch(x, FULL, gen(4)))


def test_restoring_generator_state_replays_batch() -> None:
    x, g = random_images(32), gen(5)
    augment_batch(x, FULL, g)
    state = g.get_state()
    a = augment_batch(x, FULL, g)
    g.set_state(state)
    assert torch.equal(a, augment_batch(x, FULL, g))


@pytest.mark.parametrize("policy", ["autoaugment", "trivialaugment"])
def test_auto_augment_policies(policy: str) -> None:
    x = random_images(48)
    cfg = only(auto_augment=policy)
    global_state = torch.get_rng_state()
    a = augment_batch(x, cfg, gen(7))
    assert torch.equal(torch.get_rng_state(), global_state)  # caller's global RNG untouched
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, augment_batch(x, cfg, gen(7)))
    assert not torch.equal(a, augment_batch(x, cfg, gen(8)))
    assert not torch.equal(a, x)


def test_per_batch_path_never_syncs_with_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("host synchronisation in the per-batch path")

    x, labels = random_images(32), torch.arange(32) % 10
    xf = normalize(x)  # builds the cached per-device constants before the patch
    policies = [
        dataclasses.replace(FULL, auto_augment=p) for p in ("autoaugment", "trivialaugment")
    ]
    for policy in policies:  # and the policies' tables, once per device
        augment_batch(x, policy, gen())
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    monkeypatch.setattr(torch, "nonzero", forbidden)
    augment_batch(x, FULL, gen())
    for policy in policies:
        augment_batch(x, policy, gen())
    normalize(x)
    mix_batch(xf, labels, 10, AugmentConfig(mixup_p=0.5, cutmix_p=0.5), gen(), active=True)


def test_mix_inactive_or_zero_probability_is_one_hot() -> None:
    x, labels = normalize(random_images(16)), torch.arange(16) % 10
    on = AugmentConfig(mixup_p=1.0, cutmix_p=1.0)
    for cfg, active in ((on, False), (AugmentConfig(), True)):
        images, targets = mix_batch(x, labels, 10, cfg, gen(), active)
        assert torch.equal(images, x)
        assert targets.dtype == torch.float32
        assert torch.equal(targets, F.one_hot(labels, 10).float())


def class_coded_batch(n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose every pixel equals their label; one class per image."""
    labels = torch.arange(n)
    return labels.float().view(n, 1, 1, 1).expand(n, 3, size, size).clone(), labels


def test_mixup_blends_images_and_targets_with_one_lambda() -> None:
    n = 32
    x, labels = class_coded_batch(n)
    images, targets = mix_batch(x, labels, n, AugmentConfig(mixup_p=1.0), gen(), True)
    assert torch.allclose(targets.sum(dim=1), torch.ones(n))
    # pixel value = lam * own label + (1 - lam) * partner label = targets @ labels
    expected = targets @ labels.float()
    assert torch.allclose(images, expected.view(n, 1, 1, 1).expand_as(images), atol=1e-4)
    own = targets[labels, labels]
    mixed = own < 1
    assert mixed.sum() >= n - 4  # only fixed points of the permutation stay unmixed
    assert bool(((targets > 0).sum(dim=1)[mixed] == 2).all())
    assert torch.allclose(own[mixed], own[mixed][0].expand(int(mixed.sum())))
    assert 0 < own[mixed][0] < 1


def test_cutmix_target_weights_equal_pasted_area() -> None:
    n = 32
    x, labels = class_coded_batch(n)
    cfg = AugmentConfig(mixup_p=0.0, cutmix_p=1.0)
    partial = 0
    for seed in range(10):
        images, targets = mix_batch(x, labels, n, cfg, gen(seed), True)
        assert torch.allclose(targets.sum(dim=1), torch.ones(n))
        own_area = (images == labels.view(n, 1, 1, 1)).float().mean(dim=(1, 2, 3))
        assert torch.allclose(targets[labels, labels], own_area)
        # every pixel is either the image's own or its partner's
        partner = targets.clone()
        partner[labels, labels] = 0
        partner_label = partner.argmax(dim=1).view(n, 1, 1, 1)
        assert bool(((images == labels.view(n, 1, 1, 1)) | (images == partner_label)).all())
        partial += int(((own_area > 0) & (own_area < 1)).any())
    assert partial >= 5


def test_mix_coin_flips_follow_probabilities() -> None:
    n, trials = 8, 1000
    x, labels = class_coded_batch(n, size=16)
    cfg = AugmentConfig(mixup_p=0.5, cutmix_p=0.5)
    g = gen()
    counts = {"mixup": 0, "cutmix": 0, "none": 0}
    for _ in range(trials):
        images, targets = mix_batch(x, labels, n, cfg, g, True)
        if torch.equal(images, x):
            kind = "none"
        elif torch.equal(images, images.round()):
            kind = "cutmix"
        else:
            kind = "mixup"
            # a pure blend: each image stays constant (no cutmix box on top)
            assert torch.equal(images, images[:, :1, :1, :1].expand_as(images))
        counts[kind] += 1
        assert torch.allclose(targets.sum(dim=1), torch.ones(n))
    # expected 0.5 / 0.25 / 0.25 (+-4 sigma); an empty cutmix box (p ~ 1/64 here) reads as none
    assert 0.437 < counts["mixup"] / trials < 0.563
    assert 0.195 < counts["cutmix"] / trials < 0.305
    assert 0.195 < counts["none"] / trials < 0.31


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.0])
def test_sample_beta_moments(alpha: float) -> None:
    b = sample_beta(alpha, (100_000,), gen(), CPU)
    assert bool(((b >= 0) & (b <= 1)).all())
    assert abs(b.mean().item() - 0.5) < 0.01
    assert abs(b.var().item() / (1 / (4 * (2 * alpha + 1))) - 1) < 0.03


def test_normalize_maps_extremes() -> None:
    x = torch.stack([constant_images(1, 0)[0], constant_images(1, 255)[0]])
    y = normalize(x)
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    assert y.dtype == torch.float32
    assert torch.allclose(y[0, :, 0, 0], -mean / std)
    assert torch.allclose(y[1, :, 0, 0], (1 - mean) / std)
    assert normalize(x, torch.bfloat16).dtype == torch.bfloat16


def test_flip_tta_logits_is_mean_of_image_and_mirror() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10)).eval()
    x = normalize(random_images(4))
    with torch.no_grad():
        tta = flip_tta_logits(model, x)
        plain, mirrored = model(x), model(x.flip(3))
    assert torch.allclose(tta, (plain + mirrored) / 2, atol=1e-6)
    assert not torch.allclose(tta, plain, atol=1e-3)


@pytest.mark.parametrize("name", [*v2.TrivialAugmentWide._AUGMENTATION_SPACE, "Invert"])
def test_each_auto_augment_op_matches_torchvision_per_image(name: str) -> None:
    """The batched ops against torchvision's own op on each image (nearest, zero fill), over
    signed magnitudes of every policy's range: geometry and the lookups exactly, the blends
    up to a rounding step (float order) on a few pixels."""
    x = random_images(24, seed=3)
    x[0] = 7  # a constant image: autocontrast and equalize leave it alone
    reference = v2.TrivialAugmentWide()
    magnitudes = {
        "Posterize": [1.0, 4.0, 7.0, 8.0],
        "Solarize": [0.0, 0.4, 1.0],
        "TranslateX": [-14.3, 3.0, 32.0],
        "TranslateY": [-14.3, 3.0, 32.0],
        "Rotate": [-135.0, 17.0, 90.0],
    }.get(name, [-0.95, -0.3, 0.0, 0.45, 0.99])
    for magnitude in magnitudes:
        got = augment._apply_op(name, x, torch.full((len(x),), magnitude))
        want = torch.stack(
            [
                reference._apply_image_or_video_transform(
                    image, name, magnitude, InterpolationMode.NEAREST, reference._fill
                )
                for image in x
            ]
        )
        diff = (got.int() - want.int()).abs()
        if name in ("Color", "Contrast", "Brightness", "Sharpness", "AutoContrast"):
            assert diff.max() <= 1 and (diff > 0).float().mean() < 0.02, (name, magnitude)
        else:
            assert torch.equal(got, want), (name, magnitude)


def test_auto_augment_draws_an_op_per_image() -> None:
    """Images of one batch take different ops (torchvision's transform takes one per call)."""
    x = constant_images(64, 100)
    x[:, :, :16] = 30  # top half dark: geometric and colour ops change it differently
    out = augment_batch(x, only(auto_augment="trivialaugment"), gen(1))
    distinct = {bytes(image.flatten().tolist()) for image in out}
    assert len(distinct) > 20
