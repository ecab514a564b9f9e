"""I3D inflation baselines for `--init inflated:<spec>`: ImageNet 2D networks turned into 3D trunks.

    backbone = build_inflated_backbone("resnet18")            # resnet18_3d carrying torchvision ResNet-18's weights
    backbone = build_inflated_backbone("efficientnet_lite0")  # efficientnet_lite0_3d, the pip package's weights
    features = backbone.features(clips)                       # (B, feature_dim); no heads

Specs: `<model>` (its default ImageNet weights), `<model>@FILE` (a state_dict .pth) or `<model>:random`
(random 2D weights, for tests). ResNet-18's default is torchvision's IMAGENET1K_V1 file in the torch hub
cache, downloaded there on first use with its hash checked (offline, `--offline`: the error names the path
and the URL). EfficientNet-Lite0's ships with pip.

Each 2D network inflates into a student built as its own 3D counterpart, so a clip repeating one frame
gives the 2D network's pooled features on that frame (I3D's "boring video" property, exact up to float
rounding; tests check both sources to 1e-5). ResNet-18 -> `resnet18_3d` (distill/trunk_resnet18_3d.py:
ResNet-18's layout with its stem max-pool, convs 3 frames deep, 1x1 downsamples 1 frame, time strided by 2 in
layers 2-4, time padded by repeating border frames): the trunk has torchvision resnet18's key names, so the
mapping drops `fc.*` and inflates each conv (2D weights repeated over time, divided by t); batch norms are
copied. torchvision's `r3d_18` stays a student of its own but is no inflation target: it has no max-pool and
pads time with zeros, so ResNet-18's weights in it do not compute ResNet-18's features.
The generic machinery lives in `pipeline.weights.inflation`, re-exported here.

Each source keeps its own input normalisation (the inflated network equals its 2D source only on input
normalised as that source was trained): ResNet-18 torchvision's ImageNet mean/std, EfficientNet-Lite0
(x - 0.498) / 0.502. The backbone records it as `input_normalisation`, and eval normalises with it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

import torch
import torch.nn as nn

from distinit.pipeline.weights.inflation import inflate_state_dict
from distinit.pipeline.clips.normalisation import Normalisation
from distinit.pipeline.weights.lite0 import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD
from distinit.pipeline.weights.files import RANDOM_INIT_SHA256, RANDOM_WEIGHTS, load_weights_into
from distinit.pipeline.weights.download import fetch_torch_hub_file
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.init_sources import split_inflated_spec

if TYPE_CHECKING:
    from distinit.distill.students import DistillStudent

logger = logging.getLogger(__name__)

RESNET18_LABEL = "resnet18 (ImageNet weights to inflate)"
# torchvision's ImageNet classifiers, ResNet18_Weights.IMAGENET1K_V1.transforms() (a test checks they agree).
IMAGENET_NORMALISATION = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
EFFICIENTNET_LITE_NORMALISATION = Normalisation(EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD)


def load_resnet18_2d(weights: str | os.PathLike | None = None) -> tuple[nn.Module, str]:
    """(torchvision resnet18, weights sha256): the torch hub cache's IMAGENET1K_V1 file (downloaded on first use),
    a FILE, or "random"."""
    import torchvision.models

    model = torchvision.models.resnet18(weights=None)
    if weights == RANDOM_WEIGHTS:
        return model, RANDOM_INIT_SHA256
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    path = fetch_torch_hub_file(url, RESNET18_LABEL, weights=weights)
    return model, load_weights_into(model, path, RESNET18_LABEL)


def inflate_resnet18_to_resnet18_3d(state_dict_2d: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision resnet18 state_dict -> a full resnet18_3d trunk state_dict (the same keys minus `fc.*`)."""
    from distinit.distill.trunk_resnet18_3d import resnet18_3d_trunk

    with torch.device("meta"):  # only the template's shapes are needed: skip allocating and initialising 33M weights
        template = resnet18_3d_trunk("full", 3).state_dict()
    unexpected = sorted(key for key in state_dict_2d if key not in template and not key.startswith("fc."))
    if unexpected:
        raise ConfigError(
            f"ResNet-18 weights hold an unexpected tensor {unexpected[0]!r}; pass a torchvision resnet18 state_dict"
        )
    trunk_2d = {key: value for key, value in state_dict_2d.items() if not key.startswith("fc.")}
    return inflate_state_dict(trunk_2d, template)


def _resnet18_trunk_state(weights: str | None) -> tuple[dict[str, torch.Tensor], str]:
    model, sha256 = load_resnet18_2d(weights)
    return inflate_resnet18_to_resnet18_3d(model.state_dict()), sha256


def _efficientnet_lite0_trunk_state(weights: str | None) -> tuple[dict[str, torch.Tensor], str]:
    from distinit.distill.efficientnet3d import inflated_efficientnet_lite0_3d_state_and_sha256

    return inflated_efficientnet_lite0_3d_state_and_sha256(weights)


@dataclass(frozen=True)
class InflatedSource:
    student: str  # the registered 3D student the 2D network becomes
    first_conv_key: str  # that trunk's input conv weight (given 2 channels for optical flow)
    temporal_padding: str  # how its convs pad time ("replicate": what keeps a still clip exact)
    trunk_state: Callable[[str | None], tuple[dict[str, torch.Tensor], str]]  # weights -> (3D state, 2D sha256)
    input_normalisation: Normalisation  # what the 2D network was trained on (random weights keep it: a control)


INFLATED_SOURCES = {
    "resnet18": InflatedSource(
        "resnet18_3d", "conv1.weight", "replicate", _resnet18_trunk_state, IMAGENET_NORMALISATION,
    ),
    "efficientnet_lite0": InflatedSource(
        "efficientnet_lite0_3d", "_conv_stem.weight", "replicate", _efficientnet_lite0_trunk_state,
        EFFICIENTNET_LITE_NORMALISATION,
    ),
}


def parse_inflated_spec(spec: str) -> tuple[str, str | None]:
    """"resnet18" -> ("resnet18", None); "resnet18:random" -> (..., "random"); "resnet18@FILE" -> (..., FILE)."""
    name, weights = split_inflated_spec(spec)
    if name not in INFLATED_SOURCES or weights == "":
        raise ConfigError(
            f"unknown inflated model {spec!r}; known: {', '.join(INFLATED_SOURCES)} "
            f"(add ':{RANDOM_WEIGHTS}' for random 2D weights or '@FILE' for a weights file)"
        )
    return name, weights


def fetch_2d_weights(spec: str) -> str:
    """Fetch (into its cache) and load the 2D weights `inflated:<spec>` starts from, as eval does; returns their
    sha256 (for `distinit teachers --fetch`, on a machine with internet)."""
    name, weights = parse_inflated_spec(spec)
    return INFLATED_SOURCES[name].trunk_state(weights)[1]


def cross_modality_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB input conv's weights for `in_channels` inputs: the mean over RGB, repeated (TSN's flow init)."""
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, *([1] * (weight.dim() - 2)))


def build_inflated_backbone(
    spec: str, *, student: str | None = None, weights: str | os.PathLike | None = None, in_channels: int = 3
) -> "DistillStudent":
    """`--init inflated:<spec>` -> a full-width DistillStudent without heads, its trunk the inflated 2D weights.

    `student`, when given, must be the student the spec inflates into; `weights` is the same as `@FILE`.
    `in_channels=2` gives a flow trunk whose first conv averages the RGB weights. The returned module's
    `inflation` attribute (a JSON-ready dict) records the source and the 2D weights' sha256; its
    `input_normalisation` is the 2D network's own (None for flow)."""
    from distinit.distill.students import create_student  # late: distill.students imports this package's student

    name, spec_weights = parse_inflated_spec(spec)
    if weights is not None and spec_weights is not None:
        raise ConfigError(f"inflated model {spec!r} names its weights and weights= was given too; pass one")
    weights = str(weights) if weights is not None else spec_weights
    source = INFLATED_SOURCES[name]
    if student is not None and student != source.student:
        raise ConfigError(
            f"inflated:{spec} inflates into a {source.student}; --student {student} cannot take it "
            f"(drop --student or pass {source.student})"
        )
    trunk_state, sha256 = source.trunk_state(weights)
    if in_channels != 3:
        trunk_state[source.first_conv_key] = cross_modality_weight(trunk_state[source.first_conv_key], in_channels)
    normalisation = source.input_normalisation if in_channels == 3 else None
    backbone = create_student(source.student, (), width="full", in_channels=in_channels,
                              input_normalisation=normalisation)
    backbone.trunk.load_state_dict(trunk_state, strict=True)
    backbone.inflation = {
        "source": name,
        "student": source.student,
        "weights": weights or "default",
        "weights_sha256": sha256,
        "temporal_padding": source.temporal_padding,
        "in_channels": in_channels,
        "input_normalisation": None if normalisation is None else normalisation.to_dict(),
    }
    logger.info("inflated %s (%s weights, sha256 %s) into %s", name, weights or "default", sha256[:12], source.student)
    return backbone
