"""Baking colours into a texture atlas: texel maps, gutter dilation, and multi-view bakes.

The texture half of `voxforge.export.textured` (read its docstring for the whole pipeline):

- `texel_map` rasterizes a mesh *in UV space* with voxforge's torch rasterizer
  (`render.mesh_raster`: triangles placed at ``uv * T`` pixels, constant depth), which gives
  every covered texel its triangle and barycentrics, so its 3D position and normal. Texel
  centres follow the glTF convention of `representations.mesh` (texel (c, r) is uv
  ((c + 0.5) / T, (r + 0.5) / T), v down), which `sample_texture_bilinear` and every glTF
  viewer read back.
- `dilate` grows the covered texels into the gutters ring by ring (mean of the covered 3x3
  neighbours), so bilinear and mip-mapped lookups at chart borders never pick up background.
- `bake_from_views` projects every texel into each view: it is visible there when it faces
  the camera and its depth matches the mesh's own depth map rasterized from that view (a
  slope-aware tolerance); it then takes the view's colour, bilinearly sampled, with weight
  ``alpha * cos(angle)^angle_power``. The weighted mean is the closed form of a per-texel
  least-squares fit to the views, where TRELLIS runs 2500 Adam steps through nvdiffrast;
  it needs no GPU. `bake_gaussians` renders the Gaussians from orbit cameras first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import UserError
from voxforge.render.cameras import Cameras, intrinsics, look_at, sphere_hammersley
from voxforge.render.gaussians import render_gaussians_cameras
from voxforge.render.mesh_raster import barycentrics, rasterize, sample_texture_bilinear, setup_triangles
from voxforge.representations.gaussians import Gaussians

__all__ = [
    "TexelMap",
    "bake_from_views",
    "bake_gaussians",
    "bake_vertex_colors",
    "dilate",
    "orbit_cameras",
    "rasterize_view",
    "texel_map",
]


def check_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """vertices [V, 3] float64, faces [F, 3] int64, or a UserError saying what is wrong."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise UserError(f"mesh vertices must be [V, 3], got {list(vertices.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise UserError(f"mesh faces must be a non-empty [F, 3] array, got {list(faces.shape)}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise UserError(f"mesh faces must be integer indices, got dtype {faces.dtype}")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise UserError(f"face indices must lie in [0, {len(vertices)}), found {faces.min()}..{faces.max()}")
    if not np.isfinite(vertices).all():
        raise UserError("mesh vertices contain NaN or Inf")
    return vertices, faces


# ------------------------------------------------------------------------------------
# texel map and dilation


@dataclass
class TexelMap:
    """The covered texels of a size x size texture: flat index, triangle and barycentrics."""

    size: int
    index: Tensor  # [M] int64 flat texel index (row * size + col)
    face: Tensor  # [M] int64 triangle
    bary: Tensor  # [M, 3] float32

    @property
    def mask(self) -> Tensor:  # [T, T] bool
        mask = torch.zeros(self.size * self.size, dtype=torch.bool)
        mask[self.index] = True
        return mask.view(self.size, self.size)

    def interpolate(self, attributes: Tensor | np.ndarray, faces: Tensor | np.ndarray) -> Tensor:
        """attributes [V, C] -> [M, C] at the covered texels (float32)."""
        attributes = torch.as_tensor(np.asarray(attributes, np.float32))
        corner = torch.as_tensor(np.asarray(faces, np.int64))[self.face]  # [M, 3]
        return (attributes[corner] * self.bary[:, :, None]).sum(1)

    def scatter(self, values: Tensor) -> Tensor:
        """values [M, C] -> [T, T, C] image, zeros where no triangle covers the texel."""
        out = torch.zeros(self.size * self.size, values.shape[1], dtype=values.dtype)
        out[self.index] = values
        return out.view(self.size, self.size, -1)


def check_size(size: Any) -> int:
    """A texture side, or a UserError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 16384:
        raise UserError(f"texture size must be an integer in [8, 16384], got {size!r}")
    return int(size)


def texel_map(faces: np.ndarray, uv: np.ndarray, size: int) -> TexelMap:
    """Rasterize the triangles at their UVs into a size x size texture (glTF texel centres).

    A triangle can cover no texel centre at all (a sliver, or a tiny chart of its own); left
    alone, dilation would give it a neighbouring chart's colour. Such triangles then claim
    the free texels their edges pass through (sampled every half texel), each with the
    barycentrics of the edge point that claimed it.
    """
    size = check_size(size)
    with torch.no_grad():
        pix = torch.as_tensor(np.asarray(uv, np.float32)) * size  # [V, 2]
        z = torch.ones(len(pix))
        faces_t = torch.as_tensor(np.asarray(faces, np.int64))
        setup = setup_triangles(pix, z, faces_t, size, size)
        tri, _ = rasterize(pix, z, faces_t, size, size, setup=setup)
        bary = barycentrics(pix, z, faces_t, tri, setup=setup)
    index = torch.nonzero(tri.reshape(-1) >= 0).squeeze(1)
    face, bary = tri.reshape(-1)[index], bary.reshape(-1, 3)[index].float()
    missing = torch.nonzero(torch.bincount(face, minlength=len(faces_t)) == 0).squeeze(1)
    if len(missing):
        extra = _edge_texels(pix, faces_t, missing, tri.reshape(-1) < 0, size)
        index, face, bary = (torch.cat(pair) for pair in zip((index, face, bary), extra))
    return TexelMap(size, index, face, bary)


def _edge_texels(
    pix: Tensor,  # [V, 2] texel coordinates
    faces: Tensor,  # [F, 3]
    missing: Tensor,  # [K] triangles that cover no texel centre
    free: Tensor,  # [T * T] bool, texels no triangle covers
    size: int,
) -> tuple[Tensor, Tensor, Tensor]:  # flat texel [E], triangle [E], barycentrics [E, 3]
    corner = faces[missing]  # [K, 3]
    starts, ends = [0, 1, 2], [1, 2, 0]
    a = pix[corner[:, starts]].reshape(-1, 2)  # [3K, 2] edge starts
    b = pix[corner[:, ends]].reshape(-1, 2)
    count = (torch.ceil((b - a).norm(dim=1) * 2).long() + 1).clamp(max=4 * size)  # [3K]
    edge = torch.repeat_interleave(torch.arange(len(a)), count)
    first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    t = (torch.arange(len(edge)) - first).float() / (count[edge] - 1).clamp(min=1).float()
    point = a[edge] + t[:, None] * (b[edge] - a[edge])
    bary = torch.zeros(len(edge), 3)
    slot = edge % 3  # the edge runs from corner `slot` to corner `slot + 1`
    rows = torch.arange(len(edge))
    bary[rows, slot] = 1 - t
    bary[rows, (slot + 1) % 3] = t
    col = point[:, 0].floor().long().clamp(0, size - 1)
    row = point[:, 1].floor().long().clamp(0, size - 1)
    flat = row * size + col
    keep = free[flat]
    flat, tri, bary = flat[keep], missing[edge[keep] // 3], bary[keep]
    # one claim per texel: the first sample that lands there
    unique, inverse = torch.unique(flat, return_inverse=True)
    pick = torch.full((len(unique),), len(flat), dtype=torch.int64).scatter_reduce(
        0, inverse, torch.arange(len(flat)), reduce="amin"
    )
    return unique, tri[pick], bary[pick]


def _box3(x: Tensor) -> Tensor:
    """Sum over each 3x3 neighbourhood (zero outside) of [T, T, C]: two shifted-add passes,
    much faster on CPU than a 3x3 conv2d with a handful of channels."""
    x = torch.nn.functional.pad(x, (0, 0, 1, 1, 1, 1))
    x = x[:-2] + x[1:-1] + x[2:]
    return x[:, :-2] + x[:, 1:-1] + x[:, 2:]


def dilate(
    texture: Tensor,  # [T, T, C] float
    mask: Tensor,  # [T, T] bool, texels holding a value
    iterations: int = 8,
    *,
    fill_rest: bool = True,
) -> Tensor:  # [T, T, C]
    """Grow the covered region ring by ring: an empty texel takes the mean of its covered
    3x3 neighbours. Texels still empty afterwards take the mean covered colour (`fill_rest`)."""
    have = mask[:, :, None].float()  # [T, T, 1]
    image = torch.cat([texture.float() * have, have], 2)  # colour sums and the count, together
    for _ in range(int(iterations)):
        total = _box3(image)
        grow = (total[:, :, -1:] > 0) & (image[:, :, -1:] == 0)
        if not bool(grow.any()):
            break
        image = torch.where(grow, total / total[:, :, -1:].clamp(min=1), image)
    out, filled = image[:, :, :-1], image[:, :, -1] > 0
    if fill_rest and bool(filled.any()) and not bool(filled.all()):
        out = torch.where(filled[:, :, None], out, out[filled].mean(0))
    return out


def bake_vertex_colors(
    faces: np.ndarray,  # [F, 3]
    uv: np.ndarray,  # [V, 2] glTF convention
    colors: np.ndarray,  # [V, C] float in [0, 1]
    texture_size: int = 1024,
    *,
    dilate_px: int = 8,
) -> np.ndarray:  # [T, T, C] float32 in [0, 1]
    """Per-vertex colours interpolated over each triangle's texels, dilated into the gutters."""
    texels = texel_map(faces, uv, texture_size)
    values = texels.interpolate(colors, faces)
    return dilate(texels.scatter(values), texels.mask, dilate_px).clamp(0, 1).numpy()


# ------------------------------------------------------------------------------------
# baking from views


def orbit_cameras(
    center: np.ndarray,  # [3]
    radius: float,  # bounding-sphere radius of the object
    views: int,
    resolution: int,
    *,
    fov_deg: float = 40.0,
    margin: float = 1.1,
) -> Cameras:
    """`views` cameras on a Hammersley sphere (TRELLIS's view sequence) looking at `center`,
    far enough that the bounding sphere, grown by `margin`, fills the field of view."""
    yaw, pitch = sphere_hammersley(int(views))
    direction = np.stack([np.cos(yaw) * np.cos(pitch), np.sin(pitch), -np.sin(yaw) * np.cos(pitch)], 1)
    distance = float(radius) * margin / math.sin(math.radians(fov_deg) / 2)
    center = np.asarray(center, np.float64)
    w2c = look_at(center + distance * direction, center)
    K = np.repeat(intrinsics(fov_deg, resolution, resolution)[None], len(w2c), axis=0)
    return Cameras(w2c, K, resolution, resolution)


def bounding_sphere(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre of the bounding box [3] and the largest distance of a vertex from it."""
    lo, hi = vertices.min(0), vertices.max(0)
    center = (lo + hi) / 2
    return center, max(float(np.linalg.norm(vertices - center, axis=1).max()), 1e-6)


def rasterize_view(
    vertices: Tensor, faces: Tensor, rot: Tensor, shift: Tensor, K: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:  # triangle [H, W] (-1 empty), depth [H, W] (0 empty)
    """Nearest triangle and depth per pixel of one view (world->camera rotation, shift, K)."""
    cam = vertices @ rot.T + shift
    pix = (cam @ K.T)[:, :2] / cam[:, 2:3].clamp(min=1e-6)
    return rasterize(pix, cam[:, 2], faces, width, height)


def bake_from_views(
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
    uv: np.ndarray,  # [V, 2]
    images: Tensor | np.ndarray,  # [N, H, W, 3] float in [0, 1], straight (not premultiplied)
    cameras: Cameras,  # N cameras, H x W
    texture_size: int = 1024,
    *,
    alphas: Tensor | np.ndarray | None = None,  # [N, H, W] coverage of each view; None = 1
    normals: np.ndarray | None = None,  # [V, 3] shading normals; None = face normals
    texels: TexelMap | None = None,
    depth_tolerance: float = 0.01,
    min_cosine: float = 0.1,
    angle_power: float = 2.0,
) -> tuple[Tensor, Tensor]:  # colour sums [M, 3] / weights [M] at texels.index, not normalized
    """Accumulate each view's colour at the texels it sees (module docstring).

    Returns the weighted colour sum and the weight per covered texel (`texels` order), so the
    caller decides the fallback; ``sums / weights`` is the baked colour where weights > 0.
    `depth_tolerance` is a fraction of the mesh's bounding radius.
    """
    vertices, faces = check_mesh(vertices, faces)
    images = torch.as_tensor(np.asarray(images, np.float32) if isinstance(images, np.ndarray) else images)
    images = images.float().cpu()
    count, height, width = len(cameras), cameras.height, cameras.width
    if images.shape != (count, height, width, 3):
        raise UserError(
            f"bake_from_views: images must be [{count}, {height}, {width}, 3], got {list(images.shape)}"
        )
    if alphas is None:
        alphas = torch.ones(count, height, width)
    alphas = torch.as_tensor(np.asarray(alphas, np.float32) if isinstance(alphas, np.ndarray) else alphas)
    alphas = alphas.float().cpu().reshape(count, height, width)
    texels = texels or texel_map(faces, uv, texture_size)
    vert_t = torch.as_tensor(vertices, dtype=torch.float32)
    faces_t = torch.as_tensor(faces)
    points = texels.interpolate(vert_t, faces_t)  # [M, 3]
    if normals is None:
        tri = vert_t[faces_t]
        normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[texels.face]
    else:
        normal = texels.interpolate(normals, faces_t)
    normal = torch.nn.functional.normalize(normal, dim=1)
    _, radius = bounding_sphere(vertices)
    sums = torch.zeros(len(points), 3)
    weights = torch.zeros(len(points))
    w2c_all = torch.as_tensor(cameras.world_to_cam)
    K_all = torch.as_tensor(cameras.K)
    with torch.no_grad():
        for view in range(count):
            rot, shift, K = w2c_all[view, :3, :3], w2c_all[view, :3, 3], K_all[view]
            _, depth = rasterize_view(vert_t, faces_t, rot, shift, K, width, height)  # 0 = empty
            # A texel on the silhouette may land on an empty pixel next to it: empty pixels
            # take their farthest neighbour's depth (occluded texels are never helped by it).
            grown = torch.nn.functional.max_pool2d(depth[None, None], 3, stride=1, padding=1)[0, 0]
            depth = torch.where(depth > 0, depth, grown)
            # Texels facing the camera first (about half), then project only those.
            centre = -(rot.T @ shift)
            cosine = (normal * torch.nn.functional.normalize(centre - points, dim=1)).sum(1)
            idx = torch.nonzero(cosine > min_cosine).squeeze(1)
            cosine = cosine[idx]
            cam = points[idx] @ rot.T + shift  # [m, 3]
            z = cam[:, 2]
            pix = (cam @ K.T)[:, :2] / z.clamp(min=1e-6)[:, None]
            col = torch.floor(pix[:, 0]).long()
            row = torch.floor(pix[:, 1]).long()
            seen = (z > 1e-6) & (col >= 0) & (col < width) & (row >= 0) & (row < height)
            surface = depth[row.clamp(0, height - 1), col.clamp(0, width - 1)]
            # The depth map holds the surface at the pixel centre, up to half a pixel away
            # along a slope of tan(angle): a tolerance that grows with the slope.
            tangent = torch.sqrt((1 - cosine.clamp(max=1) ** 2).clamp(min=0)) / cosine
            tol = depth_tolerance * radius + z / K[0, 0] * tangent.clamp(max=10.0)
            seen &= (surface > 0) & (z <= surface + tol)
            keep = torch.nonzero(seen).squeeze(1)
            if len(keep) == 0:
                continue
            rgba = torch.cat([images[view], alphas[view, :, :, None]], -1)  # [H, W, 4]
            at = pix[keep].clamp(min=torch.tensor([0.5, 0.5]), max=torch.tensor([width - 0.5, height - 0.5]))
            sample = sample_texture_bilinear(rgba, at / torch.tensor([float(width), float(height)]))
            weight = sample[:, 3].clamp(0, 1) * cosine[keep] ** angle_power
            sums.index_add_(0, idx[keep], sample[:, :3] * weight[:, None])
            weights.index_add_(0, idx[keep], weight)
    return sums, weights


def bake_gaussians(
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
    uv: np.ndarray,  # [V, 2]
    gaussians: Gaussians,
    texture_size: int = 1024,
    *,
    views: int = 24,
    resolution: int = 512,
    texels: TexelMap | None = None,
    normals: np.ndarray | None = None,
    backend: str = "auto",
    **options: Any,
) -> tuple[Tensor, Tensor]:  # colour sums [M, 3], weights [M] (see bake_from_views)
    """Render the Gaussians from `views` orbit cameras and bake them onto the mesh's texels.

    The renders are un-premultiplied (black background, rgb / alpha) and their alpha weights
    each sample; `options` go to `bake_from_views`.
    """
    vertices, faces = check_mesh(vertices, faces)
    center, radius = bounding_sphere(vertices)
    cameras = orbit_cameras(center, radius, views, resolution)
    images = torch.zeros(len(cameras), resolution, resolution, 3)
    alphas = torch.zeros(len(cameras), resolution, resolution)
    g = gaussians.detach()
    with torch.no_grad():
        for view in range(len(cameras)):
            out = render_gaussians_cameras(g, cameras[view], None, backend=backend)
            alpha = out["alpha"][0, :, :, 0].float().cpu()
            rgb = out["rgb"][0].float().cpu() / alpha.clamp(min=1e-4)[:, :, None]
            images[view] = torch.where(alpha[:, :, None] > 1e-4, rgb.clamp(0, 1), torch.zeros_like(rgb))
            alphas[view] = alpha
    return bake_from_views(
        vertices,
        faces,
        uv,
        images,
        cameras,
        texture_size,
        alphas=alphas,
        normals=normals,
        texels=texels,
        **options,
    )
