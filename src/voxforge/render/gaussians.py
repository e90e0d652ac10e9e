"""Render 3D Gaussians: one API over gsplat (CUDA) and a pure-PyTorch reference (anywhere).

    out = render_gaussians(gaussians, viewmats, Ks, width, height, background, backend="auto")
    out["rgb"]    # [C, H, W, 3]  colour composited over the background
    out["alpha"]  # [C, H, W, 1]  1 - final transmittance
    out["depth"]  # [C, H, W, 1]  expected depth (accumulated z / alpha); depth_mode="accumulated" for Σ w z

Cameras follow the DESIGN.md contract, which is gsplat's: `viewmats [C, 4, 4]` world→camera
in OpenCV convention (x right, y down, z forward), `Ks [C, 3, 3]` pixel intrinsics. With a
`voxforge.render.cameras.Cameras` object use `render_gaussians_cameras(gaussians, cams)`.

Precision fence: rasterization always runs in fp32. The API disables autocast on the
inputs' device and casts every input to float32, so a training step under bf16/fp16
autocast renders bit-identically to an fp32 one, and the outputs are fp32 (the losses on
rendered images must stay fp32 too). gsplat itself breaks under mixed precision (its users'
most frequent report); the fence is what makes `train.precision=bf16` safe for decoders that
render. `rasterize_torch` (in `gaussians_torch`) is the dtype-generic twin used for float64
gradient checks.

Backends: "gsplat" calls `gsplat.rasterization` (imported lazily; `pip install
'voxforge[gpu]'`) with render mode "RGB+D" and composites the background itself, so both
backends return the same three outputs; "torch" is `rasterize_torch`, tile-based and
memory-bounded (see its module docstring for the conventions it shares with gsplat);
"auto" = gsplat when it is installed and the tensors are on CUDA, else torch.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from voxforge.errors import MissingDependencyError, UserError
from voxforge.render.gaussians_torch import rasterize_torch
from voxforge.representations.gaussians import Gaussians

__all__ = ["RASTER_BACKENDS", "gsplat_available", "rasterize", "render_gaussians", "render_gaussians_cameras"]

RASTER_BACKENDS = ("auto", "torch", "gsplat")


@functools.cache
def _gsplat_module() -> Any:
    try:
        return importlib.import_module("gsplat")
    except ImportError:
        return None


def gsplat_available() -> bool:
    return _gsplat_module() is not None


def _pick_backend(backend: str, device: torch.device) -> str:
    if backend not in RASTER_BACKENDS:
        raise UserError(
            f"Gaussian rasterizer backend '{backend}': expected one of {', '.join(RASTER_BACKENDS)}"
        )
    if backend == "gsplat":
        if not gsplat_available():
            raise MissingDependencyError("gsplat", "gpu", "Gaussian rasterizer backend 'gsplat'")
        if device.type != "cuda":
            raise UserError(
                f"rasterizer backend 'gsplat' needs CUDA tensors (got {device}); use 'auto' or 'torch'"
            )
        return "gsplat"
    if backend == "auto" and device.type == "cuda" and gsplat_available():
        return "gsplat"
    return "torch"


def _check_inputs(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    sh_degree: int | None,
) -> None:
    n = means.shape[0] if means.ndim == 2 else -1
    checks = [
        ("means", means, (n, 3)),
        ("quats", quats, (n, 4)),
        ("scales", scales, (n, 3)),
        ("opacities", opacities, (n,)),
    ]
    for name, t, shape in checks:
        if tuple(t.shape) != shape or n < 0:
            raise ValueError(f"rasterize: {name} must be {list(shape)} (N = len(means)), got {list(t.shape)}")
    if viewmats.ndim != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"rasterize: viewmats must be [C, 4, 4], got {list(viewmats.shape)}")
    if Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(
            f"rasterize: Ks must be [C, 3, 3] with C = {viewmats.shape[0]}, got {list(Ks.shape)}"
        )
    if sh_degree is not None:
        if (
            colors.ndim != 3
            or colors.shape[0] != n
            or colors.shape[2] != 3
            or colors.shape[1] < (sh_degree + 1) ** 2
        ):
            raise ValueError(
                f"rasterize: with sh_degree={sh_degree}, colors must be SH coefficients [N, >= {(sh_degree + 1) ** 2}, 3],"
                f" got {list(colors.shape)}"
            )
    elif not (colors.ndim == 2 and colors.shape[0] == n) and not (
        colors.ndim == 3 and colors.shape[:2] == (viewmats.shape[0], n)
    ):
        raise ValueError(f"rasterize: colors must be [N, D] or [C, N, D], got {list(colors.shape)}")
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"rasterize: width and height must be positive, got {width}x{height}")
    devices = {t.device for t in (means, quats, scales, opacities, colors, viewmats, Ks)}
    if len(devices) > 1:
        raise ValueError(f"rasterize: inputs are on several devices {sorted(map(str, devices))}")


def _backgrounds(
    background: Tensor | Sequence[float] | None, cams: int, dim: int, device: torch.device
) -> Tensor | None:
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    if bg.ndim == 1:
        bg = bg[None].expand(cams, -1)
    if bg.shape != (cams, dim):
        raise ValueError(f"background must be [{dim}] or [{cams}, {dim}], got {list(bg.shape)}")
    return bg


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] (w, x, y, z), any norm
    scales: Tensor,  # [N, 3] activated (standard deviations)
    opacities: Tensor,  # [N] activated, in [0, 1]
    colors: Tensor,  # [N, D] / [C, N, D] colours, or SH [N, K, 3] with sh_degree
    viewmats: Tensor,  # [C, 4, 4] world -> camera, OpenCV
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    background: Tensor | Sequence[float] | None = None,  # [D] or [C, D]; None = black
    sh_degree: int | None = None,
    backend: str = "auto",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    radius_clip: float = 0.0,
    rasterize_mode: str = "classic",  # or "antialiased"
    depth_mode: str = "expected",  # or "accumulated"
    tile_size: int | None = None,  # gsplat: 16 by default; torch: adaptive (see gaussians_torch)
    max_chunk_elements: int = 1 << 20,  # torch backend: pixel x Gaussian entries per chunk
) -> dict[str, Tensor]:
    """gsplat.rasterization's inputs -> dict(rgb [C,H,W,D], alpha [C,H,W,1], depth [C,H,W,1]), fp32."""
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree)
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased', got '{rasterize_mode}'")
    if depth_mode not in ("expected", "accumulated"):
        raise ValueError(f"depth_mode must be 'expected' or 'accumulated', got '{depth_mode}'")
    device = means.device
    chosen = _pick_backend(backend, device)
    cams = viewmats.shape[0]
    with torch.autocast(device.type, enabled=False):
        means, quats, scales, opacities, colors, viewmats, Ks = (
            t.float() for t in (means, quats, scales, opacities, colors, viewmats, Ks)
        )
        dim = 3 if sh_degree is not None else colors.shape[-1]
        bg = _backgrounds(background, cams, dim, device)
        if chosen == "gsplat":
            render, alpha, _ = _gsplat_module().rasterization(
                means,
                quats,
                scales,
                opacities,
                colors,
                viewmats,
                Ks,
                int(width),
                int(height),
                near_plane=near_plane,
                far_plane=far_plane,
                radius_clip=radius_clip,
                eps2d=eps2d,
                sh_degree=sh_degree,
                tile_size=tile_size or 16,
                render_mode="RGB+D",
                rasterize_mode=rasterize_mode,
            )
            rgb, depth = render[..., :-1], render[..., -1:]
            if bg is not None:
                rgb = rgb + (1.0 - alpha) * bg[:, None, None, :]
        else:
            rgb, alpha, depth = rasterize_torch(
                means,
                quats,
                scales,
                opacities,
                colors,
                viewmats,
                Ks,
                int(width),
                int(height),
                sh_degree=sh_degree,
                backgrounds=bg,
                near_plane=near_plane,
                far_plane=far_plane,
                eps2d=eps2d,
                radius_clip=radius_clip,
                rasterize_mode=rasterize_mode,
                tile_size=tile_size,
                max_chunk_elements=max_chunk_elements,
            )
        if depth_mode == "expected":
            depth = depth / alpha.clamp(min=1e-10)
    return {"rgb": rgb, "alpha": alpha, "depth": depth}


def render_gaussians(
    gaussians: Gaussians,
    viewmats: Tensor,  # [C, 4, 4] world -> camera, OpenCV
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    background: Tensor | Sequence[float] | None = None,  # [3] or [C, 3]; None = black
    *,
    backend: str = "auto",
    sh_degree: int | None = None,  # default: every band the Gaussians have
    **options: Any,
) -> dict[str, Tensor]:
    """Render a `Gaussians` set from C cameras; fp32 whatever the autocast state (module docstring)."""
    degree = gaussians.sh_degree if sh_degree is None else sh_degree
    if degree > gaussians.sh_degree:
        raise ValueError(f"sh_degree={degree} but the Gaussians only carry degree {gaussians.sh_degree}")
    with torch.autocast(gaussians.means.device.type, enabled=False):
        g = gaussians.to(torch.float32)  # activate in fp32 too (a decoder under autocast may emit bf16)
        return rasterize(
            g.means,
            g.rotations,
            g.scales,
            g.opacities,
            g.sh_coeffs,
            viewmats,
            Ks,
            width,
            height,
            background=background,
            sh_degree=degree,
            backend=backend,
            **options,
        )


def render_gaussians_cameras(
    gaussians: Gaussians,
    cameras: Any,  # voxforge.render.cameras.Cameras (numpy world_to_cam [V, 4, 4], K [V, 3, 3])
    background: Tensor | Sequence[float] | None = None,
    **options: Any,
) -> dict[str, Tensor]:
    """`render_gaussians` from a `Cameras` set, moved to the Gaussians' device."""
    device = gaussians.means.device
    viewmats = torch.as_tensor(cameras.world_to_cam, dtype=torch.float32, device=device)
    Ks = torch.as_tensor(cameras.K, dtype=torch.float32, device=device)
    return render_gaussians(gaussians, viewmats, Ks, cameras.width, cameras.height, background, **options)
