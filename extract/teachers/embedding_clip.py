"""`clip`: CLIP image embeddings through open_clip, for feature distillation (as UMT and MVD distil from CLIP).

Options: `model` (an open_clip model name, default ViT-B-32), `pretrained` (one of that model's open_clip
tags, default laion2b_s34b_b79k), `batch_size`. The default tag: of the two ViT-B-32 weights most used, the
LAION-2B one gives the better image features at the same cost (ImageNet zero-shot 66.6% against OpenAI's
63.3%, open_clip's own table), was trained on open data, and is stored on the hub as one safetensors file;
`pretrained=openai` gives OpenAI's weights (with the QuickGELU they were trained with); `pretrained=""`
(no tag) takes the model config's preprocessing, for a `weights=FILE` of one's own.
With `weights=FILE`, `pretrained` names what the file holds: the tag still picks the architecture variant
(QuickGELU for openai) and the preprocessing, and a file of another tag loads strictly all the same (the
activation has no weights), so OpenAI's file under the default tag runs with GELU and gives wrong features
without an error. A file given without `pretrained` is therefore taken as the default tag, with a warning.

The output is the image tower's embedding, `encode_image(normalize=False)`: stored unnormalised (its norm
is a fact of the teacher worth keeping); stage two's cosine loss and window mean normalise it.
Preprocessing is open_clip's evaluation transform for the tag: resize the short side to the model's image
size (bicubic), centre crop, the tag's mean/std. Only the image tower is kept after loading.
Weights: the tag's file from the Hugging Face hub (cached by huggingface_hub, downloaded on first use unless
offline), `weights=FILE` (any checkpoint open_clip loads for this model), or `weights=random`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from distinit.extract.teachers.base import Teacher, freeze, frames_to_tensor, require_positive, resolve_device
from distinit.extract.teachers.embedding_hub import (
    RESIZE_MODES, embedding_output, embedding_view, fetch_hub_file, hub_weights_sources, load_failure,
)
from distinit.extract.teachers.registry import register_teacher
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.weights.files import RANDOM_INIT_SHA256, RANDOM_WEIGHTS, given_weights_file
from distinit.pipeline.weights.source import WeightsSource

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
# open_clip's hub file names: a named file, else its default pickle, each preferring a safetensors twin.
_DEFAULT_HUB_FILE = "open_clip_pytorch_model.bin"
_SAFETENSORS_OF_DEFAULT = "open_clip_model.safetensors"


def _open_clip():
    try:
        import open_clip
    except ImportError:
        raise DistinitError("the clip teacher needs open_clip; pip install open_clip_torch (the `embeddings` extra)") from None
    return open_clip


def pretrained_config(model: str, pretrained: str) -> dict:
    """open_clip's record for (model, tag): hub location, mean/std, interpolation, resize mode, QuickGELU."""
    open_clip = _open_clip()
    if model not in open_clip.list_models():
        raise ConfigError(f"open_clip has no model {model!r}; choose one of: {', '.join(open_clip.list_models())}")
    if not pretrained:  # no tag: the model config's own preprocessing, for weights=FILE (one's own training) or random
        return {}
    config = open_clip.get_pretrained_cfg(model, pretrained)
    if not config:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ConfigError(f"open_clip {model} has no pretrained tag {pretrained!r}; its tags: {tags}")
    return dict(config)


def hub_location(model: str, config: dict) -> tuple[str, tuple[str, ...]]:
    """(hub repository, file names to try in order) for a tag, as open_clip's downloader would look them up."""
    repo_and_file = config.get("hf_hub", "")
    if not config:
        raise ConfigError(f"teacher clip with no pretrained tag loads weights=FILE (or random); name a tag of {model}")
    if not repo_and_file:
        raise ConfigError(
            f"open_clip {model}'s tag has no Hugging Face hub copy (only {config.get('url') or 'nothing'}); "
            "download it and pass weights=FILE"
        )
    # "org/name/" names the repository (its default file); "org/name/file.bin" one file of it.
    repo_id, _, filename = repo_and_file.rpartition("/")
    filename = filename or _DEFAULT_HUB_FILE
    if filename == _DEFAULT_HUB_FILE:
        return repo_id, (_SAFETENSORS_OF_DEFAULT, filename)
    if filename.endswith((".bin", ".pth")):
        return repo_id, (filename[:-4] + ".safetensors", filename)
    return repo_id, (filename,)


@register_teacher("clip")
class ClipTeacher(Teacher):
    def __init__(self, *, device: str | torch.device = "cpu", weights: str | None = None, model: str = DEFAULT_MODEL,
                 pretrained: str | None = None, batch_size: int = 32):
        require_positive("batch_size", batch_size)
        if pretrained is None:  # not given: the default tag, which a weights file may not be (see the docstring)
            pretrained = DEFAULT_PRETRAINED
            if weights is not None and weights != RANDOM_WEIGHTS:
                logger.warning(
                    "teacher clip: weights=%s is taken as open_clip %s %s weights (that tag's activation and "
                    "preprocessing) since no pretrained tag was given; name the file's tag with pretrained=TAG "
                    "(OpenAI's weights need pretrained=openai for their QuickGELU; naming %s silences this), or "
                    "pretrained='' for the model config's own", weights, model, pretrained, pretrained,
                )
        config = pretrained_config(model, pretrained)
        self.name = self.kind = "clip"
        self.backend = "open_clip"
        self.model_name, self.pretrained = model, pretrained
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        network, self.weights_sha256 = self._build(model, pretrained, config, weights)
        preprocess = {**_open_clip().get_model_preprocess_cfg(network), **config}
        self.input_size = int(np.atleast_1d(preprocess["size"])[0])
        self.resize_size = self.input_size  # open_clip resizes straight to the crop size, then centre-crops
        self.decode_short_side = self.resize_size
        self.interpolation = str(preprocess.get("interpolation", "bicubic"))
        self.resize_mode = str(preprocess.get("resize_mode", "shortest"))
        if self.resize_mode not in RESIZE_MODES:
            raise ConfigError(f"open_clip {model} ({pretrained}) resizes by {self.resize_mode!r}; supported: {', '.join(RESIZE_MODES)}")
        # "squash" shows the network the whole frame; "shortest" its centre square.
        self.center_crop = (self.resize_size, self.input_size) if self.resize_mode == "shortest" else None
        self.mean = tuple(float(value) for value in preprocess["mean"])
        self.std = tuple(float(value) for value in preprocess["std"])
        self.outputs = (embedding_output(int(network.visual.output_dim), (
            f"CLIP image embedding of open_clip {model} ({pretrained or 'no tag'}), unnormalised: encode_image "
            "before L2 normalisation")),)
        # The text tower is never used: keep only the image tower.
        self.model = freeze(network.visual).to(self.device)

    def _build(self, model: str, pretrained: str, config: dict, weights: str | None):
        """(the whole CLIP model, the weights file's sha256)."""
        open_clip = _open_clip()
        quick_gelu = bool(config.get("quick_gelu", False))  # the activation the tag's weights were trained with
        if weights == RANDOM_WEIGHTS:
            return open_clip.create_model(model, pretrained=None, force_quick_gelu=quick_gelu), RANDOM_INIT_SHA256
        if weights is not None:
            path = given_weights_file(weights, self.name)
        else:
            path = fetch_hub_file(self.name, *hub_location(model, config))
        try:
            network = open_clip.create_model(model, pretrained=str(path), force_quick_gelu=quick_gelu)
        except (RuntimeError, ValueError, KeyError, OSError) as error:
            raise load_failure(self.name, path, error) from None
        logger.info("teacher %s loaded open_clip %s weights from %s", self.name, model, path)
        return network, sha256_file(path)

    @classmethod
    def weights_sources(cls, *, weights: str | None = None, model: str = DEFAULT_MODEL,
                        pretrained: str | None = None, **_options) -> tuple[WeightsSource, ...]:
        pretrained = DEFAULT_PRETRAINED if pretrained is None else pretrained
        description = f"open_clip {model} {pretrained}"
        if weights is not None:
            return hub_weights_sources(description, "", (), weights)
        repo_id, filenames = hub_location(model, pretrained_config(model, pretrained))
        return hub_weights_sources(description, repo_id, filenames, weights)

    def _forward_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        images = embedding_view(
            frames_to_tensor(frames, self.device), center_crop=self.center_crop, size=self.input_size,
            interpolation=self.interpolation, mean=self.mean, std=self.std,
        )
        return {"embedding": self.model(images).float().cpu().numpy()}  # (N, D)

    def extra_config(self) -> dict:
        return {
            **super().extra_config(), "model": self.model_name, "pretrained": self.pretrained,
            "resize_size": self.resize_size, "crop_size": self.input_size,
            "interpolation": self.interpolation, "resize_mode": self.resize_mode,
        }
