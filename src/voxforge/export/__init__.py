"""Exports of generated assets: 3DGS `.ply`, turntable `.mp4`/`.gif`, coloured `.glb` mesh.

- `export_asset(gaussians, out_dir, coords=, resolution=)` writes every format at once
  (what `voxforge generate` calls); the parts are in `video` (orbit cameras, rendering,
  writers) and `mesh` (structure → surface nets → vertex colours from the Gaussians).
- `.ply` is the standard 3D Gaussian splatting layout of
  `voxforge.representations.gaussians` (loads in common splat viewers, round-trips
  exactly through `load_ply`).

Third-party libraries other than torch and numpy (imageio, trimesh, scipy) are imported
inside the functions that need them.
"""

from voxforge.export.asset import ExportConfig, export_asset, export_ply

__all__ = ["ExportConfig", "export_asset", "export_ply"]
