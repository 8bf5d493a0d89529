"""EpochSampler: shuffles and shards like DistributedSampler, and tells each sample its epoch."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from vdm.errors import UserError


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(index, epoch)`` keys: this rank's share of a per-epoch permutation.

    Passing the epoch with the index lets a dataset draw its augmentation from
    ``(seed, epoch, index)`` instead of a worker's RNG stream, so a clip does not depend on
    which worker or rank loads it, and a run resumed mid-epoch (the loader skips the batches
    already seen) gets exactly the clips the uninterrupted run would have.

    Args:
        num_samples: length of the dataset.
        shuffle: a new permutation every epoch (from ``seed + epoch``); else in order.
        seed: permutation seed; the same on every rank, so shards are disjoint.
        num_replicas: number of ranks sharing the data.
        rank: this rank.
        drop_last: drop the tail that does not divide evenly among ranks (training);
            otherwise pad by wrapping around, so every rank has the same number of samples.
    """

    def __init__(
        self,
        num_samples: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise UserError(f"rank {rank} is not in [0, {num_replicas}).")
        self.num_samples, self.shuffle, self.seed = num_samples, shuffle, seed
        self.num_replicas, self.rank, self.drop_last = num_replicas, rank, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.num_replicas
        return math.ceil(self.num_samples / self.num_replicas)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        total = len(self) * self.num_replicas
        order = (order * math.ceil(total / max(1, len(order))))[:total]
        for index in order[self.rank :: self.num_replicas]:
            yield index, self.epoch
