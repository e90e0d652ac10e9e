"""Reading images that a user hands to a command (condition images, prepared views).

Every image that enters voxforge from outside the data toolkit's own ingest goes through
`read_image`: the file's byte size is checked before it is read, its declared pixel count
before a single pixel is decoded (the same guard `data prepare` applies to textures,
`voxforge.data.safety`), and any failure — missing file, not an image, a decompression
bomb, truncated pixel data — becomes one `UserError` line that names the file. Pillow's
own `DecompressionBombError` is an `Exception`, not an `OSError`, so code that only
catches `OSError` lets it through as a traceback; this module is the one place that
catches both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxforge.data.safety import Limits, open_checked
from voxforge.errors import UserError
from voxforge.representations.mesh import AssetError

__all__ = ["MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "LoadedImage", "read_image"]

MAX_IMAGE_PIXELS = 64 * 1024 * 1024
MAX_IMAGE_BYTES = 256 * 1024 * 1024


@dataclass
class LoadedImage:
    rgba: np.ndarray  # [H, W, 4] uint8, straight alpha
    has_alpha: bool  # the file carries an alpha channel (or a transparent palette entry)


def read_image(
    path: str | Path,
    *,
    max_pixels: int = MAX_IMAGE_PIXELS,
    max_bytes: int = MAX_IMAGE_BYTES,
    what: str = "image",
) -> LoadedImage:
    """Decode an image file to RGBA after the size checks; every failure is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} file not found")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{path}: the {what} file is empty")
    if size > max_bytes:
        raise UserError(f"{path}: {what} file of {size} bytes is larger than {max_bytes >> 20} MiB")
    data = path.read_bytes()
    limits = Limits(max_texture_pixels=max_pixels)
    try:
        image = open_checked(data, path.name, limits)  # header only: no pixel decoded yet
    except AssetError as err:
        if err.reason == "image_too_large":
            raise UserError(
                f"{path}: {what} is larger than {max_pixels} pixels (possible decompression bomb)"
            ) from None
        raise UserError(f"{path}: not a readable {what} ({err})") from None
    try:
        has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint8)
    except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
        raise UserError(f"{path}: not a readable {what} ({err})") from None
    return LoadedImage(rgba, has_alpha)
