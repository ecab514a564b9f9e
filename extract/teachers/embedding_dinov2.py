"""`dinov2`: DINOv2 image features through timm, for feature distillation (self-supervised features, as MVD-style
work distils from image models).

Options: `model` (a timm model with hub weights, default vit_small_patch14_dinov2.lvd142m, 384-d),
`image_size` (default 224), `batch_size`. The embedding is timm's pooled pre-logits features,
`forward_head(forward_features(x), pre_logits=True)`: for DINOv2 the CLS token after the final norm.

image_size: timm's data config for these weights says 518 (the last, high-resolution phase of DINOv2's
training), but DINOv2's own linear and k-NN evaluations run at 224, and 518 costs about six times the compute
per frame (1369 patches against 256) for frames the student sees at 112 pixels. So 224 by default, with timm
resampling the position embeddings as it loads; `image_size=0` takes the data config's size (518).
The view is DINOv2's evaluation transform (make_classification_eval_transform in its dinov2/data/transforms.py):
resize the short side to 256 and centre-crop 224, bicubic, ImageNet mean/std. At another image_size S the
same proportions: short side round(S * 256 / 224), crop S (not timm's crop_pct of 1.0, which belongs to the
518-px config and would show the network the whole short side).
Weights: the model's file from the Hugging Face hub (cached by huggingface_hub, downloaded on first use
unless offline), `weights=FILE` (a state_dict timm loads for this model: timm's or DINOv2's own release),
or `weights=random`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from distinit.extract.teachers.base import Teacher, freeze, frames_to_tensor, require_positive, resolve_device
from distinit.extract.teachers.embedding_hub import (
    embedding_output, embedding_view, fetch_hub_file, hub_weights_sources, load_failure,
)
from distinit.extract.teachers.registry import register_teacher
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.weights.files import RANDOM_INIT_SHA256, RANDOM_WEIGHTS, given_weights_file
from distinit.pipeline.weights.source import WeightsSource

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "vit_small_patch14_dinov2.lvd142m"
DEFAULT_IMAGE_SIZE = 224
# DINOv2's evaluation view: short side 256 for a 224 crop (the ImageNet convention, crop fraction 0.875), bicubic.
EVAL_RESIZE_SIZE, EVAL_CROP_SIZE = 256, 224
EVAL_INTERPOLATION = "bicubic"
# timm's hub file names, in the order timm itself tries them.
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm():
    try:
        import timm
    except ImportError:
        raise DistinitError("the dinov2 teacher needs timm; pip install timm (the `embeddings` extra)") from None
    return timm


def hub_location(model: str) -> tuple[str, tuple[str, ...]]:
    """(hub repository, file names to try) of a timm model's pretrained weights."""
    timm = _timm()
    if not timm.is_model(model):
        raise ConfigError(f"timm has no model {model!r}; DINOv2's are: {', '.join(timm.list_models('*dinov2*', pretrained=True))}")
    config = timm.models.get_pretrained_cfg(model)
    repo_id = getattr(config, "hf_hub_id", None) if config is not None else None
    if not repo_id:
        raise ConfigError(f"timm model {model!r} has no weights on the Hugging Face hub; name its tag (e.g. {DEFAULT_MODEL}) or pass weights=FILE")
    named_file = getattr(config, "hf_hub_filename", None)
    return repo_id, (named_file,) if named_file else _HUB_FILES


def eval_resize_size(crop_size: int) -> int:
    """The short side DINOv2's evaluation resizes to before centre-cropping `crop_size`: 256 for 224."""
    return int(round(crop_size * EVAL_RESIZE_SIZE / EVAL_CROP_SIZE))


@register_teacher("dinov2")
class Dinov2Teacher(Teacher):
    def __init__(self, *, device: str | torch.device = "cpu", weights: str | None = None, model: str = DEFAULT_MODEL,
                 image_size: int = DEFAULT_IMAGE_SIZE, batch_size: int = 32):
        require_positive("batch_size", batch_size)
        if image_size < 0:
            raise ConfigError(f"teacher option image_size={image_size} must be positive (or 0: timm's data config)")
        if "dinov2" not in model:
            # The view below is DINOv2's evaluation transform (ImageNet statistics, 256/224): another model's would differ.
            raise ConfigError(f"teacher dinov2: model={model!r} is not a DINOv2 model; choose a timm "
                              "vit_*_patch14_dinov2* model (e.g. vit_base_patch14_dinov2.lvd142m)")
        timm = _timm()
        repo_id, filenames = hub_location(model)
        self.name = self.kind = "dinov2"
        self.backend = "timm"
        self.model_name = model
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        size_option = {"img_size": int(image_size)} if image_size else {}
        if weights == RANDOM_WEIGHTS:
            network = timm.create_model(model, pretrained=False, num_classes=0, **size_option)
            self.weights_sha256 = RANDOM_INIT_SHA256
        else:
            path = given_weights_file(weights, self.name) if weights is not None else fetch_hub_file(self.name, repo_id, filenames)
            try:
                # timm's own loader from a local file: it converts DINOv2's release format and resamples the
                # position embeddings to image_size.
                network = timm.create_model(model, pretrained=True, num_classes=0,
                                            pretrained_cfg_overlay={"file": str(path)}, **size_option)
            except (RuntimeError, ValueError, KeyError, OSError) as error:
                raise load_failure(self.name, path, error) from None
            logger.info("teacher %s loaded timm %s weights from %s", self.name, model, path)
            self.weights_sha256 = sha256_file(path)
        self.input_size = int(image_size) or int(timm.data.resolve_data_config({}, model=network)["input_size"][-1])
        self.resize_size = eval_resize_size(self.input_size)
        self.decode_short_side = self.resize_size
        self.center_crop = (self.resize_size, self.input_size)
        self.interpolation = EVAL_INTERPOLATION
        # DINOv2 normalises with ImageNet's statistics (its IMAGENET_DEFAULT_MEAN/STD, the same numbers as timm's).
        self.mean = tuple(float(value) for value in timm.data.IMAGENET_DEFAULT_MEAN)
        self.std = tuple(float(value) for value in timm.data.IMAGENET_DEFAULT_STD)
        self.outputs = (embedding_output(int(network.num_features), (
            f"pooled pre-logits features of timm {model} at {self.input_size} px (the CLS token after the final "
            "norm for DINOv2), unnormalised")),)
        self.model = freeze(network).to(self.device)

    @classmethod
    def weights_sources(cls, *, weights: str | None = None, model: str = DEFAULT_MODEL,
                        **_options) -> tuple[WeightsSource, ...]:
        description = f"timm {model}"
        if weights is not None:
            return hub_weights_sources(description, "", (), weights)
        return hub_weights_sources(description, *hub_location(model), weights)

    def _forward_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        images = embedding_view(
            frames_to_tensor(frames, self.device), center_crop=self.center_crop, size=self.input_size,
            interpolation=self.interpolation, mean=self.mean, std=self.std,
        )
        tokens = self.model.forward_features(images)  # (N, 1 + patches, D)
        return {"embedding": self.model.forward_head(tokens, pre_logits=True).float().cpu().numpy()}  # (N, D)

    def extra_config(self) -> dict:
        return {
            **super().extra_config(), "model": self.model_name, "resize_size": self.resize_size,
            "crop_size": self.input_size, "interpolation": self.interpolation,
        }
