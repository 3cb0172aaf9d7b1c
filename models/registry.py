"""Models by name: one preset per seed report, plus small models for tests and smoke runs.

`create_model("efficient_resnet")` builds a network; `create_model(name, **overrides)`
changes any `ArchConfig` field first; `get_arch(name)` returns the config alone.
`Registry` is the one by-name lookup of the project: recipes and search spaces use it too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

from torch import nn

from models.arch import ArchConfig, stages
from models.resnet import ResNet

T = TypeVar("T")


class Registry(Mapping[str, T]):
    """Named things of one kind (models, recipes, search spaces), looked up by name with an
    error that lists what exists. `@registry.register` on a function registers it under the
    function's name; `registry.add(name, thing)` registers anything."""

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind  # what a user calls one entry, for messages: "model", "recipe"
        self.hint = hint  # where to read more, appended to the unknown-name error
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def register(self, fn: T) -> T:
        return self.add(fn.__name__, fn)  # type: ignore[attr-defined]

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            hint = f" {self.hint}" if self.hint else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}; valid {self.kind}s: {', '.join(self)}{hint}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def describe(self, name: str) -> str:
        """The first line of the entry's docstring."""
        doc = (self[name].__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


MODELS: Registry[Callable[[], ArchConfig]] = Registry(
    "model", "(python -m models.summary --list describes them)"
)
register_model = MODELS.register


def list_models() -> list[str]:
    return sorted(MODELS)


def get_arch(name: str, **overrides: Any) -> ArchConfig:
    arch = MODELS[name]()
    return arch.replace(**overrides) if overrides else arch


def create_model(name_or_arch: str | ArchConfig, **overrides: Any) -> nn.Module:
    arch = name_or_arch if isinstance(name_or_arch, ArchConfig) else get_arch(name_or_arch)
    return ResNet(arch.replace(**overrides) if overrides else arch)


# --- Seed presets. Each reproduces what the report's code built (../shared/seeds/README.md).


@register_model
def preact_mish_transformer() -> ArchConfig:
    """Report 000: pre-activation Mish ResNet 30-60-120-240 with a transformer layer.

    The report's code built the transformer layer and counted its parameters but never
    called it (4,275,280 parameters actually used); here it runs over the last 4x4 feature
    map. The CBAM/SE it asked for was never built (a case mismatch), so neither is here.
    """
    return ArchConfig(
        stages=stages((2, 30, 1), (2, 60, 2), (5, 120, 2), (3, 240, 2)),
        stem_channels=30,
        stem_norm=False,
        block="preact",
        activation="mish",
        block_dropout=0.05,
        head_dropout=0.05,
        shortcut="conv1x1",
        transformer_layers=1,
        transformer_heads=8,
        transformer_mlp_ratio=4,
    )


@register_model
def resnet_stem_se_4322() -> ArchConfig:
    """Report 001: basic ReLU ResNet 4x64, 3x128, 2x128, 3x256 with one SE after the stem."""
    return ArchConfig(
        stages=stages((4, 64, 1), (3, 128, 2), (2, 128, 1), (3, 256, 2)),
        stem_channels=64,
        stem_se=True,
        se_reduction=16,
    )


@register_model
def se_mish_resnet() -> ArchConfig:
    """Report 002: basic Mish ResNet 32-64-256-256 with SE (r=16) in every block."""
    return ArchConfig(
        stages=stages((2, 32, 1), (2, 64, 2), (2, 256, 2), (2, 256, 2)),
        stem_channels=32,
        activation="mish",
        se=True,
        se_reduction=16,
        se_placement="branch",
        head_dropout=0.5,
    )


@register_model
def efficient_resnet() -> ArchConfig:
    """Report 003: the "Efficient ResNets" model, basic ReLU 4x64, 4x128, 3x256, stem SE."""
    return ArchConfig(
        stages=stages((4, 64, 1), (4, 128, 2), (3, 256, 2)),
        stem_channels=64,
        stem_se=True,
        se_reduction=16,
    )


@register_model
def resnet_dropout_3x4() -> ArchConfig:
    """Report 004: basic ReLU ResNet 3x32, 3x64, 3x128, 3x256, in-block dropout 0.6."""
    return ArchConfig(
        stages=stages((3, 32, 1), (3, 64, 2), (3, 128, 2), (3, 256, 2)),
        stem_channels=16,
        block_dropout=0.6,
        shortcut="conv3x3_bn",
    )


# --- Small models for tests and CPU smoke runs.


@register_model
def tiny_resnet() -> ArchConfig:
    """A two-stage 8-16 ResNet (a few thousand parameters) for tests and CPU smoke runs."""
    return ArchConfig(stages=stages((1, 8, 1), (1, 16, 2)), stem_channels=8)


@register_model
def small_resnet() -> ArchConfig:
    """A three-stage 16-32-64 ResNet (~80k parameters): trains in minutes on a CPU."""
    return ArchConfig(stages=stages((1, 16, 1), (1, 32, 2), (1, 64, 2)), stem_channels=16)


# Preset name for each seed report, in report order.
SEED_MODELS: dict[str, str] = {
    "000": "preact_mish_transformer",
    "001": "resnet_stem_se_4322",
    "002": "se_mish_resnet",
    "003": "efficient_resnet",
    "004": "resnet_dropout_3x4",
}
