"""Hostile uploads written in a few bytes: a text file named .png, a PNG that declares
20000×20000 pixels (a decompression bomb: the header alone says 400 M pixels)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def png_bomb(path: Path, side: int = 20000) -> Path:
    """A valid PNG header declaring side × side grey pixels; its pixel data is one compressed row."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    pixels = zlib.compress(b"\x00" * (side + 1), 9)  # filter byte + one row; the rest is missing
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")
    )
    return path


def text_named_png(path: Path) -> Path:
    path.write_text("this is not an image, whatever its name says\n" * 4)
    return path


def object_on_white(path: Path, side: int = 64) -> Path:
    """A red square on a plain white background (the background `generate` removes)."""
    image = np.full((side, side, 3), 255, np.uint8)
    image[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = (200, 30, 30)
    Image.fromarray(image).save(path, format="PNG")
    return path
