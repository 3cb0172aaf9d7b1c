"""The typed, frozen description of one network in the ResNet family.

Every network this project builds, searches or retrains is an `ArchConfig`. It is plain
data: hashable, comparable, and convertible to and from a dict (for JSON, checkpoints and
the Ray boundary) without losing anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

Activation = Literal["relu", "mish", "silu", "elu", "gelu"]
BlockKind = Literal["basic", "preact"]
# How a block's shortcut changes shape when channels or stride change:
#   conv1x1_bn: 1x1 conv (stride s) + BatchNorm (the common ResNet "option B");
#   conv1x1:    a bare 1x1 conv, as pre-activation nets often use;
#   conv3x3_bn: a 3x3 conv (stride s) + BatchNorm.
ShortcutKind = Literal["conv1x1_bn", "conv1x1", "conv3x3_bn"]
# Where squeeze-and-excitation sits in a block: on the residual branch before the add
# (as in the SE paper) or on the block's output after the add.
SEPlacement = Literal["branch", "output"]
Pooling = Literal["avg", "max", "avgmax"]

ACTIVATIONS: tuple[str, ...] = ("relu", "mish", "silu", "elu", "gelu")
BLOCK_KINDS: tuple[str, ...] = ("basic", "preact")
SHORTCUT_KINDS: tuple[str, ...] = ("conv1x1_bn", "conv1x1", "conv3x3_bn")
SE_PLACEMENTS: tuple[str, ...] = ("branch", "output")
POOLINGS: tuple[str, ...] = ("avg", "max", "avgmax")


@dataclass(frozen=True)
class StageSpec:
    """One stage: `blocks` residual blocks of `channels` output channels.

    The first block of the stage applies `stride` (1 keeps the resolution, 2 halves it)
    and changes the channel count; the others keep both.
    """

    blocks: int  # number of residual blocks, >= 1
    channels: int  # output channels of every block in the stage
    stride: int = 1  # stride of the stage's first block: 1 or 2


@dataclass(frozen=True)
class ArchConfig:
    """A CIFAR-10 ResNet: a 3x3 stem, residual stages, global pooling and a linear head."""

    stages: tuple[StageSpec, ...]
    stem_channels: int = 64  # output channels of the 3x3 stem convolution
    stem_norm: bool = True  # BatchNorm + activation after the stem conv (a bare conv if False)
    stem_se: bool = False  # one squeeze-and-excitation module after the stem
    block: BlockKind = "basic"  # "basic": conv-BN-act (post-activation); "preact": BN-act-conv
    activation: Activation = "relu"
    se: bool = False  # squeeze-and-excitation in every residual block
    se_reduction: int = 16  # SE hidden width = channels // se_reduction (at least 1)
    se_placement: SEPlacement = "branch"
    block_dropout: float = 0.0  # dropout probability between a block's two convolutions
    head_dropout: float = 0.0  # dropout probability before the classifier
    shortcut: ShortcutKind = "conv1x1_bn"
    cbam: bool = False  # CBAM (channel then spatial attention) on every block's branch
    cbam_reduction: int = 16  # CBAM channel-attention hidden width = channels // reduction
    transformer_layers: int = 0  # transformer encoder layers over the last feature map's pixels
    transformer_heads: int = 8  # attention heads; must divide the last stage's channels
    transformer_mlp_ratio: int = 4  # MLP hidden width = ratio x channels
    pooling: Pooling = "avg"  # global pooling before the classifier
    num_classes: int = 10
    in_channels: int = 3

    def __post_init__(self) -> None:
        problems = _validate(self)
        if problems:
            raise ValueError("invalid ArchConfig: " + "; ".join(problems))

    @property
    def final_channels(self) -> int:
        return self.stages[-1].channels

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        values = known_fields(cls, data)
        values["stages"] = tuple(
            s if isinstance(s, StageSpec) else StageSpec(**s) for s in values["stages"]
        )
        return cls(**values)

    def replace(self, **changes: Any) -> ArchConfig:
        if "stages" in changes:
            changes["stages"] = tuple(
                s if isinstance(s, StageSpec) else StageSpec(**s) for s in changes["stages"]
            )
        return replace(self, **changes)


def known_fields(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` for building the dataclass `cls`, refused if it names a field that
    `cls` does not have (a config from another version, or a typo)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid fields: {sorted(known)}")
    return dict(data)


def _validate(arch: ArchConfig) -> list[str]:
    problems: list[str] = []
    if not arch.stages:
        problems.append("at least one stage is needed")
    for i, stage in enumerate(arch.stages):
        if stage.blocks < 1:
            problems.append(f"stage {i} has {stage.blocks} blocks (needs >= 1)")
        if stage.channels < 1:
            problems.append(f"stage {i} has {stage.channels} channels (needs >= 1)")
        if stage.stride not in (1, 2):
            problems.append(f"stage {i} stride is {stage.stride} (must be 1 or 2)")
    for name, value, allowed in (
        ("activation", arch.activation, ACTIVATIONS),
        ("block", arch.block, BLOCK_KINDS),
        ("shortcut", arch.shortcut, SHORTCUT_KINDS),
        ("se_placement", arch.se_placement, SE_PLACEMENTS),
        ("pooling", arch.pooling, POOLINGS),
    ):
        if value not in allowed:
            problems.append(f"{name}={value!r} is not one of {list(allowed)}")
    for name in ("block_dropout", "head_dropout"):
        p = getattr(arch, name)
        if not 0.0 <= p < 1.0:
            problems.append(f"{name}={p} must be in [0, 1)")
    if arch.stem_channels < 1:
        problems.append(f"stem_channels={arch.stem_channels} must be >= 1")
    if arch.se_reduction < 1 or arch.cbam_reduction < 1:
        problems.append("se_reduction and cbam_reduction must be >= 1")
    if arch.transformer_layers < 0:
        problems.append("transformer_layers must be >= 0")
    if (
        arch.transformer_layers
        and arch.stages
        and arch.final_channels % arch.transformer_heads != 0
    ):
        problems.append(
            f"transformer_heads={arch.transformer_heads} does not divide the last stage's "
            f"{arch.final_channels} channels"
        )
    return problems


def stages(*specs: tuple[int, int, int]) -> tuple[StageSpec, ...]:
    """Shorthand: stages((2, 64, 1), (2, 128, 2)) -> (StageSpec(2, 64, 1), StageSpec(2, 128, 2))."""
    return tuple(StageSpec(blocks, channels, stride) for blocks, channels, stride in specs)


__all__ = [
    "ACTIVATIONS",
    "BLOCK_KINDS",
    "POOLINGS",
    "SE_PLACEMENTS",
    "SHORTCUT_KINDS",
    "ArchConfig",
    "StageSpec",
    "known_fields",
    "stages",
]
