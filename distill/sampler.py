"""A shuffling, rank-aware sampler that can start mid-epoch, so a resumed run sees the same batches."""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler[int]):
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
        self.epoch = epoch
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.dataset_length, generator=generator).tolist()
        else:
            order = list(range(self.dataset_length))
        padded = (order * math.ceil(self.per_rank * self.world_size / max(1, len(order))))[: self.per_rank * self.world_size]
        mine = padded[self.rank :: self.world_size]
        return iter(mine[self.start_index :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start_index)
