"""A finished shard's sha256, kept beside it as `shard-00003-of-00016.h5.sha256` (what `sha256sum` writes).

Before manifest.json seals a folder, nothing else says what a shard's bytes should be, and reading the
attributes of a damaged shard can hang HDF5: its variable-length attributes live in the global heap, which
no HDF5 checksum covers, and one flipped bit there made reading an attribute loop forever
(tests/reliability). So the writer records the hash when it renames the shard into place, and a re-run
compares the file with it before opening the file at all.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from distinit.pipeline.atomic import atomic_write_text
from distinit.pipeline.hashing import sha256_file

SUFFIX = ".sha256"
_LINE = re.compile(r"^([0-9a-f]{64})  (\S+)\n?$")


def checksum_path(shard: str | os.PathLike) -> Path:
    shard = Path(shard)
    return shard.with_name(shard.name + SUFFIX)


def write_checksum(shard: str | os.PathLike, digest: str | None = None) -> str:
    """Record `digest` (default: the file's sha256) for `shard`, atomically; returns it."""
    shard = Path(shard)
    digest = digest or sha256_file(shard)
    atomic_write_text(checksum_path(shard), f"{digest}  {shard.name}\n")
    return digest


def recorded_checksum(shard: str | os.PathLike) -> str | None:
    """The sha256 recorded for `shard`; None when there is no sidecar, or it is unreadable or names another file."""
    shard = Path(shard)
    try:
        text = checksum_path(shard).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    match = _LINE.match(text)
    return match.group(1) if match and match.group(2) == shard.name else None


def checksum_problem(shard: str | os.PathLike, expected: str | None) -> str | None:
    """Why `shard` must not be opened as a finished shard: no `expected` hash, or bytes that differ from it."""
    if expected is None:
        return f"no sha256 recorded for it (a {SUFFIX} file beside it), so it cannot be checked without opening it"
    digest = sha256_file(shard)
    if digest != expected:
        return f"sha256 {digest[:12]}… differs from the {expected[:12]}… recorded when it was written (changed or damaged)"
    return None
