"""A textured `.glb` from a coloured triangle mesh: simplify, UV-unwrap, bake a base-colour map.

    mesh = textured_glb(vertices, faces, vertex_colors, gaussians=g, up="z")  # -> TexturedMesh
    mesh.save_glb("asset.glb")   # TEXCOORD_0 + NORMAL + PBR material with a PNG baseColorTexture

This is the kind of asset TRELLIS's `to_glb` writes (decimated mesh, xatlas atlas, texture
baked from multi-view renders of the Gaussians, rotated Z-up -> Y-up), built from voxforge's
own parts and running on CPU:

1. **Simplify** (`simplify`): quadric edge collapse through `fast-simplification` (the
   Fast-Quadric-Mesh-Simplification library, the same error metric as the VTK decimation
   TRELLIS calls). Per-vertex attributes are carried over by *closest-point transfer*: each
   new vertex takes the barycentric blend of the attributes on the nearest point of the
   original surface (`closest_points`), which is exact where the new vertex lies on the old
   surface and never averages across a whole collapsed cluster.
2. **Unwrap** (`unwrap`): `xatlas` charts and packs the simplified mesh for the texture size
   with a gutter of `padding` texels between charts; vertices are split along chart seams,
   and `vertex_map` says which input vertex each output vertex came from.
3. **Texel map** (`texel_map`): the mesh is rasterized *in UV space* with voxforge's torch
   rasterizer (`render.mesh_raster`: triangles placed at ``uv * T`` pixels, constant depth),
   which gives every covered texel its triangle and barycentrics -- so its 3D position and
   normal. Texel centres follow the glTF convention of `representations.mesh` (texel (c, r)
   is uv ((c + 0.5) / T, (r + 0.5) / T), v down), which is what `sample_texture_bilinear`
   and every glTF viewer read back.
4. **Base colour** (`bake_vertex_colors`, and inside `textured_glb`): each texel takes the
   colour of the *original* dense mesh at its 3D position (closest-point transfer again), so
   decimating 95% of the faces does not blur the colours down to the simplified vertices.
   With Gaussians, which supply the detail, the base is only their fallback and is the
   cheaper interpolation of the colours carried to the simplified vertices.
5. **Gaussian bake** (`bake_gaussians` -> `bake_from_views`): the Gaussians are rendered
   from `views` cameras on a Hammersley sphere around the mesh (render.gaussians, black
   background, un-premultiplied by alpha). Each texel is projected into every view; it is
   visible there when it faces the camera and its depth matches the mesh's own depth map
   rasterized from that view (a slope-aware tolerance); it then takes the view's colour,
   bilinearly sampled, with weight ``alpha * cos(angle)^angle_power``. The texel colour is
   the weighted mean, blended with the base colour at a small constant weight so texels
   that no view sees (or sees only grazing) fall back to it continuously. TRELLIS instead
   fits the texture with 2500 Adam steps through nvdiffrast; the weighted mean is the closed
   form of the same kind of per-texel least-squares fit and needs no GPU.
6. **Dilate** (`dilate`): texels outside every chart take the mean of their covered
   neighbours, `dilate_px` rings deep, so bilinear and mip-mapped lookups at chart borders
   never pick up background; what is still empty after that gets the mean colour.
7. **Orientation.** TRELLIS's decoders produce Z-up geometry, glTF is Y-up: ``up="z"`` maps
   (x, y, z) -> (x, z, -y) (a rotation of -90 deg about +X, TRELLIS's own), so Blender's
   importer ((x, y, z)_blender = (x, -z, y)_gltf) gives back exactly the Z-up coordinates
   and trimesh/three.js show the object upright. voxforge's own object frame is already +Y
   up (DESIGN.md): ``up="y"`` applies no rotation. `up` has no default on purpose.

Costs on one CPU thread for a 20k-face mesh and a 1024^2 texture: xatlas ~3-5 s, the UV
rasterization and base-colour transfer ~1-2 s, the per-view bake ~0.1 s a view plus the
Gaussian renders themselves (the torch rasterizer: ~4 s a 512^2 view for 200k Gaussians).

`xatlas` and `fast-simplification` are optional (`pip install 'voxforge[mesh]'`) and imported
inside the functions that use them; a missing one raises `MissingDependencyError`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import MissingDependencyError, UserError
from voxforge.render.cameras import Cameras, intrinsics, look_at, sphere_hammersley
from voxforge.render.gaussians import render_gaussians_cameras
from voxforge.render.mesh_raster import barycentrics, rasterize, sample_texture_bilinear, setup_triangles
from voxforge.representations.gaussians import Gaussians
from voxforge.representations.mesh import MeshPart, TexturedMesh

__all__ = [
    "Z_UP_TO_Y_UP",
    "TexelMap",
    "UVMesh",
    "bake_from_views",
    "bake_gaussians",
    "bake_vertex_colors",
    "closest_points",
    "dilate",
    "orbit_cameras",
    "remove_hidden",
    "simplify",
    "texel_map",
    "textured_glb",
    "transfer_attributes",
    "unwrap",
    "vertex_normals",
]

# Row-vector convention: p_gltf = p_zup @ Z_UP_TO_Y_UP, i.e. (x, y, z) -> (x, z, -y).
Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=np.float64)


def _require(module: str, package: str, feature: str) -> Any:
    """Import an optional dependency of the `mesh` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package, "mesh", feature) from exc


def _check_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
# closest points on a triangle mesh (attribute transfer)


def _closest_on_triangles(
    ap: np.ndarray,  # [N, 3] point - a
    ab: np.ndarray,  # [N, 3] b - a
    ac: np.ndarray,  # [N, 3] c - a
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # v [N], w [N], squared distance [N]
    """Closest point a + v * ab + w * ac of each triangle to each point, by the Voronoi region
    of the triangle it falls in (vertex, edge or face; Ericson, Real-Time Collision Detection
    5.1.5). Only the two parameters are carried: fewer temporaries than 3-vectors."""

    def dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.einsum("ij,ij->i", x, y)

    d1, d2 = dot(ab, ap), dot(ac, ap)
    ab2, ac2, abac = dot(ab, ab), dot(ac, ac), dot(ab, ac)
    d3, d4 = d1 - ab2, d2 - abac  # the same dot products from b (bp = ap - ab)
    d5, d6 = d1 - abac, d2 - ac2  # and from c (cp = ap - ac)
    va, vb, vc = d3 * d6 - d5 * d4, d5 * d2 - d1 * d6, d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        v, w = vb / (va + vb + vc), vc / (va + vb + vc)  # face interior
        edge_bc = (va <= 0) & (d4 - d3 >= 0) & (d5 - d6 >= 0)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
        v, w = np.where(edge_bc, 1 - t_bc, v), np.where(edge_bc, t_bc, w)
        edge_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
        v, w = np.where(edge_ac, 0.0, v), np.where(edge_ac, d2 / (d2 - d6), w)
        edge_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
        v, w = np.where(edge_ab, d1 / (d1 - d3), v), np.where(edge_ab, 0.0, w)
    # Vertex regions last (they win): c, b, a. Degenerate triangles (NaN) take corner a.
    corner_c, corner_b = (d6 >= 0) & (d5 <= d6), (d3 >= 0) & (d4 <= d3)
    v, w = np.where(corner_c, 0.0, v), np.where(corner_c, 1.0, w)
    v, w = np.where(corner_b, 1.0, v), np.where(corner_b, 0.0, w)
    corner_a = ((d1 <= 0) & (d2 <= 0)) | ~(np.isfinite(v) & np.isfinite(w))
    v, w = np.where(corner_a, 0.0, v), np.where(corner_a, 0.0, w)
    offset = ap - v[:, None] * ab - w[:, None] * ac
    return v, w, dot(offset, offset)


def closest_points(
    points: np.ndarray,  # [N, 3]
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
    *,
    candidates: int = 8,
    chunk: int = 1 << 15,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # face [N] int64, bary [N, 3], distance [N]
    """Nearest point of the mesh surface to each point, as (triangle, barycentrics, distance).

    The exact closest point is searched among the `candidates` triangles whose centroids are
    nearest (scipy's cKDTree): exact for the dense, fairly uniform meshes a decoder emits and
    for points on or near the surface, which is what attribute transfer asks; a point far
    from a mesh of very uneven triangles may get a slightly farther triangle.
    """
    from scipy.spatial import cKDTree

    vertices, faces = _check_mesh(vertices, faces)
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    a = vertices[faces[:, 0]]
    ab, ac = vertices[faces[:, 1]] - a, vertices[faces[:, 2]] - a
    k = int(min(candidates, len(faces)))
    tree = cKDTree(a + (ab + ac) / 3.0)
    face_out = np.zeros(len(points), np.int64)
    bary_out = np.zeros((len(points), 3))
    dist_out = np.zeros(len(points))
    for begin in range(0, len(points), chunk):
        p = points[begin : begin + chunk]
        n = len(p)
        flat = tree.query(p, k=k, workers=-1)[1].reshape(-1)  # [n * k] candidate triangles
        v, w, dist2 = _closest_on_triangles(np.repeat(p, k, axis=0) - a[flat], ab[flat], ac[flat])
        best = dist2.reshape(n, k).argmin(1) + np.arange(n) * k
        out = slice(begin, begin + n)
        face_out[out] = flat[best]
        bary_out[out] = np.stack([1 - v[best] - w[best], v[best], w[best]], 1)
        dist_out[out] = np.sqrt(dist2[best])
    return face_out, bary_out, dist_out


def transfer_attributes(
    points: np.ndarray,  # [N, 3]
    vertices: np.ndarray,  # [V, 3] source mesh
    faces: np.ndarray,  # [F, 3]
    attributes: np.ndarray,  # [V, C] per-vertex values of the source mesh
    **options: Any,
) -> np.ndarray:  # [N, C] float32
    """Per-vertex attributes of a mesh, interpolated at the surface points nearest `points`."""
    attributes = np.asarray(attributes, dtype=np.float64)
    face, bary, _ = closest_points(points, vertices, faces, **options)
    corner = np.asarray(faces, np.int64)[face]  # [N, 3]
    return np.einsum("ni,nic->nc", bary, attributes[corner]).astype(np.float32)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:  # [V, 3] float32 unit
    """Area-weighted vertex normals (the sum of the adjacent faces' cross products)."""
    vertices = np.asarray(vertices, np.float64)
    faces = np.asarray(faces, np.int64)
    tri = vertices[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(normals, faces[:, i], cross)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return np.where(length > 1e-20, normals / np.maximum(length, 1e-20), [0.0, 0.0, 1.0]).astype(np.float32)


# ------------------------------------------------------------------------------------
# simplify and unwrap


def simplify(
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
    *,
    reduction: float | None = None,
    target_faces: int | None = None,
    attrs: np.ndarray | None = None,  # [V, C] per-vertex attributes (e.g. colours)
    aggressiveness: float = 7.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:  # [V', 3] f32, [F', 3] i64, [V', C] or None
    """Quadric edge-collapse decimation to `target_faces`, or removing the fraction `reduction`
    of the faces (TRELLIS's `simplify=0.95` keeps 5%). Give exactly one of the two.

    `attrs` are carried to the new vertices by closest-point transfer from the input surface
    (module docstring). A target at or above the face count returns the mesh unchanged.
    """
    vertices, faces = _check_mesh(vertices, faces)
    if (reduction is None) == (target_faces is None):
        raise UserError("simplify: give exactly one of reduction (fraction of faces removed) or target_faces")
    if reduction is not None:
        if not 0.0 <= float(reduction) < 1.0:
            raise UserError(f"simplify: reduction must lie in [0, 1), got {reduction}")
        target = int(round(len(faces) * (1.0 - float(reduction))))
    else:
        if isinstance(target_faces, bool) or int(target_faces) < 4:
            raise UserError(f"simplify: target_faces must be an integer >= 4, got {target_faces!r}")
        target = int(target_faces)
    if attrs is not None:
        attrs = np.asarray(attrs, dtype=np.float32)
        if attrs.ndim != 2 or len(attrs) != len(vertices):
            raise UserError(
                f"simplify: attrs must be [V, C] with V = {len(vertices)}, got {list(attrs.shape)}"
            )
    if target >= len(faces):
        return vertices.astype(np.float32), faces, attrs
    fast_simplification = _require("fast_simplification", "fast-simplification", "mesh simplification")
    new_vertices, new_faces = fast_simplification.simplify(
        vertices, faces.astype(np.int32), target_count=target, agg=float(aggressiveness)
    )
    new_faces = np.asarray(new_faces, np.int64).reshape(-1, 3)
    # Drop collapsed (repeated-index) triangles and vertices no face uses any more.
    keep = (
        (new_faces[:, 0] != new_faces[:, 1])
        & (new_faces[:, 1] != new_faces[:, 2])
        & (new_faces[:, 0] != new_faces[:, 2])
    )
    new_faces = new_faces[keep]
    used, new_faces = np.unique(new_faces.reshape(-1), return_inverse=True)
    new_vertices = np.asarray(new_vertices, np.float64)[used]
    new_faces = new_faces.reshape(-1, 3).astype(np.int64)
    new_attrs = None if attrs is None else transfer_attributes(new_vertices, vertices, faces, attrs)
    return new_vertices.astype(np.float32), new_faces, new_attrs


class UVMesh(NamedTuple):
    """A mesh cut along UV seams: every vertex has one uv."""

    vertices: np.ndarray  # [V', 3] float32
    faces: np.ndarray  # [F, 3] int64, the input faces in the input order, re-indexed
    uv: np.ndarray  # [V', 2] float32 in [0, 1], glTF convention (v down)
    vertex_map: np.ndarray  # [V'] int64 input vertex of each output vertex


def unwrap(
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
    *,
    texture_size: int = 1024,
    padding: int = 4,
) -> UVMesh:
    """xatlas charts packed for a `texture_size` texture with `padding` texels between charts."""
    vertices, faces = _check_mesh(vertices, faces)
    xatlas = _require("xatlas", "xatlas", "UV unwrapping")
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    atlas = xatlas.Atlas()
    atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
    atlas.generate(pack_options=pack)
    if atlas.atlas_count != 1:  # charts spilled into a second page: pack into one, at any size
        pack.resolution = 0
        atlas = xatlas.Atlas()
        atlas.add_mesh(vertices.astype(np.float32), faces.astype(np.uint32))
        atlas.generate(pack_options=pack)
    vmap, indices, uvs = atlas[0]
    vmap = np.asarray(vmap, np.int64)
    # xatlas pads between charts, not at the atlas border: keep half the padding free on each
    # side too, so a lookup near the border never wraps (glTF REPEAT) onto the opposite side.
    size, border = float(texture_size), max(1.0, padding / 2)
    uvs = (np.clip(np.asarray(uvs, np.float64), 0.0, 1.0) * (size - 2 * border) + border) / size
    return UVMesh(
        vertices=vertices[vmap].astype(np.float32),
        faces=np.asarray(indices, np.int64).reshape(-1, 3),
        uv=uvs.astype(np.float32),
        vertex_map=vmap,
    )


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


def _check_size(size: Any) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 16384:
        raise UserError(f"texture size must be an integer in [8, 16384], got {size!r}")
    return int(size)


def texel_map(faces: np.ndarray, uv: np.ndarray, size: int) -> TexelMap:
    """Rasterize the triangles at their UVs into a size x size texture (glTF texel centres)."""
    size = _check_size(size)
    with torch.no_grad():
        pix = torch.as_tensor(np.asarray(uv, np.float32)) * size  # [V, 2]
        z = torch.ones(len(pix))
        faces_t = torch.as_tensor(np.asarray(faces, np.int64))
        setup = setup_triangles(pix, z, faces_t, size, size)
        tri, _ = rasterize(pix, z, faces_t, size, size, setup=setup)
        bary = barycentrics(pix, z, faces_t, tri, setup=setup)
    index = torch.nonzero(tri.reshape(-1) >= 0).squeeze(1)
    return TexelMap(size, index, tri.reshape(-1)[index], bary.reshape(-1, 3)[index].float())


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


def _bounding_sphere(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    lo, hi = vertices.min(0), vertices.max(0)
    center = (lo + hi) / 2
    return center, max(float(np.linalg.norm(vertices - center, axis=1).max()), 1e-6)


def _rasterize_view(
    vertices: Tensor, faces: Tensor, rot: Tensor, shift: Tensor, K: Tensor, width: int, height: int
) -> tuple[Tensor, Tensor]:  # triangle [H, W] (-1 empty), depth [H, W] (0 empty)
    cam = vertices @ rot.T + shift
    pix = (cam @ K.T)[:, :2] / cam[:, 2:3].clamp(min=1e-6)
    return rasterize(pix, cam[:, 2], faces, width, height)


def remove_hidden(
    vertices: np.ndarray,  # [V, 3]
    faces: np.ndarray,  # [F, 3]
    *,
    views: int = 16,
    resolution: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # vertices [V', 3], faces [F', 3], kept vertex ids [V']
    """Drop the connected parts of the mesh that no view sees (interior shells, sealed voids).

    Visibility is rasterized from `views` orbit cameras. TRELLIS also cuts hidden faces out of
    visible parts (a min-cut on the face graph) and refills the holes; removing whole
    components only can never open a hole in a visible surface, and costs `views` rasters.
    A part smaller than a pixel in every view counts as hidden.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    vertices, faces = _check_mesh(vertices, faces)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(vertices),) * 2)
    _, label = connected_components(graph, directed=False)
    face_label = label[faces[:, 0]]
    center, radius = _bounding_sphere(vertices[np.unique(faces)])
    cameras = orbit_cameras(center, radius, views, resolution)
    vert_t, faces_t = torch.as_tensor(vertices, dtype=torch.float32), torch.as_tensor(faces)
    seen = np.zeros(label.max() + 1, bool)
    with torch.no_grad():
        for view in range(len(cameras)):
            w2c, K = torch.as_tensor(cameras.world_to_cam[view]), torch.as_tensor(cameras.K[view])
            tri, _ = _rasterize_view(vert_t, faces_t, w2c[:3, :3], w2c[:3, 3], K, resolution, resolution)
            visible = torch.unique(tri[tri >= 0]).numpy()
            seen[face_label[visible]] = True
    keep_faces = faces[seen[face_label]]
    used, new_faces = np.unique(keep_faces.reshape(-1), return_inverse=True)
    return vertices[used].astype(np.float32), new_faces.reshape(-1, 3).astype(np.int64), used


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
    """Accumulate each view's colour at the texels it sees (module docstring, step 5).

    Returns the weighted colour sum and the weight per covered texel (`texels` order), so the
    caller decides the fallback; ``sums / weights`` is the baked colour where weights > 0.
    `depth_tolerance` is a fraction of the mesh's bounding radius.
    """
    vertices, faces = _check_mesh(vertices, faces)
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
    _, radius = _bounding_sphere(vertices)
    sums = torch.zeros(len(points), 3)
    weights = torch.zeros(len(points))
    w2c_all = torch.as_tensor(cameras.world_to_cam)
    K_all = torch.as_tensor(cameras.K)
    with torch.no_grad():
        for view in range(count):
            rot, shift, K = w2c_all[view, :3, :3], w2c_all[view, :3, 3], K_all[view]
            _, depth = _rasterize_view(vert_t, faces_t, rot, shift, K, width, height)  # 0 = empty
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
    views: int = 32,
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
    vertices, faces = _check_mesh(vertices, faces)
    center, radius = _bounding_sphere(vertices)
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


# ------------------------------------------------------------------------------------
# the asset


def _colors_rgba(colors: np.ndarray | None, count: int) -> np.ndarray:  # [V, 4] float32 in [0, 1]
    if colors is None:
        return np.full((count, 4), [0.5, 0.5, 0.5, 1.0], np.float32)
    colors = np.asarray(colors)
    if colors.ndim != 2 or len(colors) != count or colors.shape[1] not in (3, 4):
        raise UserError(f"vertex colours must be [V, 3] or [V, 4] with V = {count}, got {list(colors.shape)}")
    colors = colors.astype(np.float32) / 255.0 if colors.dtype == np.uint8 else colors.astype(np.float32)
    if not np.isfinite(colors).all():
        raise UserError("vertex colours contain NaN or Inf")
    if colors.shape[1] == 3:
        colors = np.concatenate([colors, np.ones((count, 1), np.float32)], 1)
    return np.clip(colors, 0.0, 1.0)


def textured_glb(
    vertices: np.ndarray,  # [V, 3] object frame of the model (see `up`)
    faces: np.ndarray,  # [F, 3]
    vertex_colors: np.ndarray | None = None,  # [V, 3|4] sRGB, float in [0, 1] or uint8
    *,
    up: str,
    gaussians: Gaussians | None = None,
    texture_size: int = 1024,
    simplify_ratio: float = 0.95,
    target_faces: int | None = None,
    padding: int = 4,
    dilate_px: int = 8,
    views: int = 32,
    view_resolution: int = 512,
    fallback_weight: float = 0.01,
    hidden_parts: str = "remove",
    backend: str = "auto",
) -> TexturedMesh:
    """A one-part TexturedMesh with UVs, normals and a baked base-colour texture (module docstring).

    - `up`: "z" for Z-up input (TRELLIS's decoders; rotated to glTF's Y-up), "y" for
      voxforge's own +Y-up frame (no rotation).
    - Simplification: `target_faces` if given, else remove the fraction `simplify_ratio` of
      the faces (TRELLIS's default 0.95); 0 keeps every face.
    - Colours: the texture takes the input mesh's vertex colours at each texel's surface
      point; with `gaussians` (same frame as `vertices`), renders of `views` views at
      `view_resolution` replace them wherever a view sees the texel (`fallback_weight` is the
      weight of the vertex-colour texture in that mean). Alpha comes from the vertex colours.
    - `hidden_parts="remove"` drops connected parts that no orbit view sees (`remove_hidden`);
      "keep" keeps them.
    """
    if up not in ("y", "z"):
        raise UserError(f"textured_glb: up must be 'y' or 'z', got {up!r}")
    if hidden_parts not in ("remove", "keep"):
        raise UserError(f"textured_glb: hidden_parts must be 'remove' or 'keep', got {hidden_parts!r}")
    vertices, faces = _check_mesh(vertices, faces)
    texture_size = _check_size(texture_size)
    colors = _colors_rgba(vertex_colors, len(vertices))
    # With Gaussians the vertex colours are only the fallback: carry them to the simplified
    # vertices (cheap). Without, each texel takes the input surface's colour (the detail).
    carry = colors if gaussians is not None else None
    if target_faces is not None:
        low_v, low_f, low_c = simplify(vertices, faces, target_faces=target_faces, attrs=carry)
    elif simplify_ratio > 0:
        low_v, low_f, low_c = simplify(vertices, faces, reduction=simplify_ratio, attrs=carry)
    else:
        low_v, low_f, low_c = vertices.astype(np.float32), faces, colors
    if hidden_parts == "remove":
        kept_v, kept_f, used = remove_hidden(low_v, low_f)
        if len(kept_f):
            low_v, low_f, low_c = kept_v, kept_f, None if low_c is None else low_c[used]
    simplified = len(low_f) != len(faces) or low_v.shape != vertices.shape
    normals = vertex_normals(low_v, low_f)
    atlas = unwrap(low_v, low_f, texture_size=texture_size, padding=padding)
    split_normals = normals[atlas.vertex_map]
    texels = texel_map(atlas.faces, atlas.uv, texture_size)
    if simplified and low_c is None:
        points = texels.interpolate(atlas.vertices, atlas.faces).numpy()  # [M, 3]
        base = torch.from_numpy(transfer_attributes(points, vertices, faces, colors))
    else:  # not simplified (texels lie on the input triangles), or colours carried along
        base = texels.interpolate((colors if low_c is None else low_c)[atlas.vertex_map], atlas.faces)
    if gaussians is not None:
        sums, weights = bake_gaussians(
            atlas.vertices,
            atlas.faces,
            atlas.uv,
            gaussians,
            texture_size,
            views=views,
            resolution=view_resolution,
            texels=texels,
            normals=split_normals,
            backend=backend,
        )
        rgb = (sums + fallback_weight * base[:, :3]) / (weights + fallback_weight)[:, None]
        base = torch.cat([rgb, base[:, 3:]], 1)
    image = dilate(texels.scatter(base.clamp(0, 1)), texels.mask, dilate_px)
    texture = (image.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()
    out_vertices, out_normals = atlas.vertices.astype(np.float64), split_normals.astype(np.float64)
    if up == "z":
        out_vertices, out_normals = out_vertices @ Z_UP_TO_Y_UP, out_normals @ Z_UP_TO_Y_UP
    part = MeshPart(
        vertices=out_vertices.astype(np.float32),
        faces=atlas.faces,
        uv=atlas.uv,
        texture=texture,
        normals=out_normals.astype(np.float32),
    )
    part.check()
    return TexturedMesh(parts=[part])
