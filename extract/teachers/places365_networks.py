"""The Places365 CNNs' architectures and the key layout of their authors' checkpoints.

Facts from the authors' repository (CSAILVision/places365): ResNet-18, ResNet-50 and DenseNet-161 are
torchvision's networks built with num_classes=365 (`models.__dict__[arch](num_classes=365)` in their demo).
WideResNet-18 is their own `wideresnet.py`: torchvision's ResNet-18 layout (BasicBlock, [2, 2, 2, 2], the same
parameter names) without the stem's max pooling, so the last feature map is 14x14 on a 224 crop (kept large
for class activation maps), averaged by AvgPool2d(14). The checkpoints were trained with PyTorch 0.2 under
DataParallel, so every key starts with `module.`; DenseNet-161's keys use that era's `norm.1` / `conv.1`
names (torchvision now names them `norm1` / `conv1`) and no checkpoint has BatchNorm's `num_batches_tracked`.
"""

from __future__ import annotations

import re

import torch
from torch import nn

PLACES365_CLASS_COUNT = 365
PLACES365_ARCHITECTURES = ("resnet18", "resnet50", "densenet161", "wideresnet18")

_DATA_PARALLEL_PREFIX = "module."
# "features.denseblock1.denselayer1.norm.1.weight" -> "features.denseblock1.denselayer1.norm1.weight"
_OLD_DENSE_LAYER_KEY = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.")


def build_places365_network(arch: str) -> nn.Module:
    """An untrained network of the authors' architecture `arch` with a 365-way classifier."""
    import torchvision.models

    if arch == "resnet18":
        return torchvision.models.resnet18(weights=None, num_classes=PLACES365_CLASS_COUNT)
    if arch == "resnet50":
        return torchvision.models.resnet50(weights=None, num_classes=PLACES365_CLASS_COUNT)
    if arch == "densenet161":
        return torchvision.models.densenet161(weights=None, num_classes=PLACES365_CLASS_COUNT)
    if arch == "wideresnet18":
        return wide_resnet18_places365()
    raise ValueError(f"unknown Places365 architecture {arch!r}; expected one of {PLACES365_ARCHITECTURES}")


def wide_resnet18_places365() -> nn.Module:
    """The authors' WideResNet-18: ResNet-18 whose stem keeps stride 2 only (no max pooling).

    The feature maps are twice as wide and high as ResNet-18's at every stage (hence the name; the channel
    counts are ResNet-18's). The authors average the 14x14 map with AvgPool2d(14); torchvision's adaptive
    average pooling is the same operation on the 224 crop this teacher always feeds."""
    from torchvision.models.resnet import BasicBlock, ResNet

    network = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=PLACES365_CLASS_COUNT)
    network.maxpool = nn.Identity()
    return network


def authors_checkpoint_to_state_dict(checkpoint_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' `state_dict` in today's torchvision key names: DataParallel's prefix dropped, DenseNet's old
    layer names renamed. A plain dict on purpose: without the file's version metadata, BatchNorm fills in
    the `num_batches_tracked` counters that PyTorch 0.2 never saved (they do not change inference)."""
    converted = {}
    for key, value in checkpoint_state.items():
        if key.startswith(_DATA_PARALLEL_PREFIX):
            key = key[len(_DATA_PARALLEL_PREFIX) :]
        converted[_OLD_DENSE_LAYER_KEY.sub(r"\1\2.", key)] = value
    return converted


def state_dict_mismatch(network: nn.Module, state_dict: dict[str, torch.Tensor]) -> str:
    """What keeps `state_dict` from loading into `network`, in a few words ("" when it fits)."""
    expected = {
        key: value.shape for key, value in network.state_dict().items() if not key.endswith("num_batches_tracked")
    }
    given = {key: getattr(value, "shape", None) for key, value in state_dict.items()}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected) - {key for key in given if key.endswith("num_batches_tracked")})
    wrong_shapes = sorted(key for key in set(expected) & set(given) if tuple(given[key] or ()) != tuple(expected[key]))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shapes)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    return "; ".join(problems)
