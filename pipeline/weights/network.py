"""What the network does to a download: which errors are the network's (not this machine's), how long a
socket may stay silent, and refusing every connection while offline.

The timeout (DISTINIT_DOWNLOAD_TIMEOUT, default 20 s) bounds each connect and each read; it does not bound
the name lookup (getaddrinfo takes no timeout), which waits as long as the system resolver's own limit.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import _socket
import socket
import ssl
import threading
import urllib.error
from typing import Iterator

from distinit.pipeline.config import seconds_from_environment

TIMEOUT_VARIABLE = "DISTINIT_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 20.0  # a stalled connect or read; real downloads never pause this long
# What a failing network or server raises, as opposed to this machine (a full disk, a permission): those must not
# read "cannot download". socket.timeout is TimeoutError; URLError (HTTPError too) and SSLError are OSErrors.
_NETWORK_ERROR_TYPES = (
    ConnectionError, TimeoutError, socket.gaierror, urllib.error.URLError, ssl.SSLError, http.client.HTTPException,
)
# A plain OSError from a socket that can reach nothing carries one of these numbers (no route, network down).
_NETWORK_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN})
# The errors of the HTTP clients frameworks use (requests, httpx and huggingface_hub 2's httpx2, urllib3,
# huggingface_hub), many not OSErrors; recognised by module so none of them is imported here.
_NETWORK_ERROR_MODULES = ("requests", "httpx", "httpcore", "urllib3", "huggingface_hub")  # prefixes of the module
_USER_ERROR_NAMES = ("HFValidationError",)
_OFFLINE_REFUSAL = "offline: a connection was attempted and refused"  # the reason inside framework_download


def download_timeout_seconds() -> float:
    """Seconds a download may wait for the next bytes (or a connection) before it fails."""
    return seconds_from_environment(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_SECONDS)


def one_line_reason(error: BaseException) -> str:
    """A network error's cause in a few words: 'Connection refused', 'HTTP Error 404: Not Found', a timeout."""
    cause = error
    if not isinstance(error, urllib.error.HTTPError) and isinstance(error, urllib.error.URLError):
        cause = error.reason  # urllib wraps the socket's error (or a plain string)
    if isinstance(cause, TimeoutError):  # socket.timeout is TimeoutError
        return f"no answer within {download_timeout_seconds():g} s, see {TIMEOUT_VARIABLE}"
    text = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
    return " ".join(text.split()) or type(cause).__name__


def is_network_error(error: BaseException) -> bool:
    """True for an error the network or a server caused (refused, unreachable, timed out, an HTTP status, a
    client library's own error); False for this machine's (a full disk, a permission), which pass through."""
    if isinstance(error, _NETWORK_ERROR_TYPES):
        return True
    if isinstance(error, OSError) and error.errno in _NETWORK_ERRNOS:
        return True
    if any(klass.__name__ in _USER_ERROR_NAMES for klass in type(error).__mro__):
        return False  # the hub saying a repository id is malformed: the user's option, not the network
    return any(klass.__module__.startswith(_NETWORK_ERROR_MODULES) for klass in type(error).__mro__)


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Every socket opened inside times out after `seconds` of silence. urllib (torch.hub, iopath) opens its
    sockets with the process-wide default timeout, which is None (wait forever) unless set."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


_INTERNET_FAMILIES = (socket.AF_INET, socket.AF_INET6)


def _refuse_connection(*arguments, **keywords):
    raise ConnectionRefusedError(errno.ECONNREFUSED, _OFFLINE_REFUSAL)


def _refuse_socket_connection(self, *arguments, **keywords):
    # Only internet sockets: AF_UNIX ones carry multiprocessing's file-descriptor passing (torch tensors between
    # processes), forkserver and Manager, which have nothing to do with downloads.
    if self.family not in _INTERNET_FAMILIES:
        return _socket.socket.connect(self, *arguments, **keywords)
    raise ConnectionRefusedError(errno.ECONNREFUSED, _OFFLINE_REFUSAL)


def _refuse_socket_connection_number(self, *arguments, **keywords) -> int:  # connect_ex reports by number
    if self.family not in _INTERNET_FAMILIES:
        return _socket.socket.connect_ex(self, *arguments, **keywords)
    return errno.ECONNREFUSED


def _refuse_name_lookup(*arguments, **keywords):  # before connecting, urllib3 looks the name up (DNS may hang)
    raise socket.gaierror(socket.EAI_NONAME, _OFFLINE_REFUSAL)


_REFUSALS = (
    (socket.socket, "connect", _refuse_socket_connection),  # ssl.SSLSocket connects through it too
    (socket.socket, "connect_ex", _refuse_socket_connection_number),
    (socket, "create_connection", _refuse_connection),  # http.client, httpcore
    (socket, "getaddrinfo", _refuse_name_lookup),
)
_ABSENT = object()
_refusal_lock = threading.Lock()
_refusal_state = {"depth": 0, "saved": []}  # nested or concurrent blocks: the first patches, the last restores


@contextlib.contextmanager
def no_connections() -> Iterator[None]:
    """Every outgoing internet connection in the process is refused while the block runs, whatever client tries it
    (torch.hub, urllib, iopath, requests, httpx): offline, a framework that looks for a file it has not cached
    fails at once instead of downloading it. Process-wide, so other threads are refused too, as offline means."""
    with _refusal_lock:
        if _refusal_state["depth"] == 0:
            _refusal_state["saved"] = [(owner, name, vars(owner).get(name, _ABSENT)) for owner, name, _ in _REFUSALS]
            for owner, name, refusal in _REFUSALS:
                setattr(owner, name, refusal)
        _refusal_state["depth"] += 1
    try:
        yield
    finally:
        with _refusal_lock:
            _refusal_state["depth"] -= 1
            if _refusal_state["depth"] == 0:
                for owner, name, previous in _refusal_state["saved"]:
                    if previous is _ABSENT:  # socket.socket inherits connect from _socket.socket
                        delattr(owner, name)
                    else:
                        setattr(owner, name, previous)
