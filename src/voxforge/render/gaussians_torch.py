"""Pure-PyTorch 3D Gaussian rasterizer: gsplat's conventions, differentiable, memory-bounded.

This is the reference the gsplat backend is tested against and the backend that runs on
CPU. It follows gsplat 1.5 (`fully_fused_projection` + `isect_tiles` +
`rasterize_to_pixels`, pinhole camera), so the two agree to float rounding:

Projection (per camera and Gaussian)
- `means_c = R mean + t`, `Σ_c = R Σ Rᵀ` with `Σ = (Rq S)(Rq S)ᵀ` from the normalised
  quaternion (w, x, y, z) and the scales. Culled when `z < near_plane` or `z > far_plane`.
- EWA: `Σ_2d = J Σ_c Jᵀ` with the perspective Jacobian at the mean, its x/z and y/z
  clamped to 1.3× the half field of view (as gsplat), `mean_2d = (fx x/z + cx, fy y/z + cy)`.
- Low-pass: `Σ_2d += eps2d · I` (eps2d = 0.3 px²). "antialiased" mode multiplies the opacity by
  `sqrt(det(Σ_2d before) / det(Σ_2d after))` (Mip-Splatting's compensation). Culled when the
  determinant is ≤ 0 or the (compensated) opacity is below 1/255.
- Opacity-aware bounding box: `extend = min(3.33, sqrt(2 ln(255 · opacity)))`,
  `radius_x = ceil(extend · sqrt(Σ_2d[0,0]))`, same for y; culled when both radii are
  ≤ radius_clip or the box misses the image.

Tiles
- Each Gaussian is listed in every tile its box touches: tiles
  `[floor((m - r) / ts), ceil((m + r) / ts))` per axis, clamped to the image. The
  (camera, tile, Gaussian) pairs are sorted by tile, then depth (camera-space z), then index:
  exactly gsplat's per-tile front-to-back order. The image does not depend on the tile size
  (tested), only the work does: every pixel of a tile is evaluated against every Gaussian of
  its list, about (r + ts)² evaluations per splat of radius r. gsplat's 16-pixel tiles suit a
  GPU warp; here the default tile is a power of two near half the median splat radius (2 to
  16 px), which cut the work 4× against 16-px tiles at the benchmark's 256², 32k Gaussians.

Compositing (per pixel at its centre, (col + 0.5, row + 0.5))
- `sigma = ½(a dx² + c dy²) + b dx dy` with the conic (a, b, c) = Σ_2d⁻¹,
  `alpha = min(0.999, opacity · exp(-sigma))`; skipped when sigma < 0 or alpha < 1/255.
  (gsplat clamps at 0.999; the INRIA rasterizer uses 0.99.)
- Front to back: `w_i = alpha_i T_i`, `T_{i+1} = T_i (1 - alpha_i)`. A pixel stops *before* the
  Gaussian that would bring T to ≤ 1e-4 (gsplat's exclusive early-out). Vectorised: with
  `T` from a cumulative sum of `log(1 - alpha)`, a Gaussian contributes iff its inclusive
  transmittance is > 1e-4 (T never increases, so this is the same set as the sequential loop).
- Outputs: colour `Σ w_i c_i + T_final · background`, alpha `1 - T_final`, accumulated depth
  `Σ w_i z_i` (expected depth divides by alpha clamped at 1e-10, as gsplat's "RGB+ED").

Memory bounds and early termination
- Tiles are sorted by list length and grouped into chunks, each padded to its longest list;
  lists are processed in depth slices of at most `max_slice` Gaussians that carry the
  transmittance. A slice never holds more than `max_chunk_elements` (pixel × Gaussian)
  entries. Between slices, tiles whose pixels have all stopped (T ≤ 1e-4) leave the chunk —
  gsplat's early termination at tile granularity (exact): the Gaussians behind fully covered
  tiles are never evaluated.
- Each slice is an autograd function with a hand-written backward (`_CompositeSlice`): it
  keeps only its inputs (the gathered per-pair parameters, O(pairs)), rebuilds the
  O(pixels × pairs) terms in backward and applies the compositing derivatives directly.
  Peak memory is O(pairs + pixels + one slice) for forward and backward alike: 256² with
  32k Gaussians trains in about 140 MiB on a CPU (benchmarks/bench_gaussian_raster.py).

Runs in the dtype of its inputs (float64 for gradcheck); `voxforge.render.gaussians` is the
public entry that fences autocast and casts to fp32.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ALPHA_THRESHOLD",
    "MAX_ALPHA",
    "TRANSMITTANCE_THRESHOLD",
    "Projection",
    "eval_sh",
    "isect_tiles",
    "project_gaussians",
    "quat_scale_to_covar",
    "rasterize_torch",
]

ALPHA_THRESHOLD = 1.0 / 255.0
MAX_ALPHA = 0.999
TRANSMITTANCE_THRESHOLD = 1e-4
_SH_C0 = 0.28209479177387814
_SH_C1 = 0.4886025119029199
_SH_C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
_SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:  # [N, 4] wxyz, [N, 3] -> [N, 3, 3]
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    rot = torch.stack(
        [
            1 - 2 * (y * y + z * z),
            2 * (x * y - w * z),
            2 * (x * z + w * y),
            2 * (x * y + w * z),
            1 - 2 * (x * x + z * z),
            2 * (y * z - w * x),
            2 * (x * z - w * y),
            2 * (y * z + w * x),
            1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).view(*quats.shape[:-1], 3, 3)
    m = rot * scales[..., None, :]
    return m @ m.transpose(-1, -2)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:  # [..., 3], [..., K, 3] -> [..., 3]
    """Real spherical harmonics up to `degree` (the 3DGS/gsplat basis and sign convention)."""
    out = _SH_C0 * coeffs[..., 0, :]
    if degree == 0:
        return out
    x, y, z = (t[..., None] for t in F.normalize(dirs, dim=-1).unbind(-1))
    out = (
        out - _SH_C1 * y * coeffs[..., 1, :] + _SH_C1 * z * coeffs[..., 2, :] - _SH_C1 * x * coeffs[..., 3, :]
    )
    if degree == 1:
        return out
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    out = (
        out
        + _SH_C2[0] * xy * coeffs[..., 4, :]
        + _SH_C2[1] * yz * coeffs[..., 5, :]
        + _SH_C2[2] * (2 * zz - xx - yy) * coeffs[..., 6, :]
        + _SH_C2[3] * xz * coeffs[..., 7, :]
        + _SH_C2[4] * (xx - yy) * coeffs[..., 8, :]
    )
    if degree == 2:
        return out
    return (
        out
        + _SH_C3[0] * y * (3 * xx - yy) * coeffs[..., 9, :]
        + _SH_C3[1] * xy * z * coeffs[..., 10, :]
        + _SH_C3[2] * y * (4 * zz - xx - yy) * coeffs[..., 11, :]
        + _SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy) * coeffs[..., 12, :]
        + _SH_C3[4] * x * (4 * zz - xx - yy) * coeffs[..., 13, :]
        + _SH_C3[5] * z * (xx - yy) * coeffs[..., 14, :]
        + _SH_C3[6] * x * (xx - 3 * yy) * coeffs[..., 15, :]
    )


class Projection(NamedTuple):
    means2d: Tensor  # [C, N, 2] pixels
    conics: Tensor  # [C, N, 3] (a, b, c) of the inverse 2D covariance
    depths: Tensor  # [C, N] camera-space z
    radii: Tensor  # [C, N, 2] int32, 0 = culled
    opacities: Tensor  # [C, N] (compensated in antialiased mode)


def project_gaussians(
    means: Tensor,  # [N, 3]
    covars: Tensor,  # [N, 3, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4] world -> camera (OpenCV)
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    antialiased: bool = False,
) -> Projection:
    rot, trans = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", rot, means) + trans[:, None]  # [C, N, 3]
    covars_c = torch.einsum("cij,njk,clk->cnil", rot, covars, rot)  # [C, N, 3, 3]
    x, y, z = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    # Gaussians with z < near_plane are culled; clamping their z keeps their (unused) values finite,
    # so that zero gradients through them stay zero instead of 0 * inf = NaN.
    safe_z = z.clamp(min=max(near_plane, 1e-6))
    tx = safe_z * torch.clamp(x / safe_z, min=-(cx / fx + 0.3 * tan_x), max=(width - cx) / fx + 0.3 * tan_x)
    ty = safe_z * torch.clamp(y / safe_z, min=-(cy / fy + 0.3 * tan_y), max=(height - cy) / fy + 0.3 * tan_y)
    zeros = torch.zeros_like(z)
    jac = torch.stack(
        [fx / safe_z, zeros, -fx * tx / safe_z**2, zeros, fy / safe_z, -fy * ty / safe_z**2], dim=-1
    ).view(*z.shape, 2, 3)
    cov2d = jac @ covars_c @ jac.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x / safe_z + cx, fy * y / safe_z + cy], dim=-1)

    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    safe_det = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / safe_det, -b / safe_det, a / safe_det], dim=-1)
    opac = opacities[None].expand_as(z)
    if antialiased:
        opac = opac * torch.sqrt(torch.clamp(det_orig / safe_det, min=1e-12))  # > 0: finite gradient

    with torch.no_grad():
        valid = (z >= near_plane) & (z <= far_plane) & (det > 0) & (opac >= ALPHA_THRESHOLD)
        extend = torch.sqrt(2.0 * torch.log(opac.clamp(min=ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp(
            max=3.33
        )
        rx = torch.ceil(extend * torch.sqrt(a.clamp(min=0)))
        ry = torch.ceil(extend * torch.sqrt(c.clamp(min=0)))
        valid &= (rx > radius_clip) | (ry > radius_clip)
        mx, my = means2d[..., 0], means2d[..., 1]
        valid &= (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        radii = torch.stack([rx, ry], dim=-1).where(valid[..., None], torch.zeros_like(means2d)).int()
    return Projection(means2d, conics, z, radii, opac)


@torch.no_grad()
def isect_tiles(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2] int
    depths: Tensor,  # [C, N]
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> tuple[Tensor, Tensor]:  # (tile id [P] ascending, flat C*N index [P]) sorted by tile, depth, index
    """Every (camera, tile, Gaussian) overlap in gsplat's front-to-back order."""
    cams, n = depths.shape
    r = radii.to(means2d.dtype)
    lo = torch.floor((means2d - r) / tile_size).long()
    hi = torch.ceil((means2d + r) / tile_size).long()
    limit = torch.tensor([tile_width, tile_height], device=means2d.device)
    lo = torch.minimum(lo.clamp(min=0), limit)
    hi = torch.minimum(hi.clamp(min=0), limit)
    span = hi - lo  # [C, N, 2]
    counts = ((span[..., 0] * span[..., 1]) * (radii > 0).all(-1)).reshape(-1)
    total = cams * n
    # rank of each Gaussian in (depth, index) order: one sort of N keys, not of the pairs
    rank = torch.empty(total, dtype=torch.int64, device=depths.device)
    rank[torch.sort(depths.reshape(-1), stable=True).indices] = torch.arange(total, device=depths.device)
    cam = torch.arange(total, device=depths.device) // n
    base = (cam * tile_height + lo[..., 1].reshape(-1)) * tile_width + lo[..., 0].reshape(-1)  # first tile
    owner = torch.repeat_interleave(torch.arange(total, device=depths.device), counts)  # [P]
    local = torch.arange(owner.numel(), device=depths.device) - (torch.cumsum(counts, 0) - counts)[owner]
    span_x = span[..., 0].reshape(-1)[owner]
    row = local // span_x
    tile = base[owner] + row * tile_width + (local - row * span_x)
    order = torch.sort(tile * total + rank[owner]).indices  # keys are unique: by tile, then depth rank
    return tile[order], owner[order]


def _slice_terms(
    pixels: Tensor,  # [T, P, 2] pixel centres
    means2d: Tensor,  # [T, L, 2]
    conics: Tensor,  # [T, L, 3]
    opacities: Tensor,  # [T, L], 0 on padding entries
    trans_test: Tensor,  # [T, P]
) -> tuple[Tensor, ...]:
    """The [T, P, L] quantities of one depth slice (the only large shape; few passes over it)."""
    dx = means2d[:, None, :, 0] - pixels[:, :, None, 0]
    dy = means2d[:, None, :, 1] - pixels[:, :, None, 1]
    half_a, b, half_c = (t[:, None] for t in (0.5 * conics[..., 0], conics[..., 1], 0.5 * conics[..., 2]))
    sigma = dx * (half_a * dx + b * dy) + half_c * (dy * dy)
    gauss = torch.exp(-sigma)
    raw = opacities[:, None] * gauss
    alpha = torch.clamp_max(raw, MAX_ALPHA)
    keep = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD)  # skipped Gaussians: alpha 0, T unchanged
    alpha = alpha * keep
    log_one_minus = torch.log1p(-alpha)
    log_t = torch.cumsum(log_one_minus, dim=-1)  # inclusive
    # A pixel stops at the first Gaussian that takes T to <= 1e-4; `trans_test` keeps that
    # Gaussian's factor, so it stays <= 1e-4 in later depth slices and they add nothing.
    included = log_t > (math.log(TRANSMITTANCE_THRESHOLD) - torch.log(trans_test))[..., None]
    # Included Gaussians have only included ones in front: T = trans_in * exp(exclusive sum).
    t_before = torch.exp(log_t - log_one_minus)
    weights = alpha * t_before * included  # w / trans_in
    return dx, dy, gauss, raw, keep, alpha, log_one_minus, log_t, included, t_before, weights


def _composite_slice(
    pixels: Tensor,  # [T, P, 2]
    means2d: Tensor,  # [T, L, 2]
    conics: Tensor,  # [T, L, 3]
    opacities: Tensor,  # [T, L]
    feats: Tensor,  # [T, L, D]
    trans_in: Tensor,  # [T, P] transmittance through the Gaussians composited so far
    trans_test: Tensor,  # [T, P] the same, times the Gaussian that stopped the pixel (if any)
) -> tuple[Tensor, Tensor, Tensor]:  # accumulated feats [T, P, D], (trans, trans_test) after
    terms = _slice_terms(pixels, means2d, conics, opacities, trans_test)
    log_one_minus, log_t, included, weights = terms[6], terms[7], terms[8], terms[10]
    acc = torch.bmm(weights, feats) * trans_in[..., None]
    trans_out = trans_in * torch.exp((log_one_minus * included).sum(-1))
    return acc, trans_out, trans_test * torch.exp(log_t[..., -1])


class _CompositeSlice(torch.autograd.Function):
    """`_composite_slice` with an analytic backward that recomputes the slice.

    Saves only the inputs (O(pairs)); backward rebuilds the [T, P, L] terms and applies the
    front-to-back compositing derivatives (gsplat's backward, vectorised): with relative
    weights w_k = alpha_k T_k and q_k = feat_k · dL/dacc,
      dL/dalpha_k = trans_in (T_k q_k - (sum_{j>k} w_j q_j + dL/dtrans_out · T_out) / (1 - alpha_k))
    for the Gaussians a pixel composited (0 after its early stop), then through
    alpha = min(0.999, o exp(-sigma)) to the opacity, the 2D mean and the conic. About half
    the tensor passes of autograd through the same graph; checked by float64 gradcheck.
    """

    @staticmethod
    def forward(ctx, pixels, means2d, conics, opacities, feats, trans_in, trans_test):  # type: ignore[no-untyped-def, override]
        ctx.save_for_backward(pixels, means2d, conics, opacities, feats, trans_in, trans_test)
        acc, trans_out, trans_test_out = _composite_slice(
            pixels, means2d, conics, opacities, feats, trans_in, trans_test
        )
        ctx.mark_non_differentiable(trans_test_out)
        return acc, trans_out, trans_test_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_acc: Tensor, grad_trans: Tensor, _: Tensor):  # type: ignore[no-untyped-def, override]
        pixels, means2d, conics, opacities, feats, trans_in, trans_test = ctx.saved_tensors
        dx, dy, gauss, raw, keep, alpha, log_one_minus, _, included, t_before, weights = _slice_terms(
            pixels, means2d, conics, opacities, trans_test
        )
        q = torch.bmm(grad_acc, feats.transpose(1, 2))  # [T, P, L]: feat_l · dL/dacc_p
        wq = weights * q
        total = wq.sum(-1)  # [T, P]
        trans_rel = torch.exp((log_one_minus * included).sum(-1))
        behind = total[..., None] - torch.cumsum(wq, dim=-1) + (grad_trans * trans_rel)[..., None]
        grad_alpha = (t_before * q - behind / (1 - alpha)) * (included * trans_in[..., None])
        grad_raw = grad_alpha * (keep & (raw <= MAX_ALPHA))
        grad_sigma = -grad_raw * raw
        gdx, gdy = grad_sigma * dx, grad_sigma * dy
        sum_dx, sum_dy = gdx.sum(1), gdy.sum(1)  # [T, L]
        a, b, c = conics.unbind(-1)
        grad_means = torch.stack([a * sum_dx + b * sum_dy, b * sum_dx + c * sum_dy], dim=-1)
        grad_conics = torch.stack(
            [0.5 * (gdx * dx).sum(1), (gdx * dy).sum(1), 0.5 * (gdy * dy).sum(1)], dim=-1
        )
        grad_opac = (grad_raw * gauss).sum(1)
        grad_feats = torch.bmm((weights * trans_in[..., None]).transpose(1, 2), grad_acc)  # [T, L, D]
        grad_trans_in = total + grad_trans * trans_rel
        return None, grad_means, grad_conics, grad_opac, grad_feats, grad_trans_in, None


def _adaptive_tile_size(radii: Tensor) -> int:  # [C, N, 2] -> power of two in [2, 16]
    """Tiles about half the typical splat radius: pixel x Gaussian work ~ (r + tile)^2 per splat."""
    visible = radii[(radii > 0).all(-1)]
    if visible.numel() == 0:
        return 16
    half_radius = float(visible.float().median()) / 2
    return int(2 ** min(4, max(1, round(math.log2(max(half_radius, 1.0))))))


def _plan_chunks(
    counts: list[int], pixels_per_tile: int, max_elements: int, max_slice: int
) -> list[tuple[int, int, int]]:
    """Chunks (start, end, slice length) over tiles sorted by list length; see the module docstring."""
    slice_cap = max(1, min(max_slice, max_elements // pixels_per_tile))
    chunks, start = [], 0
    while start < len(counts):
        end = start + 1
        while (
            end < len(counts)
            and (end + 1 - start) * min(counts[end], slice_cap) * pixels_per_tile <= max_elements
        ):
            end += 1
        chunks.append((start, end, min(counts[end - 1], slice_cap)))
        start = end
    return chunks


def rasterize_torch(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D], [C, N, D], or SH coefficients [N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    rasterize_mode: str = "classic",
    tile_size: int | None = None,  # None: adaptive (module docstring); the image does not depend on it
    max_chunk_elements: int = 1 << 20,
    max_slice: int = 128,  # Gaussians per depth slice: finished tiles drop out between slices
) -> tuple[
    Tensor, Tensor, Tensor
]:  # colours [C, H, W, D], alphas [C, H, W, 1], accumulated depth [C, H, W, 1]
    cams, n = viewmats.shape[0], means.shape[0]
    proj = project_gaussians(
        means,
        quat_scale_to_covar(quats, scales),
        opacities,
        viewmats,
        Ks,
        width,
        height,
        eps2d=eps2d,
        near_plane=near_plane,
        far_plane=far_plane,
        radius_clip=radius_clip,
        antialiased=rasterize_mode == "antialiased",
    )
    if sh_degree is not None:
        campos = -torch.einsum("cji,cj->ci", viewmats[:, :3, :3], viewmats[:, :3, 3])  # -Rᵀ t
        dirs = means[None] - campos[:, None]  # [C, N, 3]
        k = (sh_degree + 1) ** 2
        colors = torch.clamp_min(
            eval_sh(sh_degree, dirs, colors[None, :, :k].expand(cams, -1, -1, -1)) + 0.5, 0.0
        )
    elif colors.ndim == 2:
        colors = colors[None].expand(cams, -1, -1)
    dim = colors.shape[-1] + 1  # colour channels + depth
    feats = torch.cat([colors, proj.depths[..., None]], dim=-1).reshape(cams * n, dim)

    if tile_size is None:
        tile_size = _adaptive_tile_size(proj.radii)
    tiles_x, tiles_y = -(-width // tile_size), -(-height // tile_size)
    num_tiles = cams * tiles_x * tiles_y
    pixels_per_tile = tile_size * tile_size
    tile_ids, gauss_ids = isect_tiles(proj.means2d, proj.radii, proj.depths, tile_size, tiles_x, tiles_y)
    means2d = proj.means2d.reshape(-1, 2)
    conics = proj.conics.reshape(-1, 3)
    opac = proj.opacities.reshape(-1)

    active, counts = torch.unique_consecutive(tile_ids, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    by_len = torch.argsort(counts, stable=True)
    active, counts, starts = active[by_len], counts[by_len], starts[by_len]
    grid = torch.arange(tile_size, device=means.device, dtype=means.dtype)
    local = (
        torch.stack(torch.meshgrid(grid, grid, indexing="xy"), dim=-1).reshape(-1, 2) + 0.5
    )  # [P, 2] (x, y)

    use_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (means, quats, scales, opacities, colors, viewmats, Ks)
    )
    log_stop = math.log(TRANSMITTANCE_THRESHOLD)
    results_acc, results_t = [], []
    for start, end, slice_len in _plan_chunks(
        counts.tolist(), pixels_per_tile, max_chunk_elements, max_slice
    ):
        tiles = active[start:end]
        tile_xy = torch.stack([tiles % tiles_x, (tiles // tiles_x) % tiles_y], dim=-1).to(means.dtype)
        pixels = tile_xy[:, None] * tile_size + local  # [T, P, 2]
        acc = feats.new_zeros(tiles.numel(), pixels_per_tile, dim)
        trans = feats.new_ones(tiles.numel(), pixels_per_tile)
        trans_test = trans.detach()
        live = torch.arange(tiles.numel(), device=means.device)  # tiles with a pixel still compositing
        for offset in range(0, int(counts[end - 1]), slice_len):
            live = live[counts[start + live] > offset]
            if live.numel() == 0:
                break
            pos = offset + torch.arange(slice_len, device=means.device)
            valid = pos[None] < counts[start + live, None]  # [T, L]
            g = gauss_ids[
                torch.where(valid, starts[start + live, None] + pos[None], torch.zeros_like(pos[None]))
            ]
            args = (
                pixels[live],
                means2d[g],
                conics[g],
                opac[g] * valid,
                feats[g],
                trans[live],
                trans_test[live],
            )
            part, t_out, t_test = _CompositeSlice.apply(*args) if use_grad else _composite_slice(*args)
            if live.numel() == acc.shape[0]:  # every tile of the chunk is still live (first slice)
                acc, trans, trans_test = acc + part, t_out, t_test
            else:
                acc = acc.index_add(0, live, part)
                trans = trans.index_copy(0, live, t_out)
                trans_test = trans_test.index_copy(0, live, t_test)
            # exact: a tile whose pixels all stopped (T <= 1e-4) takes no further Gaussian
            live = live[(torch.log(t_test) > log_stop).any(-1)]
        results_acc.append(acc)
        results_t.append(trans)

    out = feats.new_zeros(num_tiles, pixels_per_tile, dim)
    trans_all = feats.new_ones(num_tiles, pixels_per_tile)
    if results_acc:
        out = out.index_copy(0, active, torch.cat(results_acc))
        trans_all = trans_all.index_copy(0, active, torch.cat(results_t))

    def to_image(t: Tensor) -> Tensor:  # [C*ty*tx, P, D] -> [C, H, W, D]
        t = t.view(cams, tiles_y, tiles_x, tile_size, tile_size, -1).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(cams, tiles_y * tile_size, tiles_x * tile_size, -1)[:, :height, :width]

    image = to_image(out)
    trans_img = to_image(trans_all[..., None])
    colours = image[..., :-1]
    if backgrounds is not None:
        colours = colours + trans_img * backgrounds[:, None, None, :]
    return colours, 1.0 - trans_img, image[..., -1:]
