"""Occupied voxels of the DESIGN grid: files, dense grids, a cube mesh and a preview image.

Convention (docs/DESIGN.md): resolution R over [-0.5, 0.5]³; voxel (i, j, k) covers
[-0.5 + i/R, -0.5 + (i+1)/R] along x (j along y, k along z). A structure is the integer
array `coords [N, 3]` of its occupied voxels — the same as `voxels_<R>.npz` written by
`voxforge data prepare` (`coords` uint16, sorted, unique); our `.npz` adds `resolution`.

`voxel_mesh` builds the boundary of the union of the cubes (only faces between an occupied
and an empty voxel, two triangles each, outward normals), so a shell structure exports as
a closed, watertight surface that any viewer shows as the blocky structure it is.

`render_preview` draws that boundary with Pillow alone (no GL, no renderer dependency):
an orthographic view from above and in front at a given yaw, faces sorted back to front
(painter's algorithm, exact for unit cubes on a grid seen along a fixed direction), and
Lambert shading by face normal so the shape reads clearly in a report.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from voxforge.errors import UserError

__all__ = [
    "coords_to_grid",
    "grid_to_coords",
    "load_voxels",
    "render_preview",
    "render_previews",
    "save_voxels",
    "voxel_faces",
    "voxel_mesh",
]

# per face direction: outward normal and the 4 corners of the unit cube's face (counter-clockwise
# seen from outside), as offsets from the voxel's minimum corner
_FACES = {
    (1, 0, 0): [(1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1)],
    (-1, 0, 0): [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)],
    (0, 1, 0): [(0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0)],
    (0, -1, 0): [(0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)],
    (0, 0, 1): [(0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)],
    (0, 0, -1): [(0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0)],
}


def _check_coords(coords: np.ndarray, resolution: int) -> np.ndarray:
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"voxel coordinates must be [N, 3], got {coords.shape}")
    if coords.size and (coords.min() < 0 or coords.max() >= resolution):
        raise ValueError(f"voxel coordinates outside the {resolution}³ grid")
    return coords.astype(np.int64)


def coords_to_grid(coords: np.ndarray, resolution: int) -> np.ndarray:  # [N, 3] -> bool [R, R, R]
    coords = _check_coords(coords, resolution)
    grid = np.zeros((resolution,) * 3, dtype=bool)
    grid[coords[:, 0], coords[:, 1], coords[:, 2]] = True
    return grid


def grid_to_coords(grid: np.ndarray) -> np.ndarray:  # bool [R, R, R] -> [N, 3] int64, sorted
    return np.argwhere(np.asarray(grid).astype(bool)).astype(np.int64)


def save_voxels(path: str | Path, coords: np.ndarray, resolution: int) -> Path:
    """Write `coords` (uint16, sorted, unique) and `resolution` to an .npz, atomically."""
    coords = _check_coords(coords, resolution)
    coords = np.unique(coords, axis=0).astype(np.uint16) if len(coords) else np.zeros((0, 3), np.uint16)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, coords=coords, resolution=np.int64(resolution))
    tmp.replace(path)
    return path


def load_voxels(path: str | Path) -> tuple[np.ndarray, int]:
    """(coords [N, 3] int64, resolution) from an .npz written by `save_voxels`."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            coords, resolution = data["coords"].astype(np.int64), int(data["resolution"])
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{path}: not a voxel file with 'coords' and 'resolution' ({err})") from None
    return _check_coords(coords, resolution), resolution


def voxel_faces(coords: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boundary faces of the voxel union: (min corners [F, 3], normals [F, 3], corner offsets [F, 4, 3])."""
    grid = np.pad(coords_to_grid(coords, resolution), 1)
    corners, normals, offsets = [], [], []
    for normal, quad in _FACES.items():
        neighbour = np.roll(grid, shift=tuple(-n for n in normal), axis=(0, 1, 2))
        exposed = np.argwhere(grid & ~neighbour) - 1  # back to unpadded indices
        corners.append(exposed)
        normals.append(np.broadcast_to(np.array(normal), exposed.shape))
        offsets.append(np.broadcast_to(np.array(quad), (len(exposed), 4, 3)))
    return np.concatenate(corners), np.concatenate(normals), np.concatenate(offsets)


def voxel_mesh(coords: np.ndarray, resolution: int, color: tuple[int, int, int] = (180, 180, 190)):
    """A trimesh.Trimesh of the cube boundary in the object frame [-0.5, 0.5]³."""
    import trimesh

    corners, _, offsets = voxel_faces(coords, resolution)
    if len(corners) == 0:
        raise UserError("the structure is empty: no occupied voxel to mesh")
    quads = (corners[:, None, :] + offsets).reshape(-1, 3) / resolution - 0.5  # [F * 4, 3]
    base = np.arange(len(corners))[:, None] * 4
    faces = np.concatenate([base + np.array([0, 1, 2]), base + np.array([0, 2, 3])])
    mesh = trimesh.Trimesh(vertices=quads, faces=faces, process=True)  # merges shared corners
    mesh.visual.vertex_colors = np.tile(np.array([*color, 255], dtype=np.uint8), (len(mesh.vertices), 1))
    return mesh


def render_preview(
    coords: np.ndarray,
    resolution: int,
    *,
    size: int = 256,
    yaw_degrees: float = 35.0,
    elevation_degrees: float = 30.0,
    color: tuple[int, int, int] = (120, 160, 220),
    background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:  # [size, size, 3] uint8
    """Orthographic shaded view of the voxels from `yaw` around +Y and `elevation` above."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), background)
    corners, normals, offsets = voxel_faces(coords, resolution) if len(coords) else (np.zeros((0, 3)),) * 3
    yaw, elev = math.radians(yaw_degrees), math.radians(elevation_degrees)
    view = np.array(
        [math.sin(yaw) * math.cos(elev), math.sin(elev), math.cos(yaw) * math.cos(elev)]
    )  # to camera
    right = np.array([math.cos(yaw), 0.0, -math.sin(yaw)])
    up = np.cross(view, right)
    visible = normals @ view > 1e-9
    if visible.any():
        corners, normals, offsets = corners[visible], normals[visible], offsets[visible]
        points = (corners[:, None, :] + offsets) / resolution - 0.5  # [F, 4, 3] object frame
        centres = points.mean(axis=1)
        order = np.argsort(centres @ view)  # far to near
        scale = size / math.sqrt(3) * 0.98
        px = (points @ right) * scale + size / 2
        py = size / 2 - (points @ up) * scale
        light = 0.6 * view + 0.3 * right + np.array([0.0, 0.7, 0.0])  # a key light that follows the camera
        light /= np.linalg.norm(light)
        shade = 0.3 + 0.7 * np.clip(normals @ light, 0.0, 1.0)
        fills = np.clip(np.array(color)[None, :] * shade[:, None], 0, 255).astype(np.uint8)
        edge = 25 if scale / resolution >= 4 else 0  # outlines only where a voxel is a few pixels wide
        draw = ImageDraw.Draw(image)
        for f in order:
            polygon = list(zip(px[f].tolist(), py[f].tolist()))
            fill = tuple(int(c) for c in fills[f])
            draw.polygon(polygon, fill=fill, outline=tuple(max(0, c - edge) for c in fill))
    return np.asarray(image)


def render_previews(
    coords: np.ndarray,
    resolution: int,
    *,
    size: int = 256,
    yaws: tuple[float, ...] = (35.0, 125.0, 215.0, 305.0),
) -> np.ndarray:  # [size, size * len(yaws), 3] uint8
    """Several yaws side by side."""
    return np.concatenate(
        [render_preview(coords, resolution, size=size, yaw_degrees=y) for y in yaws], axis=1
    )
