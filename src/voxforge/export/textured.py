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
3. **Texel map** (`bake.texel_map`): the mesh rasterized in UV space with voxforge's torch
   rasterizer: every covered texel gets its triangle and barycentrics, so its 3D position.
4. **Base colour**: each texel takes the colour of the *original* dense mesh at its 3D
   position (closest-point transfer again), so decimating 95% of the faces does not blur
   the colours down to the simplified vertices. With Gaussians, which supply the detail,
   the base is only their fallback: the interpolated colours carried to the new vertices.
5. **Gaussian bake** (`bake.bake_gaussians`): renders from `views` orbit cameras; each texel
   takes the mean colour of the views that see it (depth-tested against the mesh, weighted
   by alpha and view angle; see `voxforge.export.bake`), blended with the base colour at a
   small constant weight so texels no view sees (or sees only grazing) fall back to it
   continuously.
6. **Gutters** (`bake.dilate`) are filled from the charts' edges, `dilate_px` rings deep.
   Before unwrapping, `remove_hidden` drops connected parts that no view sees (interior
   shells), which would only waste texture space.
7. **Orientation.** TRELLIS's decoders produce Z-up geometry, glTF is Y-up: ``up="z"`` maps
   (x, y, z) -> (x, z, -y) (a rotation of -90 deg about +X, TRELLIS's own), so Blender's
   importer ((x, y, z)_blender = (x, -z, y)_gltf) gives back exactly the Z-up coordinates
   and trimesh/three.js show the object upright. voxforge's own object frame is already +Y
   up (DESIGN.md): ``up="y"`` applies no rotation. `up` has no default on purpose.

Costs measured on one (shared) CPU thread, 327k input faces -> 16k faces, 1024^2 texture:
simplify 0.9 s, `remove_hidden` 0.9 s, xatlas 3.3 s (3-10 s at 20k faces, depending on the
load), texel map 0.5 s, per-texel colour transfer 3.7 s, dilation 0.8 s: `textured_glb`
without Gaussians ~10 s. The Gaussian bake adds ~0.3 s a view for the projection and the
Gaussian renders themselves, which dominate: the torch rasterizer takes 3-10 s for a 512^2
view of 100k-300k Gaussians (so the default 24 views ~1-4 min; gsplat on a GPU: instant).
Fewer `views` or a smaller `view_resolution` trade coverage and sharpness for time.

`xatlas` and `fast-simplification` are optional (`pip install 'voxforge[mesh]'`) and imported
inside the functions that use them; a missing one raises `MissingDependencyError`.
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple

import numpy as np
import torch

from voxforge.errors import MissingDependencyError, UserError
from voxforge.export.bake import (
    TexelMap,
    bake_from_views,
    bake_gaussians,
    bake_vertex_colors,
    bounding_sphere,
    check_mesh,
    check_size,
    dilate,
    orbit_cameras,
    rasterize_view,
    texel_map,
)
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

    vertices, faces = check_mesh(vertices, faces)
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
    vertices, faces = check_mesh(vertices, faces)
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
    vertices, faces = check_mesh(vertices, faces)
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

    vertices, faces = check_mesh(vertices, faces)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(len(vertices),) * 2)
    _, label = connected_components(graph, directed=False)
    face_label = label[faces[:, 0]]
    center, radius = bounding_sphere(vertices[np.unique(faces)])
    cameras = orbit_cameras(center, radius, views, resolution)
    vert_t, faces_t = torch.as_tensor(vertices, dtype=torch.float32), torch.as_tensor(faces)
    seen = np.zeros(label.max() + 1, bool)
    with torch.no_grad():
        for view in range(len(cameras)):
            w2c, K = torch.as_tensor(cameras.world_to_cam[view]), torch.as_tensor(cameras.K[view])
            tri, _ = rasterize_view(vert_t, faces_t, w2c[:3, :3], w2c[:3, 3], K, resolution, resolution)
            visible = torch.unique(tri[tri >= 0]).numpy()
            seen[face_label[visible]] = True
    keep_faces = faces[seen[face_label]]
    used, new_faces = np.unique(keep_faces.reshape(-1), return_inverse=True)
    return vertices[used].astype(np.float32), new_faces.reshape(-1, 3).astype(np.int64), used


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
    views: int = 24,
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
    vertices, faces = check_mesh(vertices, faces)
    texture_size = check_size(texture_size)
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
