"""The search spaces, by name. Each is declared once: a define-by-run `suggest` function
(categorical choices list the cheapest option first) and a `build` function.
"""

from __future__ import annotations

from models import SEED_MODELS, ArchConfig, Registry, StageSpec, get_arch
from search_spaces.base import Params, SearchSpace, Suggester
from training.config import AugmentConfig, TrainConfig
from training.recipes import get_recipe

# --- efficient_resnet: the default space, around the seed reports' networks.
#
# A sample is a shape (stages, blocks per stage, how much wider each stage is than the one
# before, SE, dropout) and a size: its parameters as a fraction of --budget. The widths
# follow from solving one scale that meets that size, so the parameters Optuna sees are the
# network that trains, and no two different samples train the same network except by the
# rounding of widths to multiples of 8.
#
# Size range, log-uniform over [0.1, 1]: the seed reports' networks sit at 0.91-0.99 of the
# 5M budget, while CIFAR ResNets of a tenth of that still come within about two points
# (He et al. 2016: ResNet-20, 0.27M parameters, 91.3%; ResNet-110, 1.7M, 93.6%) and train
# several times faster, so that tenth is where a small network can still win at equal epochs;
# log-uniform gives each halving of the size the same share of samples.
#
# What is searched is what matters at short budgets, at most 18 parameters per sample (a
# search has 50-150 trials; TPE learns little about more): the architecture (stages, blocks
# per stage, one growth factor, size, SE ratio, one dropout) and one learning rate, one weight
# decay, the warm-up, label smoothing, EMA, mixing (none, mixup or cutmix, with a strength
# only when on) and random erasing (on or off, with a strength only when on).
#
# Fixed, and why:
# - SGD with Nesterov momentum 0.9: what the seed reports 001-004, the `default` recipe and
#   the fastest known CIFAR-10 recipes (airbench) train with; AdamW (report 000) needs its
#   own learning-rate and weight-decay ranges, two more conditional parameters.
# - Batch 512 (the `default` recipe's): at equal epochs a smaller batch only buys more steps
#   for more GPU time, which a search by epochs cannot see. The learning rate is searched per
#   256 images (lr x 512 / 256 trains), so it carries over when a CPU run caps the batch.
# - Schedule: warm-up, stable, decay (`wsd`, the last fifth decaying to 0), the one that lets
#   ASHA's rungs judge what a run would reach (see training.loop._decay_branch).
# - ReLU, basic blocks, SE on the residual branch, the stem as wide as the first stage,
#   no head dropout: report 003's network, the best of the seeds, is exactly that.
# - Mixup and cutmix alpha 1 (their papers' CIFAR settings), no TrivialAugment (short runs
#   are hurt by heavy augmentation), no gradient clipping (no NaN seen at these rates).
SIZE_RANGE = (0.1, 1.0)
REFERENCE_WIDTH = 64  # first-stage width of a shape before it is scaled to its size
SPACE_BATCH = 512  # images per step of every efficient_resnet trial (capped on CPUs)
MAX_BLOCKS = 4
MIXING = ("none", "mixup", "cutmix")


def _suggest_efficient(t: Suggester) -> None:
    stages = t.suggest_categorical("num_stages", [3, 4])
    t.suggest_float("size", *SIZE_RANGE, log=True)  # parameters / --budget
    for i in range(stages):
        t.suggest_int(f"blocks_{i}", 1, MAX_BLOCKS)
    # Width of each stage / the one before (the seed reports use 1, 2 and 4; mostly 2).
    t.suggest_float("growth", 1.25, 2.75, log=True)
    t.suggest_categorical("se_reduction", [0, 16, 8, 4])  # 0: no SE; cheapest first
    t.suggest_float("dropout", 0.0, 0.3)  # between a block's two convolutions

    t.suggest_float("lr", 0.025, 0.8, log=True)  # peak SGD rate per 256 images
    t.suggest_float("weight_decay", 2e-5, 2e-3, log=True)
    t.suggest_float("warmup", 0.0, 0.3)  # fraction of the run
    t.suggest_float("label_smoothing", 0.0, 0.2)
    t.suggest_categorical("ema", [False, True])
    if t.suggest_categorical("mixing", list(MIXING)) != "none":
        t.suggest_float("mix_p", 0.1, 1.0)  # per-batch probability
    if t.suggest_categorical("erasing", [False, True]):
        t.suggest_float("erasing_p", 0.1, 0.5)  # per-image probability


def _build_efficient(p: Params) -> tuple[ArchConfig, TrainConfig]:
    """The shape at its reference widths; the search scales them to the sampled size."""
    stages = p["num_stages"]
    widths = [REFERENCE_WIDTH * p["growth"] ** i for i in range(stages)]
    arch = ArchConfig(
        stages=tuple(
            StageSpec(p[f"blocks_{i}"], round(width), 1 if i == 0 else 2)
            for i, width in enumerate(widths)
        ),
        stem_channels=REFERENCE_WIDTH,
        block="basic",
        activation="relu",
        se=p["se_reduction"] > 0,
        se_reduction=p["se_reduction"] or 16,
        se_placement="branch",
        block_dropout=p["dropout"],
        shortcut="conv1x1_bn",
    )
    mixing = p["mixing"]
    epochs = 30  # any length: the search sets the run's (the warm-up is a fraction of it)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=SPACE_BATCH,
        optimizer="sgd",
        lr=p["lr"] * SPACE_BATCH / 256,
        momentum=0.9,
        nesterov=True,
        weight_decay=p["weight_decay"],
        schedule="wsd",
        warmup_epochs=p["warmup"] * epochs,
        decay_fraction=0.2,
        label_smoothing=p["label_smoothing"],
        weight_averaging="ema" if p["ema"] else "none",
        augment=AugmentConfig(
            mixup_p=p["mix_p"] if mixing == "mixup" else 0.0,
            mixup_alpha=1.0,
            cutmix_p=p["mix_p"] if mixing == "cutmix" else 0.0,
            cutmix_alpha=1.0,
            erasing_p=p["erasing_p"] if p["erasing"] else 0.0,
        ),
        tta_flip=True,
    )
    return arch, cfg


# The first trials of an efficient_resnet search: configurations known to train well at
# short budgets, in the space's terms. The search judges them like any other trial.
_SHAPE_003 = {  # report 003's network: 4x64, 4x128, 3x256, stem 64 at the 5M budget
    "num_stages": 3,
    "size": 0.94,  # its 4.70M of the 5M budget
    "blocks_0": 4,
    "blocks_1": 4,
    "blocks_2": 3,
    "growth": 2.0,
    "se_reduction": 0,  # report 003's one SE after the stem is not in the space
    "dropout": 0.0,
}
# Report 003's shape with the `default` recipe at its own rate: 0.4 at batch 512, warm-up 2
# of 40 epochs, label smoothing 0.1, EMA, no mixing.
DEFAULT_AT_003: Params = {
    **_SHAPE_003,
    "lr": 0.2,
    "weight_decay": 5e-4,
    "warmup": 0.05,
    "label_smoothing": 0.1,
    "ema": True,
    "mixing": "none",
    "erasing": False,
}
# Report 003's shape with report 003's recipe: SGD 0.1 at batch 128 (0.2 per 256), weight
# decay 5e-4, no warm-up or label smoothing, mixup. Its Lookahead, gradient clipping and its
# mixup-then-cutmix (p 0.5 each) are not in the space: mixup alone at p 0.5 stands for them.
REPORT_003: Params = {
    **_SHAPE_003,
    "lr": 0.2,
    "weight_decay": 5e-4,
    "warmup": 0.0,
    "label_smoothing": 0.0,
    "ema": False,
    "mixing": "mixup",
    "mix_p": 0.5,
    "erasing": False,
}
# Like airbench (Jordan 2024, 94% in a few GPU-seconds): a shallow, wide network of about 2M
# parameters (one block per stage), a high rate with a long warm-up, label smoothing 0.2,
# crop and flip only.
AIRBENCH_LIKE: Params = {
    "num_stages": 3,
    "size": 0.4,
    "blocks_0": 1,
    "blocks_1": 1,
    "blocks_2": 1,
    "growth": 2.0,
    "se_reduction": 0,
    "dropout": 0.0,
    "lr": 0.4,
    "weight_decay": 5e-4,
    "warmup": 0.2,
    "label_smoothing": 0.2,
    "ema": False,
    "mixing": "none",
    "erasing": False,
}
EFFICIENT_STARTS: tuple[Params, ...] = (DEFAULT_AT_003, AIRBENCH_LIKE, REPORT_003)


# --- seeds: the five reports' networks with their own recipes, as fixed trials.


def _suggest_seed(t: Suggester) -> None:
    t.suggest_categorical("preset", sorted(SEED_MODELS.values()))


def _build_seed(p: Params) -> tuple[ArchConfig, TrainConfig]:
    return get_arch(p["preset"]), get_recipe(p["preset"])


# --- tiny: a few thousand parameters, for CPU smoke runs and tests.


def _suggest_tiny(t: Suggester) -> None:
    stages = t.suggest_int("num_stages", 1, 2)
    for i in range(stages):
        t.suggest_int(f"channels_{i}", 8, 32, step=8)
    t.suggest_categorical("activation", ["relu", "silu"])
    t.suggest_categorical("se", [False, True])
    t.suggest_float("lr", 0.01, 0.3, log=True)
    t.suggest_categorical("batch_size", [32, 64])


TINY_START: Params = {
    "num_stages": 2,
    "channels_0": 16,
    "channels_1": 32,
    "activation": "relu",
    "se": False,
    "lr": 0.1,
    "batch_size": 32,
}


def _build_tiny(p: Params) -> tuple[ArchConfig, TrainConfig]:
    arch = ArchConfig(
        stages=tuple(
            StageSpec(1, p[f"channels_{i}"], 1 if i == 0 else 2) for i in range(p["num_stages"])
        ),
        stem_channels=8,
        activation=p["activation"],
        se=p["se"],
        se_reduction=4,
    )
    cfg = get_recipe("smoke", lr=p["lr"], batch_size=p["batch_size"])
    return arch, cfg


SPACES: Registry[SearchSpace] = Registry(
    "search space", "(python -m tune.search --list-spaces describes them)"
)
for _space in (
    SearchSpace(
        "efficient_resnet",
        "3-4 stages of 1-4 blocks, growth, size, SE ratio, dropout; learning rate, weight "
        "decay, warm-up, label smoothing, EMA, mixup/cutmix, erasing (<= 18 per trial; "
        "the default)",
        _suggest_efficient,
        _build_efficient,
        starting_points=EFFICIENT_STARTS,
        size_param="size",
    ),
    SearchSpace(
        "seeds",
        "the five seed reports' networks with their own recipes: the baselines",
        _suggest_seed,
        _build_seed,
        fixed_trials=tuple({"preset": name} for name in sorted(SEED_MODELS.values())),
    ),
    SearchSpace(
        "tiny",
        "1-2 stages of 8-32 channels and a learning rate: CPU smoke runs and tests",
        _suggest_tiny,
        _build_tiny,
        starting_points=(TINY_START,),
    ),
):
    SPACES.add(_space.name, _space)


def list_spaces() -> list[str]:
    return list(SPACES)


def get_space(name: str) -> SearchSpace:
    return SPACES[name]
