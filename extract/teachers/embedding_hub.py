"""What the embedding teachers (`clip`, `dinov2`) share: weights from the Hugging Face hub, their input view,
and the output every embedding teacher (Lite0's pooled features too) declares.

open_clip and timm publish their weights on the Hugging Face hub. A teacher asks for one file of a hub
repository: already in the hub's cache (huggingface_hub.try_to_load_from_cache, no network) it is used as
is; otherwise it is downloaded into that cache by huggingface_hub inside `framework_download`, so offline
runs and network failures end in one line. The file's sha256 goes into the stage key like every teacher's.
Loading the file into the model is left to each library (open_clip and timm convert their own formats).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from extract.teachers.base import OutputSpec, normalise, resize_short_side_and_center_crop
from pipeline.errors import ConfigError
from pipeline.weights.download import download_timeout_seconds, framework_download, offline
from pipeline.weights.files import RANDOM_WEIGHTS, MissingWeightsError
from pipeline.weights.source import WeightsSource

logger = logging.getLogger(__name__)

RESIZE_MODES = ("shortest", "squash")  # open_clip's names: short side + centre crop, or the whole frame squashed


def embedding_output(dimension: int, meaning: str) -> OutputSpec:
    """The (D,) float16 "embedding" output, stored unnormalised (stage two's loss and window mean normalise it)."""
    return OutputSpec(name="embedding", shape=(dimension,), dtype="float16", kind="embedding", meaning=meaning,
                      attributes={"normalised": False, "dim": dimension})


def hub_origin(repo_id: str) -> str:
    return f"hf-hub:{repo_id}"


def hub_cache_folder(repo_id: str) -> Path:
    """Where huggingface_hub keeps `repo_id`'s files (honours HF_HOME / HF_HUB_CACHE)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")


def cached_hub_file(repo_id: str, filenames: Sequence[str]) -> Path | None:
    """The first of `filenames` that the hub cache already holds for `repo_id`; looks only at the disk."""
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(found, str):  # otherwise None (unknown) or a marker saying the repo has no such file
            return Path(found)
    return None


def fetch_hub_file(teacher_name: str, repo_id: str, filenames: Sequence[str]) -> Path:
    """The cached file, or the first of `filenames` the repository has, downloaded into the hub cache."""
    cached = cached_hub_file(repo_id, filenames)
    if cached is not None:
        return cached
    from huggingface_hub import constants, hf_hub_download

    with framework_download(teacher_name, hub_origin(repo_id), hub_cache_folder(repo_id)):
        # Offline, the block runs with the hub offline and fails at once on the file that is not cached.
        filename = filenames[0] if offline() else _published_file(teacher_name, repo_id, filenames)
        return Path(hf_hub_download(repo_id, filename, cache_dir=constants.HF_HUB_CACHE))


def _published_file(teacher_name: str, repo_id: str, filenames: Sequence[str]) -> str:
    """The first of `filenames` that `repo_id` publishes, asked once each without retries: hf_hub_download
    retries a failing connection for half a minute when nothing is cached, so without a network this is
    where a download fails, within one timeout."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for filename in filenames:
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=download_timeout_seconds())
            return filename
        except EntryNotFoundError as error:
            if isinstance(error, LocalEntryNotFoundError):  # not cached and not reachable: not a missing name
                raise
            continue  # the repository has no file of that name: try the next name
        except Exception as error:
            if not type(error).__module__.startswith("httpx"):
                raise
            # The hub's HTTP client (httpx2) has its own error types; as a ConnectionError framework_download
            # reports it in one line.
            raise ConnectionError(str(error) or type(error).__name__) from None
    raise MissingWeightsError(
        f"teacher {teacher_name}: {hub_origin(repo_id)} has none of {', '.join(filenames)}; pass weights=FILE"
    )


def hub_weights_sources(description: str, repo_id: str, filenames: Sequence[str],
                        weights: str | None) -> tuple[WeightsSource, ...]:
    """For `distinit teachers`: the given file, or the hub file and whether its cache holds it (no network)."""
    if weights == RANDOM_WEIGHTS:
        return ()
    if weights is not None:
        path = Path(weights).expanduser()
        return (WeightsSource(description, "weights=FILE", path, path.is_file()),)
    cached = cached_hub_file(repo_id, filenames)
    local_path = cached if cached is not None else hub_cache_folder(repo_id)
    return (WeightsSource(description, hub_origin(repo_id), local_path, cached is not None),)


def load_failure(teacher_name: str, path: Path, error: Exception) -> ConfigError:
    """One line for a weights file the library could not load into the model (another model's file, a broken file)."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ConfigError(f"teacher {teacher_name}: weights file {path} does not fit the model ({first_line[:200]})")


def embedding_view(images: torch.Tensor, *, resize_size: int, crop_size: int, interpolation: str, resize_mode: str,
                   mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, 3, H, W) floats in 0..1 -> the network's normalised (N, 3, crop, crop) input, as the libraries' own
    evaluation transforms make it from a PIL image."""
    if resize_mode == "squash":
        images = torch.nn.functional.interpolate(
            images, size=(crop_size, crop_size), mode=interpolation, align_corners=False, antialias=True
        )
    else:
        images = resize_short_side_and_center_crop(images, resize_size, crop_size, interpolation)
    # Bicubic overshoots 0..1; PIL, which open_clip and timm resize with, stores bytes and so clips it.
    return normalise(images.clamp(0.0, 1.0), tuple(mean), tuple(std))
