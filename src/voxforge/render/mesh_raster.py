"""Render textured meshes to RGBA + depth: a fast PyTorch rasterizer, or Blender Cycles.

    rgba, depth = render_mesh(mesh, cameras)              # backend="auto" -> "torch"
    rgba   # [V, H, W, 4] uint8, sRGB, straight alpha
    depth  # [V, H, W] float32 camera-space z (OpenCV, > 0); EMPTY_DEPTH (0.0) where no surface

Design (nvdiffrast's split, in plain PyTorch so it runs on any device and can be made
differentiable later):

1. `rasterize` -> per pixel the nearest triangle and its depth. `setup_triangles` turns
   each triangle that can cover a pixel centre into screen-space planes (barycentrics and
   1/z are affine in screen space). Candidate pixels are the bounding box, cut into 16x16
   tiles (tiles outside an edge dropped) when it is larger; windows are grouped by size
   and evaluated densely, window axis last, in chunks. A candidate inside the triangle
   (pixel centres at (col + 0.5, row + 0.5), touching counts, with a 1e-5 barycentric
   tolerance so a pixel centre on a shared edge never falls through) writes the key
   ``float_bits(z) << 32 | triangle`` into an int64 z-buffer with `scatter_reduce(amin)`:
   positive float32 bit patterns order like the floats, so the minimum key is the nearest
   surface, ties broken by the lower triangle index -- deterministic, no atomic races.
2. `barycentrics` recomputes the winning triangle's perspective-correct barycentrics per
   pixel (a differentiable function of the vertices), and `interpolate` blends vertex
   attributes with them.
3. Shading: unlit albedo by default -- surface colour = base_color x texture(uv) x
   vertex colour (sRGB values multiplied as they are; the data contract's definition),
   sampled bilinearly with glTF REPEAT wrap at pixel (u*W - 0.5, v*H - 0.5). Output alpha
   is coverage x material alpha (opaque surfaces, nearest layer only; no blending). This
   differs from TRELLIS on purpose: TRELLIS renders its feature views lit in Cycles,
   which bakes lighting into the features; an albedo render gives the features the
   object's own colours and is what the decoders are trained to reproduce.
   `shading="headlight"` adds a simple Lambert term with the light at the camera
   (ambient 0.3) for previews.
4. Anti-aliasing by supersampling: `supersample=s` renders s x s samples per pixel and
   averages colours premultiplied by alpha (then un-premultiplies to straight alpha);
   depth takes the nearest covered sample.

Triangles with a vertex closer than `near` (default 1e-3) to the camera plane are skipped
(no near-plane clipping: the data pipeline's cameras never come near the object).
Rasterization always runs in float32 with autocast disabled (DESIGN: rasterizers are fp32).

`backend="blender"` renders the colours of the same cameras with Blender Cycles through `bpy`
(optional extra `voxforge[blender]`, see `voxforge.render.blender`) and the depth with the
torch rasterizer. `render_mesh` is the one place that picks a backend: this module imports
the Blender one, which imports nothing from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import UserError
from voxforge.render.blender import render_blender_rgba
from voxforge.render.cameras import Cameras
from voxforge.representations.mesh import TexturedMesh

__all__ = [
    "EMPTY_DEPTH",
    "MESH_BACKENDS",
    "MeshBuffers",
    "TriangleSetup",
    "setup_triangles",
    "rasterize",
    "barycentrics",
    "interpolate",
    "sample_texture_bilinear",
    "render_mesh",
    "render_buffers",
]

EMPTY_DEPTH = 0.0
MESH_BACKENDS = ("auto", "torch", "blender")
_EMPTY_KEY = torch.iinfo(torch.int64).max
# Candidate pixels evaluated per chunk (bounds the temporaries to a few hundred MB at most).
_CHUNK = 1 << 21


class RenderError(UserError):
    """Bad input to the mesh renderer (backend name, camera or mesh arrays)."""


@dataclass
class MeshBuffers:
    """A TexturedMesh flattened into tensors for the rasterizer (all parts concatenated)."""

    vertices: Tensor  # [Vt, 3] float32 object frame
    faces: Tensor  # [Ft, 3] int64 into vertices
    face_part: Tensor  # [Ft] int64 part index
    uv: Tensor  # [Vt, 2] float32 (zeros where a part has none)
    vertex_colors: Tensor  # [Vt, 4] float32 (ones where a part has none)
    base_color: Tensor  # [P, 4] float32
    textures: list[Tensor | None]  # per part [H, W, 4] float32 in [0, 1], or None
    has_vertex_colors: bool = True

    @classmethod
    def from_mesh(cls, mesh: TexturedMesh, device: torch.device | str = "cpu") -> MeshBuffers:
        verts, faces, part_ids, uvs, colors, bases, textures = [], [], [], [], [], [], []
        offset = 0
        for index, part in enumerate(mesh.parts):
            count = len(part.vertices)
            verts.append(np.asarray(part.vertices, np.float32))
            faces.append(np.asarray(part.faces, np.int64) + offset)
            part_ids.append(np.full(len(part.faces), index, np.int64))
            uvs.append(
                np.zeros((count, 2), np.float32) if part.uv is None else np.asarray(part.uv, np.float32)
            )
            colors.append(
                np.ones((count, 4), np.float32)
                if part.vertex_colors is None
                else np.asarray(part.vertex_colors, np.float32)
            )
            bases.append(np.asarray(part.base_color, np.float32))
            tex = None
            if part.texture is not None and part.uv is not None:
                tex = torch.from_numpy(np.asarray(part.texture, np.uint8)).to(device).float() / 255.0
            textures.append(tex)
            offset += count

        def cat(arrays, shape, dtype):
            return torch.from_numpy(np.concatenate(arrays) if arrays else np.zeros(shape, dtype)).to(device)

        return cls(
            vertices=cat(verts, (0, 3), np.float32),
            faces=cat(faces, (0, 3), np.int64),
            face_part=cat(part_ids, (0,), np.int64),
            uv=cat(uvs, (0, 2), np.float32),
            vertex_colors=cat(colors, (0, 4), np.float32),
            base_color=cat([b[None] for b in bases], (0, 4), np.float32),
            textures=textures,
            has_vertex_colors=any(part.vertex_colors is not None for part in mesh.parts),
        )


def _project(
    vertices: Tensor,  # [Vt, 3] world
    world_to_cam: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3]
) -> tuple[Tensor, Tensor]:  # pixel coords [Vt, 2], camera z [Vt]
    cam = vertices @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = cam[:, 2]
    safe = torch.where(z.abs() > 1e-12, z, torch.ones_like(z))
    pix = (cam @ K.T)[:, :2] / safe[:, None]
    return pix, z


@dataclass
class TriangleSetup:
    """Screen-space planes of the triangles that can cover a pixel centre, in one view.

    A quantity q with coefficients (base, dx, dy) has the value
    ``base + dx * (col - col0) + dy * (row - row0)`` at pixel (col, row): barycentrics and
    1/z are affine in screen space, so one setup per triangle makes the per-pixel work a
    few additions. Coefficients are computed relative to the triangle's first candidate
    pixel centre, so float32 keeps them accurate to ~1e-7 of the triangle. Only triangles
    in front of the camera whose bounding box holds a pixel centre get a row (most faces
    of a dense mesh cover none), so arrays are [Fv] with `ids` their triangle indices.
    """

    ids: Tensor  # [Fv] int64 triangle index of each row
    row: Tensor  # [F] int64 row of each triangle, -1 when it covers no pixel centre
    bary: Tensor  # [3, 3, Fv] (barycentric, base/dx/dy, row) -- rows last: long inner loops
    inv_z: Tensor  # [3, Fv] base/dx/dy of 1/z
    col0: Tensor  # [Fv] int64 first candidate column
    col1: Tensor  # [Fv] int64 last candidate column
    row0: Tensor  # [Fv]
    row1: Tensor  # [Fv]


def setup_triangles(
    pix: Tensor,  # [Vt, 2] pixel coordinates
    z: Tensor,  # [Vt] camera-space depth
    faces: Tensor,  # [Ft, 3]
    width: int,
    height: int,
    *,
    near: float = 1e-3,
) -> TriangleSetup:
    device = pix.device
    count = len(faces)
    # Vertex-major gathers ([3, F], contiguous rows) are several times faster than [F, 3].
    corner = faces.T.reshape(-1)
    px = torch.index_select(pix[:, 0].contiguous(), 0, corner).view(3, count)
    py = torch.index_select(pix[:, 1].contiguous(), 0, corner).view(3, count)
    fz = torch.index_select(z.contiguous(), 0, corner).view(3, count)
    # Candidate pixels: centres (c + 0.5) inside the bounding box, widened by 1e-3 px so
    # float32 rounding can only add candidates (the edge test decides), never drop one.
    col0 = torch.ceil(torch.minimum(torch.minimum(px[0], px[1]), px[2]) - 0.501).clamp(min=0)
    col1 = torch.floor(torch.maximum(torch.maximum(px[0], px[1]), px[2]) - 0.499).clamp(max=width - 1)
    row0 = torch.ceil(torch.minimum(torch.minimum(py[0], py[1]), py[2]) - 0.501).clamp(min=0)
    row1 = torch.floor(torch.maximum(torch.maximum(py[0], py[1]), py[2]) - 0.499).clamp(max=height - 1)
    ok = (torch.minimum(torch.minimum(fz[0], fz[1]), fz[2]) > near) & (col1 >= col0) & (row1 >= row0)
    ok &= torch.isfinite(px[0] + px[1] + px[2] + py[0] + py[1] + py[2])
    ids = torch.nonzero(ok).squeeze(1)
    col0, col1, row0, row1 = (v[ids] for v in (col0, col1, row0, row1))
    # Vertices relative to the first candidate pixel centre: small numbers, so float32
    # edge functions stay accurate to ~1e-7 of the triangle's size.
    x = px[:, ids] - (col0 + 0.5)
    y = py[:, ids] - (row0 + 0.5)
    zz = fz[:, ids]
    area = (x[1] - x[0]) * (y[2] - y[0]) - (y[1] - y[0]) * (x[2] - x[0])
    keep = area.abs() > 1e-6
    if not bool(keep.all()):
        ids, x, y, zz, area = ids[keep], x[:, keep], y[:, keep], zz[:, keep], area[keep]
        col0, col1, row0, row1 = col0[keep], col1[keep], row0[keep], row1[keep]
    inv_area = 1.0 / area
    bases, dxs, dys = [], [], []
    for j, k in ((1, 2), (2, 0), (0, 1)):  # barycentric of vertex i sits opposite edge (j, k)
        ex = (x[k] - x[j]) * inv_area
        ey = (y[k] - y[j]) * inv_area
        bases.append(ey * x[j] - ex * y[j])
        dxs.append(-ey)
        dys.append(ex)
    inv_zv = 1.0 / zz  # [3, Fv]
    inv_z = torch.stack(
        [
            bases[0] * inv_zv[0] + bases[1] * inv_zv[1] + bases[2] * inv_zv[2],
            dxs[0] * inv_zv[0] + dxs[1] * inv_zv[1] + dxs[2] * inv_zv[2],
            dys[0] * inv_zv[0] + dys[1] * inv_zv[1] + dys[2] * inv_zv[2],
        ]
    )  # [3, Fv]
    planes = torch.stack([torch.stack([b, dx, dy]) for b, dx, dy in zip(bases, dxs, dys)])  # [3, 3, Fv]
    row = torch.full((len(faces),), -1, dtype=torch.int64, device=device)
    row[ids] = torch.arange(len(ids), device=device)
    return TriangleSetup(ids, row, planes, inv_z, col0.long(), col1.long(), row0.long(), row1.long())


def _bucket(size: Tensor) -> Tensor:
    """Round window sides (<= _TILE) up to a power of two: at most 25 window shapes."""
    return torch.pow(2, torch.ceil(torch.log2(size.float())).clamp(min=0)).long()


@dataclass
class _Windows:
    """Candidate pixel rectangles, each tied to a setup row (a triangle or a tile of one)."""

    row: Tensor  # [W] setup row
    c0: Tensor  # [W] first column
    r0: Tensor  # [W] first row
    c1: Tensor  # [W] last column
    r1: Tensor  # [W] last row


def _windows(setup: TriangleSetup) -> _Windows:
    """One window per triangle; bounding boxes wider or taller than `_TILE` pixels become
    tiles of `_TILE` x `_TILE`, and tiles that lie outside one of the triangle's edges are
    dropped: long slivers and large diagonal triangles then cost their area, not their
    bounding box, and there are at most 64 window shapes (few kernel calls)."""
    rows = torch.arange(len(setup.ids), device=setup.ids.device)
    h = setup.row1 - setup.row0 + 1
    w = setup.col1 - setup.col0 + 1
    big = (h > _TILE) | (w > _TILE)
    if not bool(big.any()):
        return _Windows(rows, setup.col0, setup.row0, setup.col1, setup.row1)
    small = ~big
    parts = [
        _Windows(rows[small], setup.col0[small], setup.row0[small], setup.col1[small], setup.row1[small])
    ]
    brow = rows[big]
    th = (h[big] + _TILE - 1) // _TILE
    tw = (w[big] + _TILE - 1) // _TILE
    count = th * tw
    row = torch.repeat_interleave(brow, count)
    first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
    offset = torch.arange(len(row), device=row.device) - first
    tw_rep = torch.repeat_interleave(tw, count)
    r0 = setup.row0[row] + (offset // tw_rep) * _TILE
    c0 = setup.col0[row] + (offset % tw_rep) * _TILE
    r1 = torch.minimum(r0 + _TILE - 1, setup.row1[row])
    c1 = torch.minimum(c0 + _TILE - 1, setup.col1[row])
    # Largest value of each barycentric over the tile's pixel centres (affine: at a corner).
    coef = setup.bary[:, :, row]  # [3, 3, n]
    dx0 = (c0 - setup.col0[row]).float()
    dx1 = (c1 - setup.col0[row]).float()
    dy0 = (r0 - setup.row0[row]).float()
    dy1 = (r1 - setup.row0[row]).float()
    reach = coef[:, 0] + torch.maximum(coef[:, 1] * dx0, coef[:, 1] * dx1)
    reach = reach + torch.maximum(coef[:, 2] * dy0, coef[:, 2] * dy1)  # [3, n]
    keep = (reach >= -_INSIDE_EPS).all(0)
    parts.append(_Windows(row[keep], c0[keep], r0[keep], c1[keep], r1[keep]))
    return _Windows(*(torch.cat([getattr(p, f) for p in parts]) for f in ("row", "c0", "r0", "c1", "r1")))


def rasterize(
    pix: Tensor,  # [Vt, 2] float32 pixel coordinates
    z: Tensor,  # [Vt] float32 camera-space depth
    faces: Tensor,  # [Ft, 3] int64
    width: int,
    height: int,
    *,
    near: float = 1e-3,
    setup: TriangleSetup | None = None,
) -> tuple[Tensor, Tensor]:  # triangle [H, W] int64 (-1 empty), depth [H, W] float32 (0 empty)
    """Nearest triangle per pixel through an int64 (depth bits | triangle) z-buffer."""
    zbuf = torch.full((height * width,), _EMPTY_KEY, dtype=torch.int64, device=pix.device)
    if len(faces):
        setup = setup or setup_triangles(pix, z, faces, width, height, near=near)
        if len(setup.ids):
            win = _windows(setup)
            key = _bucket(win.r1 - win.r0 + 1) * 65536 + _bucket(win.c1 - win.c0 + 1)
            # Few distinct bins: one mask per bin is cheaper than sorting all windows.
            for k in torch.unique(key).tolist():
                sel = torch.nonzero(key == k).squeeze(1)
                h_bin, w_bin = k // 65536, k % 65536
                step = max(1, _CHUNK // (h_bin * w_bin))
                for begin in range(0, len(sel), step):
                    part = sel[begin : begin + step]
                    chunk = _Windows(win.row[part], win.c0[part], win.r0[part], win.c1[part], win.r1[part])
                    _raster_chunk(zbuf, chunk, h_bin, w_bin, setup, width)
    empty = zbuf == _EMPTY_KEY
    tri = torch.where(empty, -1, zbuf & 0xFFFFFFFF)
    depth = torch.where(empty, 0, zbuf >> 32).to(torch.int32).view(torch.float32)
    return tri.view(height, width), depth.view(height, width)


# Inclusion tolerance on barycentrics: a pixel centre on a shared edge must land in at least
# one of the two triangles whatever the float32 rounding (errors are ~1e-7 by construction).
_INSIDE_EPS = 1e-5
_TILE = 16


def _raster_chunk(
    zbuf: Tensor, win: _Windows, h_bin: int, w_bin: int, setup: TriangleSetup, width: int
) -> None:
    """Evaluate T windows over [h_bin, w_bin, T] candidate pixels and update the z-buffer.

    The window axis is last so every broadcast has a long contiguous inner loop; the three
    barycentric planes and the 1/z plane are evaluated together as [4, h, w, T].
    """
    device = zbuf.device
    dcol = torch.arange(w_bin, device=device)[:, None]  # [w, 1]
    drow = torch.arange(h_bin, device=device)[:, None]  # [h, 1]
    row = win.row
    cols = win.c0 + dcol  # [w, T]
    rows = win.r0 + drow  # [h, T]
    planes = torch.cat([setup.bary[:, :, row], setup.inv_z[None, :, row]])  # [4, 3, T]
    fx = dcol.float() + (win.c0 - setup.col0[row]).float()  # [w, T] offsets from the plane origin
    fy = drow.float() + (win.r0 - setup.row0[row]).float()  # [h, T]
    along_x = planes[:, 1, None, :] * fx  # [4, w, T]
    along_y = planes[:, 0, None, :] + planes[:, 2, None, :] * fy  # [4, h, T]
    along_x[0].masked_fill_(cols > win.c1, -math.inf)  # padding columns/rows are never inside
    along_y[0].masked_fill_(rows > win.r1, -math.inf)
    values = along_y[:, :, None, :] + along_x[:, None, :, :]  # [4, h, w, T]
    inv_depth = values[3]
    inside = (values[:3].amin(0) >= -_INSIDE_EPS) & (inv_depth > 0)
    # Everything else densely too, then one boolean selection (cheaper than gathers).
    depth = (1.0 / inv_depth[inside]).contiguous()
    pixel = (rows * width)[:, None, :] + cols[None, :, :]
    ids = setup.ids[row].expand(h_bin, w_bin, -1)
    good = torch.isfinite(depth)
    keys = (depth.view(torch.int32).to(torch.int64) << 32) | ids[inside]
    zbuf.scatter_reduce_(0, pixel[inside][good], keys[good], reduce="amin", include_self=True)


def _pixel_barycentrics(
    setup: TriangleSetup, z: Tensor, faces: Tensor, tri: Tensor
) -> tuple[Tensor, Tensor, Tensor]:  # flat pixel index [N], triangle [N], barycentrics [N, 3]
    """Perspective-correct barycentrics of the covered pixels only."""
    width = tri.shape[1]
    flat = torch.nonzero(tri.reshape(-1) >= 0).squeeze(1)
    t = tri.reshape(-1)[flat]
    r = setup.row[t]
    coef = setup.bary[:, :, r]  # [3, 3, N]
    dcol = (flat % width - setup.col0[r]).to(coef.dtype)
    drow = (flat // width - setup.row0[r]).to(coef.dtype)
    screen = (coef[:, 0] + coef[:, 1] * dcol + coef[:, 2] * drow).T  # [N, 3]
    persp = screen / z[faces[t]]
    return flat, t, persp / persp.sum(1, keepdim=True)


def barycentrics(
    pix: Tensor,  # [Vt, 2]
    z: Tensor,  # [Vt]
    faces: Tensor,  # [Ft, 3]
    tri: Tensor,  # [H, W] int64, -1 empty
    *,
    setup: TriangleSetup | None = None,
) -> Tensor:  # [H, W, 3] perspective-correct barycentrics (0 where empty)
    """Perspective-correct barycentrics of each pixel's triangle at the pixel centre.

    Differentiable with respect to `pix` and `z` when `setup` is computed from them (the
    default); visibility (which triangle) is not.
    """
    height, width = tri.shape
    if setup is None:
        setup = setup_triangles(pix, z, faces, width, height)
    flat, _, bary = _pixel_barycentrics(setup, z, faces, tri)
    out = torch.zeros(height * width, 3, device=pix.device, dtype=bary.dtype)
    out = out.index_put((flat,), bary)
    return out.view(height, width, 3)


def _blend(attributes: Tensor, face: Tensor, bary: Tensor) -> Tensor:
    """attributes [Vt, C], face [N, 3], bary [N, 3] -> [N, C]."""
    out = attributes[face[:, 0]] * bary[:, 0:1]
    out = out + attributes[face[:, 1]] * bary[:, 1:2]
    return out + attributes[face[:, 2]] * bary[:, 2:3]


def interpolate(
    attributes: Tensor,  # [Vt, C]
    faces: Tensor,  # [Ft, 3]
    tri: Tensor,  # [H, W]
    bary: Tensor,  # [H, W, 3]
) -> Tensor:  # [H, W, C] (zeros where empty)
    height, width = tri.shape
    face = faces[tri.clamp(min=0).reshape(-1)]
    out = _blend(attributes, face, bary.reshape(-1, 3))
    return torch.where((tri >= 0).reshape(-1, 1), out, torch.zeros_like(out)).view(height, width, -1)


def sample_texture_bilinear(
    texture: Tensor,  # [Ht, Wt, C] float
    uv: Tensor,  # [N, 2] glTF convention (v down)
) -> Tensor:  # [N, C]
    """Bilinear lookup at pixel (u*W - 0.5, v*H - 0.5) with glTF REPEAT wrap."""
    height, width, channels = texture.shape
    flat = texture.reshape(height * width, channels)
    x = uv[:, 0] * width - 0.5
    y = uv[:, 1] * height - 0.5
    x0f, y0f = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0f)[:, None], (y - y0f)[:, None]
    x0 = torch.remainder(x0f.long(), width)
    y0 = torch.remainder(y0f.long(), height)
    x1 = torch.where(x0 + 1 == width, 0, x0 + 1)
    y1 = torch.where(y0 + 1 == height, 0, y0 + 1)
    y0, y1 = y0 * width, y1 * width
    top = torch.lerp(flat.index_select(0, y0 + x0), flat.index_select(0, y0 + x1), fx)
    bottom = torch.lerp(flat.index_select(0, y1 + x0), flat.index_select(0, y1 + x1), fx)
    return torch.lerp(top, bottom, fy)


def _shade_pixels(
    buffers: MeshBuffers,
    t: Tensor,  # [N] triangle per covered pixel
    bary: Tensor,  # [N, 3]
    cam_vertices: Tensor | None,  # [Vt, 3] camera space, for headlight shading
    shading: str,
) -> Tensor:  # [N, 4] straight RGBA in [0, 1]; alpha = material alpha
    face = buffers.faces[t]  # [N, 3]
    single_part = len(buffers.textures) == 1
    part = None if single_part else buffers.face_part[t]
    color = buffers.base_color[0].expand(len(t), 4) if single_part else buffers.base_color[part]
    if buffers.has_vertex_colors:
        color = color * _blend(buffers.vertex_colors, face, bary)
    if any(texture is not None for texture in buffers.textures):
        uv = _blend(buffers.uv, face, bary)
        for index, texture in enumerate(buffers.textures):
            if texture is None:
                continue
            if single_part:
                color = color * sample_texture_bilinear(texture, uv)
                continue
            sel = torch.nonzero(part == index).squeeze(1)
            if len(sel):
                color = color.index_copy(0, sel, color[sel] * sample_texture_bilinear(texture, uv[sel]))
    if shading == "headlight" and cam_vertices is not None:
        v0, v1, v2 = cam_vertices[face[:, 0]], cam_vertices[face[:, 1]], cam_vertices[face[:, 2]]
        normal = torch.linalg.cross(v1 - v0, v2 - v0)
        centre = _blend(cam_vertices, face, bary)
        cosine = (normal * centre).sum(1).abs() / (normal.norm(dim=1) * centre.norm(dim=1)).clamp(min=1e-12)
        light = torch.cat([(0.3 + 0.7 * cosine[:, None]).expand(-1, 3), torch.ones_like(cosine[:, None])], 1)
        color = color * light
    return color.clamp(0, 1)


def _downsample(rgba: Tensor, depth: Tensor, factor: int) -> tuple[Tensor, Tensor]:
    """[sH, sW, 4] straight RGBA (alpha incl. coverage), [sH, sW] depth -> [H, W, 4], [H, W]."""
    if factor == 1:
        return rgba, depth
    sh, sw = depth.shape
    h, w = sh // factor, sw // factor
    blocks = rgba.view(h, factor, w, factor, 4)
    alpha = blocks[..., 3:].mean(dim=(1, 3))
    premult = (blocks[..., :3] * blocks[..., 3:]).mean(dim=(1, 3))
    rgb = torch.where(alpha > 0, premult / alpha.clamp(min=1e-12), torch.zeros_like(premult))
    d = depth.view(h, factor, w, factor)
    d = torch.where(d > 0, d, torch.full_like(d, math.inf)).amin(dim=(1, 3))
    d = torch.where(torch.isfinite(d), d, torch.full_like(d, EMPTY_DEPTH))
    return torch.cat([rgb, alpha], -1), d


def render_buffers(
    buffers: MeshBuffers,
    world_to_cam: Tensor,  # [4, 4]
    K: Tensor,  # [3, 3] at the output resolution
    width: int,
    height: int,
    *,
    supersample: int = 1,
    shading: str = "albedo",
    near: float = 1e-3,
) -> tuple[Tensor, Tensor]:  # rgba [H, W, 4] float in [0, 1] straight alpha, depth [H, W]
    """One view with the torch rasterizer (no uint8 conversion; differentiable shading)."""
    with torch.autocast(device_type=buffers.vertices.device.type, enabled=False):
        scale = torch.tensor([supersample, supersample, 1.0], device=K.device)
        pix, z = _project(buffers.vertices.float(), world_to_cam.float(), K.float() * scale[:, None])
        sw, sh = width * supersample, height * supersample
        setup = setup_triangles(pix, z, buffers.faces, sw, sh, near=near)
        tri, depth = rasterize(pix, z, buffers.faces, sw, sh, setup=setup)
        flat, t, bary = _pixel_barycentrics(setup, z, buffers.faces, tri)
        cam_vertices = None
        if shading == "headlight":
            cam_vertices = buffers.vertices @ world_to_cam[:3, :3].T.float() + world_to_cam[:3, 3].float()
        rgba = torch.zeros(sh * sw, 4, device=pix.device)
        if len(flat):
            rgba = rgba.index_put((flat,), _shade_pixels(buffers, t, bary, cam_vertices, shading))
        return _downsample(rgba.view(sh, sw, 4), depth, supersample)


def _to_uint8(rgba: Tensor) -> np.ndarray:
    return (rgba.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()


def render_mesh(
    mesh: TexturedMesh,
    cameras: Cameras,
    *,
    backend: str = "auto",
    supersample: int = 1,
    shading: str = "albedo",
    device: torch.device | str | None = None,
    **blender_options: Any,
) -> tuple[np.ndarray, np.ndarray]:  # rgba [V, H, W, 4] uint8, depth [V, H, W] float32
    """Render `mesh` from every camera. See the module docstring for conventions.

    `device` is the torch rasterizer's (for backend "blender", the one that renders depth);
    `blender_options` go to `render_blender_rgba` (samples, device "CPU"/"GPU", ...).
    """
    if backend not in MESH_BACKENDS:
        raise RenderError(
            f"unknown mesh renderer backend {backend!r}; choose from {', '.join(MESH_BACKENDS)}"
        )
    if shading not in ("albedo", "headlight"):
        raise RenderError(f"shading must be 'albedo' or 'headlight', got {shading!r}")
    if isinstance(supersample, bool) or not isinstance(supersample, int) or not 1 <= supersample <= 8:
        raise RenderError(f"supersample must be an integer in [1, 8], got {supersample!r}")
    if backend == "blender":
        rgba = render_blender_rgba(mesh, cameras, **blender_options)
        _, depth = render_mesh(mesh, cameras, backend="torch", device=device)
        return rgba, depth
    if blender_options:
        raise RenderError(f"options {sorted(blender_options)} only apply to backend='blender'")
    device = torch.device(device or "cpu")
    buffers = MeshBuffers.from_mesh(mesh, device)
    w2c = torch.from_numpy(cameras.world_to_cam).to(device)
    intr = torch.from_numpy(cameras.K).to(device)
    rgba = np.zeros((len(cameras), cameras.height, cameras.width, 4), np.uint8)
    depth = np.full((len(cameras), cameras.height, cameras.width), EMPTY_DEPTH, np.float32)
    with torch.no_grad():
        for view in range(len(cameras)):
            color, dep = render_buffers(
                buffers,
                w2c[view],
                intr[view],
                cameras.width,
                cameras.height,
                supersample=supersample,
                shading=shading,
            )
            rgba[view] = _to_uint8(color)
            depth[view] = dep.cpu().numpy()
    return rgba, depth
