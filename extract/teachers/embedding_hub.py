"""What the embedding teachers (`clip`, `dinov2`) share: weights from the Hugging Face hub, their input view,
and the output every embedding teacher (Lite0's pooled features too) declares.

open_clip and timm publish their weights on the Hugging Face hub. A teacher asks for one file of a hub
repository: already in the hub's cache (huggingface_hub.try_to_load_from_cache, no network) it is used as
is; otherwise huggingface_hub downloads it into that cache (under the download timeout). Offline, or when
the download fails for the network's reasons, it is one line saying how to supply the file by hand: as
weights=FILE, or through the hub's own `hf download` into the same cache (whose refs/ and snapshots/ layout
nobody should build by hand). The file's sha256 goes into the stage key like every teacher's.
Loading the file into the model is left to each library (open_clip and timm convert their own formats).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from distinit.extract.teachers.base import OutputSpec, normalise, resize_short_side_and_center_crop
from distinit.pipeline.errors import ConfigError
from distinit.pipeline.weights.download import offline, offline_variable
from distinit.pipeline.weights.files import RANDOM_WEIGHTS, MissingWeightsError
from distinit.pipeline.weights.network import download_timeout_seconds, is_network_error, one_line_reason, socket_timeout
from distinit.pipeline.weights.source import WeightsSource

logger = logging.getLogger(__name__)

RESIZE_MODES = ("shortest", "squash")  # open_clip's names: short side + centre crop, or the whole frame squashed


def embedding_output(dimension: int, meaning: str) -> OutputSpec:
    """The (D,) float16 "embedding" output, stored unnormalised (stage two's loss and window mean normalise it)."""
    return OutputSpec(name="embedding", shape=(dimension,), dtype="float16", kind="embedding", meaning=meaning,
                      attributes={"normalised": False, "dim": dimension})


def hub_origin(repo_id: str) -> str:
    return f"hf-hub:{repo_id}"


def hub_cache_folder(repo_id: str) -> Path:
    """Where huggingface_hub keeps `repo_id`'s files (honours HF_HOME / HF_HUB_CACHE): its documented cache
    layout, models--<org>--<name>, built from public constants rather than the hub's internal helper."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / constants.REPO_ID_SEPARATOR.join(("models", *repo_id.split("/")))


def cached_hub_file(repo_id: str, filenames: Sequence[str]) -> Path | None:
    """The first of `filenames` that the hub cache already holds for `repo_id`; looks only at the disk."""
    from huggingface_hub import constants, try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=constants.HF_HUB_CACHE)
        if isinstance(found, str):  # otherwise None (unknown) or a marker saying the repo has no such file
            return Path(found)
    return None


def fetch_hub_file(teacher_name: str, repo_id: str, filenames: Sequence[str]) -> Path:
    """The cached file, or the first of `filenames` the repository has, downloaded into the hub cache.
    Offline or without a network: one MissingWeightsError line saying how to supply the file by hand."""
    cached = cached_hub_file(repo_id, filenames)
    if cached is not None:
        return cached
    if offline():
        raise MissingWeightsError(
            f"{_not_cached(teacher_name, repo_id, filenames)}; offline ({offline_variable()}=1), so nothing is downloaded"
        )
    from huggingface_hub import constants, hf_hub_download

    logger.info("teacher %s: fetching %s into %s", teacher_name, hub_origin(repo_id), hub_cache_folder(repo_id))
    # Not framework_download: its advice (put the file at the cache path) cannot be followed for the hub's cache,
    # whose refs/ and snapshots/ a person cannot lay out by hand; the timeout and error test are the same.
    with socket_timeout(download_timeout_seconds()):
        try:
            filename = _published_file(teacher_name, repo_id, filenames)
            return Path(hf_hub_download(repo_id, filename, cache_dir=constants.HF_HUB_CACHE))
        except MissingWeightsError:
            raise
        except Exception as error:
            if not is_network_error(error):
                raise
            raise MissingWeightsError(
                f"teacher {teacher_name}: cannot download {hub_origin(repo_id)} ({one_line_reason(error)}); "
                f"{_by_hand(repo_id, filenames)}; or run with --offline (DISTINIT_OFFLINE=1) to never try"
            ) from None


def _not_cached(teacher_name: str, repo_id: str, filenames: Sequence[str]) -> str:
    return (f"teacher {teacher_name}: {hub_origin(repo_id)} is not in the Hugging Face hub cache "
            f"({hub_cache_folder(repo_id)}); {_by_hand(repo_id, filenames)}")


def _by_hand(repo_id: str, filenames: Sequence[str]) -> str:
    """How a person supplies a hub file this machine cannot download: the file itself, or the hub's own CLI,
    which lays out the cache (refs/, snapshots/) the teacher reads."""
    from huggingface_hub import hf_hub_url

    others = f" (or {', '.join(filenames[1:])})" if len(filenames) > 1 else ""
    return (f"download {hf_hub_url(repo_id, filenames[0])}{others} on a machine with network and pass weights=FILE, "
            f"or fill the cache with `hf download {repo_id} {filenames[0]}` under the same HF_HOME")


def _published_file(teacher_name: str, repo_id: str, filenames: Sequence[str]) -> str:
    """The first of `filenames` that `repo_id` publishes, asked once each without retries: hf_hub_download
    retries a failing connection for half a minute when nothing is cached, so without a network this is
    where a download fails, within one timeout."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import RemoteEntryNotFoundError

    for filename in filenames:
        try:
            get_hf_file_metadata(hf_hub_url(repo_id, filename), timeout=download_timeout_seconds())
            return filename
        except RemoteEntryNotFoundError:
            continue  # the repository has no file of that name: try the next name
    raise MissingWeightsError(
        f"teacher {teacher_name}: {hub_origin(repo_id)} has none of {', '.join(filenames)}; pass weights=FILE"
    )


def hub_weights_sources(description: str, repo_id: str, filenames: Sequence[str],
                        weights: str | None) -> tuple[WeightsSource, ...]:
    """For `distinit teachers`: the given file, or the hub file and whether its cache holds it (no network)."""
    if weights == RANDOM_WEIGHTS:
        return ()
    if weights is not None:
        return (WeightsSource.given(description, weights),)
    cached = cached_hub_file(repo_id, filenames)
    local_path = cached if cached is not None else hub_cache_folder(repo_id)
    return (WeightsSource(description, hub_origin(repo_id), local_path, cached is not None),)


def load_failure(teacher_name: str, path: Path, error: Exception) -> ConfigError:
    """One line for a weights file the library could not load into the model (another model's file, a broken file)."""
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ConfigError(f"teacher {teacher_name}: weights file {path} does not fit the model ({first_line[:200]})")


def embedding_view(images: torch.Tensor, *, center_crop: tuple[int, int] | None, size: int, interpolation: str,
                   mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, 3, H, W) floats in 0..1 -> the network's normalised (N, 3, size, size) input, as the libraries' own
    evaluation transforms make it from a PIL image: the (resize_size, crop_size) centre crop (the teacher's
    `center_crop`, whose view_box stage two keeps the student's crop inside), or without one the whole frame
    squashed to size x size."""
    if center_crop is None:
        images = torch.nn.functional.interpolate(
            images, size=(size, size), mode=interpolation, align_corners=False, antialias=True
        )
    else:
        images = resize_short_side_and_center_crop(images, *center_crop, interpolation)
    # Bicubic overshoots 0..1; PIL, which open_clip and timm resize with, stores bytes and so clips it.
    return normalise(images.clamp(0.0, 1.0), tuple(mean), tuple(std))
