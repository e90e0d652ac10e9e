"""Deterministic, resumable, distributed batching.

Each epoch draws a permutation from (seed, epoch) alone. Global micro-batch `b` of an
epoch is the slice `perm[b*G:(b+1)*G]` with G = batch_size x world_size, and rank r takes
every world_size-th item of it. So the samples of one optimizer step are the same for 1
process at batch 2B as for 2 processes at batch B, and for accumulation 2 x B as for
1 x 2B; the position to resume from is just (epoch, micro-batch index).

The DataLoader gets its own generator so creating an iterator never draws from the
global RNG (which the engine checkpoints for the stages' own randomness).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from voxforge.errors import UserError


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        start_batch: int = 0,
    ):
        global_batch = batch_size * world_size
        if size < global_batch:
            raise UserError(
                f"the dataset has {size} samples, fewer than one global batch "
                f"(train.batch_size={batch_size} x {world_size} processes); lower train.batch_size"
            )
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.seed, self.shuffle, self.epoch, self.start_batch = seed, shuffle, epoch, start_batch
        self.batches_per_epoch = size // global_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(self.size, generator=gen)
        else:
            perm = torch.arange(self.size)
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            chunk = perm[b * global_batch : (b + 1) * global_batch]
            yield chunk[self.rank :: self.world_size].tolist()


class BatchStream:
    """Endless stream of micro-batches that knows its (epoch, batch) position.

    `make_sampler(rank=, world_size=, seed=, epoch=, start_batch=)` builds one epoch's batch
    sampler, or returns None for the default `ResumableBatchSampler` over the dataset; it must
    be deterministic in its arguments and expose `batches_per_epoch`, which is how a stage
    plugs in batches of its own shape (e.g. aspect-ratio buckets: `Stage.batch_sampler`)
    without losing exact resume or the 1 × 2B = 2 × B equivalence.
    """

    def __init__(
        self,
        dataset: Dataset,
        collate,
        *,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        num_workers: int = 0,
        epoch: int = 0,
        batch: int = 0,
        make_sampler: Callable[..., Sampler] | None = None,
    ):
        self.dataset, self.collate = dataset, collate
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_workers = num_workers
        self.epoch, self.batch = epoch, batch
        self._iter: Iterator | None = None
        self._custom_sampler = make_sampler
        probe = self._make_sampler(rank=rank, world_size=world_size, seed=seed, epoch=0, start_batch=0)
        self.batches_per_epoch = probe.batches_per_epoch

    def _make_sampler(self, **kw: int) -> Sampler:
        sampler = self._custom_sampler(**kw) if self._custom_sampler is not None else None
        return (
            sampler
            if sampler is not None
            else ResumableBatchSampler(len(self.dataset), self.batch_size, **kw)
        )

    def _start_epoch(self) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        sampler = self._make_sampler(
            rank=self.rank,
            world_size=self.world_size,
            seed=self.seed,
            epoch=self.epoch,
            start_batch=self.batch,
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed + self.epoch),
        )
        self._iter = iter(loader)

    def next(self):
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch, self._iter = self.epoch + 1, 0, None
        if self._iter is None:
            self._start_epoch()
        item = next(self._iter)
        self.batch += 1
        return item

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}
