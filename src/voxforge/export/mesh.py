"""A coloured triangle mesh from a generated asset, written as `.glb`.

The Gaussian decoder gives no surface, so the mesh comes from the sparse structure (or,
without one, from the Gaussians' centres), in three steps:

1. **Occupancy.** The occupied voxels at resolution R are upsampled by `upsample` (each
   voxel becomes s³ cells), interior cavities enclosed by the surface shell are filled
   (`scipy.ndimage.binary_fill_holes`: the data toolkit's voxels mark only the surface, and
   an iso-surface of a shell is double-walled), and the field is blurred with a Gaussian of
   `smooth` cells, which turns the staircase into a smooth level set at 0.5.
2. **Surface nets** (naive dual contouring, own implementation, no lookup tables): one
   vertex per grid cell whose corners straddle the level, placed at the mean of the linear
   edge crossings; one quad (two triangles) per grid edge that crosses the level, joining
   the four cells around it, wound so normals point from inside to outside. The field is
   padded with "outside" first, so every surface closes: a closed object gives a watertight
   mesh. Unlike marching cubes it needs no 256-case table and produces fewer, better-shaped
   triangles; like it, it is exact on the level set up to linear interpolation.
3. **Colour.** Each vertex takes the opacity- and distance-weighted mean colour of its
   `neighbors` nearest Gaussians (scipy's cKDTree), Gaussians below 1/255 opacity ignored.

Coordinates are the DESIGN.md object frame (+Y up, the glTF convention), so the `.glb`
opens upright in viewers and Blender. The result is a one-part `TexturedMesh` (sRGB vertex
colours), written by voxforge's one GLB writer (`TexturedMesh.save_glb`: COLOR_0 in glTF's
linear space), the same that writes prepared assets; `to_trimesh()` gives a trimesh object.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxforge.representations.gaussians import Gaussians
from voxforge.representations.mesh import MeshPart, TexturedMesh

__all__ = ["gaussian_vertex_colors", "mesh_from_structure", "occupancy_field", "surface_nets", "write_glb"]

# corners of a unit cell, index bit 0 = x, bit 1 = y, bit 2 = z
_CORNERS = np.array([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=np.float64)
_EDGES = [(a, a | (1 << axis)) for axis in range(3) for a in range(8) if not a & (1 << axis)]


def surface_nets(
    field: np.ndarray,  # [X, Y, Z] values at grid points
    level: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:  # vertices [V, 3] in grid-index units, faces [F, 3] int64
    """Iso-surface {field = level}; inside is field > level (see the module docstring)."""
    if field.ndim != 3:
        raise ValueError(f"surface_nets expects a 3-D field, got shape {field.shape}")
    f = np.pad(np.asarray(field, dtype=np.float64) - level, 1, constant_values=-1.0)
    inside = f > 0
    nx, ny, nz = f.shape
    corner_vals = np.stack(
        [f[x : nx - 1 + x, y : ny - 1 + y, z : nz - 1 + z] for x, y, z in _CORNERS.astype(int)]
    )  # [8, X-1, Y-1, Z-1]
    signs = corner_vals > 0
    active = signs.any(0) & ~signs.all(0)
    cells = np.argwhere(active)  # [M, 3]
    if len(cells) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    vals = corner_vals[:, active]  # [8, M]
    total = np.zeros((len(cells), 3))
    count = np.zeros(len(cells))
    for a, b in _EDGES:
        va, vb = vals[a], vals[b]
        cross = (va > 0) != (vb > 0)
        t = np.where(cross, va / np.where(cross, va - vb, 1.0), 0.0)
        point = _CORNERS[a] + t[:, None] * (_CORNERS[b] - _CORNERS[a])
        total[cross] += point[cross]
        count[cross] += 1
    vertices = cells + total / count[:, None] - 1.0  # undo the padding
    cell_id = np.full(active.shape, -1, dtype=np.int64)
    cell_id[active] = np.arange(len(cells))

    quads = []
    for axis in range(3):
        u, v = (axis + 1) % 3, (axis + 2) % 3
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        crossing = inside[tuple(lo)] != inside[tuple(hi)]  # edge from point p to p + e_axis
        # the four cells around the edge need p_u, p_v >= 1 (always true after padding)
        mask = np.zeros_like(crossing)
        inner = [slice(None)] * 3
        inner[u] = slice(1, None)
        inner[v] = slice(1, None)
        mask[tuple(inner)] = crossing[tuple(inner)]
        points = np.argwhere(mask)  # [Q, 3]
        if len(points) == 0:
            continue
        eu, ev = np.eye(3, dtype=np.int64)[u], np.eye(3, dtype=np.int64)[v]
        ring = [points - eu - ev, points - ev, points, points - eu]  # a cycle around the edge
        ids = np.stack([cell_id[tuple(c.T)] for c in ring], axis=1)  # [Q, 4]
        flip = ~inside[tuple(points.T)]  # inside -> outside along +axis keeps this winding
        ids[flip] = ids[flip][:, ::-1]
        quads.append(ids)
    if not quads:
        return vertices, np.zeros((0, 3), dtype=np.int64)
    quads_all = np.concatenate(quads)
    faces = np.concatenate([quads_all[:, [0, 1, 2]], quads_all[:, [0, 2, 3]]])
    return vertices, faces


def occupancy_field(
    coords: np.ndarray,  # [N, 3] occupied voxels (i, j, k)
    resolution: int,
    *,
    upsample: int = 2,
    smooth: float = 1.0,
    fill: bool = True,
) -> np.ndarray:  # [R*s, R*s, R*s] float in [0, 1]
    from scipy import ndimage

    coords = np.asarray(coords, dtype=np.int64)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"voxel coordinates must be [N, 3], got {coords.shape}")
    if len(coords) and (coords.min() < 0 or coords.max() >= resolution):
        raise ValueError(f"voxel coordinates outside the grid of resolution {resolution}")
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[tuple(coords.T)] = True
    if fill:
        grid = ndimage.binary_fill_holes(grid)
    if upsample > 1:
        grid = grid.repeat(upsample, 0).repeat(upsample, 1).repeat(upsample, 2)
    field = grid.astype(np.float32)
    if smooth > 0:
        field = ndimage.gaussian_filter(field, smooth, mode="constant")
    return field


def gaussian_vertex_colors(
    vertices: np.ndarray,  # [V, 3] world
    gaussians: Gaussians,
    neighbors: int = 8,
) -> np.ndarray:  # [V, 3] float in [0, 1]
    from scipy.spatial import cKDTree

    g = gaussians.detach().to("cpu")
    opacity = g.opacities.float().numpy()
    keep = opacity >= 1.0 / 255.0
    if not keep.any():
        return np.full((len(vertices), 3), 0.5)
    means = g.means.float().numpy()[keep]
    rgb = np.clip(g.rgb.float().numpy()[keep], 0.0, 1.0)
    k = min(neighbors, len(means))
    dist, idx = cKDTree(means).query(vertices, k=k)
    if k == 1:
        dist, idx = dist[:, None], idx[:, None]
    weights = opacity[keep][idx] / (dist + 1e-4)
    return (weights[..., None] * rgb[idx]).sum(1) / weights.sum(1, keepdims=True)


def mesh_from_structure(
    coords: np.ndarray | None,  # [N, 3] occupied voxels, or None to voxelize the Gaussians
    resolution: int,
    gaussians: Gaussians | None = None,
    *,
    upsample: int = 2,
    smooth: float = 1.0,
    neighbors: int = 8,
) -> TexturedMesh:
    """Structure voxels (and Gaussians for colour) -> a smooth one-part mesh, sRGB vertex colours."""
    if coords is None:
        if gaussians is None:
            raise ValueError("mesh_from_structure needs voxel coordinates or Gaussians")
        g = gaussians.detach().to("cpu")
        means = g.means.float().numpy()[g.opacities.float().numpy() >= 0.1]
        coords = np.unique(
            np.clip(np.floor((means + 0.5) * resolution), 0, resolution - 1).astype(np.int64), axis=0
        )
    field = occupancy_field(coords, resolution, upsample=upsample, smooth=smooth)
    vertices, faces = surface_nets(field, 0.5)
    # grid point p of the upsampled field samples the centre of cell p: world = (p + 0.5) / (R s) - 0.5
    vertices = (vertices + 0.5) / (resolution * upsample) - 0.5
    if len(faces) == 0:
        return TexturedMesh(parts=[])
    colors = None
    if gaussians is not None:
        colors = gaussian_vertex_colors(vertices, gaussians, neighbors)  # [V, 3]; alpha 1 added
    return TexturedMesh(parts=[MeshPart(vertices, faces, vertex_colors=colors)])


def write_glb(mesh: TexturedMesh, path: str | Path) -> Path:
    """Write a `.glb` (binary glTF 2.0) that trimesh, Blender and web viewers open; atomic."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return mesh.save_glb(path)
