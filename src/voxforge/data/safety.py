"""Guards for reading untrusted asset files: size limits, contained paths, safe image decoding.

Every byte ingest reads goes through a `SourceReader`, which resolves a name relative to the
file that mentions it, follows symlinks, and refuses anything that lands outside the source
root (`path_outside_source`) or is larger than the limits. Images are opened lazily with
Pillow, which parses only the header, so a decompression bomb is rejected by its declared size
before a single pixel is decoded; Pillow's own bomb limit is lowered to ours as a second guard.
Large but legitimate textures are downscaled to `max_texture_size` to bound memory.

All failures raise `AssetError` with a stable reason code so the manifest can group them.
"""

from __future__ import annotations

import io
import os
import urllib.parse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.config.core import option
from voxforge.representations.mesh import AssetError


@dataclass
class Limits:
    """Resource limits applied to each asset (all checked before the expensive work)."""

    max_file_bytes: int = option(512 * 2**20, ge=1, help="largest mesh, texture or archive member read")
    max_faces: int = option(2_000_000, ge=1, help="assets with more triangles fail with too_many_faces")
    max_texture_pixels: int = option(
        64 * 2**20, ge=1, help="declared image size above which a texture is rejected (decompression bomb)"
    )
    max_texture_size: int = option(2048, ge=16, help="textures are downscaled so their longest side fits")
    max_archive_bytes: int = option(
        4 * 2**30, ge=1, help="total uncompressed size allowed in one zip archive"
    )
    max_archive_ratio: float = option(200.0, gt=1, help="largest compression ratio of a zip member")
    max_archive_members: int = option(10_000, ge=1, help="most members in one zip archive")


class SourceReader:
    """Reads files named by an asset (MTL, textures, .bin buffers) without leaving `root`."""

    def __init__(self, root: Path, limits: Limits):
        self.root = Path(root).resolve()
        self.limits = limits
        self.read_paths: list[Path] = []

    def resolve(self, name: str, relative_to: Path) -> Path:
        """Path of `name` (as written in a file next to `relative_to`), checked to stay in root."""
        if "\x00" in name:
            raise AssetError("path_outside_source", f"referenced file name {name!r} contains a NUL byte")
        parsed = urllib.parse.urlsplit(name)
        if parsed.scheme and len(parsed.scheme) > 1:  # one letter is a Windows drive, also refused
            raise AssetError("path_outside_source", f"referenced file {name!r} is a URL; only relative paths")
        cleaned = name.replace("\\", "/").strip()
        if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":"):
            raise AssetError("path_outside_source", f"referenced file {name!r} is an absolute path")
        base = Path(relative_to).resolve().parent
        target = (base / cleaned).resolve()
        if not target.is_relative_to(self.root):
            raise AssetError(
                "path_outside_source",
                f"referenced file {name!r} resolves to {target}, outside the source folder {self.root}",
            )
        return target

    def read(self, name: str, relative_to: Path, what: str = "file") -> bytes:
        path = self.resolve(name, relative_to)
        if not path.is_file():
            raise AssetError(f"missing_{what}", f"{what} {name!r} referenced by {relative_to.name} not found")
        size = path.stat().st_size
        if size > self.limits.max_file_bytes:
            raise AssetError(
                "too_large", f"{what} {name!r} has {size} bytes, over the limit {self.limits.max_file_bytes}"
            )
        self.read_paths.append(path)
        return path.read_bytes()


def url_path(uri: str) -> str:
    """A glTF URI is percent-encoded; undo that (and only that)."""
    return urllib.parse.unquote(uri)


def open_checked(data: bytes, name: str, limits: Limits) -> Any:
    """Open an image lazily (header only) and enforce the declared-size limit."""
    from PIL import Image

    if not data:
        raise AssetError("bad_image", f"texture {name!r} is empty")
    # Pillow raises DecompressionBombError at twice this value and warns above it; its limit is
    # a module global, set for the header parse only and restored for the rest of the process.
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limits.max_texture_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # parses the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise AssetError("image_too_large", f"texture {name!r}: {err}") from None
    except Exception as err:  # noqa: BLE001 - any decoder failure means "not an image"
        raise AssetError("bad_image", f"texture {name!r} cannot be decoded: {err}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    width, height = image.size
    if width <= 0 or height <= 0:
        raise AssetError("bad_image", f"texture {name!r} declares size {width}x{height}")
    if width * height > limits.max_texture_pixels:
        raise AssetError(
            "image_too_large",
            f"texture {name!r} declares {width}x{height} pixels, over the limit "
            f"{limits.max_texture_pixels} (possible decompression bomb)",
        )
    return image


def check_image_header(data: bytes, name: str, limits: Limits) -> tuple[int, int]:
    """Declared (width, height) of an image, after the size checks; decodes no pixels."""
    return open_checked(data, name, limits).size


def decode_image(data: bytes, name: str, limits: Limits) -> np.ndarray:
    """Decode image bytes to [H, W, 4] uint8 RGBA, checking the declared size first."""
    from PIL import Image

    image = open_checked(data, name, limits)
    try:
        image.draft("RGB", (limits.max_texture_size, limits.max_texture_size))  # JPEG: decode smaller
        image.load()
        image = image.convert("RGBA")
    except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
        raise AssetError("bad_image", f"texture {name!r} cannot be decoded: {err}") from None
    longest = max(image.size)
    if longest > limits.max_texture_size:
        scale = limits.max_texture_size / longest
        size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8).copy()


def is_within(path: Path, root: Path) -> bool:
    """True when `path` (after resolving symlinks) is inside `root`."""
    return Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(root)))
