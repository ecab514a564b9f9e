"""Any torchvision ImageNet classifier as a teacher (resnet50, resnext101_32x8d, resnet152, ...).

Weights come from `weights=FILE` (a state_dict .pth) or the torch hub cache, under the file name of the
model's torchvision weights (e.g. `<torch hub dir>/checkpoints/resnet50-11ad3fa6.pth` for
ResNet50_Weights.IMAGENET1K_V2, the DEFAULT); a file not there yet is downloaded into that cache on first
use with torch.hub's hash check, as torchvision itself would (never when offline: `--offline`). Resize, crop,
interpolation and normalisation come from the chosen torchvision weights' own evaluation transforms.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from distinit.extract.teachers.base import (
    OutputSpec,
    Teacher,
    freeze,
    frames_to_tensor,
    normalise,
    require_positive,
    resize_short_side_and_center_crop,
    resolve_device,
)
from distinit.extract.teachers.registry import register_teacher
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.weights.download import fetch_torch_hub_file
from distinit.pipeline.weights.files import RANDOM_INIT_SHA256, RANDOM_WEIGHTS, load_weights_into, torch_hub_checkpoint_path
from distinit.pipeline.weights.source import WeightsSource

logger = logging.getLogger(__name__)

# Builders that torchvision configures differently when it loads its own weights; we build without
# weights and load a file, so pass the same arguments torchvision would.
_ARGUMENTS_WITH_PRETRAINED_WEIGHTS = {
    "googlenet": {"transform_input": True, "aux_logits": True, "init_weights": False},
    "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": False},
}


def torchvision_classifier_names() -> list[str]:
    import torchvision.models

    return torchvision.models.list_models(module=torchvision.models)


def torchvision_classifier_weights(model_name: str, weights_tag: str):
    """The torchvision weights enum member (carries url, categories and eval transforms)."""
    import torchvision.models

    if model_name not in torchvision_classifier_names():
        raise ConfigError(
            f"unknown torchvision classifier {model_name!r}; choose one of: {', '.join(torchvision_classifier_names())}"
        )
    weights_enum = torchvision.models.get_model_weights(model_name)
    try:
        return weights_enum[weights_tag]
    except KeyError:
        tags = ", ".join(["DEFAULT", *weights_enum.__members__])
        raise ConfigError(f"torchvision {model_name} has no weights {weights_tag!r}; choose one of: {tags}") from None


def _interpolation_mode(torchvision_interpolation) -> str:
    mode = str(getattr(torchvision_interpolation, "value", torchvision_interpolation)).lower()
    if mode not in ("bilinear", "bicubic", "nearest"):
        raise ConfigError(f"unsupported interpolation {mode!r} in torchvision's eval transforms")
    return mode


@register_teacher("imagenet-torchvision")
class TorchvisionClassifierTeacher(Teacher):
    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        weights: str | None = None,
        model: str = "resnet50",
        weights_tag: str = "DEFAULT",
        batch_size: int = 32,
    ):
        import torchvision.models

        require_positive("batch_size", batch_size)
        torchvision_weights = torchvision_classifier_weights(model, weights_tag)
        transforms = torchvision_weights.transforms()
        self.name = "imagenet-torchvision"
        self.backend = "torchvision"
        self.model_name = model
        self.weights_tag = torchvision_weights.name
        self.weights_url = torchvision_weights.url
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.input_size = int(transforms.crop_size[0])
        self.resize_size = int(transforms.resize_size[0])
        self.interpolation = _interpolation_mode(transforms.interpolation)
        self.decode_short_side = self.resize_size
        self.center_crop = (self.resize_size, self.input_size)
        self.mean = tuple(float(value) for value in transforms.mean)
        self.std = tuple(float(value) for value in transforms.std)
        categories = tuple(torchvision_weights.meta["categories"])
        self.outputs = (
            OutputSpec(
                name="logits",
                shape=(len(categories),),
                dtype="float16",
                kind="logits",
                meaning=f"ImageNet-1k class logits of torchvision {model} ({self.weights_tag})",
                class_names=categories,
            ),
        )
        network = torchvision.models.get_model(
            model, weights=None, num_classes=len(categories), **_ARGUMENTS_WITH_PRETRAINED_WEIGHTS.get(model, {})
        )
        if weights == RANDOM_WEIGHTS:
            self.weights_sha256 = RANDOM_INIT_SHA256
        else:
            path = fetch_torch_hub_file(self.weights_url, self.name, weights=weights)
            self.weights_sha256 = load_weights_into(network, path, self.name)
        self.model = freeze(network).to(self.device)

    @classmethod
    def weights_sources(
        cls, *, weights: str | None = None, model: str = "resnet50", weights_tag: str = "DEFAULT", **_options
    ) -> tuple[WeightsSource, ...]:
        if weights == RANDOM_WEIGHTS:
            return ()
        torchvision_weights = torchvision_classifier_weights(model, weights_tag)
        description = f"torchvision {model} {torchvision_weights.name}"
        if weights is not None:
            return (WeightsSource.given(description, weights),)
        cached_path = torch_hub_checkpoint_path(torchvision_weights.url)
        return (WeightsSource.at(description, torchvision_weights.url, cached_path),)

    def _forward_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        images = frames_to_tensor(frames, self.device)
        images = resize_short_side_and_center_crop(images, *self.center_crop, self.interpolation)
        logits = self.model(normalise(images, self.mean, self.std))  # (N, 1000)
        return {"logits": logits.float().cpu().numpy()}

    def extra_config(self) -> dict:
        return {
            **super().extra_config(),
            "model": self.model_name,
            "weights_tag": self.weights_tag,
            "weights_url": self.weights_url,
            "resize_size": self.resize_size,
            "crop_size": self.input_size,
            "interpolation": self.interpolation,
        }
