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
# A sample is a shape (stages, blocks, how much wider each stage is than the one before, the
# stem relative to the first stage, block kind, SE, ...) and a size: its parameters as a
# fraction of --budget. The widths follow from solving one scale that meets that size, so
# the parameters Optuna sees are the network that trains, and no two different samples
# train the same network except by the rounding of widths to multiples of 8.
#
# Size range, log-uniform over [0.1, 1]: the seed reports' networks sit at 0.91-0.99 of the
# 5M budget, while CIFAR ResNets of a tenth of that still come within about two points
# (He et al. 2016: ResNet-20, 0.27M parameters, 91.3%; ResNet-110, 1.7M, 93.6%) and train
# several times faster, so that tenth is where a small network can still win at equal epochs;
# log-uniform gives each halving of the size the same share of samples.
SIZE_RANGE = (0.1, 1.0)
REFERENCE_WIDTH = 64  # first-stage width of a shape before it is scaled to its size


def _suggest_efficient(t: Suggester) -> None:
    stages = t.suggest_categorical("num_stages", [3, 4])
    t.suggest_float("size", *SIZE_RANGE, log=True)  # parameters / --budget
    t.suggest_float("stem_ratio", 0.5, 1.5, log=True)  # stem width / first stage's width
    for i in range(stages):
        t.suggest_int(f"blocks_{i}", 1, 5)
        if i:  # width of stage i / width of stage i-1 (the seed reports use 1, 2 and 4)
            t.suggest_float(f"growth_{i}", 1.0, 4.0, log=True)
    # Pre-activation first: at the narrowest widths it is the smaller of the two.
    t.suggest_categorical("block", ["preact", "basic"])
    t.suggest_categorical("activation", ["relu", "silu", "mish", "gelu", "elu"])
    if t.suggest_categorical("se", [False, True]):
        t.suggest_categorical("se_reduction", [16, 8, 4])
        t.suggest_categorical("se_placement", ["branch", "output"])
    t.suggest_float("block_dropout", 0.0, 0.3)
    t.suggest_float("head_dropout", 0.0, 0.5)

    if t.suggest_categorical("optimizer", ["sgd", "adamw"]) == "sgd":
        t.suggest_float("sgd_lr", 0.01, 1.0, log=True)
        t.suggest_float("sgd_weight_decay", 1e-5, 2e-3, log=True)
        t.suggest_categorical("momentum", [0.9, 0.85, 0.95])
        t.suggest_categorical("nesterov", [True, False])
    else:
        t.suggest_float("adamw_lr", 1e-4, 1e-2, log=True)
        t.suggest_float("adamw_weight_decay", 1e-3, 0.3, log=True)
    t.suggest_categorical("batch_size", [128, 256, 512, 1024])
    if t.suggest_categorical("schedule", ["cosine", "onecycle", "step"]) != "onecycle":
        t.suggest_float("warmup_epochs", 0.0, 3.0)
    t.suggest_float("label_smoothing", 0.0, 0.2)
    t.suggest_float("mixup_p", 0.0, 0.5)
    t.suggest_float("mixup_alpha", 0.2, 1.0)
    t.suggest_float("cutmix_p", 0.0, 0.5)
    t.suggest_float("cutmix_alpha", 0.5, 1.0)
    t.suggest_float("erasing_p", 0.0, 0.5)
    t.suggest_categorical("trivial_augment", [False, True])
    t.suggest_categorical("ema", [False, True])
    t.suggest_categorical("grad_clip_norm", [0.0, 1.0, 5.0])


def _build_efficient(p: Params) -> tuple[ArchConfig, TrainConfig]:
    """The shape at its reference widths; the search scales them to the sampled size."""
    widths = [float(REFERENCE_WIDTH)]
    for i in range(1, p["num_stages"]):
        widths.append(widths[-1] * p[f"growth_{i}"])
    arch = ArchConfig(
        stages=tuple(
            StageSpec(p[f"blocks_{i}"], round(width), 1 if i == 0 else 2)
            for i, width in enumerate(widths)
        ),
        stem_channels=round(REFERENCE_WIDTH * p["stem_ratio"]),
        block=p["block"],
        activation=p["activation"],
        se=p["se"],
        se_reduction=p.get("se_reduction", 16),
        se_placement=p.get("se_placement", "branch"),
        block_dropout=p["block_dropout"],
        head_dropout=p["head_dropout"],
        # Pre-activation blocks feed the shortcut an already normalized input.
        shortcut="conv1x1" if p["block"] == "preact" else "conv1x1_bn",
    )
    opt = p["optimizer"]
    cfg = TrainConfig(
        optimizer=opt,
        lr=p[f"{opt}_lr"],
        weight_decay=p[f"{opt}_weight_decay"],
        momentum=p.get("momentum", 0.9),
        nesterov=p.get("nesterov", False),
        batch_size=p["batch_size"],
        schedule=p["schedule"],
        # Step decay: x0.1 at 1/3 and 2/3 of the run (kept by TrainConfig.with_epochs).
        epochs=30,
        step_epochs=10,
        warmup_epochs=p.get("warmup_epochs", 0.0),
        label_smoothing=p["label_smoothing"],
        grad_clip_norm=p["grad_clip_norm"],
        weight_averaging="ema" if p["ema"] else "none",
        augment=AugmentConfig(
            mixup_p=p["mixup_p"],
            mixup_alpha=p["mixup_alpha"],
            cutmix_p=p["cutmix_p"],
            cutmix_alpha=p["cutmix_alpha"],
            erasing_p=p["erasing_p"],
            auto_augment="trivialaugment" if p["trivial_augment"] else "none",
        ),
    )
    return arch, cfg


# The first trial of an efficient_resnet search: report 003's stage shape (4x64, 4x128,
# 3x256, stem 64 at the default budget) trained with the project's `default` recipe (Nesterov SGD at batch 512,
# warm-up + cosine, label smoothing 0.1, EMA, no mixing). The search judges it like any
# other trial, so a search always has one configuration known to train well to beat.
EFFICIENT_START: Params = {
    "num_stages": 3,
    "size": 0.94,  # report 003's 4.70M of the 5M budget
    "stem_ratio": 1.0,
    "blocks_0": 4,
    "blocks_1": 4,
    "growth_1": 2.0,
    "blocks_2": 3,
    "growth_2": 2.0,
    "block": "basic",
    "activation": "relu",
    "se": False,
    "block_dropout": 0.0,
    "head_dropout": 0.0,
    "optimizer": "sgd",
    "sgd_lr": 0.2,
    "sgd_weight_decay": 5e-4,
    "momentum": 0.9,
    "nesterov": True,
    "batch_size": 512,
    "schedule": "cosine",
    "warmup_epochs": 1.0,
    "label_smoothing": 0.1,
    "mixup_p": 0.0,
    "mixup_alpha": 0.2,
    "cutmix_p": 0.0,
    "cutmix_alpha": 0.5,
    "erasing_p": 0.0,
    "trivial_augment": False,
    "ema": True,
    "grad_clip_norm": 0.0,
}


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
        "3-4 stages of 1-5 blocks, widths, SE, dropout, activation, block kind, "
        "plus optimizer, schedule, regularization and augmentation (the default)",
        _suggest_efficient,
        _build_efficient,
        starting_points=(EFFICIENT_START,),
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
