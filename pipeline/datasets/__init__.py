"""Dataset adapters: each turns a real on-disk layout into `VideoRecord`s in a stable order.

`ADAPTERS` maps a name to an `Adapter`; `load_dataset(name, root, ...)` is the one entry point.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from distinit.pipeline.datasets.records import (
    DatasetListing,
    VideoRecord,
    manifest_hash,
    read_manifest,
    write_manifest,
)
from distinit.pipeline.errors import DatasetError

__all__ = [
    "ADAPTERS",
    "Adapter",
    "DatasetListing",
    "VideoRecord",
    "load_dataset",
    "manifest_hash",
    "read_manifest",
    "write_manifest",
]


@dataclasses.dataclass(frozen=True)
class Adapter:
    name: str
    description: str
    load: Callable[..., DatasetListing]


ADAPTERS: dict[str, Adapter] = {}


def register_adapter(name: str, description: str):
    def decorator(load: Callable[..., DatasetListing]) -> Callable[..., DatasetListing]:
        ADAPTERS[name] = Adapter(name, description, load)
        return load

    return decorator


def load_dataset(name: str, root: str | Path, **options) -> DatasetListing:
    """Records of dataset `name` under `root`. Options an adapter does not take must be None."""
    if name not in ADAPTERS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root not found; pass the folder that holds the {name} videos")
    return ADAPTERS[name].load(root, **options)


# Adapters register themselves on import.
from distinit.pipeline.datasets import demo, folder, hmdb51, kinetics, ucf101  # noqa: E402,F401
