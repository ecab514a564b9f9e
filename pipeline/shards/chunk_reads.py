"""Reading a few rows of a teacher output straight from the shard files, by the chunks' byte offsets.

A DataLoader worker that reads targets through h5py keeps every shard it touched open, and HDF5 holds ~0.5 MB
per open file (its metadata cache's hash table and the file's structures) plus a metadata cache that grows with
the chunks looked up: 45-77 MB per worker over 64 shards after a few thousand clips (bench/scale.py), times
8 ranks x 7 workers on a node. Teacher outputs are stored uncompressed (pipeline.shards.format), so a chunk is its
rows' bytes followed by the 4-byte fletcher32 checksum HDF5's filter appends. Finalize records each chunk's
file offset and size (stage one's video index, pipeline.shards.video_index); a read is then one os.pread per
chunk on a plain file descriptor, with the checksum checked here as HDF5 checks it: a flipped bit is an OSError,
never a silent value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

CHECKSUM_BYTES = 4


def fletcher32(data: bytes) -> int:
    """HDF5's Fletcher-32 (H5_checksum_fletcher32): over big-endian 16-bit words, sum1 = the words' sum and sum2 =
    the sum of the running sum1, each folded modulo 65535 as HDF5 folds it (a positive sum lands in 1..65535, a
    zero sum stays 0), returned as sum2 << 16 | sum1."""
    if len(data) % 2:
        data = data + b"\0"  # an odd last byte counts as the high byte of a word
    words = np.frombuffer(data, dtype=">u2").astype(np.uint64)
    first = int(words.sum())
    second = int(words @ np.arange(len(words), 0, -1, dtype=np.uint64))

    def fold(total: int) -> int:
        return 0 if total == 0 else (total - 1) % 0xFFFF + 1

    return (fold(second) << 16) | fold(first)


@dataclass
class ChunkTable:
    """Where one output's chunks lie: chunk k of shard s is at offsets[shard_starts[s] + k] (sizes alike)."""

    chunk_rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype
    offsets: np.ndarray  # int64 byte offsets in the shard file
    sizes: np.ndarray  # int32 stored bytes (rows' bytes + checksum)
    shard_starts: np.ndarray  # int64 (shards + 1)


def chunk_table(datasets: Sequence[h5py.Dataset]) -> ChunkTable | None:
    """The chunk table of one output over every shard (its dataset in each, in shard order); None when a dataset is
    compressed or filtered otherwise than by fletcher32 alone (then h5py reads it)."""
    first = datasets[0]
    if first.chunks is None or first.compression is not None or first.shuffle or not first.fletcher32:
        return None
    if not hasattr(first.id, "chunk_iter"):  # h5py built on HDF5 < 1.12.3: read through h5py
        return None
    offsets, sizes, starts = [], [], [0]
    for dataset in datasets:
        found: list[tuple[int, int, int, int]] = []
        dataset.id.chunk_iter(lambda info: found.append(
            (info.chunk_offset[0], info.byte_offset, info.size, info.filter_mask)))
        found.sort()
        expected = -(-dataset.shape[0] // dataset.chunks[0])
        if len(found) != expected or any(mask for *_, mask in found):
            return None  # unwritten or filter-skipped chunks: leave it to h5py
        offsets += [offset for _, offset, _, _ in found]
        sizes += [size for _, _, size, _ in found]
        starts.append(starts[-1] + len(found))
    return ChunkTable(chunk_rows=int(first.chunks[0]), row_shape=tuple(first.shape[1:]), dtype=first.dtype,
                      offsets=np.array(offsets, dtype=np.int64), sizes=np.array(sizes, dtype=np.int32),
                      shard_starts=np.array(starts, dtype=np.int64))


class ChunkReader:
    """Rows of outputs by shard and local row, one pread per chunk (module docstring). File descriptors are opened
    lazily and per process (a forked worker opens its own)."""

    def __init__(self, shard_paths: Sequence[Path], tables: dict[str, ChunkTable]):
        self.shard_paths = [os.fspath(path) for path in shard_paths]
        self.tables = tables
        self._descriptors: dict[int, int] = {}
        self._owner_pid = os.getpid()

    def _descriptor(self, shard: int) -> int:
        if os.getpid() != self._owner_pid:  # inherited through fork: the parent's descriptors stay the parent's
            self._descriptors, self._owner_pid = {}, os.getpid()
        descriptor = self._descriptors.get(shard)
        if descriptor is None:
            descriptor = self._descriptors[shard] = os.open(self.shard_paths[shard], os.O_RDONLY)
        return descriptor

    def read(self, name: str, shard: int, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 (local to the shard) of output `name`, as stored (its dtype, (rows, *shape))."""
        table = self.tables[name]
        if stop <= start:
            return np.empty((0, *table.row_shape), dtype=table.dtype)
        first_chunk, last_chunk = start // table.chunk_rows, (stop - 1) // table.chunk_rows
        base = int(table.shard_starts[shard])
        parts = []
        for chunk in range(first_chunk, last_chunk + 1):
            offset, size = int(table.offsets[base + chunk]), int(table.sizes[base + chunk])
            data = os.pread(self._descriptor(shard), size, offset)
            body, stored = data[:-CHECKSUM_BYTES], data[-CHECKSUM_BYTES:]
            if len(data) != size or fletcher32(body) != int.from_bytes(stored, "little"):
                raise OSError(f"{self.shard_paths[shard]}: chunk {chunk} of {name} fails its fletcher32 checksum")
            parts.append(body)
        rows = np.frombuffer(b"".join(parts) if len(parts) > 1 else parts[0], dtype=table.dtype)
        rows = rows.reshape(-1, *table.row_shape)
        skip = start - first_chunk * table.chunk_rows
        return rows[skip:skip + stop - start]

    def close(self) -> None:
        if os.getpid() == self._owner_pid:
            for descriptor in self._descriptors.values():
                os.close(descriptor)
        self._descriptors = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_descriptors": {}}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._owner_pid = os.getpid()
