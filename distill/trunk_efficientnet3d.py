"""Registers the `efficientnet_lite0_3d` student: EfficientNet-Lite0 inflated to 3D (distill/efficientnet3d.py).

Its trunk is built by I3D inflation of the 2D architecture (depthwise convs 3 frames deep, the rest 1),
so the same network can start from scratch, from inflated ImageNet weights (`--init
inflated:efficientnet_lite0`) or from DistInit. Full width only; `in_channels=2` swaps in a 2-channel
stem for optical flow. The builder imports its module lazily, so listing students never imports the
optional `efficientnet_lite_pytorch` package.
"""

from __future__ import annotations

import torch.nn as nn

from distinit.distill.students import register_student

# Five stride-2 'SAME' stages fixed for 224 pixels: below 32 pixels the last one has nothing left to convolve.
EFFICIENTNET_LITE0_3D_MIN_SIZE = 32


@register_student("efficientnet_lite0_3d", torchvision_classifier="_fc", min_size=EFFICIENTNET_LITE0_3D_MIN_SIZE)
def efficientnet_lite0_3d_trunk(width: str, in_channels: int) -> nn.Module:
    from distinit.distill.efficientnet3d import build_efficientnet_lite0_3d_trunk

    return build_efficientnet_lite0_3d_trunk(width, in_channels)
