import numpy as np
import pytest
import torch

from tests.stages.ss_helpers import stage1_artefacts
from voxforge.errors import UserError
from voxforge.models.conditioning import MultiViewCondition, default_structure_sampler
from voxforge.pipelines.structure import StructurePipeline


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    runs = stage1_artefacts(tmp_path_factory.getbasetemp() / "stage1")
    return StructurePipeline.from_run(runs["flow_run"])


def test_multi_image_modes(pipeline):
    torch.manual_seed(0)
    flow = pipeline.flow
    x, t = torch.randn(1, 4, 4, 4, 4), torch.full((1,), 0.7)
    tokens = torch.randn(1, 3, flow.image_encoder.num_tokens, flow.context_dim)
    with torch.no_grad():
        per_view = [flow(x, t, context=tokens[:, k]) for k in range(3)]
        views = MultiViewCondition(tokens, "stochastic")
        cycled = [pipeline._model_fn(x, t, views) for _ in range(4)]
        averaged = pipeline._model_fn(x, t, MultiViewCondition(tokens, "multidiffusion"))
    for got, k in zip(cycled, [0, 1, 2, 0]):
        torch.testing.assert_close(got, per_view[k])
    torch.testing.assert_close(averaged, torch.stack(per_view).mean(0), atol=1e-5, rtol=1e-5)
    images = torch.rand(2, 3, 32, 32)
    for mode in ("stochastic", "multidiffusion"):
        coords = pipeline.generate(images, seed=1, mode=mode, sampler=default_structure_sampler(steps=2))
        assert coords.ndim == 2 and coords.shape[1] == 3 and (coords < 16).all()
    with pytest.raises(UserError, match="multi-image mode"):
        pipeline.generate(images, mode="average")


def test_unconditional_and_batched_generation_are_seeded(pipeline):
    sampler = default_structure_sampler(steps=2)
    a = pipeline.unconditional(2, seed=5, sampler=sampler)
    b = pipeline.unconditional(2, seed=5, sampler=sampler)
    assert len(a) == 2 and all(np.array_equal(u, v) for u, v in zip(a, b))
    latents = pipeline.sample_latents(None, num=2, seed=5, sampler=sampler)
    assert latents.shape == (2, 4, 4, 4, 4)
