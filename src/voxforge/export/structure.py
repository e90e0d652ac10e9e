"""Files of a generated sparse structure: `structure.npz`, a voxel `.glb`/`.ply`, a preview.

`voxforge generate structure` and the pipeline's examples both write through
`write_structure_files`, so the two produce the same folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from voxforge.representations.mesh import MeshPart, TexturedMesh
from voxforge.representations.voxels import render_previews, save_voxels, voxel_mesh

__all__ = ["write_structure_files"]


def write_structure_files(
    out: str | Path,
    coords: np.ndarray,  # [N, 3] int occupied voxels
    resolution: int,
    images: torch.Tensor,  # [K, 3, S, S] the condition images, [0, 1]
    *,
    preview_size: int = 192,
) -> list[str]:
    """Write the structure's files into `out`; returns their names.

    An empty structure still gets `structure.npz` and a preview (no mesh: there is no
    surface), so a caller can record the outcome and go on.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_voxels(out / "structure.npz", coords, resolution)
    written = ["structure.npz"]
    if len(coords):
        mesh = voxel_mesh(coords, resolution)
        colors = np.asarray(mesh.visual.vertex_colors, dtype=np.float32) / 255.0  # sRGB
        TexturedMesh([MeshPart(mesh.vertices, mesh.faces, vertex_colors=colors)]).save_glb(
            out / "structure.glb"
        )
        mesh.export(
            out / "structure.ply"
        )  # PLY: trimesh's writer (the project's GLB writer is TexturedMesh's)
        written += ["structure.glb", "structure.ply"]
    thumbs = []
    for image in images:
        pixels = (image.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        thumbs.append(np.asarray(Image.fromarray(pixels).resize((preview_size, preview_size))))
    preview = np.concatenate([*thumbs, render_previews(coords, resolution, size=preview_size)], axis=1)
    Image.fromarray(preview).save(out / "preview.png")
    written.append("preview.png")
    return written
