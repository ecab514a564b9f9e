"""Many short strings as one bytes blob with offsets, for tables that DataLoader workers share.

A list of 240k Python strings costs ~60 bytes of object per string, and every worker that touches one writes its
reference count, so copy-on-write gives each forked worker its own copy of the pages. Two numpy arrays are
two objects: their data pages are only ever read, so forked workers keep sharing them.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


class StringTable:
    """Strings by position: `table[i]` decodes the i-th from the blob (a microsecond); `len(table)`."""

    def __init__(self, strings: Iterable[str]):
        encoded = [str(text).encode("utf-8") for text in strings]
        lengths = np.fromiter((len(item) for item in encoded), dtype=np.int64, count=len(encoded))
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy() if encoded else np.zeros(0, np.uint8)

    @classmethod
    def from_arrays(cls, blob: np.ndarray, offsets: np.ndarray) -> "StringTable":
        table = cls.__new__(cls)
        table.blob, table.offsets = np.asarray(blob, dtype=np.uint8), np.asarray(offsets, dtype=np.int64)
        return table

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, position: int) -> str:
        return self.blob[self.offsets[position]:self.offsets[position + 1]].tobytes().decode("utf-8")

    def tolist(self) -> list[str]:
        """Every string, decoded in one pass (for building lookups; not for keeping in workers)."""
        data = self.blob.tobytes()
        bounds = self.offsets.tolist()
        return [data[start:stop].decode("utf-8") for start, stop in zip(bounds[:-1], bounds[1:])]

    @property
    def nbytes(self) -> int:
        return int(self.blob.nbytes + self.offsets.nbytes)


def ragged(parts: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """(flat, offsets): `parts` concatenated, part i at flat[offsets[i]:offsets[i + 1]]."""
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    np.cumsum([len(part) for part in parts], out=offsets[1:])
    flat = np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)
    return flat, offsets
