"""A shuffling, rank-aware sampler that can start mid-epoch, so a resumed run sees the same batches.

It yields `EpochIndex(index, epoch)` pairs, not bare indices: a DataLoader worker holds a copy of the dataset
made when it started, so with persistent workers (kept from one epoch to the next) an epoch set on the
dataset in the main process never reaches them. The epoch travels with each index instead, and the
datasets (distill.data, evaluate.clips) take their randomness from the pair (`sample_key`).
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch
from torch.utils.data import Sampler


class EpochIndex(NamedTuple):
    """A sample index and the epoch it is drawn for."""

    index: int
    epoch: int


def sample_key(key, default_epoch: int) -> tuple[int, int]:
    """(index, epoch) of a dataset key: an EpochIndex (or any (index, epoch) pair) as the sampler yields it, or a
    plain index, which takes `default_epoch` (the dataset's own, from its set_epoch)."""
    if isinstance(key, tuple):
        index, epoch = key
        return int(index), int(epoch)
    return int(key), int(default_epoch)


class ResumableSampler(Sampler[EpochIndex]):
    """Like DistributedSampler (same permutation on every rank from (seed, epoch), padded to equal
    length, rank r takes every world-th index), plus `start_index` to skip what was already seen."""

    def __init__(self, dataset_length: int, *, shuffle: bool, seed: int, rank: int = 0, world_size: int = 1):
        self.dataset_length = dataset_length
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_index = 0
        self.per_rank = math.ceil(dataset_length / world_size)

    def set_epoch(self, epoch: int, start_index: int = 0) -> None:
        """The epoch the next iteration draws (and passes on with each index), skipping its first `start_index`."""
        self.epoch = epoch
        self.start_index = start_index

    def __iter__(self) -> Iterator[EpochIndex]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.dataset_length, generator=generator).tolist()
        else:
            order = list(range(self.dataset_length))
        padded = (order * math.ceil(self.per_rank * self.world_size / max(1, len(order))))[: self.per_rank * self.world_size]
        mine = padded[self.rank :: self.world_size]
        epoch = int(self.epoch)
        return iter([EpochIndex(index, epoch) for index in mine[self.start_index :]])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_index)
