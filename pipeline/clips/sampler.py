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


def epoch_order(dataset_length: int, length: int, shuffle: bool, seed: int, epoch: int) -> list[int]:
    """The epoch's indices, shuffled from (seed, epoch) when `shuffle`, padded to `length` by repeating from the
    start (as DistributedSampler pads)."""
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(dataset_length, generator=generator).tolist()
    else:
        order = list(range(dataset_length))
    return (order * math.ceil(length / max(1, len(order))))[:length]


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
        padded = epoch_order(self.dataset_length, self.per_rank * self.world_size, self.shuffle, self.seed, self.epoch)
        mine = padded[self.rank :: self.world_size]
        epoch = int(self.epoch)
        return iter([EpochIndex(index, epoch) for index in mine[self.start_index :]])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_index)


class GlobalBatchSampler(Sampler[EpochIndex]):
    """The epoch as optimizer steps of `global_batch` clips, whatever the number of processes.

    Each epoch shuffles all indices from (seed, epoch), pads the order to whole steps by repeating its start (as
    DistributedSampler pads to whole ranks), and cuts it into steps of `global_batch`. A step is split into
    `world_size * accum_steps` micro-batches of `batch_size`: micro-batch `a` of rank `r` is slot
    `a * world_size + r`, so 2 processes x 1 accumulation and 1 process x 2 accumulations see the same micro-batches
    (the same BatchNorm statistics) in the same steps. The position in an epoch is a step, the same for every
    layout of the same global batch, so a run resumes on another number of processes from where it stopped.
    Yields this rank's indices, micro-batch after micro-batch (a DataLoader with batch_size=`batch_size` batches
    them exactly)."""

    def __init__(self, dataset_length: int, *, batch_size: int, global_batch: int, seed: int, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True):
        if global_batch % (batch_size * world_size):
            raise ValueError(f"global batch {global_batch} is not a multiple of {batch_size} x {world_size}")
        self.dataset_length = dataset_length
        self.batch_size = batch_size
        self.global_batch = global_batch
        self.accum_steps = global_batch // (batch_size * world_size)
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.epoch = 0
        self.start_step = 0
        self.steps_per_epoch = math.ceil(dataset_length / global_batch) if dataset_length else 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """The epoch the next iteration draws (and passes on with each index), from its step `start_step` on."""
        self.epoch = epoch
        self.start_step = start_step

    def __iter__(self) -> Iterator[EpochIndex]:
        padded = epoch_order(self.dataset_length, self.steps_per_epoch * self.global_batch, self.shuffle, self.seed,
                             self.epoch)
        epoch = int(self.epoch)
        mine = []
        for step in range(self.start_step, self.steps_per_epoch):
            for micro in range(self.accum_steps):
                start = step * self.global_batch + (micro * self.world_size + self.rank) * self.batch_size
                mine.extend(EpochIndex(index, epoch) for index in padded[start:start + self.batch_size])
        return iter(mine)

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.start_step) * self.accum_steps * self.batch_size
