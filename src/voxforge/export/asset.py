"""`export_asset`: one generated asset → `.ply`, turntable `.mp4`/`.gif`, preview `.png`, `.glb`.

Each file is written under its final name only when complete (the writers use temporary
names or write in one call), and `export_asset` returns the paths it wrote, so a caller
(the generate command, the demo report) lists exactly what exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxforge.config.core import ConfigValueError, option
from voxforge.export.mesh import mesh_from_structure, write_glb
from voxforge.export.video import render_turntable, write_gif, write_mp4
from voxforge.representations.gaussians import Gaussians

__all__ = ["ExportConfig", "export_asset", "export_ply"]

FORMATS = ("ply", "mp4", "gif", "png", "glb")


@dataclass
class ExportConfig:
    formats: list[str] = option(
        default_factory=lambda: list(FORMATS), choices=None, help="subset of ply mp4 gif png glb"
    )
    frames: int = option(60, ge=1, help="turntable frames (one orbit)")
    size: int = option(256, ge=8, help="turntable side in pixels")
    gif_size: int = option(160, ge=8, help="side of the .gif (smaller file)")
    fps: int = option(30, ge=1)
    elevation_deg: float = option(20.0, help="turntable camera elevation")
    background: tuple[float, float, float] = option((1.0, 1.0, 1.0), ge=0.0, le=1.0)
    mesh_upsample: int = option(2, ge=1, help="mesh grid cells per structure voxel (per axis)")
    mesh_smooth: float = option(1.0, ge=0.0, help="Gaussian blur of the occupancy, in mesh cells")
    min_opacity: float = option(
        1.0 / 255.0, ge=0.0, lt=1.0, help="Gaussians below this are left out of the .ply"
    )
    backend: str = option("auto", choices=("auto", "torch", "gsplat"), help="rasterizer backend")

    def __post_init__(self):
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown:
            raise ConfigValueError("formats", f"unknown formats {unknown}; choose from {list(FORMATS)}")


def export_ply(gaussians: Gaussians, path: str | Path, min_opacity: float = 0.0) -> Path:
    """Standard 3DGS `.ply`; Gaussians with opacity below `min_opacity` are dropped."""
    g = gaussians.detach().to("cpu")
    if min_opacity > 0:
        g = g[g.opacities >= min_opacity]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    g.save_ply(tmp)
    tmp.replace(path)
    return path


def export_asset(
    gaussians: Gaussians,
    out_dir: str | Path,
    *,
    coords: np.ndarray | None = None,  # [N, 3] structure voxels for the mesh
    resolution: int = 64,
    config: ExportConfig | None = None,
    name: str = "asset",
) -> dict[str, Path]:
    """Write the formats of `config` into `out_dir`; returns {format: path}."""
    cfg = config or ExportConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if "ply" in cfg.formats:
        paths["ply"] = export_ply(gaussians, out_dir / f"{name}.ply", cfg.min_opacity)
    if {"mp4", "gif", "png"} & set(cfg.formats):
        frames = render_turntable(
            gaussians,
            cfg.frames,
            size=cfg.size,
            background=cfg.background,
            backend=cfg.backend,
            elevation_deg=cfg.elevation_deg,
        )
        if "mp4" in cfg.formats:
            paths["mp4"] = write_mp4(frames, out_dir / f"{name}.mp4", fps=cfg.fps)
        if "gif" in cfg.formats:
            from PIL import Image

            small = frames
            if cfg.gif_size != cfg.size:
                small = np.stack(
                    [
                        np.asarray(
                            Image.fromarray(f).resize((cfg.gif_size, cfg.gif_size), Image.Resampling.BILINEAR)
                        )
                        for f in frames
                    ]
                )
            paths["gif"] = write_gif(small, out_dir / f"{name}.gif", fps=min(cfg.fps, 25))
        if "png" in cfg.formats:
            from PIL import Image

            path = out_dir / f"{name}_preview.png"
            Image.fromarray(frames[0]).save(path)
            paths["png"] = path
    if "glb" in cfg.formats:
        mesh = mesh_from_structure(
            coords, resolution, gaussians, upsample=cfg.mesh_upsample, smooth=cfg.mesh_smooth
        )
        paths["glb"] = write_glb(mesh, out_dir / f"{name}.glb")
    return paths
