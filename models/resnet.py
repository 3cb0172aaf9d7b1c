"""The ResNet family: every network is built from one `ArchConfig`.

Layout (N = batch, C = channels):
    stem:   conv3x3(in -> stem_channels) [+ BN + act] [+ SE]
    stages: residual blocks, basic (post-activation) or pre-activation
    head:   [BN + act for pre-activation nets] -> [transformer over pixels] -> global pool
            -> dropout -> linear
"""

from __future__ import annotations

import torch
from torch import nn

from models.arch import ArchConfig


def make_activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "mish":
        return nn.Mish(inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    if name == "elu":
        return nn.ELU(inplace=True)
    if name == "gelu":
        return nn.GELU()
    raise ValueError(f"unknown activation {name!r}")


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


class SqueezeExcite(nn.Module):
    """Channel gating from globally pooled features (Hu et al.), 1x1 convs with bias."""

    def __init__(self, channels: int, reduction: int, activation: str) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.reduce = nn.Conv2d(channels, hidden, 1, bias=True)
        self.act = make_activation(activation)
        self.expand = nn.Conv2d(hidden, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = self.expand(self.act(self.reduce(gate)))
        return x * torch.sigmoid(gate)


class CBAM(nn.Module):
    """Convolutional block attention (Woo et al.): channel gate, then a 7x7 spatial gate."""

    def __init__(self, channels: int, reduction: int, activation: str) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            make_activation(activation),
            nn.Conv2d(hidden, channels, 1, bias=False),
        )
        self.spatial = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_gate = self.mlp(x.mean((2, 3), keepdim=True)) + self.mlp(
            x.amax((2, 3), keepdim=True)
        )
        x = x * torch.sigmoid(channel_gate)
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


def make_shortcut(kind: str, in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The projection used when a block changes channels or resolution."""
    if kind == "conv1x1_bn":
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    if kind == "conv1x1":
        return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
    if kind == "conv3x3_bn":
        return nn.Sequential(
            conv3x3(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
        )
    raise ValueError(f"unknown shortcut {kind!r}")


class ResidualBlock(nn.Module):
    """A two-conv residual block, post-activation ("basic") or pre-activation ("preact").

    basic:  out = act(BN(conv(act(BN(conv(x))))) [SE/CBAM] + shortcut(x))
    preact: p = act(BN(x)); out = conv(drop(act(BN(conv(p))))) [SE/CBAM] + shortcut(p)
    The pre-activation shortcut reads the pre-activated input `p` (also when it is the
    identity), as in the seed report that uses this block.
    """

    def __init__(self, arch: ArchConfig, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.preact = arch.block == "preact"
        self.norm_in = nn.BatchNorm2d(in_channels) if self.preact else nn.Identity()
        self.act_in = make_activation(arch.activation) if self.preact else nn.Identity()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.act1 = make_activation(arch.activation)
        self.dropout = nn.Dropout(arch.block_dropout) if arch.block_dropout > 0 else nn.Identity()
        self.conv2 = conv3x3(out_channels, out_channels)
        # Post-activation blocks normalize after conv2; pre-activation blocks leave that
        # to the next block's norm_in (or the head's final norm).
        self.norm2 = nn.Identity() if self.preact else nn.BatchNorm2d(out_channels)
        self.branch_se = (
            SqueezeExcite(out_channels, arch.se_reduction, arch.activation)
            if arch.se and arch.se_placement == "branch"
            else nn.Identity()
        )
        self.cbam = (
            CBAM(out_channels, arch.cbam_reduction, arch.activation) if arch.cbam else nn.Identity()
        )
        needs_projection = stride != 1 or in_channels != out_channels
        self.shortcut = (
            make_shortcut(arch.shortcut, in_channels, out_channels, stride)
            if needs_projection
            else nn.Identity()
        )
        self.act_out = nn.Identity() if self.preact else make_activation(arch.activation)
        self.output_se = (
            SqueezeExcite(out_channels, arch.se_reduction, arch.activation)
            if arch.se and arch.se_placement == "output"
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act_in(self.norm_in(x))
        out = self.dropout(self.act1(self.norm1(self.conv1(x))))
        out = self.norm2(self.conv2(out))
        out = self.cbam(self.branch_se(out))
        return self.output_se(self.act_out(out + self.shortcut(x)))


class PixelTransformer(nn.Module):
    """Transformer encoder layers (post-LayerNorm, ReLU MLP) over a feature map's pixels."""

    def __init__(self, channels: int, layers: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                channels,
                heads,
                dim_feedforward=mlp_ratio * channels,
                dropout=0.0,
                activation="relu",
                batch_first=True,
                norm_first=False,
            )
            for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (N, H*W, C)
        for layer in self.layers:
            tokens = layer(tokens)
        return tokens.transpose(1, 2).reshape(n, c, h, w)


class ResNet(nn.Module):
    def __init__(self, arch: ArchConfig, init_weights: bool = True) -> None:
        super().__init__()
        self.arch = arch
        stem: list[nn.Module] = [conv3x3(arch.in_channels, arch.stem_channels)]
        if arch.stem_norm:
            stem += [nn.BatchNorm2d(arch.stem_channels), make_activation(arch.activation)]
        if arch.stem_se:
            stem.append(SqueezeExcite(arch.stem_channels, arch.se_reduction, arch.activation))
        self.stem = nn.Sequential(*stem)

        self.stages = nn.ModuleList()
        in_channels = arch.stem_channels
        for spec in arch.stages:
            blocks = []
            for i in range(spec.blocks):
                stride = spec.stride if i == 0 else 1
                blocks.append(ResidualBlock(arch, in_channels, spec.channels, stride))
                in_channels = spec.channels
            self.stages.append(nn.Sequential(*blocks))

        final = arch.final_channels
        self.final_norm = (
            nn.Sequential(nn.BatchNorm2d(final), make_activation(arch.activation))
            if arch.block == "preact"
            else nn.Identity()
        )
        self.transformer = (
            PixelTransformer(
                final, arch.transformer_layers, arch.transformer_heads, arch.transformer_mlp_ratio
            )
            if arch.transformer_layers
            else nn.Identity()
        )
        self.head_dropout = (
            nn.Dropout(arch.head_dropout) if arch.head_dropout > 0 else nn.Identity()
        )
        pooled = final * (2 if arch.pooling == "avgmax" else 1)
        self.classifier = nn.Linear(pooled, arch.num_classes)
        if init_weights:  # counting on the meta device needs shapes, not values
            self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        if self.arch.pooling == "avg":
            return x.mean((2, 3))
        if self.arch.pooling == "max":
            return x.amax((2, 3))
        return torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map, (N, final_channels, H, W), before pooling."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.transformer(self.final_norm(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head_dropout(self.pool(self.forward_features(x))))
