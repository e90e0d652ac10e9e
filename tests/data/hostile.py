"""Builders of hostile and broken input files for the data tests (all written into tmp dirs)."""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

CUBE_OBJ = """v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0
v 0 0 1
v 1 0 1
v 1 1 1
v 0 1 1
f 1 3 2
f 1 4 3
f 5 6 7
f 5 7 8
f 1 2 6
f 1 6 5
f 4 8 7
f 4 7 3
f 2 3 7
f 2 7 6
f 1 5 8
f 1 8 4
"""


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares a huge image (a decompression bomb)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def small_png(color=(255, 0, 0, 255), size: int = 8) -> bytes:
    import io

    from PIL import Image

    image = Image.new("RGBA", (size, size), color)
    image.putpixel((0, 0), (0, 0, 255, 255))  # not constant, so it stays a texture
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def glb(document: dict, binary: bytes | None = None, *, length_delta: int = 0, json_delta: int = 0) -> bytes:
    """Assemble a GLB; the deltas make the header or the JSON chunk lie about their lengths."""
    raw = json.dumps(document).encode()
    raw += b" " * (-len(raw) % 4)
    chunks = struct.pack("<II", len(raw) + json_delta, 0x4E4F534A) + raw
    if binary is not None:
        binary = binary + b"\x00" * (-len(binary) % 4)
        chunks += struct.pack("<II", len(binary), 0x004E4942) + binary
    total = 12 + len(chunks)
    return struct.pack("<4sII", b"glTF", 2, total + length_delta) + chunks


def triangle_gltf(
    positions: np.ndarray | None = None,
    indices: np.ndarray | None = None,
    *,
    count: int | None = None,
    index_count: int | None = None,
    mode: int = 4,
    extra: dict | None = None,
) -> tuple[dict, bytes]:
    """A one-triangle glTF document + binary; `count`/`index_count` can lie."""
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32) if positions is None else positions
    indices = np.array([0, 1, 2], np.uint32) if indices is None else indices
    pos_bytes = positions.astype(np.float32).tobytes()
    idx_bytes = indices.astype(np.uint32).tobytes()
    binary = pos_bytes + idx_bytes
    document = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "mode": mode}]}],
        "buffers": [{"byteLength": len(binary)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(pos_bytes)},
            {"buffer": 0, "byteOffset": len(pos_bytes), "byteLength": len(idx_bytes)},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": count or len(positions), "type": "VEC3"},
            {"bufferView": 1, "componentType": 5125, "count": index_count or len(indices), "type": "SCALAR"},
        ],
    }
    if extra:
        document.update(extra)
    return document, binary


def write_zip(path: Path, members: dict[str, bytes], *, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path
