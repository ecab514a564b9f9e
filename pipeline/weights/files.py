"""Finding and loading teacher weight files: where frameworks cache them, loading them strictly, hashing them.

Weights come from (in order): an explicit `weights=FILE`, the file a pip package ships, or a framework's
local cache (torch hub, Detectron2's iopath cache); `pipeline.weights.download` fills a cache on first use
(unless offline). The errors name the exact path to put a file at and the URL it comes from, so a user on
an offline cluster can copy it in.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

import torch

from distinit.pipeline.errors import DistinitError
from distinit.pipeline.hashing import sha256_file

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"  # weights="random": random initialisation, for tests and wiring checks
RANDOM_INIT_SHA256 = "random-init"


class MissingWeightsError(DistinitError):
    """A teacher's weight file is neither given nor in the local cache."""


def torch_hub_checkpoint_path(url: str) -> Path:
    """Where torch.hub.load_state_dict_from_url would cache `url` (honours TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def iopath_cache_path(url: str) -> Path:
    """Where Detectron2's PathManager (iopath's HTTPURLHandler) caches `url`: $FVCORE_CACHE or ~/.torch/iopath_cache."""
    cache_directory = Path(os.path.expanduser(os.getenv("FVCORE_CACHE", "~/.torch/iopath_cache")))
    return cache_directory / urlparse(url).path.lstrip("/")


def given_weights_file(weights: str | os.PathLike, teacher_name: str) -> Path:
    """A user's `weights=FILE`, which must exist."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"teacher {teacher_name}: weights file {path} does not exist; pass an existing file")
    return path


def load_state_dict_file(path: Path, teacher_name: str) -> dict[str, torch.Tensor]:
    """A plain tensor state_dict from a .pth file (weights_only: a weight file cannot run code)."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise DistinitError(
            f"teacher {teacher_name}: cannot read weights file {path} ({type(error).__name__}); replace it"
        ) from error
    if isinstance(state_dict, dict) and "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict):
        raise DistinitError(f"teacher {teacher_name}: weights file {path} holds no state_dict; pass a state_dict .pth")
    return state_dict


def load_weights_into(model: torch.nn.Module, path: Path, teacher_name: str) -> str:
    """Load `path` into `model` with every key matching; return the file's sha256."""
    state_dict = load_state_dict_file(path, teacher_name)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise DistinitError(
            f"teacher {teacher_name}: weights file {path} does not fit the model ({first_line})"
        ) from error
    logger.info("teacher %s loaded weights from %s", teacher_name, path)
    return sha256_file(path)


def sha256_files(paths: list[Path]) -> str:
    """One digest for a model stored in several files (MediaPipe's detector + landmark models)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(sha256_file(path).encode("ascii"))
    return digest.hexdigest()
