"""A generated mesh with a texture *field* → a UV-textured asset: `.glb` and `.obj` + `.mtl` + `.png`.

    mesh = bake_texture_field(vertices, faces, texture, texture_size=512)   # -> TexturedMesh
    files = write_textured(mesh, out_dir, "sample_000")                     # .glb .obj .mtl .png

A GET3D-style generator (`voxforge.models.get3d`) gives each shape a texture field, a function
`texture(points [N, 3]) -> [N, 3]` defined everywhere in space, rather than colours at vertices.
Export bakes it at full texture resolution, texel by texel, from the pieces TRELLIS's `.glb`
export uses here (`voxforge.export.textured` / `bake`):

1. `unwrap` (xatlas) charts and packs the mesh for the texture size, splitting vertices along
   the seams;
2. `texel_map` rasterizes the charts in UV space: every covered texel gets its triangle and
   barycentrics, so its 3D surface point;
3. the field is queried at those points (in chunks), so the texture carries the field's own
   detail, not an interpolation of vertex samples;
4. `dilate` fills the gutters from the charts' edges (no dark seams under bilinear lookup).

The data's views are sRGB PNGs, so the field a generator learns from them gives sRGB values:
they are written as they are (glTF's baseColorTexture and OBJ's `map_Kd` are sRGB).
Coordinates stay in voxforge's +Y-up object frame, which is glTF's (no rotation). The OBJ
is written by trimesh (its exporter writes the `.mtl` and the texture image beside the
`.obj`); the `.glb` by voxforge's own encoder (`TexturedMesh.save_glb`). Both open in trimesh
with a `TextureVisuals` whose material holds the image, and in Blender.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from voxforge.errors import UserError
from voxforge.export.bake import check_mesh, check_size, dilate, texel_map
from voxforge.export.textured import unwrap, vertex_normals
from voxforge.representations.mesh import MeshPart, TexturedMesh

__all__ = ["TextureField", "bake_texture_field", "write_obj", "write_textured"]

#: texture(points [N, 3] float32) -> colours [N, 3] in [0, 1]
TextureField = Callable[[torch.Tensor], torch.Tensor]


def bake_texture_field(
    vertices: np.ndarray | torch.Tensor,  # [V, 3] +Y-up object frame
    faces: np.ndarray | torch.Tensor,  # [F, 3]
    texture: TextureField,
    *,
    texture_size: int = 512,
    padding: int = 4,
    dilate_px: int = 8,
    chunk: int = 65536,
) -> TexturedMesh:
    """A one-part TexturedMesh: xatlas UVs, normals, and the field baked into its texture."""
    vertices = np.asarray(torch.as_tensor(vertices).detach().cpu().numpy(), np.float32)
    faces = np.asarray(torch.as_tensor(faces).detach().cpu().numpy(), np.int64)
    if len(faces) == 0:
        raise UserError("the generated mesh has no faces; nothing to export")
    vertices, faces = check_mesh(vertices, faces)
    size = check_size(texture_size)
    atlas = unwrap(vertices, faces, texture_size=size, padding=padding)
    texels = texel_map(atlas.faces, atlas.uv, size)
    points = texels.interpolate(atlas.vertices, atlas.faces)  # [M, 3] surface point of every texel
    with torch.no_grad():
        colours = torch.cat(
            [texture(points[i : i + chunk]).detach().float().cpu() for i in range(0, len(points), chunk)]
        )
    if colours.shape != (len(points), 3):
        raise UserError(f"the texture field returned {list(colours.shape)} for {len(points)} points")
    rgba = torch.cat([colours.clamp(0, 1), torch.ones(len(colours), 1)], 1)
    image = dilate(texels.scatter(rgba), texels.mask, dilate_px).clamp(0, 1)
    normals = vertex_normals(atlas.vertices, atlas.faces)
    part = MeshPart(
        vertices=atlas.vertices.astype(np.float32),
        faces=atlas.faces,
        uv=atlas.uv,
        texture=(image * 255.0 + 0.5).to(torch.uint8).numpy(),
        normals=normals.astype(np.float32),
    )
    part.check()
    return TexturedMesh(parts=[part])


def write_obj(mesh: TexturedMesh, path: str | Path) -> list[Path]:
    """`path` (.obj) with its `.mtl` and `.png` beside it (same stem); returns the three paths."""
    import trimesh  # a core dependency; imported here, as the rest of voxforge does

    path = Path(path)
    if path.suffix.lower() != ".obj":
        raise UserError(f"{path}: an OBJ file name must end in .obj")
    if len(mesh.parts) != 1 or mesh.parts[0].uv is None or mesh.parts[0].texture is None:
        raise UserError("write_obj: expected one part with UVs and a texture (bake_texture_field's output)")
    part = mesh.parts[0]
    uv = part.uv.astype(np.float64).copy()
    uv[:, 1] = 1.0 - uv[:, 1]  # glTF (v down) -> OBJ (v up)
    image = Image.fromarray(part.texture[..., :3])
    white = [255, 255, 255, 255]  # Kd multiplies map_Kd in most importers: keep the texture's colours
    material = trimesh.visual.material.SimpleMaterial(
        image=image, name=path.stem, diffuse=white, ambient=white, specular=[0, 0, 0, 255]
    )
    tm = trimesh.Trimesh(
        vertices=part.vertices.astype(np.float64),
        faces=part.faces,
        vertex_normals=None if part.normals is None else part.normals.astype(np.float64),
        visual=trimesh.visual.TextureVisuals(uv=uv, material=material),
        process=False,
    )
    text, files = trimesh.exchange.obj.export_obj(
        tm,
        include_normals=part.normals is not None,
        include_texture=True,
        mtl_name=f"{path.stem}.mtl",
        return_texture=True,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():  # the .mtl and the texture image, names relative to the .obj
        target = path.parent / Path(name).name
        target.write_bytes(data)
        written.append(target)
    path.write_text(text)
    mtl = next((p for p in written if p.suffix == ".mtl"), path.with_suffix(".mtl"))
    png = next((p for p in written if p.suffix != ".mtl"), path.with_suffix(".png"))
    return [path, mtl, png]


def write_textured(mesh: TexturedMesh, out_dir: str | Path, stem: str) -> dict[str, Path]:
    """`OUT/stem.glb` and `OUT/stem.obj` + `.mtl` + texture `.png`; returns {kind: path}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    glb = mesh.save_glb(out_dir / f"{stem}.glb")
    obj, mtl, png = write_obj(mesh, out_dir / f"{stem}.obj")
    return {"glb": glb, "obj": obj, "mtl": mtl, "png": png}
