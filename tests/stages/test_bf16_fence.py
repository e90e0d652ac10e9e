"""Reliability: rendering losses under bf16 autocast are exact because rendering is fenced.

The contrast: the same decoded Gaussians rasterized *without* the fence — the rasterizer's
internals (`rasterize_torch`) called on bf16 tensors under bf16 autocast, which is what an
unfenced renderer computes in a bf16 training step. Sub-voxel Gaussians (the SLat decoder's
scale at 32³) projected to 128² pixels lose their positions to bf16's 8-bit mantissa (pixel
coordinates quantised to 0.5 px, depths to 1/64 of a unit), so the image and above all the
gradients come out wrong by tens of percent, while the fenced path is bit-for-bit fp32.
"""

from __future__ import annotations

import torch

from voxforge.export.video import orbit_cameras
from voxforge.models.slat_vae import GaussianHeadConfig, SLatVAE, SLatVAEConfig, voxel_centers
from voxforge.render.gaussians import render_gaussians
from voxforge.render.gaussians_torch import rasterize_torch
from voxforge.representations.gaussians import Gaussians
from voxforge.sparse import SparseTensor

R, SIZE = 32, 128
NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc")


def _decoded_gaussians() -> Gaussians:
    """Gaussians from a SLat decoder (random head) on the shell of a ball: realistic sizes."""
    torch.manual_seed(0)
    cfg = SLatVAEConfig(
        resolution=R,
        in_channels=3,
        width=32,
        encoder_blocks=1,
        decoder_blocks=1,
        heads=2,
        head=GaussianHeadConfig(gaussians_per_voxel=4),
    )
    model = SLatVAE(cfg)
    with torch.no_grad():
        model.decoder.stack.output.weight.normal_(0, 0.3)
    grid = torch.stack(torch.meshgrid(*[torch.arange(R)] * 3, indexing="ij"), -1).reshape(-1, 3)
    dist = voxel_centers(grid, R).norm(dim=-1)
    shell = grid[(dist < 0.3) & (dist > 0.3 - 1.5 / R)]
    coords = torch.cat([torch.zeros(len(shell), 1, dtype=torch.long), shell], 1)
    x = SparseTensor(coords, torch.rand(len(shell), 3), spatial_shape=(R, R, R))
    with torch.no_grad():
        return model.decode(model.encode(x))[0]


def _render(g: Gaussians, mode: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    viewmats, Ks = orbit_cameras(1, size=SIZE)
    params = {k: getattr(g, k).detach().clone().requires_grad_(True) for k in NAMES}
    leaf = Gaussians(**params)
    if mode == "fp32":
        rgb = render_gaussians(leaf, viewmats, Ks, SIZE, SIZE, [1.0, 1.0, 1.0], backend="torch")["rgb"]
    elif mode == "fenced_bf16":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rgb = render_gaussians(leaf, viewmats, Ks, SIZE, SIZE, [1.0, 1.0, 1.0], backend="torch")["rgb"]
    else:  # unfenced: the rasterizer's internals on bf16 tensors under bf16 autocast
        dt = torch.bfloat16
        with torch.autocast("cpu", dtype=dt):
            rgb, _, _ = rasterize_torch(
                leaf.means.to(dt),
                leaf.quats.to(dt),
                leaf.scales.to(dt),
                leaf.opacities.to(dt),
                leaf.rgb.to(dt),
                viewmats.to(dt),
                Ks.to(dt),
                SIZE,
                SIZE,
                backgrounds=torch.ones(1, 3, dtype=dt),
            )
    target = torch.linspace(0, 1, SIZE)[None, :, None, None].expand_as(rgb)  # any fixed image
    (rgb.float() - target).abs().mean().backward()
    return rgb.detach().float(), {k: params[k].grad for k in NAMES}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def test_fenced_bf16_rendering_equals_fp32_and_unfenced_is_wrong():
    g = _decoded_gaussians()
    ref_rgb, ref_grads = _render(g, "fp32")
    fenced_rgb, fenced_grads = _render(g, "fenced_bf16")
    unfenced_rgb, unfenced_grads = _render(g, "unfenced_bf16")
    assert float(ref_rgb.min()) < 0.9  # the object covers part of the image

    # fenced: the autocast region cannot reach the rasterizer — the same numbers as fp32
    assert float((fenced_rgb - ref_rgb).abs().max()) < 1e-6
    assert max(_relative(fenced_grads[k], ref_grads[k]) for k in NAMES) < 1e-5
    assert all(torch.isfinite(v).all() for v in fenced_grads.values())

    # unfenced: visibly different pixels and gradients off by tens of percent
    assert float((unfenced_rgb - ref_rgb).abs().max()) > 0.05
    assert _relative(unfenced_grads["means"], ref_grads["means"]) > 0.1
    assert max(_relative(unfenced_grads[k], ref_grads[k]) for k in NAMES) > 0.1
