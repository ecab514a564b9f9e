"""Student trunks: torchvision's video backbones up to and including global pooling, minus the classifier.

Each trunk keeps torchvision's submodule names, so a full-width trunk's state_dict keys are exactly those
of `torchvision.models.video.<name>()` without `fc.*` (or S3D's `classifier.*`) — what `distill/export.py`
relies on. One forward pass returns both the last feature map (spatial heads) and the pooled features
(classifier heads), so heads never run the trunk twice.

`width="tiny"` builds the same family from the same torchvision blocks with 1/8 of the channels and one
block per stage — for tests and the 2-core demo; such trunks cannot load full-size weights.

`resnet18_3d` (distill/trunk_resnet18_3d.py) and `efficientnet_lite0_3d` are inflated 2D ImageNet networks,
not torchvision video models; they reuse this module's TrunkOutput, widths and initialisation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
from torchvision.models.video import s3d as torchvision_s3d
from torchvision.models.video.resnet import (
    BasicBlock,
    Conv2Plus1D,
    Conv3DNoTemporal,
    Conv3DSimple,
    VideoResNet,
)

from distinit.pipeline.errors import ConfigError

FULL_STAGE_WIDTHS = (64, 128, 256, 512)
FULL_STAGE_BLOCKS = (2, 2, 2, 2)
TINY_STAGE_WIDTHS = (8, 16, 32, 64)
TINY_STAGE_BLOCKS = (1, 1, 1, 1)
R2PLUS1D_STEM_MIDDLE_CHANNELS = 45  # torchvision's R2Plus1dStem, for 64 output channels
WIDTHS = ("full", "tiny")


class TrunkOutput(NamedTuple):
    feature_map: torch.Tensor  # (B, D, T', h, w): the last stage's output, before pooling
    pooled: torch.Tensor  # (B, D): global average of feature_map


def basic_stem(in_channels: int, out_channels: int) -> nn.Sequential:
    """torchvision's BasicStem (R3D, MC3) with a free number of input and output channels."""
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def r2plus1d_stem(in_channels: int, out_channels: int) -> nn.Sequential:
    """torchvision's R2Plus1dStem (spatial 1x7x7 then temporal 3x1x1) with free channel counts."""
    middle = max(1, round(R2PLUS1D_STEM_MIDDLE_CHANNELS * out_channels / FULL_STAGE_WIDTHS[0]))
    return nn.Sequential(
        nn.Conv3d(in_channels, middle, kernel_size=(1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
        nn.BatchNorm3d(middle),
        nn.ReLU(inplace=True),
        nn.Conv3d(middle, out_channels, kernel_size=(3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class VideoResNetTrunk(nn.Module):
    """torchvision's VideoResNet (stem, layer1..4, avgpool) without fc, with free widths and depths."""

    # torchvision's own stage builder; it only reads and updates self.inplanes.
    _make_layer = VideoResNet._make_layer

    def __init__(
        self,
        conv_makers: tuple[type[nn.Module], ...],
        stem: nn.Sequential,
        stage_widths: tuple[int, ...] = FULL_STAGE_WIDTHS,
        stage_blocks: tuple[int, ...] = FULL_STAGE_BLOCKS,
    ):
        super().__init__()
        self.stem = stem
        self.inplanes = stage_widths[0]
        strides = (1, 2, 2, 2)
        for index, (conv_maker, width, blocks, stride) in enumerate(zip(conv_makers, stage_widths, stage_blocks, strides)):
            setattr(self, f"layer{index + 1}", self._make_layer(BasicBlock, conv_maker, width, blocks, stride=stride))
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.feature_dim = stage_widths[-1] * BasicBlock.expansion
        initialise_like_torchvision(self)

    def forward(self, clips: torch.Tensor) -> TrunkOutput:
        features = self.stem(clips)  # (B, C, T, H, W) -> (B, w0, T, H/2, W/2)
        features = self.layer4(self.layer3(self.layer2(self.layer1(features))))
        return TrunkOutput(features, self.avgpool(features).flatten(1))


def initialise_like_torchvision(trunk: nn.Module) -> None:
    """VideoResNet.__init__'s initialisation, so a trunk starts where torchvision's model would (batch-norm
    statistics reset too: a trunk given storage by `to_empty` has none yet)."""
    for module in trunk.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm3d):
            module.reset_running_stats()
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class S3DTrunk(nn.Module):
    """torchvision's S3D `features` plus a global average pool (feature_dim 1024).

    torchvision's S3D pools with a fixed 2x7x7 window (then averages the classifier's outputs), which
    equals a global average for its 16x224x224 inputs and fails on smaller ones; the adaptive pool here
    agrees there and also works for 112-pixel clips. Needs at least 5 frames of at least 17 pixels.
    """

    def __init__(self, in_channels: int = 3):
        super().__init__()
        self.features = torchvision_s3d(weights=None).features
        if in_channels != 3:
            first = self.features[0][0][0]  # TemporalSeparableConv -> Conv3dNormActivation -> Conv3d
            self.features[0][0][0] = nn.Conv3d(
                in_channels, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False
            )
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.feature_dim = 1024

    def forward(self, clips: torch.Tensor) -> TrunkOutput:
        features = self.features(clips)  # (B, 1024, T/8, H/32, W/32)
        return TrunkOutput(features, self.avgpool(features).flatten(1))


def stage_shape(width: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(stage widths, blocks per stage) of a ResNet-18-family trunk at `width` ("full" or "tiny")."""
    if width not in WIDTHS:
        raise ConfigError(f"student width {width!r} is unknown; use one of {', '.join(WIDTHS)}")
    return (FULL_STAGE_WIDTHS, FULL_STAGE_BLOCKS) if width == "full" else (TINY_STAGE_WIDTHS, TINY_STAGE_BLOCKS)


def r2plus1d_18_trunk(width: str, in_channels: int) -> VideoResNetTrunk:
    widths, blocks = stage_shape(width)
    return VideoResNetTrunk((Conv2Plus1D,) * 4, r2plus1d_stem(in_channels, widths[0]), widths, blocks)


def r3d_18_trunk(width: str, in_channels: int) -> VideoResNetTrunk:
    widths, blocks = stage_shape(width)
    return VideoResNetTrunk((Conv3DSimple,) * 4, basic_stem(in_channels, widths[0]), widths, blocks)


def mc3_18_trunk(width: str, in_channels: int) -> VideoResNetTrunk:
    widths, blocks = stage_shape(width)
    conv_makers = (Conv3DSimple, Conv3DNoTemporal, Conv3DNoTemporal, Conv3DNoTemporal)
    return VideoResNetTrunk(conv_makers, basic_stem(in_channels, widths[0]), widths, blocks)


def s3d_trunk(width: str, in_channels: int) -> S3DTrunk:
    stage_shape(width)
    if width != "full":
        raise ConfigError(
            "student s3d has no tiny width; use --width full or a tiny r2plus1d_18/r3d_18/mc3_18/resnet18_3d"
        )
    return S3DTrunk(in_channels)
