"""The files of a TRELLIS result: Gaussians, turntable and the best `.glb` the model and install allow.

Shared by `voxforge generate --model TRELLIS_DIR` (`commands.generate_trellis`) and the
app's image → 3D tab (`app.image_to_3d`), so both write the same asset from the same
settings:

- `sampler_overrides(steps, cfg)`: voxforge's steps and guidance scale w as TRELLIS sampler
  params (`cfg_strength = w - 1`; None keeps the folder's `pipeline.json` value), and
  `sampler_record` the settings a run used, in TRELLIS's terms;
- `export_trellis_asset`: `export.export_asset` for the Gaussians (`.ply`, turntable), then
  `write_trellis_glb` for the mesh, with the seconds of each.

The `.glb` kinds: "flexicubes_textured" — the mesh decoder's mesh, simplified, UV-unwrapped
and textured with colours baked from the Gaussians (`export.textured.textured_glb`, the
`mesh` extra); "flexicubes_vertex_colors" — that mesh as it is, coloured per vertex, when
xatlas or fast-simplification is missing (the returned note says so); "voxel_mesh" — a
surface-nets mesh of the structure, for folders without a mesh decoder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxforge.errors import MissingDependencyError, UserError
from voxforge.export import ExportConfig, export_asset
from voxforge.pipelines.trellis import TrellisResult

__all__ = [
    "GlbOptions",
    "TrellisAsset",
    "export_trellis_asset",
    "sampler_overrides",
    "sampler_record",
    "write_trellis_glb",
]


@dataclass(frozen=True)
class GlbOptions:
    texture_size: int = 1024  # side of the baked texture
    simplify: float = 0.95  # fraction of the mesh's faces removed before texturing (TRELLIS's)
    bake_views: int = 24  # renders of the Gaussians the texture is baked from

    def check(self, where: str = "") -> GlbOptions:
        if self.texture_size < 16 or not 0 <= self.simplify < 1 or self.bake_views < 1:
            raise UserError(
                f"{where}texture size must be >= 16, simplify in [0, 1) and bake views >= 1, got "
                f"{self.texture_size}, {self.simplify}, {self.bake_views}"
            )
        return self


@dataclass
class TrellisAsset:
    paths: dict[str, Path]  # format -> file
    timings: dict[str, float]  # "export", and "glb" when one was written
    glb_kind: str | None  # None: no .glb asked for
    notes: list[str] = field(default_factory=list)  # what was written differently, and why


def sampler_overrides(steps: int | None, cfg: float | None) -> dict[str, Any]:
    """Steps and voxforge's guidance scale w -> TRELLIS sampler params (cfg_strength = w - 1)."""
    return {"steps": steps, "cfg_strength": None if cfg is None else cfg - 1.0}


def sampler_record(settings: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """A `pipeline.json` sampler entry with the overrides that were given (TRELLIS's terms)."""
    return {**settings.as_params(), **{k: v for k, v in overrides.items() if v is not None}}


def write_trellis_glb(result: TrellisResult, path: Path, options: GlbOptions) -> tuple[str, Path, str | None]:
    """The best `.glb` for this result; returns (kind, path, a note when the mesh extra is missing)."""
    from voxforge.export.mesh import mesh_from_structure, write_glb
    from voxforge.export.textured import textured_glb
    from voxforge.representations.mesh import MeshPart, TexturedMesh

    mesh = result.mesh
    if mesh is None or not len(mesh.faces):
        structure_mesh = mesh_from_structure(result.coords, result.resolution, result.gaussians)
        return "voxel_mesh", write_glb(structure_mesh, path), None
    try:
        textured = textured_glb(
            mesh.vertices,
            mesh.faces,
            mesh.colors,
            up="y",
            gaussians=result.gaussians,
            texture_size=options.texture_size,
            simplify_ratio=options.simplify,
            views=options.bake_views,
        )
        return "flexicubes_textured", write_glb(textured, path), None
    except MissingDependencyError as err:
        note = f"{err}; writing the mesh with vertex colours instead"
        part = MeshPart(
            vertices=mesh.vertices, faces=mesh.faces, vertex_colors=mesh.colors, normals=mesh.normals
        )
        return "flexicubes_vertex_colors", write_glb(TexturedMesh(parts=[part]), path), note


def export_trellis_asset(
    result: TrellisResult,
    out: Path,
    export: ExportConfig,  # the Gaussians' formats (ply, mp4, gif, png), never glb
    glb: GlbOptions | None,  # None: no .glb
    *,
    name: str = "asset",
) -> TrellisAsset:
    start = time.perf_counter()
    paths = export_asset(
        result.gaussians, out, coords=result.coords, resolution=result.resolution, config=export, name=name
    )
    asset = TrellisAsset(paths, {"export": time.perf_counter() - start}, None)
    if glb is not None:
        glb_start = time.perf_counter()
        asset.glb_kind, paths["glb"], note = write_trellis_glb(result, out / f"{name}.glb", glb)
        asset.timings["glb"] = time.perf_counter() - glb_start
        if note:
            asset.notes.append(note)
    return asset
