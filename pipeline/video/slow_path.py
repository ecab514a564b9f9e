"""One warning per process when a decoder falls back to a slow path (decoding from frame 0, another backend).

A fallback is correct but can cost a whole file's decode per clip; a debug line per clip hides that and a
warning per clip floods a run's log. Each (process, kind of fallback) warns once, naming the first file and
saying what to do; the rest go to debug.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

_warned: set[tuple[int, str]] = set()


def warn_slow_fallback(kind: str, path: str | os.PathLike, reason: str, advice: str) -> None:
    """Log `path: reason` as a warning the first time this process falls back in this `kind` of way (with `advice`:
    what makes it fast again), at debug level after that."""
    key = (os.getpid(), kind)
    if key in _warned:
        logger.debug("%s: %s", path, reason)
        return
    _warned.add(key)
    logger.warning("%s: %s; %s (warned once per process, later files at debug level)", path, reason, advice)
