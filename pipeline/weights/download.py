"""Downloading teacher weights the way each framework does, with a way to never download.

By default a missing weights file is downloaded once into its framework's own cache (torchvision's files
through torch.hub's cache and downloader, with torch.hub's sha256-prefix check; Detectron2, timm and
open_clip through their own code inside `framework_download`). Offline (`--offline`, DISTINIT_OFFLINE=1,
or the hub's own HF_HUB_OFFLINE=1) nothing is downloaded: a missing file is a one-line error naming the
file, its URL and where to put it. With no network a download fails within seconds (a socket timeout,
DISTINIT_DOWNLOAD_TIMEOUT, default 20 s of silence), also as one line: never a hang or a traceback.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import socket
import sys
import urllib.error
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

from pipeline.errors import ConfigError
from pipeline.weights.files import MissingWeightsError, given_weights_file, torch_hub_checkpoint_path
from pipeline.weights.source import WeightsSource

logger = logging.getLogger(__name__)

OFFLINE_VARIABLES = ("DISTINIT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # the last two: the hub's own
TIMEOUT_VARIABLE = "DISTINIT_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 20.0  # a stalled connect or read; real downloads never pause this long
_TRUE_VALUES = ("1", "true", "yes", "on")  # what huggingface_hub accepts for HF_HUB_OFFLINE
# Network errors of the HTTP clients frameworks use (requests, httpx and huggingface_hub 2's httpx2, urllib3,
# huggingface_hub) that are not OSError subclasses; recognised by module so none of them is imported here.
_NETWORK_ERROR_MODULES = ("requests", "httpx", "httpcore", "urllib3", "huggingface_hub")  # prefixes of the module
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


def download_timeout_seconds() -> float:
    """Seconds a download may wait for the next bytes (or a connection) before it fails."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ConfigError(f"{TIMEOUT_VARIABLE}={text!r}: expected a positive number of seconds")
    return seconds


def missing_message(teacher_name: str, url: str, cache_path: Path) -> str:
    """Today's one line for a file that is not there: the file, its URL and where to put it."""
    return f"teacher {teacher_name}: no weights at {cache_path}; download {url} to that path (or pass weights=FILE)"


def _offline_error(teacher_name: str, url: str, cache_path: Path) -> MissingWeightsError:
    return MissingWeightsError(
        f"{missing_message(teacher_name, url, cache_path)}; offline ({offline_variable()}=1), so nothing is downloaded"
    )


def _one_line_reason(error: BaseException) -> str:
    """A network error's cause in a few words: 'Connection refused', 'HTTP Error 404: Not Found', a timeout."""
    cause = error
    if not isinstance(error, urllib.error.HTTPError) and isinstance(error, urllib.error.URLError):
        cause = error.reason  # urllib wraps the socket's error (or a plain string)
    if isinstance(cause, TimeoutError):  # socket.timeout is TimeoutError
        return f"no answer within {download_timeout_seconds():g} s, see {TIMEOUT_VARIABLE}"
    text = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    return " ".join(text.split()) or type(cause).__name__


def _is_network_error(error: BaseException) -> bool:
    if isinstance(error, (OSError, http.client.HTTPException)):
        return True
    return any(klass.__module__.startswith(_NETWORK_ERROR_MODULES) for klass in type(error).__mro__)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Every socket opened inside times out after `seconds` of silence. urllib (torch.hub, iopath) opens its
    sockets with the process-wide default timeout, which is None (wait forever) unless set."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def fetch_weights_file(
    url: str,
    cache_path: Path,
    teacher_name: str,
    *,
    weights: str | os.PathLike | None = None,
    hash_prefix: str | None = None,
) -> Path:
    """The weights file to load: `weights` if given (must exist), else `cache_path` if present, else (unless
    offline) `url` downloaded to `cache_path` with torch.hub's downloader (a temporary file renamed when
    complete; its sha256 must start with `hash_prefix` when given)."""
    if weights is not None:
        return given_weights_file(weights, teacher_name)
    cache_path = Path(cache_path)
    if cache_path.is_file():
        return cache_path
    if offline():
        raise _offline_error(teacher_name, url, cache_path)
    import torch.hub

    timeout = download_timeout_seconds()
    logger.info("teacher %s: downloading %s to %s", teacher_name, url, cache_path)
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        with _socket_timeout(timeout):
            # torch.hub writes `<cache_path>.<uuid>.partial`, checks the hash, then moves it into place; on any
            # failure it deletes the partial file, so the cache never holds a broken download.
            torch.hub.download_url_to_file(url, str(cache_path), hash_prefix=hash_prefix, progress=sys.stderr.isatty())
    except ValueError as error:  # urllib's "unknown url type"
        raise ConfigError(f"teacher {teacher_name}: cannot download {url!r} ({error})") from None
    except RuntimeError as error:  # torch.hub's hash check
        raise MissingWeightsError(
            f"teacher {teacher_name}: download of {url} failed its check ({_one_line_reason(error)}); "
            f"nothing was kept; put the right file at {cache_path} (or pass weights=FILE)"
        ) from None
    except Exception as error:
        if not _is_network_error(error):
            raise
        raise MissingWeightsError(_network_message(teacher_name, url, cache_path, error)) from None
    logger.info("teacher %s: downloaded %s", teacher_name, cache_path)
    return cache_path


def _network_message(teacher_name: str, url: str | None, cache_path: Path | None, error: BaseException) -> str:
    where = f"put it at {cache_path}" if cache_path is not None else "put it in the framework's cache"
    return (
        f"teacher {teacher_name}: cannot download {url} ({_one_line_reason(error)}); {where} (or pass weights=FILE), "
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
def framework_download(teacher_name: str, origin: str, cache_path: Path | None) -> Iterator[None]:
    """Around a framework's own download-and-cache (Detectron2's checkpointer, timm/open_clip's hub).

    Offline with `cache_path` known and missing: the one-line error before the block runs. Offline otherwise:
    the block runs with the hub offline. Inside, sockets time out and network errors become one line naming
    `origin` and where the framework caches it."""
    cache_path = Path(cache_path) if cache_path is not None else None
    if offline():
        if cache_path is not None and not cache_path.exists():
            raise _offline_error(teacher_name, origin, cache_path)
        guard = _hub_offline()
    else:
        if cache_path is None or not cache_path.exists():
            where = cache_path or "the framework's cache"
            logger.info("teacher %s: fetching %s (cached at %s)", teacher_name, origin, where)
        guard = contextlib.nullcontext()
    try:
        with guard, _socket_timeout(download_timeout_seconds()):
            yield
    except MissingWeightsError:
        raise
    except Exception as error:
        if not _is_network_error(error):
            raise
        if offline():
            raise MissingWeightsError(
                f"teacher {teacher_name}: {origin} is not in the framework's cache"
                f"{f' ({cache_path})' if cache_path is not None else ''} ({_one_line_reason(error)}); "
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
