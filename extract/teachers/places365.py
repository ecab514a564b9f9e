"""Scene teacher `places365`: the Places365-Standard CNNs from their authors' PyTorch checkpoints; 365 logits.

The paper distilled from object *and* scene classifiers; Places365 is the scene dataset a video researcher
reaches for. Architectures (option `arch`): resnet18, resnet50 (the default), densenet161, wideresnet18 — the
four the authors (Zhou et al., CSAILVision/places365) publish as `<arch>_places365.pth.tar`. ResNet-50 is
the default because it is the deepest ResNet they publish for PyTorch (their ResNet-152 exists only as
Caffe and Lua Torch files) and the usual scene teacher in video work; densenet161 is the most accurate.

Weights: `weights=FILE`, else `<torch hub dir>/checkpoints/<arch>_places365.pth.tar`, downloaded there from
http://places2.csail.mit.edu/models_places365/ when missing and the network is allowed (`--offline` keeps it
local). The file is the authors' training checkpoint (`epoch`, `arch`, `best_prec1`, `state_dict` with
DataParallel's `module.` prefixes), read with weights_only=True; every parameter must match
(`places365_networks` maps the old key names). Class names: `categories=FILE` (the authors'
`categories_places365.txt`, lines like `/a/arena/hockey 16` -> `arena/hockey`), else that file fetched the
same way into the same folder. With weights="random" and no categories file the names are generic
(`places365-000` ...), for wiring checks only: nothing is read or downloaded.

Preprocessing follows the authors' validation (train_placesCNN.py): the short side resized to 256
(bilinear, antialiased like PIL), the central 224 crop, ImageNet mean/std on 0..1 RGB. Their demo scripts
squash the whole image to 256x256 (or 224x224) instead; we keep the evaluation their accuracy was measured
with, which also matches every other classifier teacher here.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

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
from distinit.extract.teachers.places365_networks import (
    PLACES365_ARCHITECTURES,
    PLACES365_CLASS_COUNT,
    authors_checkpoint_to_state_dict,
    build_places365_network,
    state_dict_mismatch,
)
from distinit.extract.teachers.registry import register_teacher
from distinit.pipeline.errors import ConfigError, DistinitError
from distinit.pipeline.hashing import sha256_file
from distinit.pipeline.weights.download import fetch_weights_file
from distinit.pipeline.weights.files import (
    RANDOM_INIT_SHA256,
    RANDOM_WEIGHTS,
    MissingWeightsError,
    load_state_dict_file,
    torch_hub_checkpoint_path,
)
from distinit.pipeline.weights.source import WeightsSource

logger = logging.getLogger(__name__)

PLACES365_WEIGHTS_BASE_URL = "http://places2.csail.mit.edu/models_places365/"
PLACES365_CATEGORIES_URL = "https://raw.githubusercontent.com/csailvision/places365/master/categories_places365.txt"
PLACES365_RESIZE_SIZE = 256
PLACES365_CROP_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the authors normalise Places365 inputs with ImageNet's statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_ARCH = "resnet50"


def places365_weights_url(arch: str) -> str:
    return f"{PLACES365_WEIGHTS_BASE_URL}{arch}_places365.pth.tar"


def places365_categories_cache_path() -> Path:
    """Beside the checkpoints in torch hub's folder, where the categories file is downloaded to."""
    return torch_hub_checkpoint_path(PLACES365_CATEGORIES_URL)


def read_places365_categories(path: Path) -> tuple[str, ...]:
    """The 365 class names in logit order from the authors' `categories_places365.txt`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"teacher places365: categories file {path} is not text; pass the authors' categories_places365.txt "
            "(a checkpoint goes to weights=FILE)"
        ) from None
    names = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        well_formed = len(fields) == 2 and re.fullmatch(r"/[a-z]/\S+", fields[0]) is not None
        if not well_formed or fields[1] != str(len(names)):
            raise ConfigError(
                f"teacher places365: categories file {path} line {line_number} is {line.strip()!r}, not "
                f"'/x/name {len(names)}'; pass the authors' categories_places365.txt ({PLACES365_CATEGORIES_URL})"
            )
        names.append(fields[0][3:])  # "/a/arena/hockey" -> "arena/hockey"
    if len(names) != PLACES365_CLASS_COUNT:
        raise ConfigError(
            f"teacher places365: categories file {path} lists {len(names)} classes, not {PLACES365_CLASS_COUNT}; "
            f"pass the authors' categories_places365.txt ({PLACES365_CATEGORIES_URL})"
        )
    return tuple(names)


def _read_given_categories(categories: str | None) -> tuple[str, ...] | None:
    if categories is None:
        return None
    path = Path(categories).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"teacher places365: categories file {path} does not exist; pass the authors' "
            f"categories_places365.txt ({PLACES365_CATEGORIES_URL})"
        )
    return read_places365_categories(path)


def _fetch_categories_file(teacher_name: str) -> Path:
    try:
        return fetch_weights_file(PLACES365_CATEGORIES_URL, places365_categories_cache_path(), teacher_name)
    except MissingWeightsError as error:
        # The download helper's message speaks of weights; this file is the class names, given by `categories`.
        message = str(error).replace("no weights at", "no class names at").replace("weights=FILE", "categories=FILE")
        raise MissingWeightsError(message) from None


def _require_arch(arch: str) -> None:
    if arch not in PLACES365_ARCHITECTURES:
        raise ConfigError(
            f"teacher places365 option arch={arch!r} is unknown; choose one of: {', '.join(PLACES365_ARCHITECTURES)}"
        )


@register_teacher("places365")
class Places365Teacher(Teacher):
    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        weights: str | None = None,
        arch: str = DEFAULT_ARCH,
        categories: str | None = None,
        batch_size: int = 32,
    ):
        _require_arch(arch)
        require_positive("batch_size", batch_size)
        self.name = self.kind = "places365"
        self.backend = "torchvision"
        self.arch = arch
        self.weights_url = places365_weights_url(arch)
        self.device = resolve_device(device)
        self.batch_size = int(batch_size)
        self.input_size = PLACES365_CROP_SIZE
        self.resize_size = PLACES365_RESIZE_SIZE
        self.decode_short_side = PLACES365_RESIZE_SIZE
        self.center_crop = (self.resize_size, self.input_size)
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        given_class_names = _read_given_categories(categories)  # before the checkpoint: a bad file fails fast
        network = build_places365_network(arch)
        if weights == RANDOM_WEIGHTS:
            self.weights_sha256 = RANDOM_INIT_SHA256
        else:
            cache_path = torch_hub_checkpoint_path(self.weights_url)
            path = fetch_weights_file(self.weights_url, cache_path, self.name, weights=weights)
            self.weights_sha256 = self._load_authors_checkpoint(network, path)
        if given_class_names is not None:
            class_names = given_class_names
        elif weights == RANDOM_WEIGHTS:
            # A wiring check needs no file and no network; real weights always get the real names.
            class_names = tuple(f"places365-{index:03d}" for index in range(PLACES365_CLASS_COUNT))
        else:
            class_names = read_places365_categories(_fetch_categories_file(self.name))
        self.outputs = (
            OutputSpec(
                name="logits",
                shape=(PLACES365_CLASS_COUNT,),
                dtype="float16",
                kind="logits",
                meaning=f"Places365 scene class logits of the authors' {arch} (softmax gives class probabilities)",
                class_names=class_names,
            ),
        )
        self.model = freeze(network).to(self.device)

    def _load_authors_checkpoint(self, network: torch.nn.Module, path: Path) -> str:
        """Load the authors' checkpoint strictly; return the file's sha256."""
        state_dict = authors_checkpoint_to_state_dict(load_state_dict_file(path, self.name))
        mismatch = state_dict_mismatch(network, state_dict)
        if mismatch:
            raise DistinitError(
                f"teacher places365: weights file {path} does not fit arch={self.arch} ({mismatch}); pass the "
                f"authors' {self.arch}_places365.pth.tar or choose the arch it was trained with"
            )
        network.load_state_dict(state_dict, strict=True)
        logger.info("teacher %s loaded %s weights from %s", self.name, self.arch, path)
        return sha256_file(path)

    def _forward_batch(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        images = frames_to_tensor(frames, self.device)
        images = resize_short_side_and_center_crop(images, *self.center_crop, "bilinear")
        logits = self.model(normalise(images, self.mean, self.std))  # (N, 365)
        return {"logits": logits.float().cpu().numpy()}

    def extra_config(self) -> dict[str, Any]:
        return {
            **super().extra_config(),
            "arch": self.arch,
            "weights_url": self.weights_url,
            "resize_size": self.resize_size,
            "crop_size": self.input_size,
            "interpolation": "bilinear",
        }

    @classmethod
    def weights_sources(
        cls, weights: str | None = None, arch: str = DEFAULT_ARCH, categories: str | None = None, **options: Any
    ) -> tuple[WeightsSource, ...]:
        _require_arch(arch)
        url = places365_weights_url(arch)
        checkpoint, names = f"Places365 {arch} checkpoint", "Places365 class names"
        sources = []
        if weights is not None and weights != RANDOM_WEIGHTS:
            sources.append(WeightsSource.given(checkpoint, weights))
        elif weights is None:
            sources.append(WeightsSource.at(checkpoint, url, torch_hub_checkpoint_path(url)))
        if categories is not None:
            sources.append(WeightsSource.given(names, categories, option="categories"))
        elif weights != RANDOM_WEIGHTS:  # random weights with generic class names read nothing
            sources.append(WeightsSource.at(names, PLACES365_CATEGORIES_URL, places365_categories_cache_path()))
        return tuple(sources)
