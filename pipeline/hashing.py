"""Content hashes used for stage keys, manifests and weight provenance."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values always hash equal."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def json_lines(data: bytes | str) -> list[Any] | None:
    """Every line of a JSON-lines text parsed in one call (as one JSON array: C speed, where a json.loads per line
    spends most of its time in Python), or None when a line is not JSON (the caller parses line by line to say
    which). Blank lines are skipped."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        entries = json.loads("[" + ",".join(lines) + "]")
    except ValueError:
        return None
    return entries if len(entries) == len(lines) else None
