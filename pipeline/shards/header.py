"""Read what a shard says about itself: file attributes, teachers, row count, video ids."""

from __future__ import annotations

import json
import os
from typing import Any

import h5py
import numpy as np

from distinit.pipeline.shards import format as fmt


def open_read_only(path: str | os.PathLike, chunk_cache_bytes: int | None = None) -> h5py.File:
    """Open a finished shard for reading. Finished shards never change (writers use temp names), so
    HDF5's file locks buy nothing, and they fail on some cluster filesystems (NFS, Lustre). `chunk_cache_bytes`:
    HDF5's chunk cache per dataset (None: its default, 1 MiB)."""
    if chunk_cache_bytes is None:
        return h5py.File(path, "r", locking=False)
    return h5py.File(path, "r", locking=False, rdcc_nbytes=chunk_cache_bytes)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def file_attributes(shard: h5py.File) -> dict[str, Any]:
    """The shard's file attributes, JSON ones decoded (`sampling`, `attributes`, `teacher_names`, `skipped`)."""
    attributes = shard.attrs
    return {
        "format_version": int(attributes[fmt.ATTR_FORMAT_VERSION]),
        "shard_index": int(attributes[fmt.ATTR_SHARD_INDEX]),
        "shard_count": int(attributes[fmt.ATTR_SHARD_COUNT]),
        "dataset": _text(attributes[fmt.ATTR_DATASET]),
        "stage_key": _text(attributes[fmt.ATTR_STAGE_KEY]),
        "code_version": _text(attributes[fmt.ATTR_CODE_VERSION]),
        "sampling": json.loads(_text(attributes[fmt.ATTR_SAMPLING_JSON])),
        "attributes": json.loads(_text(attributes[fmt.ATTR_ATTRIBUTES_JSON])),
        "teacher_names": json.loads(_text(attributes[fmt.ATTR_TEACHER_NAMES_JSON])),
        # Absent only while a shard is being written; a finished shard always has the list.
        "skipped": json.loads(_text(attributes.get(fmt.ATTR_SKIPPED_JSON, "[]"))),
    }


def teachers(shard: h5py.File) -> list[dict[str, Any]]:
    """Each teacher's `describe()` dict as written, with its outputs' class names put back."""
    described_teachers = []
    for name in json.loads(_text(shard.attrs[fmt.ATTR_TEACHER_NAMES_JSON])):
        group = shard[name]
        described = json.loads(_text(group.attrs[fmt.ATTR_DESCRIBE_JSON]))
        for output in described.get("outputs", []):
            class_names = group[output["name"]].attrs.get(fmt.ATTR_CLASS_NAMES)
            output["class_names"] = None if class_names is None else [_text(item) for item in class_names]
        described_teachers.append(described)
    return described_teachers


def output_keys(described_teachers: list[dict[str, Any]]) -> list[str]:
    """`<teacher>/<output>` for every output, in the order written."""
    return [fmt.output_key(teacher["name"], output["name"]) for teacher in described_teachers for output in teacher["outputs"]]


def row_count(shard: h5py.File) -> int:
    return int(shard[fmt.T_SECONDS].shape[0])


def decode_video_ids(raw: np.ndarray) -> list[str]:
    """Fixed-length UTF-8 bytes (NUL-padded) -> Python strings."""
    return [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in raw.tolist()]
