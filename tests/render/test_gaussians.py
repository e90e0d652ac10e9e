from __future__ import annotations

import numpy as np
import pytest
import torch

from voxforge.errors import UserError
from voxforge.render.cameras import hammersley_sphere, look_at
from voxforge.render.gaussians import gsplat_available, rasterize, render_gaussians, render_gaussians_cameras
from voxforge.render.gaussians_torch import (
    _composite_slice,
    _CompositeSlice,
    _slice_terms,
    eval_sh,
    rasterize_torch,
)
from voxforge.representations.gaussians import Gaussians


def look_at_cameras(count: int, radius: float = 2.5, focal: float = 40.0, size: tuple[int, int] = (32, 24)):
    """float64 viewmats [C, 4, 4] on a ring around the origin (+Y up), intrinsics, width, height."""
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    eyes = np.stack([radius * np.sin(angles), np.full(count, 0.4), radius * np.cos(angles)], axis=1)
    w, h = size
    k = torch.tensor([[focal, 0, w / 2], [0, focal, h / 2], [0, 0, 1]], dtype=torch.float64)
    return torch.from_numpy(look_at(eyes)), k.expand(count, 3, 3).clone(), w, h


def random_gaussians(n: int, seed: int = 0, sh_degree: int = 0, spread: float = 0.4) -> Gaussians:
    gen = torch.Generator().manual_seed(seed)
    rest = torch.randn(n, (sh_degree + 1) ** 2 - 1, 3, generator=gen) * 0.2 if sh_degree else None
    return Gaussians(
        means=(torch.rand(n, 3, generator=gen) - 0.5) * 2 * spread,
        log_scales=torch.log(torch.rand(n, 3, generator=gen) * 0.08 + 0.03),
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen),
        sh_dc=torch.randn(n, 3, generator=gen),
        sh_rest=rest,
    )


def test_single_gaussian_matches_analytic_formula():
    width, height, focal, depth, scale, opacity = 40, 30, 50.0, 2.0, 0.05, 0.8
    colour, background = torch.tensor([1.0, 0.5, 0.2]), torch.tensor([0.1, 0.2, 0.3])
    out = rasterize(
        torch.tensor([[0.0, 0.0, depth]]),
        torch.tensor([[2.0, 0, 0, 0]]),
        torch.full((1, 3), scale),
        torch.tensor([opacity]),
        colour[None],
        torch.eye(4)[None],
        torch.tensor([[[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]]]),
        width,
        height,
        background=background,
        backend="torch",
    )
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    variance = (focal * scale / depth) ** 2 + 0.3  # EWA at the axis + the 0.3 px² low-pass
    alpha = (opacity * torch.exp(-0.5 * ((xs - width / 2) ** 2 + (ys - height / 2) ** 2) / variance)).clamp(
        max=0.999
    )
    alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
    assert torch.allclose(out["alpha"][0, ..., 0], alpha, atol=1e-6)
    assert torch.allclose(
        out["rgb"][0], alpha[..., None] * colour + (1 - alpha[..., None]) * background, atol=1e-6
    )
    assert torch.allclose(out["depth"][0, ..., 0], torch.where(alpha > 0, depth, 0.0), atol=1e-5)


def test_front_to_back_order_and_early_termination():
    # four layers of opacity 0.95 listed back to front, on the pixel centre (8.5, 8.5):
    # T = 0.05, 0.0025, 1.25e-4 after the first three; the fourth would take T to 6.25e-6 <= 1e-4,
    # so gsplat stops before it (exclusive early-out) and its channel stays 0.
    depths = torch.tensor([2.6, 2.4, 2.2, 2.0])
    means = torch.stack([torch.zeros(4), torch.zeros(4), depths], dim=1)
    k = torch.tensor([[[20.0, 0, 8.5], [0, 20.0, 8.5], [0, 0, 1]]])
    out = rasterize(
        means,
        torch.tensor([[1.0, 0, 0, 0]] * 4),
        torch.full((4, 3), 0.5),
        torch.full((4,), 0.95),
        torch.eye(4),
        torch.eye(4)[None],
        k,
        17,
        17,
        backend="torch",
        depth_mode="accumulated",
    )
    pixel = out["rgb"][0, 8, 8]
    expected = torch.tensor(
        [0.0, 0.95 * 0.05**2, 0.95 * 0.05, 0.95]
    )  # channel i = Gaussian i (back to front)
    assert torch.allclose(pixel, expected, atol=1e-6)
    assert out["alpha"][0, 8, 8, 0] == pytest.approx(1 - 0.05**3, abs=1e-6)
    assert out["depth"][0, 8, 8, 0] == pytest.approx(float((expected * depths).sum()), abs=1e-5)


def test_gradcheck_float64_tiny_scene():
    torch.manual_seed(0)
    viewmats, ks, _, _ = look_at_cameras(2, focal=12.0)
    g = random_gaussians(4, seed=3, sh_degree=1).to(torch.float64)
    params = [g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_coeffs]
    params = [p.clone().requires_grad_(True) for p in params]
    background = torch.tensor([[0.2, 0.3, 0.4]] * 2, dtype=torch.float64)

    def fn(means, log_scales, quats, logits, sh):
        rgb, alpha, depth = rasterize_torch(
            means,
            quats,
            log_scales.exp(),
            logits.sigmoid(),
            sh,
            viewmats,
            ks,
            10,
            8,
            sh_degree=1,
            backgrounds=background,
            tile_size=4,
            max_chunk_elements=64,
        )
        return rgb, alpha, depth

    assert torch.autograd.gradcheck(fn, params, eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=True)


def test_composite_slice_analytic_backward_matches_autograd():
    gen = torch.Generator().manual_seed(0)
    tiles, pixels, length, dim = 3, 5, 7, 4

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    pix = rand(tiles, pixels, 2) * 3
    inputs = [
        rand(tiles, length, 2) * 3,  # means2d
        torch.stack(
            [rand(tiles, length) + 0.3, (rand(tiles, length) - 0.5) * 0.2, rand(tiles, length) + 0.3], -1
        ),
        torch.where(
            rand(tiles, length) < 0.3, 0.97, rand(tiles, length) * 0.9
        ),  # some nearly opaque: early stops
        torch.randn(tiles, length, dim, generator=gen, dtype=torch.float64),
        rand(tiles, pixels) * 0.5 + 0.5,  # trans_in
    ]
    inputs[0].data[1] = 1.5  # tile 1: a stack of nearly opaque Gaussians over its pixels
    inputs[2].data[1] = 0.98
    inputs = [t.requires_grad_(True) for t in inputs]
    trans_test = inputs[-1].detach().clone()
    trans_test[0, 0] = 1e-5  # a pixel that stopped in an earlier slice
    up_acc = torch.randn(tiles, pixels, dim, generator=gen, dtype=torch.float64)
    up_trans = torch.randn(tiles, pixels, generator=gen, dtype=torch.float64)

    def loss(fn):
        acc, trans, _ = fn(pix, *inputs, trans_test)
        return (acc * up_acc).sum() + (trans * up_trans).sum()

    included = _slice_terms(pix, inputs[0], inputs[1], inputs[2], trans_test)[8]
    assert not included[1].all() and included[1].any()  # pixels of tile 1 stop inside the slice
    expected = torch.autograd.grad(loss(_composite_slice), inputs)
    got = torch.autograd.grad(loss(_CompositeSlice.apply), inputs)
    for e, g in zip(expected, got):
        assert torch.allclose(e, g, atol=1e-10, rtol=1e-8)
    assert torch.autograd.gradcheck(
        lambda *a: _CompositeSlice.apply(pix, *a, trans_test)[:2], inputs, fast_mode=True
    )


def test_tiles_chunks_and_slices_do_not_change_the_image():
    viewmats, ks, w, h = look_at_cameras(2)
    g = random_gaussians(150, seed=1)
    args = (g.means, g.rotations, g.scales, g.opacities, g.sh_coeffs, viewmats.float(), ks.float(), w, h)
    base = rasterize_torch(*args, sh_degree=0, tile_size=16, max_slice=1 << 20)
    for options in (dict(tile_size=2), dict(tile_size=8, max_chunk_elements=2048, max_slice=8), dict()):
        other = rasterize_torch(*args, sh_degree=0, **options)
        for a, b in zip(base, other):
            assert torch.allclose(a, b, atol=1e-5), options


def test_gradients_through_render_api_match_reference():
    viewmats, ks, w, h = look_at_cameras(1)
    g = random_gaussians(50, seed=2, sh_degree=2)
    means = g.means.clone().requires_grad_(True)
    g.means = means
    out = render_gaussians(g, viewmats, ks, w, h, background=[1.0, 1.0, 1.0])
    (out["rgb"].sum() + out["depth"].sum()).backward()
    assert torch.isfinite(means.grad).all() and means.grad.abs().sum() > 0


def test_bf16_autocast_output_equals_fp32_output():
    viewmats, ks, w, h = look_at_cameras(2)
    g = random_gaussians(200, seed=4, sh_degree=1)
    ref = render_gaussians(g, viewmats, ks, w, h, background=[0.5, 0.5, 0.5])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = render_gaussians(g, viewmats, ks, w, h, background=[0.5, 0.5, 0.5])
        low = render_gaussians(g.to(torch.bfloat16).to(torch.float32), viewmats, ks, w, h)
    for key in ref:
        assert out[key].dtype == torch.float32 and torch.equal(out[key], ref[key])
    assert low["rgb"].dtype == torch.float32


def test_sh_degree_zero_is_dc_colour_and_eval_sh_bands():
    dirs = torch.randn(5, 3)
    coeffs = torch.randn(5, 16, 3)
    assert torch.allclose(eval_sh(0, dirs, coeffs), 0.28209479177387814 * coeffs[:, 0])
    # the degree-1 band is linear in the direction: opposite directions flip its sign
    d1 = eval_sh(1, dirs, coeffs) - eval_sh(0, dirs, coeffs)
    assert torch.allclose(eval_sh(1, -dirs, coeffs) - eval_sh(0, dirs, coeffs), -d1, atol=1e-6)
    assert torch.allclose(eval_sh(3, 2 * dirs, coeffs), eval_sh(3, dirs, coeffs), atol=1e-6)


def test_input_validation_and_backend_errors():
    viewmats, ks, w, h = look_at_cameras(1)
    g = random_gaussians(3)
    with pytest.raises(UserError, match="expected one of"):
        render_gaussians(g, viewmats, ks, w, h, backend="cuda")
    if not gsplat_available():
        with pytest.raises(UserError, match="gsplat"):
            render_gaussians(g, viewmats, ks, w, h, backend="gsplat")
    with pytest.raises(ValueError, match="viewmats"):
        render_gaussians(g, viewmats[0], ks, w, h)
    with pytest.raises(ValueError, match="background"):
        render_gaussians(g, viewmats, ks, w, h, background=[1.0, 1.0])
    with pytest.raises(ValueError, match="only carry degree"):
        render_gaussians(g, viewmats, ks, w, h, sh_degree=2)


def test_render_from_cameras_object():
    cams = hammersley_sphere(3, radius=2.0, fov_deg=40.0, width=24, height=20)
    g = random_gaussians(60, seed=6)
    out = render_gaussians_cameras(g, cams, [0.0, 0.0, 0.0])
    assert out["rgb"].shape == (3, 20, 24, 3) and out["alpha"].amax() > 0.5
    ref = render_gaussians(g, torch.from_numpy(cams.world_to_cam), torch.from_numpy(cams.K).float(), 24, 20)
    assert torch.equal(out["rgb"], ref["rgb"])
    # the object projects around the image centre from every view
    ys, xs = torch.nonzero(out["alpha"][0, ..., 0] > 0.5, as_tuple=True)
    assert abs(xs.float().mean() - 12) < 3 and abs(ys.float().mean() - 10) < 3


def test_no_gaussians_renders_the_background():
    k = torch.tensor([[[10.0, 0, 4], [0, 10.0, 4], [0, 0, 1]]])
    empty = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3)]
    out = rasterize(*empty, torch.eye(4)[None], k, 8, 8, background=[0.2, 0.3, 0.4], backend="torch")
    assert torch.allclose(out["rgb"], torch.tensor([0.2, 0.3, 0.4]).expand(1, 8, 8, 3))
    assert out["alpha"].abs().max() == 0 and out["depth"].abs().max() == 0


def test_culling_behind_camera_and_outside_image():
    means = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 0.005], [50.0, 0.0, 2.0]])
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3)
    out = rasterize(
        means,
        quats,
        torch.full((3, 3), 0.1),
        torch.ones(3) * 0.9,
        torch.ones(3, 3),
        torch.eye(4)[None],
        torch.tensor([[[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]]),
        16,
        16,
        backend="torch",
    )
    assert out["alpha"].abs().max() == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not gsplat_available(), reason="needs CUDA and gsplat")
@pytest.mark.parametrize("mode", ["classic", "antialiased"])
def test_torch_matches_gsplat_values_and_gradients(mode):
    viewmats, ks, _, _ = look_at_cameras(3, focal=120.0)
    w, h = 96, 72
    ks[:, 0, 2], ks[:, 1, 2] = w / 2, h / 2
    g = random_gaussians(2000, seed=5, sh_degree=2).to("cuda")
    viewmats, ks = viewmats.float().cuda(), ks.float().cuda()
    results = {}
    for backend in ("torch", "gsplat"):
        params = {
            k: getattr(g, k).clone().requires_grad_(True)
            for k in ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
        }
        out = render_gaussians(
            Gaussians(**params),
            viewmats,
            ks,
            w,
            h,
            background=[0.3, 0.2, 0.1],
            backend=backend,
            rasterize_mode=mode,
        )
        loss = (
            (out["rgb"] * torch.linspace(0, 1, 3, device="cuda")).sum()
            + out["alpha"].sum()
            + 0.1 * out["depth"].sum()
        )
        loss.backward()
        results[backend] = (out, {k: p.grad for k, p in params.items()})
    (out_t, grad_t), (out_g, grad_g) = results["torch"], results["gsplat"]
    for key in ("rgb", "alpha", "depth"):
        assert torch.allclose(out_t[key], out_g[key], atol=2e-3, rtol=1e-3), key
    for key in grad_t:
        scale = grad_g[key].abs().max().clamp(min=1e-6)
        assert ((grad_t[key] - grad_g[key]).abs().max() / scale) < 2e-2, key
