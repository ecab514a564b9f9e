"""Downloading teacher weights the way each framework does, with a way to never download.

By default a missing weights file is downloaded once into its framework's own cache (torchvision's files
into torch.hub's cache, named and hash-checked as torch.hub does, by a transfer loop of ours that also
refuses a body shorter than its Content-Length; Detectron2, timm and open_clip through their own code inside
`framework_download`). Offline (`--offline`, DISTINIT_OFFLINE=1, or the hub's own HF_HUB_OFFLINE=1) nothing
is downloaded: a missing file is a one-line error naming the file, its URL and where to put it, and inside
`framework_download` every connection is refused, whatever downloader a framework uses. With no network a
download fails within seconds (a socket timeout, DISTINIT_DOWNLOAD_TIMEOUT, default 20 s of silence), also as
one line: never a hang or a traceback. The timeout does not cover the name lookup (getaddrinfo takes none), so
a DNS server that never answers is waited for as long as the system resolver allows (resolv.conf's timeout).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import urlparse

from tqdm import tqdm

from distinit.pipeline.errors import ConfigError, OutputError
from distinit.pipeline.weights.files import MissingWeightsError, given_weights_file, torch_hub_checkpoint_path
from distinit.pipeline.weights.network import (  # download_timeout_seconds: also imported from here by teachers
    download_timeout_seconds,
    is_network_error,
    no_connections,
    one_line_reason,
    socket_timeout,
)
from distinit.pipeline.weights.source import WeightsSource

logger = logging.getLogger(__name__)

OFFLINE_VARIABLES = ("DISTINIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # the last two: the hub's own
_TRUE_VALUES = ("1", "true", "yes", "on")  # what huggingface_hub accepts for HF_HUB_OFFLINE
_CHUNK_BYTES = 1 << 16
# torch.hub's convention: a published file is named `<name>-<first hex digits of its sha256>.<extension>`.
_HASH_IN_FILE_NAME = re.compile(r"-([a-f0-9]+)\.[^-]*$")
# Origins a teacher fetches on first use; any other origin (a pip package, a file to copy by hand) is not fetched.
DOWNLOADED_ORIGIN_PREFIXES = ("http://", "https://", "file://", "hf-hub:")


def offline_variable() -> str | None:
    """The environment variable that makes this run offline, or None when downloads are allowed."""
    for name in OFFLINE_VARIABLES:
        if os.environ.get(name, "").strip().lower() in _TRUE_VALUES:
            return name
    return None


def offline() -> bool:
    """True when no download may be attempted: DISTINIT_OFFLINE=1 (the CLI's --offline), or the hub's own
    HF_HUB_OFFLINE=1 / TRANSFORMERS_OFFLINE=1."""
    return offline_variable() is not None


def enable_offline() -> None:
    """Never download in this process and the processes it starts (the CLI's --offline): set before anything
    is built, so decode workers inherit it and huggingface_hub reads it when first imported."""
    os.environ["DISTINIT_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"


def missing_message(teacher_name: str, url: str, cache_path: Path) -> str:
    """Today's one line for a file that is not there: the file, its URL and where to put it."""
    return f"teacher {teacher_name}: no weights at {cache_path}; download {url} to that path (or pass weights=FILE)"


def _offline_error(teacher_name: str, url: str, cache_path: Path) -> MissingWeightsError:
    return MissingWeightsError(
        f"{missing_message(teacher_name, url, cache_path)}; offline ({offline_variable()}=1), so nothing is downloaded"
    )


class _CacheWriteError(Exception):
    """Writing a download into its cache folder failed (a full disk, no permission): this machine's fault."""


@contextlib.contextmanager
def _writing_cache() -> Iterator[None]:
    """Around a write into the cache folder: its OSError is this machine's, never read as a network error."""
    try:
        yield
    except OSError as error:
        raise _CacheWriteError() from error


class _RejectedDownload(Exception):
    """A download arrived but is not the file: shorter than its Content-Length, or the wrong sha256."""


def fetch_weights_file(
    url: str,
    cache_path: Path,
    teacher_name: str,
    *,
    weights: str | os.PathLike | None = None,
    hash_prefix: str | None = None,
) -> Path:
    """The weights file to load: `weights` if given (must exist), else `cache_path` if present, else (unless
    offline) `url` downloaded to `cache_path` (a temporary file renamed only when complete and, when
    `hash_prefix` is given, when its sha256 starts with it)."""
    if weights is not None:
        return given_weights_file(weights, teacher_name)
    cache_path = Path(cache_path)
    if cache_path.is_file():
        return cache_path
    if offline():
        raise _offline_error(teacher_name, url, cache_path)
    timeout = download_timeout_seconds()
    logger.info("teacher %s: downloading %s to %s", teacher_name, url, cache_path)
    try:
        _download(url, cache_path, hash_prefix, timeout)
    except ValueError as error:  # urllib's "unknown url type"
        raise ConfigError(f"teacher {teacher_name}: cannot download {url!r} ({error})") from None
    except _RejectedDownload as error:
        raise MissingWeightsError(
            f"teacher {teacher_name}: download of {url} {error}; nothing was kept; try again, "
            f"or put the right file at {cache_path} (or pass weights=FILE)"
        ) from None
    except _CacheWriteError as error:
        raise OutputError(
            f"teacher {teacher_name}: cannot write the download of {url} into {cache_path.parent} "
            f"({one_line_reason(error.__cause__)}); free space or allow writing there (or pass weights=FILE)"
        ) from None
    except Exception as error:
        if not is_network_error(error):
            raise
        raise MissingWeightsError(_network_message(teacher_name, url, cache_path, error)) from None
    logger.info("teacher %s: downloaded %s", teacher_name, cache_path)
    return cache_path


def _download(url: str, cache_path: Path, hash_prefix: str | None, timeout: float) -> None:
    """`url` into `cache_path` through a temporary file beside it (torch.hub's `<file>.<uuid>.partial`), renamed
    only when every byte arrived and the hash fits; the temporary file is deleted on any failure."""
    temporary = cache_path.with_name(f"{cache_path.name}.{uuid.uuid4().hex}.partial")
    with _writing_cache():
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        output = open(temporary, "xb")  # not tempfile's: its 0600 would hide a shared cache from other users
    try:
        with output:
            sha256, received, expected = _copy_response(url, output, timeout)
        # urllib hands back a short body without complaint when a server closes early: count the bytes.
        if expected is not None and received != expected:
            raise _RejectedDownload(f"stopped after {received} of {expected} bytes (the connection closed early)")
        if hash_prefix is not None and not sha256.startswith(hash_prefix):
            raise _RejectedDownload(
                f"failed its check (its sha256 starts with {sha256[:len(hash_prefix)]}, not {hash_prefix})"
            )
        with _writing_cache():
            os.replace(temporary, cache_path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _copy_response(url: str, output: BinaryIO, timeout: float) -> tuple[str, int, int | None]:
    """Copy `url`'s body into `output`; its sha256, the bytes received and the Content-Length (None if not sent).
    Every connect and read waits at most `timeout` seconds; a progress bar like torch.hub's on a terminal."""
    request = urllib.request.Request(url, headers={"User-Agent": "distinit"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = (response.headers.get("Content-Length") or "").strip()
        expected = int(length) if length.isdigit() else None
        sha256, received = hashlib.sha256(), 0
        with tqdm(total=expected, disable=not sys.stderr.isatty(), unit="B", unit_scale=True, unit_divisor=1024) \
                as progress:
            while chunk := response.read(_CHUNK_BYTES):
                with _writing_cache():
                    output.write(chunk)
                sha256.update(chunk)
                received += len(chunk)
                progress.update(len(chunk))
        with _writing_cache():  # a full disk may only show when the last buffered bytes are written
            output.flush()
    return sha256.hexdigest(), received, expected


def _network_message(teacher_name: str, url: str | None, cache_path: Path | None, error: BaseException) -> str:
    where = f"put it at {cache_path}" if cache_path is not None else "put it in the framework's cache"
    return (
        f"teacher {teacher_name}: cannot download {url} ({one_line_reason(error)}); {where} (or pass weights=FILE), "
        "or run with --offline (DISTINIT_OFFLINE=1) to never try"
    )


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 inside the block, so timm/open_clip's hub reads only its cache. huggingface_hub reads the
    variable when it is imported, so an already imported copy gets its constant switched too."""
    previous_variable = os.environ.get("HF_HUB_OFFLINE")
    constants = sys.modules.get("huggingface_hub.constants")
    previous_constant = getattr(constants, "HF_HUB_OFFLINE", None)
    os.environ["HF_HUB_OFFLINE"] = "1"
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if previous_variable is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_variable
        if constants is not None:
            constants.HF_HUB_OFFLINE = previous_constant


@contextlib.contextmanager
def _offline_block() -> Iterator[None]:
    with _hub_offline(), no_connections():
        yield


@contextlib.contextmanager
def framework_download(teacher_name: str, origin: str, cache_path: Path | None) -> Iterator[None]:
    """Around a framework's own download-and-cache (Detectron2's checkpointer, timm/open_clip's hub).

    Offline with `cache_path` known and missing: the one-line error before the block runs. Offline otherwise
    (`cache_path` None, or present while the framework looks for more): the block runs with the hub offline and
    every connection refused, so whatever the framework tries to download fails as the offline one line.
    Online, sockets time out and network errors become one line naming `origin` and where it is cached."""
    cache_path = Path(cache_path) if cache_path is not None else None
    if offline():
        if cache_path is not None and not cache_path.exists():
            raise _offline_error(teacher_name, origin, cache_path)
        guard = _offline_block()
    else:
        if cache_path is None or not cache_path.exists():
            where = cache_path or "the framework's cache"
            logger.info("teacher %s: fetching %s (cached at %s)", teacher_name, origin, where)
        guard = contextlib.nullcontext()
    try:
        with guard, socket_timeout(download_timeout_seconds()):
            yield
    except MissingWeightsError:
        raise
    except Exception as error:
        if not is_network_error(error):
            raise
        if offline():
            raise MissingWeightsError(
                f"teacher {teacher_name}: {origin} is not in the framework's cache"
                f"{f' ({cache_path})' if cache_path is not None else ''} ({one_line_reason(error)}); "
                f"offline ({offline_variable()}=1), so nothing is downloaded"
            ) from None
        raise MissingWeightsError(_network_message(teacher_name, origin, cache_path, error)) from None


def torch_hub_hash_prefix(url: str) -> str | None:
    """The sha256 prefix a torch.hub file name carries (`resnet18-f37072fd.pth` -> "f37072fd"), or None."""
    match = _HASH_IN_FILE_NAME.search(os.path.basename(urlparse(url).path))
    return match.group(1) if match else None


def fetch_torch_hub_file(url: str, teacher_name: str, *, weights: str | os.PathLike | None = None) -> Path:
    """A torchvision-published weights file: cached where torch.hub caches it, checked against its name's hash."""
    return fetch_weights_file(
        url, torch_hub_checkpoint_path(url), teacher_name, weights=weights, hash_prefix=torch_hub_hash_prefix(url)
    )


def presence(source: WeightsSource) -> str:
    """Whether a weights source is usable now, in words, for `distinit teachers`."""
    if source.present:
        return "present"
    if source.origin.startswith(DOWNLOADED_ORIGIN_PREFIXES):
        return "offline: missing" if offline() else "not downloaded yet: fetched on first use"
    return "missing"
