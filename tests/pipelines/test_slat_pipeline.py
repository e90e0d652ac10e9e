"""SLatPipeline on random tiny networks: shapes, seeds, multi-image modes, guidance, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxforge.errors import UserError
from voxforge.models.conditioning import default_slat_sampler
from voxforge.models.image_encoders import ImageEncoderConfig
from voxforge.models.slat_flow import SLatFlowConfig, SLatFlowModel
from voxforge.models.slat_vae import GaussianHeadConfig, SLatVAE, SLatVAEConfig
from voxforge.pipelines.image_to_3d import SLatPipeline

R = 16


@pytest.fixture(scope="module")
def pipeline() -> SLatPipeline:
    torch.manual_seed(0)
    flow = SLatFlowModel(
        SLatFlowConfig(resolution=R, io_channels=[8], io_res_blocks=0, width=32, depth=1, heads=2),
        ImageEncoderConfig(image_size=32, patch_size=8, width=32, depth=1, heads=2),
    )
    with torch.no_grad():
        for p in flow.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.05)
    flow.set_latent_stats(torch.full((8,), 0.5), torch.full((8,), 2.0))
    vae = SLatVAE(
        SLatVAEConfig(
            resolution=R,
            in_channels=3,
            width=32,
            encoder_blocks=1,
            decoder_blocks=1,
            heads=2,
            head=GaussianHeadConfig(gaussians_per_voxel=2),
        )
    )
    return SLatPipeline(flow, vae)


def _structures() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    a = np.unique(rng.integers(0, R, (120, 3)), axis=0)
    b = np.unique(rng.integers(0, R, (60, 3)), axis=0)
    return [a[::-1].copy(), b]  # unsorted input is fine


def test_latents_on_the_given_voxels_and_seeded(pipeline):
    coords = _structures()
    tokens = pipeline.image_tokens(torch.rand(2, 3, 32, 32))[:, None]  # [B, 1, T, C]
    sampler = default_slat_sampler(steps=3)
    latents = pipeline.sample_latents(coords, tokens, seed=1, sampler=sampler)
    assert latents.num_points == sum(len(c) for c in coords) and latents.num_channels == 8
    for b, c in enumerate(coords):
        rows = latents.coords[:, 0] == b
        assert {tuple(v) for v in latents.coords[rows, 1:].tolist()} == {tuple(v) for v in c.tolist()}
    again = pipeline.sample_latents(coords, tokens, seed=1, sampler=sampler)
    torch.testing.assert_close(again.feats, latents.feats)
    other = pipeline.sample_latents(coords, tokens, seed=2, sampler=sampler)
    assert not torch.allclose(other.feats, latents.feats)
    gaussians = pipeline.decode(latents)
    assert [g.num_gaussians for g in gaussians] == [2 * len(c) for c in coords]
    unguided = pipeline.sample_latents(
        coords, tokens, seed=1, sampler=default_slat_sampler(steps=3, cfg_scale=1.0)
    )
    assert not torch.allclose(unguided.feats, latents.feats)  # guidance changes the sample
    unconditional = pipeline.sample_latents(coords, None, seed=1, sampler=sampler)
    assert torch.isfinite(unconditional.feats).all()


def test_multi_image_modes_agree_for_identical_views(pipeline):
    coords = _structures()[:1]
    image = torch.rand(1, 3, 32, 32)
    one = pipeline.image_tokens(image)[None]  # [1, 1, T, C]
    two = one.expand(1, 2, -1, -1)  # the same view twice
    sampler = default_slat_sampler(steps=3)
    single = pipeline.sample_latents(coords, one, seed=4, sampler=sampler).feats
    for mode in ("stochastic", "multidiffusion"):
        multi = pipeline.sample_latents(coords, two, seed=4, sampler=sampler, mode=mode).feats
        torch.testing.assert_close(multi, single, atol=1e-5, rtol=1e-4)
    different = torch.cat([one, pipeline.image_tokens(torch.rand(1, 3, 32, 32))[None]], dim=1)
    a = pipeline.sample_latents(coords, different, seed=4, sampler=sampler, mode="stochastic").feats
    b = pipeline.sample_latents(coords, different, seed=4, sampler=sampler, mode="multidiffusion").feats
    assert not torch.allclose(a, b)


def test_bad_structures_are_user_errors(pipeline):
    tokens = pipeline.image_tokens(torch.rand(1, 3, 32, 32))[None]
    with pytest.raises(UserError, match="empty structure"):
        pipeline.sample_latents([np.zeros((0, 3), np.int64)], tokens)
    with pytest.raises(UserError, match="must lie in"):
        pipeline.sample_latents([np.array([[0, 0, R]])], tokens)
    with pytest.raises(UserError, match="multi-image mode"):
        pipeline.sample_latents(_structures()[:1], tokens, mode="average")
