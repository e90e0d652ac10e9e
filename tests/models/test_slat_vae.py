"""SLat VAE: shapes, bounded Gaussian parameters, gradients, per-sample independence, tiny fit."""

from __future__ import annotations

import math

import pytest
import torch

from voxforge.models.slat_vae import (
    GaussianHeadConfig,
    SLatVAE,
    SLatVAEConfig,
    halton_points,
    voxel_centers,
)
from voxforge.sparse import SparseTensor

R = 16


def _config(**overrides) -> SLatVAEConfig:
    values = dict(
        resolution=R,
        in_channels=3,
        width=32,
        encoder_blocks=2,
        decoder_blocks=2,
        heads=2,
        window_size=4,
        head=GaussianHeadConfig(gaussians_per_voxel=4),
    )
    values.update(overrides)
    return SLatVAEConfig(**values)


def _shell(radius: float = 0.35) -> torch.Tensor:  # [N, 3] surface voxels of a ball
    grid = torch.stack(torch.meshgrid(*[torch.arange(R)] * 3, indexing="ij"), -1).reshape(-1, 3)
    dist = voxel_centers(grid, R).norm(dim=-1)
    return grid[(dist < radius) & (dist > radius - 1.5 / R)]


def _batch(feats_seed: int = 0) -> SparseTensor:
    shell = _shell()
    half = shell[: len(shell) // 2]
    coords = torch.cat(
        [
            torch.cat([torch.zeros(len(shell), 1, dtype=torch.long), shell], 1),
            torch.cat([torch.ones(len(half), 1, dtype=torch.long), half], 1),
        ]
    )
    gen = torch.Generator().manual_seed(feats_seed)
    return SparseTensor(coords, torch.rand(len(coords), 3, generator=gen), spatial_shape=(R, R, R))


def test_decoder_shapes_and_initial_gaussians():
    torch.manual_seed(0)
    cfg = _config()
    model = SLatVAE(cfg)
    x = _batch()
    out = model(x)
    counts = x.seqlens.tolist()
    assert [g.num_gaussians for g in out.gaussians] == [4 * n for n in counts]
    assert out.mean.feats.shape == (x.num_points, 8) and out.logvar.feats.shape == (x.num_points, 8)
    assert out.kl.ndim == 0 and float(out.kl.detach()) >= 0
    g = out.gaussians[0]
    voxel = 1 / R
    # the output layer starts at zero: scale_init voxels, opacity_init, grey
    torch.testing.assert_close(g.scales, torch.full_like(g.scales, 0.5 * voxel))
    torch.testing.assert_close(g.opacities, torch.full_like(g.opacities, 0.1))
    torch.testing.assert_close(g.rgb, torch.full_like(g.rgb, 0.5))
    # the K Gaussians of a voxel start at K different places
    assert g.means[:4].unique(dim=0).shape[0] == 4
    assert halton_points(4).shape == (4, 3) and bool(((halton_points(8) > 0) & (halton_points(8) < 1)).all())


def test_gaussian_parameters_stay_bounded_whatever_the_weights():
    torch.manual_seed(1)
    cfg = _config()
    model = SLatVAE(cfg)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.normal_(0, 3.0)  # wild weights: raw outputs far outside the useful range
    x = _batch()
    with torch.no_grad():
        gaussians = model.decode(model.encode(x))
    voxel, head = 1 / R, cfg.head
    for rows, g in zip(x.layout, gaussians):
        centres = voxel_centers(x.coords[rows, 1:], R).repeat_interleave(4, 0)
        assert (g.means - centres).abs().max() <= 0.5 * head.offset_extent * voxel + 1e-6
        assert float(g.scales.min()) >= head.scale_min * voxel * (1 - 1e-5)
        assert float(g.scales.max()) <= head.scale_max * voxel * (1 + 1e-5)
        assert all(
            torch.isfinite(t).all() for t in (g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc)
        )


def test_samples_do_not_see_each_other_and_encode_mean_is_deterministic():
    torch.manual_seed(2)
    model = SLatVAE(_config())
    x = _batch()
    changed = x.feats.clone()
    changed[x.layout[0]] = torch.rand_like(changed[x.layout[0]])  # only sample 0 differs
    a = model.encode(x).feats
    b = model.encode(x.replace(changed)).feats
    assert not torch.allclose(a[x.layout[0]], b[x.layout[0]])
    torch.testing.assert_close(a[x.layout[1]], b[x.layout[1]])
    torch.testing.assert_close(model.encode(x).feats, a)
    sampled = model.encode(x, sample=True, generator=torch.Generator().manual_seed(0)).feats
    assert not torch.allclose(sampled, a)
    with pytest.raises(ValueError, match="feature channels"):
        model.encode(SparseTensor(x.coords, torch.zeros(x.num_points, 5)))


def test_gradients_reach_every_parameter_through_the_renderer():
    from voxforge.export.video import orbit_cameras
    from voxforge.render.gaussians import render_gaussians

    torch.manual_seed(3)
    model = SLatVAE(_config())
    with torch.no_grad():
        model.decoder.stack.output.weight.normal_(0, 0.01)  # open the zero-initialised head
    x = _batch()
    viewmats, Ks = orbit_cameras(2, size=24)
    out = model(x)
    loss = out.kl * 1e-3
    for g in out.gaussians:
        loss = (
            loss + render_gaussians(g, viewmats, Ks, 24, 24, [1.0, 1.0, 1.0], backend="torch")["rgb"].mean()
        )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert model.encoder.stack.input.weight.grad.abs().sum() > 0


def test_bf16_autocast_gives_fp32_gaussians():
    torch.manual_seed(4)
    model = SLatVAE(_config())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_batch())
    g = out.gaussians[0]
    assert g.means.dtype == torch.float32 and g.log_scales.dtype == torch.float32
    assert torch.isfinite(g.means).all()


def test_grad_checkpoint_matches_plain_forward():
    torch.manual_seed(5)
    plain = SLatVAE(_config())
    ckpt = SLatVAE(_config(grad_checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    x = _batch()
    a = plain.encode(x).feats
    b = ckpt.encode(x).feats
    torch.testing.assert_close(a, b)
    a.square().sum().backward()
    b.square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_tiny_fit_lowers_the_rendering_loss():
    """A few optimizer steps on one asset: the rendered L1 to a coloured target drops."""
    from voxforge.export.video import orbit_cameras
    from voxforge.render.gaussians import render_gaussians

    torch.manual_seed(6)
    cfg = _config(
        width=32, encoder_blocks=1, decoder_blocks=1, head=GaussianHeadConfig(gaussians_per_voxel=2)
    )
    model = SLatVAE(cfg)
    shell = _shell()
    coords = torch.cat([torch.zeros(len(shell), 1, dtype=torch.long), shell], 1)
    colour = (voxel_centers(shell, R) + 0.5).clamp(0, 1)  # position-coded colours as features
    x = SparseTensor(coords, colour, spatial_shape=(R, R, R))
    viewmats, Ks = orbit_cameras(2, size=24, elevation_deg=10.0)
    # the target: an opaque ball whose colour is the feature (what a good VAE reproduces)
    from voxforge.representations.gaussians import Gaussians

    target_g = Gaussians.from_activated(
        voxel_centers(shell, R),
        torch.full((len(shell), 3), 0.8 / R),
        torch.tensor([[1.0, 0, 0, 0]]).expand(len(shell), 4),
        torch.full((len(shell),), 0.95),
        colour,
    )
    target = render_gaussians(target_g, viewmats, Ks, 24, 24, [1.0, 1.0, 1.0], backend="torch")["rgb"]
    optim = torch.optim.Adam(model.parameters(), lr=3e-3)

    def step() -> float:
        out = model(x)
        pred = render_gaussians(out.gaussians[0], viewmats, Ks, 24, 24, [1.0, 1.0, 1.0], backend="torch")[
            "rgb"
        ]
        loss = (pred - target).abs().mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        return float(loss.detach())

    first = step()
    for _ in range(12):
        last = step()
    assert math.isfinite(last) and last < 0.7 * first
