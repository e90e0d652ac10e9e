"""A stage's own batch sampler (`Stage.batch_sampler`): used by the engine, resumed exactly."""

from __future__ import annotations

import torch

from tests.train.helpers import final_weights, make_recipe
from voxforge.stages import register_stage
from voxforge.stages.debug import DebugRegressionStage
from voxforge.train.data import BatchStream, ResumableBatchSampler
from voxforge.train.engine import train

SEEN: list[list[int]] = []


class ParityBatches:
    """Every batch holds indices of one parity (a stand-in for aspect-ratio buckets)."""

    def __init__(self, size, batch_size, *, rank, world_size, seed, epoch, start_batch):
        gen = torch.Generator().manual_seed(seed * 7 + epoch)
        groups = [
            torch.arange(p, size, 2)[torch.randperm((size - p + 1) // 2, generator=gen)] for p in (0, 1)
        ]
        self.batches = [
            g[i : i + batch_size].tolist()
            for g in groups
            for i in range(0, len(g) - batch_size + 1, batch_size)
        ]
        order = torch.randperm(len(self.batches), generator=gen).tolist()
        self.batches = [self.batches[i] for i in order]
        self.batches_per_epoch, self.start_batch = len(self.batches), start_batch

    def __len__(self):
        return self.batches_per_epoch - self.start_batch

    def __iter__(self):
        for batch in self.batches[self.start_batch :]:
            SEEN.append(batch)
            yield batch


@register_stage
class ParityStage(DebugRegressionStage):
    name = "test_parity_batches"

    def batch_sampler(self, dataset, batch_size, **kwargs):
        return ParityBatches(len(dataset), batch_size, **kwargs)


def test_stream_uses_the_given_sampler_and_its_resume_position():
    data = list(range(20))
    make = lambda **kw: ParityBatches(20, 4, **kw)  # noqa: E731
    stream = BatchStream(data, list, batch_size=4, rank=0, world_size=1, seed=3, make_sampler=make)
    batches = [stream.next() for _ in range(7)]
    assert all(len({i % 2 for i in b}) == 1 for b in batches)
    resumed = BatchStream(
        data, list, batch_size=4, rank=0, world_size=1, seed=3, make_sampler=make, epoch=1, batch=2
    )
    assert stream.batches_per_epoch == 4 and resumed.next() == batches[6]  # epoch 1, its third batch
    default = BatchStream(data, list, batch_size=4, rank=0, world_size=1, seed=3)
    expected = next(iter(ResumableBatchSampler(20, 4, seed=3)))
    assert default.next() == expected


def test_engine_trains_on_the_stage_sampler_and_resumes_exactly(tmp_path):
    recipe = make_recipe(train={"max_steps": 12})
    recipe.stage = "test_parity_batches"
    SEEN.clear()
    train(recipe, tmp_path / "straight")
    assert SEEN and all(len({i % 2 for i in b}) == 1 for b in SEEN)
    train(recipe, tmp_path / "split", stop_after=5)
    train(recipe, tmp_path / "split")
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)
