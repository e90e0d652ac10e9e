"""Textured triangle meshes: the in-memory form of an ingested asset.

An asset is a list of parts; each part is one triangle mesh with one material (a base colour
that multiplies an optional base-colour texture and optional vertex colours). Keeping parts
separate, instead of baking everything into one atlas, keeps ingest lossless and cheap; the
rasterizer draws the parts one after the other.

Conventions (shared with `voxforge.render.mesh_raster`, see /work/coord/data_contract.md and
docs/data.md):

- Object frame: right-handed, +Y up. After ingest the mesh is normalized: centred on its
  bounding-box centre, longest side 1, inside [-0.5, 0.5]^3.
- Colours are sRGB-encoded, straight alpha, in [0, 1] (float) or [0, 255] (uint8). glTF stores
  `baseColorFactor` and `COLOR_0` in linear space; the glTF reader/writer converts.
- UVs follow the glTF convention: (0, 0) is the top-left corner of the texture image, u grows
  to the right and v grows downwards. A texture is sampled at pixel
  `(x, y) = (u * W - 0.5, v * H - 0.5)` (texel centres at half-integers), with wrap-around
  (GL_REPEAT) outside [0, 1]. OBJ/trimesh UVs (origin bottom-left) are flipped on ingest.
- Final surface colour = base_color * texture(uv) * vertex_color (each factor 1 if absent).

GLB files: `encode_glb` / `TexturedMesh.save_glb` here are voxforge's one GLB writer (one
node and mesh per part, tightly packed accessors, PNG textures embedded, `extras` in the
asset's `extras`, colours converted to glTF's linear space, optional vertex normals as
`NORMAL`); the export of generated meshes uses it too. Reading lives one layer up, in
`voxforge.data.gltf` (`read_gltf`, `load_glb`): a reader of untrusted files needs the data
layer's size limits and contained file access, and this module stays below `data` (data
imports representations, never the reverse).
voxforge's own codec rather than trimesh's keeps vertex colours and textures together and
converts colour spaces; `to_trimesh` gives users a merged trimesh object.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voxforge.errors import UserError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import trimesh


class AssetError(UserError):
    """A mesh file cannot be used. `reason` is a short stable code (see docs/data.md)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class MeshPart:
    """One triangle mesh with one material. Arrays are validated by `check()`."""

    vertices: np.ndarray  # [V, 3] float32, object frame
    faces: np.ndarray  # [F, 3] int64, indices into vertices
    uv: np.ndarray | None = None  # [V, 2] float32, glTF convention (v=0 at image top)
    vertex_colors: np.ndarray | None = None  # [V, 4] float32 sRGB in [0, 1]
    texture: np.ndarray | None = None  # [H, W, 4] uint8 sRGB, straight alpha
    base_color: np.ndarray = field(default_factory=lambda: np.ones(4, dtype=np.float32))  # [4]
    # [V, 3] float32 unit vertex normals, written as glTF NORMAL (smooth shading in viewers);
    # optional: without them viewers shade flat, and the rasterizer never reads them
    normals: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float32).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64).reshape(-1, 3)
        if self.uv is not None:
            self.uv = np.ascontiguousarray(self.uv, dtype=np.float32).reshape(-1, 2)
        if self.vertex_colors is not None:
            colors = np.asarray(self.vertex_colors, dtype=np.float32)
            if colors.ndim == 2 and colors.shape[1] == 3:
                colors = np.concatenate([colors, np.ones((len(colors), 1), np.float32)], axis=1)
            self.vertex_colors = np.ascontiguousarray(colors)
        if self.texture is not None:
            self.texture = np.ascontiguousarray(self.texture, dtype=np.uint8)
        self.base_color = np.asarray(self.base_color, dtype=np.float32).reshape(4)
        if self.normals is not None:
            self.normals = np.ascontiguousarray(self.normals, dtype=np.float32).reshape(-1, 3)

    def check(self) -> None:
        """Raise AssetError when the arrays are inconsistent (shapes, indices, finiteness)."""
        nv = len(self.vertices)
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= nv):
            raise AssetError(
                "bad_indices",
                f"face indices must lie in [0, {nv}); found {self.faces.min()}..{self.faces.max()}",
            )
        if not np.isfinite(self.vertices).all():
            raise AssetError("non_finite", "vertex coordinates contain NaN or Inf")
        if self.uv is not None and self.uv.shape != (nv, 2):
            raise AssetError("corrupt_file", f"uv has shape {self.uv.shape}, expected ({nv}, 2)")
        if self.vertex_colors is not None and self.vertex_colors.shape != (nv, 4):
            raise AssetError(
                "corrupt_file",
                f"vertex colours have shape {self.vertex_colors.shape}, expected ({nv}, 4)",
            )
        if self.texture is not None and (self.texture.ndim != 3 or self.texture.shape[2] != 4):
            raise AssetError("corrupt_file", f"texture has shape {self.texture.shape}, expected [H, W, 4]")
        if self.texture is not None and self.uv is None:
            raise AssetError("corrupt_file", "a textured part has no UV coordinates")
        if self.normals is not None and self.normals.shape != (nv, 3):
            raise AssetError("corrupt_file", f"normals have shape {self.normals.shape}, expected ({nv}, 3)")


@dataclass
class TexturedMesh:
    """A multi-part textured mesh. `extras` is free JSON metadata (e.g. synth class labels)."""

    parts: list[MeshPart]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_faces(self) -> int:
        return int(sum(len(p.faces) for p in self.parts))

    @property
    def num_vertices(self) -> int:
        return int(sum(len(p.vertices) for p in self.parts))

    def merged(self) -> tuple[np.ndarray, np.ndarray]:
        """All parts as one mesh: vertices [V, 3] float32, faces [F, 3] int64."""
        if not self.parts:
            return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
        offsets = np.cumsum([0] + [len(p.vertices) for p in self.parts[:-1]])
        vertices = np.concatenate([p.vertices for p in self.parts]).astype(np.float32, copy=False)
        faces = np.concatenate([p.faces + off for p, off in zip(self.parts, offsets)])
        return vertices, faces.astype(np.int64, copy=False)

    def bounds(self) -> np.ndarray:
        """[2, 3] min and max corner of all vertices."""
        vertices, _ = self.merged()
        if len(vertices) == 0:
            return np.zeros((2, 3), np.float32)
        return np.stack([vertices.min(0), vertices.max(0)])

    def transformed(self, scale: float, offset: np.ndarray) -> TexturedMesh:
        """A copy with vertices mapped to `vertices * scale + offset` (offset [3])."""
        parts = [
            MeshPart(
                vertices=(p.vertices.astype(np.float64) * scale + offset).astype(np.float32),
                faces=p.faces,
                uv=p.uv,
                vertex_colors=p.vertex_colors,
                texture=p.texture,
                base_color=p.base_color,
                # a uniform scale keeps directions; a negative one mirrors them
                normals=None if p.normals is None else p.normals * np.float32(np.sign(scale) or 1.0),
            )
            for p in self.parts
        ]
        return TexturedMesh(parts=parts, extras=dict(self.extras))

    def normalized(self) -> TexturedMesh:
        """Centred on the bounding-box centre, longest side 1 (DESIGN.md object frame)."""
        lo, hi = self.bounds().astype(np.float64)
        extent = float((hi - lo).max())
        if not extent > 0 or not np.isfinite(extent):
            raise AssetError("degenerate", "the mesh has zero extent (all vertices coincide)")
        return self.transformed(1.0 / extent, -(lo + hi) / 2.0 / extent)

    def save_glb(self, path: str | Path) -> Path:
        """Write a binary glTF (textures embedded as PNG), atomically. Read it back with
        `voxforge.data.gltf.load_glb`."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(encode_glb(self))
        tmp.replace(path)
        return path

    def to_trimesh(self) -> trimesh.Trimesh:
        """All parts merged into one trimesh mesh with per-vertex sRGB colours.

        Texture colours are sampled at the vertices (a lossy preview); use the parts for exact
        appearance.
        """
        import trimesh

        vertices, faces = self.merged()
        colors = np.concatenate([vertex_rgba(p) for p in self.parts]) if self.parts else None
        return trimesh.Trimesh(
            vertices=vertices,
            faces=faces,
            vertex_colors=None if colors is None else np.round(colors * 255).astype(np.uint8),
            process=False,
        )


def sample_texture(texture: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Nearest-texel lookup. texture [H, W, 4] uint8, uv [N, 2] glTF -> [N, 4] float32 in [0, 1]."""
    height, width = texture.shape[:2]
    x = np.floor(np.mod(uv[:, 0], 1.0) * width).astype(np.int64).clip(0, width - 1)
    y = np.floor(np.mod(uv[:, 1], 1.0) * height).astype(np.int64).clip(0, height - 1)
    return texture[y, x].astype(np.float32) / 255.0


def vertex_rgba(part: MeshPart) -> np.ndarray:
    """Per-vertex sRGB colour of a part: base colour x texture at the vertex UV x vertex colour."""
    colors = np.broadcast_to(part.base_color, (len(part.vertices), 4)).astype(np.float32)
    if part.texture is not None and part.uv is not None:
        colors = colors * sample_texture(part.texture, part.uv)
    if part.vertex_colors is not None:
        colors = colors * part.vertex_colors
    return colors


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    return np.where(values <= 0.04045, values / 12.92, ((values + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * np.power(values, 1.0 / 2.4) - 0.055).astype(
        np.float32
    )


# ------------------------------------------------------------------------------------
# GLB writer (the reader is `voxforge.data.gltf`)

GLB_MAGIC = b"glTF"
CHUNK_JSON = 0x4E4F534A
CHUNK_BIN = 0x004E4942
_FLOAT, _UINT32 = 5126, 5125  # glTF componentType codes
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963  # bufferView targets


class _Builder:
    """The binary chunk of a GLB: 4-byte aligned buffer views and the accessors into them."""

    def __init__(self) -> None:
        self.blob = bytearray()
        self.views: list[dict[str, Any]] = []
        self.accessors: list[dict[str, Any]] = []

    def view(self, data: bytes, target: int | None = None) -> int:
        while len(self.blob) % 4:
            self.blob.append(0)
        spec: dict[str, Any] = {"buffer": 0, "byteOffset": len(self.blob), "byteLength": len(data)}
        if target is not None:
            spec["target"] = target
        self.blob.extend(data)
        self.views.append(spec)
        return len(self.views) - 1

    def accessor(
        self, array: np.ndarray, type_name: str, component: int, target: int, minmax: bool = False
    ) -> int:
        dtype = np.dtype("<f4") if component == _FLOAT else np.dtype("<u4")
        array = np.ascontiguousarray(array, dtype=dtype)
        spec: dict[str, Any] = {
            "bufferView": self.view(array.tobytes(), target),
            "componentType": component,
            "count": int(array.shape[0]),
            "type": type_name,
        }
        if minmax and len(array):
            spec["min"] = array.min(0).reshape(-1).tolist()
            spec["max"] = array.max(0).reshape(-1).tolist()
        self.accessors.append(spec)
        return len(self.accessors) - 1


def encode_glb(mesh: TexturedMesh) -> bytes:
    """Serialize a TexturedMesh as GLB: one node and mesh per part, PNG textures embedded."""
    from PIL import Image

    builder = _Builder()
    meshes, materials, textures, images, nodes = [], [], [], [], []
    for index, part in enumerate(mesh.parts):
        attributes = {"POSITION": builder.accessor(part.vertices, "VEC3", _FLOAT, _ARRAY_BUFFER, minmax=True)}
        if part.normals is not None:  # glTF requires unit length
            length = np.linalg.norm(part.normals, axis=1, keepdims=True)
            unit = np.where(length > 1e-12, part.normals / np.maximum(length, 1e-12), [0.0, 0.0, 1.0])
            attributes["NORMAL"] = builder.accessor(unit, "VEC3", _FLOAT, _ARRAY_BUFFER)
        linear = np.concatenate([srgb_to_linear(part.base_color[:3]), part.base_color[3:]])
        pbr: dict[str, Any] = {
            "baseColorFactor": [float(v) for v in linear],
            "metallicFactor": 0.0,
            "roughnessFactor": 1.0,
        }
        if part.texture is not None and part.uv is not None:
            png = io.BytesIO()
            Image.fromarray(part.texture, "RGBA").save(png, format="PNG", compress_level=1)
            images.append({"bufferView": builder.view(png.getvalue()), "mimeType": "image/png"})
            textures.append({"source": len(images) - 1})
            pbr["baseColorTexture"] = {"index": len(textures) - 1}
            attributes["TEXCOORD_0"] = builder.accessor(part.uv, "VEC2", _FLOAT, _ARRAY_BUFFER)
        if part.vertex_colors is not None:
            colors = part.vertex_colors.copy()
            colors[:, :3] = srgb_to_linear(colors[:, :3])
            attributes["COLOR_0"] = builder.accessor(colors, "VEC4", _FLOAT, _ARRAY_BUFFER)
        materials.append({"pbrMetallicRoughness": pbr, "doubleSided": True})
        indices = builder.accessor(part.faces.reshape(-1, 1), "SCALAR", _UINT32, _ELEMENT_ARRAY_BUFFER)
        meshes.append({"primitives": [{"attributes": attributes, "indices": indices, "material": index}]})
        nodes.append({"mesh": index})
    document: dict[str, Any] = {
        "asset": {"version": "2.0", "generator": "voxforge"},
        "scene": 0,
        "scenes": [{"nodes": list(range(len(nodes)))}],
        "nodes": nodes,
        "meshes": meshes,
        "materials": materials,
        "accessors": builder.accessors,
        "bufferViews": builder.views,
        "buffers": [{"byteLength": len(builder.blob)}],
    }
    if textures:
        document["textures"] = textures
        document["images"] = images
    if mesh.extras:
        document["asset"]["extras"] = mesh.extras
    json_bytes = json.dumps(document, separators=(",", ":")).encode("utf-8")
    json_bytes += b" " * (-len(json_bytes) % 4)
    binary = bytes(builder.blob) + b"\x00" * (-len(builder.blob) % 4)
    total = 12 + 8 + len(json_bytes) + 8 + len(binary)
    return b"".join(
        [
            struct.pack("<4sII", GLB_MAGIC, 2, total),
            struct.pack("<II", len(json_bytes), CHUNK_JSON),
            json_bytes,
            struct.pack("<II", len(binary), CHUNK_BIN),
            binary,
        ]
    )
