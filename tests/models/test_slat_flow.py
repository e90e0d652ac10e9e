"""SLat flow: shapes, zero init, gradients, checkpointing, per-sample independence, CFG drop."""

from __future__ import annotations

import pytest
import torch

from voxforge.models.image_encoders import ImageEncoderConfig
from voxforge.models.slat_flow import SLatFlowConfig, SLatFlowModel, SparseResBlock
from voxforge.sparse import SparseTensor
from voxforge.sparse.sampling import sparse_downsample

R = 16


def _config(**overrides) -> SLatFlowConfig:
    values = dict(resolution=R, in_channels=8, io_channels=[16], io_res_blocks=1, width=32, depth=2, heads=2)
    values.update(overrides)
    return SLatFlowConfig(**values)


def _encoder() -> ImageEncoderConfig:
    return ImageEncoderConfig(image_size=32, patch_size=8, width=32, depth=1, heads=2)


def _batch(seed: int = 0) -> SparseTensor:
    gen = torch.Generator().manual_seed(seed)
    ijk = torch.unique(torch.randint(0, R, (400, 3), generator=gen), dim=0)
    second = ijk[: len(ijk) // 3]
    coords = torch.cat(
        [
            torch.cat([torch.zeros(len(ijk), 1, dtype=torch.long), ijk], 1),
            torch.cat([torch.ones(len(second), 1, dtype=torch.long), second], 1),
        ]
    )
    return SparseTensor(coords, torch.randn(len(coords), 8, generator=gen), spatial_shape=(R, R, R))


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1:
                p.normal_(0, 0.05)


def test_zero_velocity_at_init_and_same_voxels_out():
    torch.manual_seed(0)
    model = SLatFlowModel(_config(), _encoder())
    x = _batch()
    out = model(x, torch.rand(2), images=torch.rand(2, 3, 32, 32))
    assert out.feats.shape == x.feats.shape
    assert torch.equal(out.coords, x.coords)
    assert float(out.feats.detach().abs().max()) == 0.0


@pytest.mark.parametrize("pos_embed", ["ape", "rope", "both"])
def test_gradients_reach_every_parameter(pos_embed):
    model = SLatFlowModel(_config(pos_embed=pos_embed), _encoder())
    _randomise(model)
    x = _batch()
    out = model(x, torch.rand(2), images=torch.rand(2, 3, 32, 32))
    out.feats.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_two_levels_and_grad_checkpoint_match():
    cfg = _config(io_channels=[8, 16], io_res_blocks=2)
    plain = SLatFlowModel(cfg, _encoder())
    _randomise(plain, 1)
    ckpt = SLatFlowModel(_config(io_channels=[8, 16], io_res_blocks=2, grad_checkpoint=True), _encoder())
    ckpt.load_state_dict(plain.state_dict())
    x, t, images = _batch(1), torch.rand(2), torch.rand(2, 3, 32, 32)
    a = plain(x, t, images=images).feats
    b = ckpt(x, t, images=images).feats
    torch.testing.assert_close(a, b)
    a.sum().backward()
    b.sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name, atol=1e-5, rtol=1e-4)
    assert cfg.coarse_resolution == 4


def test_samples_are_independent_and_drop_means_zero_tokens():
    model = SLatFlowModel(_config(), _encoder())
    _randomise(model, 2)
    model.eval()
    x, t, images = _batch(2), torch.rand(2), torch.rand(2, 3, 32, 32)
    both = model(x, t, images=images).feats
    rows = x.layout[1]
    alone = SparseTensor(
        x.coords[rows] - torch.tensor([1, 0, 0, 0], dtype=torch.int32), x.feats[rows], spatial_shape=(R, R, R)
    )
    torch.testing.assert_close(model(alone, t[1:], images=images[1:]).feats, both[rows], atol=1e-5, rtol=1e-4)
    tokens = model.encode_images(images)
    dropped = model(x, t, context=tokens, drop=torch.tensor([True, False])).feats
    zeros = model(x, t, context=torch.zeros_like(tokens)).feats
    torch.testing.assert_close(dropped[x.layout[0]], zeros[x.layout[0]])
    torch.testing.assert_close(dropped[rows], both[rows], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="exactly one"):
        model(x, t)


def test_latent_statistics_round_trip_and_persist():
    model = SLatFlowModel(_config(), _encoder())
    model.set_latent_stats(torch.arange(8.0), torch.full((8,), 2.0))
    z = torch.randn(5, 8)
    torch.testing.assert_close(model.denormalize(model.normalize(z)), z)
    state = model.state_dict()
    assert torch.equal(state["latent_mean"], torch.arange(8.0))
    fresh = SLatFlowModel(_config(), _encoder())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.latent_std, torch.full((8,), 2.0))


def test_res_block_resampling_keeps_rows_aligned():
    x = _batch(3).replace(torch.randn(_batch(3).num_points, 16))
    down = SparseResBlock(16, 32, 24, resample="down")
    emb = torch.randn(2, 32)
    coarse = down(x, emb)
    assert coarse.num_points == sparse_downsample(x, 2).num_points and coarse.num_channels == 24
    up = SparseResBlock(24, 32, 16, resample="up")
    fine = up(coarse, emb)
    assert torch.equal(fine.coords, x.coords)
