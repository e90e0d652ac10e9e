"""Turntable videos of 3D Gaussians: orbit cameras, rendering, `.mp4` / `.gif` / preview `.png`.

Cameras follow the DESIGN.md contract (OpenCV: x right, y down, z forward; world +Y up; built
with `voxforge.render.cameras.look_at` and `intrinsics`) and look at the origin, where normalised assets are centred. `orbit_cameras` spaces `frames`
azimuths evenly over 360° (the last frame is one step before the first, so the video loops
without a repeated frame) at a fixed elevation and distance; the field of view defaults to
the data toolkit's feature views (40°, radius 2), which frame the unit cube with a margin.

Rendering goes through `render_gaussians` (fp32, any backend) a few views at a time, so the
memory of a long video stays that of a short one. Writers use imageio: `.mp4` through
imageio-ffmpeg (H.264, yuv420p — what browsers and players accept; sides are padded to even
sizes as the codec requires), `.gif` through Pillow with `loop=0`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import UserError
from voxforge.render.cameras import intrinsics, look_at
from voxforge.render.gaussians import render_gaussians
from voxforge.representations.gaussians import Gaussians

__all__ = ["orbit_cameras", "render_turntable", "write_gif", "write_mp4"]


def orbit_cameras(
    frames: int,
    *,
    size: int = 256,
    radius: float = 2.0,
    elevation_deg: float = 20.0,
    fov_deg: float = 40.0,
    start_azimuth_deg: float = 0.0,
) -> tuple[Tensor, Tensor]:  # viewmats [F, 4, 4], Ks [F, 3, 3]
    if frames < 1:
        raise ValueError(f"a turntable needs at least one frame, got {frames}")
    azimuth = torch.deg2rad(start_azimuth_deg + 360.0 * torch.arange(frames, dtype=torch.float64) / frames)
    elevation = math.radians(elevation_deg)
    eye = radius * torch.stack(
        [
            math.cos(elevation) * torch.sin(azimuth),
            torch.full_like(azimuth, math.sin(elevation)),
            math.cos(elevation) * torch.cos(azimuth),
        ],
        dim=-1,
    )
    viewmats = torch.from_numpy(look_at(eye.numpy())).float()
    K = torch.from_numpy(intrinsics(fov_deg, size, size)).float()
    return viewmats, K.expand(frames, 3, 3).clone()


@torch.no_grad()
def render_turntable(
    gaussians: Gaussians,
    frames: int = 60,
    *,
    size: int = 256,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    views_per_call: int = 4,
    backend: str = "auto",
    **orbit: float,
) -> np.ndarray:  # [F, size, size, 3] uint8
    viewmats, Ks = orbit_cameras(frames, size=size, **orbit)
    device = gaussians.means.device
    out = []
    for start in range(0, frames, views_per_call):
        sl = slice(start, start + views_per_call)
        rendered = render_gaussians(
            gaussians,
            viewmats[sl].to(device),
            Ks[sl].to(device),
            size,
            size,
            list(background),
            backend=backend,
        )
        out.append((rendered["rgb"].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] not in (3, 4) or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(
            f"frames must be uint8 [F, H, W, 3|4] with F >= 1, got {frames.dtype} {frames.shape}"
        )
    return frames[..., :3]


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 30) -> Path:
    """H.264 `.mp4` (yuv420p; odd sides padded by one black row/column)."""
    frames = _check_frames(frames)
    path = Path(path)
    try:
        import imageio_ffmpeg  # noqa: F401 - the writer imageio uses for .mp4
    except ImportError:
        raise UserError(
            "writing .mp4 turntables needs imageio-ffmpeg (a voxforge dependency): pip install imageio-ffmpeg"
        ) from None
    import imageio.v3 as iio

    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(
        path,
        np.ascontiguousarray(frames),
        plugin="FFMPEG",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    return path


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 15) -> Path:
    """Looping `.gif` (Pillow writer)."""
    frames = _check_frames(frames)
    path = Path(path)
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, frames, plugin="pillow", duration=int(round(1000 / fps)), loop=0)
    return path
