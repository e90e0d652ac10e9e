"""A validating glTF 2.0 reader (`read_gltf`, `load_glb`).

Why not trimesh's loader: ingest reads untrusted files, and every number in a glTF file can
lie. This reader checks the GLB header and chunk lengths against the real byte count, every
index into the JSON arrays, every accessor's extent against its buffer view and every buffer
view against its buffer before any array is built, rejects node cycles and exponential
instancing, counts faces while it walks so a face limit stops it early, and reads external
buffers and images only through a `SourceReader` (contained in the source folder, size
checked). It also keeps what trimesh drops: vertex colours together with a texture, and the
linear-to-sRGB conversion of `baseColorFactor` and `COLOR_0`.

The scene graph is flattened: each primitive instance becomes a `MeshPart` in object space
with its node transform applied (mirroring transforms flip the winding back). UVs keep the glTF
convention (v = 0 at the top of the image), which is voxforge's convention too.

The writer is `voxforge.representations.mesh.encode_glb` (`TexturedMesh.save_glb`): writing
a trusted in-memory mesh needs none of the checks above, so it sits with the mesh type, below
this layer, and `render` and `export` use it without importing `data`. The GLB container
constants come from there too, so reader and writer agree on one definition.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.data.safety import Limits, SourceReader, decode_image, url_path
from voxforge.representations.mesh import (
    CHUNK_BIN,
    CHUNK_JSON,
    GLB_MAGIC,
    AssetError,
    MeshPart,
    TexturedMesh,
    linear_to_srgb,
)

COMPONENT_DTYPES = {
    5120: np.dtype("<i1"),
    5121: np.dtype("<u1"),
    5122: np.dtype("<i2"),
    5123: np.dtype("<u2"),
    5125: np.dtype("<u4"),
    5126: np.dtype("<f4"),
}
TYPE_SIZES = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
UNSUPPORTED_EXTENSIONS = {
    "KHR_draco_mesh_compression": "Draco-compressed geometry",
    "EXT_meshopt_compression": "meshopt-compressed buffers",
    "KHR_mesh_quantization": "quantized geometry",
}
MAX_NODE_VISITS = 100_000
MAX_DEPTH = 256


def _corrupt(message: str) -> AssetError:
    return AssetError("corrupt_file", message)


def _int(value: Any, what: str, lo: int = 0, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _corrupt(f"{what} must be an integer, got {value!r:.60}")
    if value < lo or (hi is not None and value > hi):
        raise _corrupt(f"{what} = {value} is out of range [{lo}, {hi}]")
    return value


def _floats(value: Any, count: int, what: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64).reshape(count)
    except (TypeError, ValueError):
        raise _corrupt(f"{what} must be {count} numbers, got {value!r:.80}") from None
    if not np.isfinite(array).all():
        raise AssetError("non_finite", f"{what} contains NaN or Inf")
    return array


def split_glb(data: bytes) -> tuple[dict[str, Any], bytes | None]:
    """Parse the GLB container: JSON document and optional BIN chunk, lengths checked."""
    if len(data) < 20:
        raise _corrupt(f"GLB file has {len(data)} bytes, fewer than a header and one chunk")
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    if magic != GLB_MAGIC:
        raise AssetError("not_a_mesh", "file does not start with the GLB magic 'glTF'")
    if version != 2:
        raise AssetError("unsupported", f"GLB version {version}; only glTF 2.0 is supported")
    if length != len(data):
        raise _corrupt(f"GLB header says {length} bytes but the file has {len(data)} (truncated or padded)")
    offset, chunks = 12, []
    while offset < length:
        if offset + 8 > length:
            raise _corrupt(f"GLB chunk header at byte {offset} runs past the end of the file")
        chunk_length, chunk_type = struct.unpack_from("<II", data, offset)
        start = offset + 8
        if start + chunk_length > length:
            raise _corrupt(
                f"GLB chunk at byte {offset} declares {chunk_length} bytes; only {length - start} remain"
            )
        chunks.append((chunk_type, data[start : start + chunk_length]))
        offset = start + chunk_length
    if not chunks or chunks[0][0] != CHUNK_JSON:
        raise _corrupt("the first GLB chunk is not JSON")
    document = _parse_json(chunks[0][1])
    binary = chunks[1][1] if len(chunks) > 1 and chunks[1][0] == CHUNK_BIN else None
    return document, binary


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw.decode("utf-8").rstrip(" \x00"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise _corrupt(f"glTF JSON cannot be parsed: {err}") from None
    if not isinstance(document, dict):
        raise _corrupt("glTF JSON is not an object")
    return document


class _Reader:
    def __init__(
        self,
        document: dict[str, Any],
        binary: bytes | None,
        *,
        name: str,
        path: Path | None,
        reader: SourceReader | None,
        limits: Limits,
        warnings: list[tuple[str, str]] | None = None,
        allow_bad_textures: bool = False,
    ):
        self.doc, self.binary, self.name = document, binary, name
        self.path, self.reader, self.limits = path, reader, limits
        self.warnings, self.allow_bad_textures = warnings, allow_bad_textures
        self.buffers: dict[int, bytes] = {}
        self.images: dict[int, np.ndarray | None] = {}
        self.faces_so_far = 0

    # -- JSON helpers ---------------------------------------------------------------
    def item(self, key: str, index: Any) -> dict[str, Any]:
        array = self.doc.get(key)
        if not isinstance(array, list):
            raise _corrupt(f"glTF refers to {key}[{index!r:.20}] but has no '{key}' array")
        index = _int(index, f"{key} index", 0, len(array) - 1)
        value = array[index]
        if not isinstance(value, dict):
            raise _corrupt(f"{key}[{index}] is not an object")
        return value

    # -- buffers and accessors ----------------------------------------------------
    def buffer(self, index: int) -> bytes:
        if index in self.buffers:
            return self.buffers[index]
        spec = self.item("buffers", index)
        uri = spec.get("uri")
        if uri is None:
            if self.binary is None or index != 0:
                raise _corrupt(f"buffers[{index}] has no uri and there is no GLB binary chunk")
            data = self.binary
        else:
            data = self.read_uri(uri, "buffer")
        declared = _int(spec.get("byteLength"), f"buffers[{index}].byteLength")
        if declared > len(data):
            raise _corrupt(f"buffers[{index}] declares {declared} bytes but only {len(data)} exist")
        self.buffers[index] = data
        return data

    def read_uri(self, uri: Any, what: str) -> bytes:
        if not isinstance(uri, str):
            raise _corrupt(f"{what} uri must be a string")
        if uri.startswith("data:"):
            header, _, payload = uri.partition(",")
            if len(payload) > self.limits.max_file_bytes * 4 // 3 + 4:
                raise AssetError("too_large", f"embedded {what} data URI is over the size limit")
            if not header.endswith(";base64"):
                raise AssetError("unsupported", f"{what} data URI is not base64")
            try:
                return base64.b64decode(payload, validate=True)
            except (binascii.Error, ValueError):
                raise _corrupt(f"{what} data URI is not valid base64") from None
        if self.reader is None or self.path is None:
            raise AssetError(
                "missing_" + what, f"{what} {uri!r} is an external file, which this GLB cannot use"
            )
        return self.reader.read(url_path(uri), self.path, what)

    def accessor(self, index: Any, what: str) -> np.ndarray:
        """Accessor as [count, components] array (native dtype; normalized ints left raw)."""
        spec = self.item("accessors", index)
        dtype = COMPONENT_DTYPES.get(spec.get("componentType"))
        if dtype is None:
            raise _corrupt(
                f"accessor {index} ({what}) has invalid componentType {spec.get('componentType')!r}"
            )
        ncomp = TYPE_SIZES.get(spec.get("type"))
        if ncomp is None:
            raise _corrupt(f"accessor {index} ({what}) has invalid type {spec.get('type')!r}")
        count = _int(spec.get("count"), f"accessors[{index}].count", 0)
        if "sparse" in spec:
            raise AssetError("unsupported", f"accessor {index} ({what}) is sparse, which is not supported")
        element = dtype.itemsize * ncomp
        if "bufferView" not in spec:
            if count * element > self.limits.max_file_bytes:
                raise _corrupt(f"accessor {index} ({what}) declares {count} elements without data")
            return np.zeros((count, ncomp), dtype)
        view = self.item("bufferViews", spec["bufferView"])
        data = self.buffer(_int(view.get("buffer"), "bufferView.buffer"))
        view_offset = _int(view.get("byteOffset", 0), "bufferView.byteOffset")
        view_length = _int(view.get("byteLength"), "bufferView.byteLength")
        if view_offset + view_length > len(data):
            raise _corrupt(
                f"bufferView {spec['bufferView']} spans bytes {view_offset}..{view_offset + view_length} "
                f"of a {len(data)}-byte buffer"
            )
        stride = view.get("byteStride") or element
        stride = _int(stride, "bufferView.byteStride", element, 252)
        offset = _int(spec.get("byteOffset", 0), f"accessors[{index}].byteOffset")
        needed = offset + (count - 1) * stride + element if count else 0
        if needed > view_length:
            raise _corrupt(
                f"accessor {index} ({what}) needs {needed} bytes but its bufferView has {view_length}"
            )
        if count == 0:
            return np.zeros((0, ncomp), dtype)
        array = np.ndarray(
            (count, ncomp),
            dtype=dtype,
            buffer=data,
            offset=view_offset + offset,
            strides=(stride, dtype.itemsize),
        )
        return np.array(array)

    def accessor_float(self, index: Any, what: str) -> np.ndarray:
        spec = self.item("accessors", index)
        array = self.accessor(index, what)
        if array.dtype.kind in "iu" and spec.get("normalized", what in ("colour", "uv")):
            info = np.iinfo(array.dtype)
            return np.maximum(array.astype(np.float32) / info.max, -1.0)
        return array.astype(np.float32)

    # -- materials ----------------------------------------------------------------
    def image(self, texture_index: Any) -> np.ndarray | None:
        try:
            texture = self.item("textures", texture_index)
        except AssetError as err:
            raise AssetError(
                "unknown_texture", f"a material names texture {texture_index!r:.20}: {err}"
            ) from None
        source = texture.get("source")
        extensions = texture.get("extensions") or {}
        for name in ("EXT_texture_webp", "MSFT_texture_dds", "KHR_texture_basisu"):
            if source is None and isinstance(extensions.get(name), dict):
                source = extensions[name].get("source")
        if source is None:
            return None
        source = _int(source, "texture.source")
        if source not in self.images:
            try:
                spec = self.item("images", source)
            except AssetError as err:
                raise AssetError(
                    "unknown_texture", f"textures[{texture_index}] names image {source}: {err}"
                ) from None
            label = spec.get("name") or spec.get("uri") or f"images[{source}]"
            if "bufferView" in spec:
                view = self.item("bufferViews", spec["bufferView"])
                data = self.buffer(_int(view.get("buffer"), "bufferView.buffer"))
                start = _int(view.get("byteOffset", 0), "bufferView.byteOffset")
                length = _int(view.get("byteLength"), "bufferView.byteLength")
                if start + length > len(data):
                    raise _corrupt(f"image {label!r} lies outside its buffer")
                raw = data[start : start + length]
            elif "uri" in spec:
                raw = self.read_uri(spec["uri"], "texture")
            else:
                raise _corrupt(f"image {label!r} has neither uri nor bufferView")
            self.images[source] = decode_image(raw, str(label), self.limits)
        return self.images[source]

    def material(self, index: Any) -> tuple[np.ndarray, np.ndarray | None, int, np.ndarray | None]:
        """(base colour sRGB [4], texture or None, texCoord set, UV transform [3, 3] or None)."""
        base = np.ones(4, np.float32)
        if index is None:
            return base, None, 0, None
        spec = self.item("materials", index)
        pbr = spec.get("pbrMetallicRoughness")
        if not isinstance(pbr, dict):
            pbr = {}
        factor_key, texture_key = "baseColorFactor", "baseColorTexture"
        spec_gloss = (spec.get("extensions") or {}).get("KHR_materials_pbrSpecularGlossiness")
        if not pbr and isinstance(spec_gloss, dict):
            pbr, factor_key, texture_key = spec_gloss, "diffuseFactor", "diffuseTexture"
        if factor_key in pbr:
            linear = _floats(pbr[factor_key], 4, f"materials[{index}].{factor_key}")
            base = np.concatenate([linear_to_srgb(linear[:3]), np.clip(linear[3:], 0, 1)]).astype(np.float32)
        texture_info = pbr.get(texture_key)
        if not isinstance(texture_info, dict) or "index" not in texture_info:
            return base, None, 0, None
        texcoord = _int(texture_info.get("texCoord", 0), "texCoord", 0, 7)
        transform = (texture_info.get("extensions") or {}).get("KHR_texture_transform")
        matrix = None
        if isinstance(transform, dict):
            texcoord = _int(transform.get("texCoord", texcoord), "texCoord", 0, 7)
            offset = _floats(transform.get("offset", [0, 0]), 2, "KHR_texture_transform.offset")
            angle = float(_floats(transform.get("rotation", 0.0), 1, "KHR_texture_transform.rotation")[0])
            scale = _floats(transform.get("scale", [1, 1]), 2, "KHR_texture_transform.scale")
            cos, sin = np.cos(angle), np.sin(angle)
            # the extension's definition: T(offset) @ R(rotation) @ S(scale), applied to (u, v, 1)
            matrix = (
                np.array([[1, 0, offset[0]], [0, 1, offset[1]], [0, 0, 1]])
                @ np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])  # GLSL mat3 is column-major
                @ np.diag([scale[0], scale[1], 1.0])
            )
        try:
            texture = self.image(texture_info["index"])
        except AssetError as err:
            if not self.skip_texture(err):
                raise
            return base, None, 0, None
        return base, texture, texcoord, matrix

    def skip_texture(self, err: AssetError) -> bool:
        """With a warnings list: a texture that is missing or unknown (or, if allowed, cannot be
        decoded) is dropped with a warning and the material keeps its other settings."""
        tolerated = {"missing_texture", "unknown_texture"} | (
            {"bad_image"} if self.allow_bad_textures else set()
        )
        if self.warnings is None or err.reason not in tolerated:
            return False
        message = f"{self.name}: {err}; its material is used without the texture"
        if (err.reason, message) not in self.warnings:
            self.warnings.append((err.reason, message))
        return True

    # -- geometry -----------------------------------------------------------------
    def primitive(self, prim: dict[str, Any], matrix: np.ndarray) -> MeshPart | None:
        if not isinstance(prim, dict) or not isinstance(prim.get("attributes"), dict):
            raise _corrupt("a mesh primitive has no attributes")
        for ext in prim.get("extensions") or {}:
            if ext in UNSUPPORTED_EXTENSIONS:
                raise AssetError("unsupported", f"{UNSUPPORTED_EXTENSIONS[ext]} ({ext}) is not supported")
        mode = _int(prim.get("mode", 4), "primitive.mode", 0, 6)
        attributes = prim["attributes"]
        if "POSITION" not in attributes:
            raise _corrupt("a mesh primitive has no POSITION attribute")
        positions = self.accessor(attributes["POSITION"], "POSITION")
        if positions.shape[1] != 3 or positions.dtype != np.float32:
            raise _corrupt("POSITION must be a float VEC3 accessor")
        if mode < 4:  # points and lines: no surface
            self.non_triangle_vertices = getattr(self, "non_triangle_vertices", 0) + len(positions)
            return None
        if "indices" in prim:
            indices = self.accessor(prim["indices"], "indices")
            if indices.shape[1] != 1 or indices.dtype.kind != "u":
                raise _corrupt("indices must be an unsigned integer SCALAR accessor")
            indices = indices.reshape(-1).astype(np.int64)
        else:
            indices = np.arange(len(positions), dtype=np.int64)
        faces = _triangles(indices, mode)
        self.faces_so_far += len(faces)
        if self.faces_so_far > self.limits.max_faces:
            raise AssetError(
                "too_many_faces", f"more than {self.limits.max_faces} triangles (limit max_faces)"
            )
        if faces.size and faces.max() >= len(positions):
            raise AssetError(
                "bad_indices", f"a face index {faces.max()} points past the {len(positions)} vertices"
            )
        base, texture, texcoord, uv_matrix = self.material(prim.get("material"))
        uv = None
        if texture is not None:
            key = f"TEXCOORD_{texcoord}"
            if key not in attributes:
                raise _corrupt(f"a textured primitive has no {key} attribute")
            uv = self.accessor_float(attributes[key], "uv")[:, :2]
            if len(uv) != len(positions):
                raise _corrupt(f"{key} has {len(uv)} entries for {len(positions)} vertices")
            if uv_matrix is not None:
                uv = (uv.astype(np.float64) @ uv_matrix[:2, :2].T + uv_matrix[:2, 2]).astype(np.float32)
        colors = None
        if "COLOR_0" in attributes:
            colors = self.accessor_float(attributes["COLOR_0"], "colour")
            if len(colors) != len(positions) or colors.shape[1] not in (3, 4):
                raise _corrupt("COLOR_0 must be VEC3/VEC4 with one entry per vertex")
            colors = np.nan_to_num(colors, nan=1.0, posinf=1.0, neginf=0.0).clip(0, 1)
            colors[:, :3] = linear_to_srgb(colors[:, :3])
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf positions are judged by ingest
            vertices = positions.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]
        if np.linalg.det(matrix[:3, :3]) < 0:
            faces = faces[:, ::-1]
        return MeshPart(vertices, faces, uv=uv, vertex_colors=colors, texture=texture, base_color=base)

    def scene_parts(self) -> list[MeshPart]:
        required = self.doc.get("extensionsRequired") or []
        for ext in required if isinstance(required, list) else []:
            if ext in UNSUPPORTED_EXTENSIONS:
                raise AssetError("unsupported", f"{UNSUPPORTED_EXTENSIONS[ext]} ({ext}) is not supported")
        nodes = self.doc.get("nodes") or []
        if not isinstance(nodes, list):
            raise _corrupt("'nodes' is not an array")
        # glTF requires disjoint strict trees: with one parent per node, a walk visits each node
        # once, which rules out exponential instancing through shared children
        parents: dict[Any, int] = {}
        for index, node in enumerate(nodes):
            children = node.get("children") if isinstance(node, dict) else None
            for child in children if isinstance(children, list) else []:
                if isinstance(child, int) and child in parents:
                    raise _corrupt(f"node {child} has several parents ({parents[child]} and {index})")
                if isinstance(child, int):
                    parents[child] = index
        scenes = self.doc.get("scenes")
        if isinstance(scenes, list) and scenes:
            scene = self.item("scenes", self.doc.get("scene", 0))
            roots = scene.get("nodes") or []
        else:  # no scene: every node that is nobody's child is a root
            children = {c for n in nodes if isinstance(n, dict) for c in (n.get("children") or [])}
            roots = [i for i in range(len(nodes)) if i not in children]
        if not isinstance(roots, list):
            raise _corrupt("scene.nodes is not an array")
        parts: list[MeshPart] = []
        visits = 0
        stack = [(root, np.eye(4), ()) for root in reversed(roots)]
        while stack:
            index, parent, ancestors = stack.pop()
            visits += 1
            if visits > MAX_NODE_VISITS or len(ancestors) > MAX_DEPTH:
                raise _corrupt("the node graph is too large or too deep (shared or cyclic children?)")
            node = self.item("nodes", index)
            if index in ancestors:
                raise _corrupt(f"node {index} is its own ancestor (cycle in the scene graph)")
            matrix = parent @ _node_matrix(node, index)
            if "mesh" in node:
                mesh = self.item("meshes", node["mesh"])
                primitives = mesh.get("primitives")
                if not isinstance(primitives, list):
                    raise _corrupt(f"meshes[{node['mesh']}] has no primitives array")
                for prim in primitives:
                    part = self.primitive(prim, matrix)
                    if part is not None and len(part.faces):
                        parts.append(part)
            children = node.get("children") or []
            if not isinstance(children, list):
                raise _corrupt(f"nodes[{index}].children is not an array")
            for child in reversed(children):
                stack.append((child, matrix, ancestors + (index,)))
        return parts


def _node_matrix(node: dict[str, Any], index: int) -> np.ndarray:
    if "matrix" in node:
        return _floats(node["matrix"], 16, f"nodes[{index}].matrix").reshape(4, 4).T.copy()
    translation = _floats(node.get("translation", [0, 0, 0]), 3, f"nodes[{index}].translation")
    x, y, z, w = _floats(node.get("rotation", [0, 0, 0, 1]), 4, f"nodes[{index}].rotation")
    scale = _floats(node.get("scale", [1, 1, 1]), 3, f"nodes[{index}].scale")
    norm = np.sqrt(x * x + y * y + z * z + w * w)
    if norm > 0:
        x, y, z, w = x / norm, y / norm, z / norm, w / norm
    rotation = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * scale[None, :]
    matrix[:3, 3] = translation
    return matrix


def _triangles(indices: np.ndarray, mode: int) -> np.ndarray:
    """Index list -> [F, 3] for TRIANGLES (4), TRIANGLE_STRIP (5), TRIANGLE_FAN (6)."""
    if mode == 4:
        if len(indices) % 3:
            raise _corrupt(f"triangle index count {len(indices)} is not a multiple of 3")
        return indices.reshape(-1, 3)
    if len(indices) < 3:
        return np.zeros((0, 3), np.int64)
    n = len(indices) - 2
    if mode == 5:
        first = np.arange(n)
        faces = np.stack([indices[first], indices[first + 1], indices[first + 2]], axis=1)
        faces[1::2] = faces[1::2][:, [1, 0, 2]]  # keep a consistent winding
        return faces
    centre = np.full(n, indices[0])
    return np.stack([centre, indices[1:-1], indices[2:]], axis=1)


def read_gltf(
    data: bytes,
    *,
    name: str = "<glb>",
    path: Path | None = None,
    reader: SourceReader | None = None,
    limits: Limits | None = None,
    warnings: list[tuple[str, str]] | None = None,
    allow_bad_textures: bool = False,
) -> TexturedMesh:
    """Parse .glb or .gltf bytes into a flattened TexturedMesh (not normalized).

    `path` and `reader` are needed for .gltf files with external buffers or images; without
    them only self-contained files load. With a `warnings` list, a texture that is missing
    (`missing_texture`) or names no existing texture or image (`unknown_texture`) -- and with
    `allow_bad_textures` one that cannot be decoded (`bad_image`) -- is left out and recorded
    there as (reason, message); without one, these fail like every other problem.
    """
    limits = limits or Limits()
    if not data:
        raise AssetError("empty_file", f"{name} is empty")
    if data[:4] == GLB_MAGIC:
        document, binary = split_glb(data)
    elif data.lstrip()[:1] == b"{":
        document, binary = _parse_json(data), None
    else:
        raise AssetError("not_a_mesh", f"{name} is neither a GLB (magic 'glTF') nor glTF JSON")
    asset = document.get("asset")
    version = str(asset.get("version", "")) if isinstance(asset, dict) else ""
    if not version.startswith("2."):
        raise AssetError("unsupported", f"{name}: glTF asset.version {version!r}; only 2.x is supported")
    state = _Reader(
        document,
        binary,
        name=name,
        path=path,
        reader=reader,
        limits=limits,
        warnings=warnings,
        allow_bad_textures=allow_bad_textures,
    )
    parts = state.scene_parts()
    if not parts:
        if getattr(state, "non_triangle_vertices", 0):
            raise AssetError("point_cloud", f"{name} has points or lines but no triangles")
        raise AssetError("no_geometry", f"{name} contains no triangle meshes")
    extras = asset.get("extras") if isinstance(asset.get("extras"), dict) else {}
    return TexturedMesh(parts=parts, extras=dict(extras))


def load_glb(path: str | Path, *, limits: Limits | None = None) -> TexturedMesh:
    """Read a .glb (or self-contained .gltf) file, flattening its scene graph (not normalized)."""
    path = Path(path)
    return read_gltf(path.read_bytes(), name=str(path), limits=limits)
