"""Registers the `resnet18_3d` student: torchvision's ResNet-18, inflated to 3D so that ResNet-18 fits it exactly.

    trunk = resnet18_3d_trunk("full", in_channels=3)   # the student's trunk, random weights
    model = resnet18_3d_classifier()                    # torchvision's resnet18 inflated, fc included

Layout (torchvision's ResNet-18, every layer in 3D): stem conv 3x7x7 stride (1, 2, 2), BN, ReLU, max-pool
(1, 3, 3) stride (1, 2, 2) padding (0, 1, 1); four stages of BasicBlocks, 3x3x3 convs, 1x1x1 downsample,
widths 64/128/256/512; layers 2-4 stride time by 2 as r3d_18 does (8 frames -> 1). Every 3-frame conv pads
time by repeating the border frames (pipeline.weights.inflation.InflatedConv3d), so a clip that repeats one frame
stays constant in time through every layer, temporal strides included, and its pooled features are
ResNet-18's on that frame (`--init inflated:resnet18`). torchvision's `r3d_18` is not this network: it
has no max-pool (its layer1 runs at 1/2 resolution, ResNet-18's at 1/4) and pads time with zeros.

The trunk is built by passing the 2D layout (torchvision's own BasicBlock) through the generic inflater
(pipeline.weights.inflation), so its key names are torchvision resnet18's without `fc.*` and its 3D layers are
exactly what the inflater makes of ResNet-18 (`resnet18_3d_classifier`, what an export loads into).
`width="tiny"` keeps the layout with the other trunks' tiny widths (8/16/32/64, one block per stage).
Random weights start as torchvision initialises a ResNet (Kaiming fan-out, BN 1/0). The max-pool makes it
cheaper than r3d_18 at the same parameter count: 5.7 against 20.4 GMACs on an 8x112x112 clip.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torchvision.models
from torchvision.models.resnet import BasicBlock, conv1x1

from distinit.pipeline.weights.inflation import Inflater, spatial_time_kernel
from distinit.distill.students import register_student
from distinit.distill.trunks import TrunkOutput, initialise_like_torchvision, stage_shape

RESNET18_3D_TIME_KERNEL = 3  # frames of every spatial conv (stem and 3x3); 1x1 downsamples stay 1 frame


def resnet18_3d_time_stride(name: str, conv: nn.Conv2d) -> int:
    """Time stride 2 where a stage halves space (layer2-4's first conv and downsample, as in r3d_18); the stem
    keeps every frame. With replicate padding a still clip stays still at any stride, so this costs no exactness."""
    return 2 if name.startswith("layer") and max(conv.stride) == 2 else 1


def resnet18_3d_inflater() -> Inflater:
    """How ResNet-18 becomes resnet18_3d: 3-frame spatial convs, the time strides above, replicate padding."""
    return Inflater(spatial_time_kernel(RESNET18_3D_TIME_KERNEL), resnet18_3d_time_stride, "replicate")


def resnet18_2d_layout(stage_widths: tuple[int, ...], stage_blocks: tuple[int, ...], in_channels: int) -> nn.Sequential:
    """torchvision's resnet18 up to layer4 (no avgpool, fc), with free widths and depths and its key names."""
    stem_width = stage_widths[0]
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        conv1=nn.Conv2d(in_channels, stem_width, kernel_size=7, stride=2, padding=3, bias=False),
        bn1=nn.BatchNorm2d(stem_width),
        relu=nn.ReLU(inplace=True),
        maxpool=nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    )
    inplanes = stem_width
    for index, (width, blocks) in enumerate(zip(stage_widths, stage_blocks)):
        stride = 1 if index == 0 else 2
        downsample = None
        if stride != 1 or inplanes != width:  # torchvision ResNet._make_layer's condition
            downsample = nn.Sequential(conv1x1(inplanes, width, stride), nn.BatchNorm2d(width))
        stage = [BasicBlock(inplanes, width, stride, downsample)]
        stage += [BasicBlock(width, width) for _ in range(blocks - 1)]
        layers[f"layer{index + 1}"] = nn.Sequential(*stage)
        inplanes = width
    return nn.Sequential(layers)


class ResNet18Trunk3D(nn.Module):
    """conv1, bn1, relu, maxpool, layer1..4 (torchvision resnet18's names) and a global average pool."""

    def __init__(self, stage_widths: tuple[int, ...], stage_blocks: tuple[int, ...], in_channels: int):
        super().__init__()
        device = torch.get_default_device()  # "meta" when a caller wants only the shapes
        # The 2D layout lends its structure, not its weights: build and inflate it on the meta device (no memory,
        # no initialisation), then give the 3D layers storage and torchvision's initialisation once.
        with torch.device("meta"):
            inflated = resnet18_3d_inflater().inflate(resnet18_2d_layout(stage_widths, stage_blocks, in_channels))
        for name, module in inflated.named_children():
            self.add_module(name, module)
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.feature_dim = stage_widths[-1] * BasicBlock.expansion
        self.to_empty(device=device)
        initialise_like_torchvision(self)

    def forward(self, clips: torch.Tensor) -> TrunkOutput:
        features = self.maxpool(self.relu(self.bn1(self.conv1(clips))))  # (B, C, T, H, W) -> (B, w0, T, H/4, W/4)
        features = self.layer4(self.layer3(self.layer2(self.layer1(features))))  # (B, w3, ceil(T/8), H/32, W/32)
        return TrunkOutput(features, self.avgpool(features).flatten(1))


@register_student("resnet18_3d")
def resnet18_3d_trunk(width: str, in_channels: int) -> ResNet18Trunk3D:
    widths, blocks = stage_shape(width)
    return ResNet18Trunk3D(widths, blocks, in_channels)


def resnet18_3d_classifier(num_classes: int = 1000, in_channels: int = 3) -> nn.Module:
    """torchvision's resnet18 (random weights) inflated into resnet18_3d's layout, its fc kept: the model an
    exported full-width resnet18_3d trunk loads into (every key but fc.*), as torchvision models do for the others."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return resnet18_3d_inflater().inflate(model)
