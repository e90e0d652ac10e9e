"""Aspect-ratio buckets of the image family: the bucket table, fitting an image to its bucket,
and the batch sampler that keeps every batch inside one bucket.

Buckets follow Sana and SDXL: a fixed table of (W, H), multiples of `multiple`, with an area
near resolution² and aspect ratios up to `max_aspect`; each image goes to the bucket of the
nearest aspect ratio (in log space) and is resized (covering the bucket) and centre-cropped
to it (`fit_to_bucket`). `BucketBatchSampler` draws batches of one bucket each, by the
sources' mixing weights when they differ (`voxforge.data.images`, "Mixing").
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from voxforge.errors import UserError

if TYPE_CHECKING:
    from voxforge.data.image_dataset import ImageCaptionDataset

__all__ = ["BucketBatchSampler", "bucket_batch_sampler", "bucket_table", "fit_to_bucket", "nearest_bucket"]


def bucket_table(resolution: int, multiple: int = 32, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(W, H) buckets, multiples of `multiple`, area within 20 % of resolution², sorted by aspect."""
    area = resolution * resolution
    side = max(multiple, round(resolution / multiple) * multiple)
    found = {(side, side)}
    width = multiple
    while width <= resolution * max_aspect + multiple:
        height = max(multiple, round(area / width / multiple) * multiple)
        aspect = max(width / height, height / width)
        if aspect <= max_aspect + 1e-9 and 0.8 <= width * height / area <= 1.25:
            found |= {(width, height), (height, width)}  # the table is symmetric: portrait = landscape
        width += multiple
    by_aspect: dict[float, tuple[int, int]] = {}
    for w, h in sorted(found, key=lambda b: (b[0] / b[1], abs(b[0] * b[1] - area))):
        by_aspect.setdefault(round(w / h, 6), (w, h))  # one bucket per aspect: the closest area
    return sorted(by_aspect.values(), key=lambda b: b[0] / b[1])


def nearest_bucket(width: int, height: int, buckets: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log space) to width / height."""
    target = math.log(width / height)
    best = min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))
    return int(best[0]), int(best[1])


def fit_to_bucket(image: Any, bucket: tuple[int, int], resample: int) -> Any:
    """Resize a PIL image to cover `bucket` (W, H), then crop its centre to exactly that size."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    size = (
        max(width, math.ceil(image.width * scale - 1e-6)),
        max(height, math.ceil(image.height * scale - 1e-6)),
    )
    if size != image.size:
        image = image.resize(size, resample, reducing_gap=3.0 if scale < 0.5 else None)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


class BucketBatchSampler:
    """Batches of one bucket each, deterministic in (seed, epoch), resumable, split across ranks.

    Like `voxforge.train.data.ResumableBatchSampler`, global batch b (G = batch_size x
    world_size items) depends only on (seed, epoch, b) and rank r takes its every
    world_size-th item, so 1 process at 2B draws what 2 processes at B draw. With equal
    weights an epoch is a permutation: the items of each bucket, in permutation order, cut
    into global batches (a bucket's remainder waits for another epoch) and the batches
    shuffled. With mixing weights every global batch picks a bucket with probability
    proportional to its total weight, then G distinct items of it by weight; an epoch then has
    `len // G` batches. Buckets with fewer than G items are never drawn (`unused`).
    """

    def __init__(
        self,
        buckets: Sequence[Sequence[int]],
        batch_size: int,
        *,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        start_batch: int = 0,
    ):
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.seed, self.shuffle, self.epoch, self.start_batch = (
            int(seed),
            shuffle,
            int(epoch),
            int(start_batch),
        )
        self.global_batch = self.batch_size * self.world_size
        keys = [tuple(int(v) for v in b) for b in buckets]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key, []).append(index)
        self.groups = {k: np.asarray(v) for k, v in sorted(groups.items()) if len(v) >= self.global_batch}
        self.unused = sum(len(v) for v in groups.values()) - sum(len(v) for v in self.groups.values())
        if not self.groups:
            largest = max((len(v) for v in groups.values()), default=0)
            raise UserError(
                f"no bucket has a full batch: the largest holds {largest} images, a global batch is "
                f"{self.batch_size} x {self.world_size} processes; lower the batch size or prepare with "
                "`--buckets square`"
            )
        self.weights = None
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if len(weights) != len(keys) or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError("weights: one non-negative weight per item, not all zero")
            if not np.allclose(weights, weights[0]):
                self.weights = weights
        if self.weights is None:
            self.batches_per_epoch = sum(len(v) // self.global_batch for v in self.groups.values())
        else:
            self.batches_per_epoch = max(1, sum(len(v) for v in self.groups.values()) // self.global_batch)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Every global batch (item indices) of an epoch."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        keys = list(self.groups)
        if self.weights is None:
            batches = []
            for key in keys:
                members = self.groups[key]
                if self.shuffle:
                    members = members[torch.randperm(len(members), generator=generator).numpy()]
                full = len(members) // self.global_batch * self.global_batch
                batches += list(members[:full].reshape(-1, self.global_batch))
            if self.shuffle:
                batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            return batches
        totals = torch.tensor([self.weights[self.groups[k]].sum() for k in keys])
        picks = torch.multinomial(totals, self.batches_per_epoch, replacement=True, generator=generator)
        batches = []
        for pick in picks.tolist():
            members = self.groups[keys[pick]]
            chosen = torch.multinomial(
                torch.as_tensor(self.weights[members]) + 1e-12,
                self.global_batch,
                replacement=False,
                generator=generator,
            )
            batches.append(members[chosen.numpy()])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.epoch_batches(self.epoch)[self.start_batch :]:
            yield batch[self.rank :: self.world_size].tolist()


def bucket_batch_sampler(
    dataset: ImageCaptionDataset, batch_size: int, *, weighted: bool = True, **kwargs: Any
) -> BucketBatchSampler:
    """A `BucketBatchSampler` over a dataset's buckets (and its mixing weights when `weighted`)."""
    return BucketBatchSampler(
        dataset.buckets(), batch_size, weights=dataset.weights() if weighted else None, **kwargs
    )
