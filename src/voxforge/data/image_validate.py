"""One image of `voxforge data images`: validate, convert, bucket and store it (and its mask).

The order of the checks is cheap and certain first: byte size; the declared pixel count from
the header before any pixel is decoded (`voxforge.data.safety.open_checked`, the guard
against decompression bombs); the decode itself (truncated and corrupt files); then repairs
that keep the image with a warning: EXIF orientation applied, CMYK / 16-bit / palette /
grayscale converted to 8-bit RGB, transparency composited over `background`, the first frame
of an animation. An image smaller than its bucket is upscaled with a warning, or fails with
`small: fail`; one whose shorter side is under `min_size` always fails. A mask is resized and
cropped exactly like its image; a mask that cannot be used costs the mask, not the image.

`image_task` is the worker entry (`voxforge.data.workers.run_tasks`). This module imports no
torch, so the ingest workers start fast.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.data.image_buckets import fit_to_bucket, nearest_bucket
from voxforge.data.safety import Limits, open_checked
from voxforge.representations.mesh import AssetError

__all__ = [
    "DISCOVERY_WARNINGS",
    "FAILURE_REASONS",
    "WARNING_REASONS",
    "decode_rgb",
    "image_task",
    "process_image",
]

#: warning reason codes (the image is used)
WARNING_REASONS = {
    "missing_caption": "no caption (.txt or metadata): empty caption",
    "caption_conflict": "a .txt and the metadata disagree: the metadata's caption is used",
    "exif_orientation": "EXIF orientation applied",
    "cmyk": "CMYK converted to RGB",
    "high_bit_depth": "16-bit or float samples reduced to 8 bits",
    "palette": "palette image converted to RGB",
    "grayscale": "grayscale image converted to RGB",
    "alpha": "transparent pixels composited over the background colour",
    "animated": "an animation: its first frame is used",
    "upscaled": "smaller than its bucket: upscaled",
    "mask": "a mask that could not be used: the image is used without it",
    "missing_mask": "the mask the metadata names is not there (or outside the source): no mask",
}
#: warnings found while reading the sources (re-made on every run; the others come with the image)
DISCOVERY_WARNINGS = {"missing_caption", "caption_conflict", "missing_mask"}
#: failure reason codes (the image is not used)
FAILURE_REASONS = {
    "empty_file", "too_large", "image_too_large", "not_an_image", "corrupt_image", "too_small",
    "duplicate", "path_outside_source", "unreadable", "bad_archive", "zip_bomb", "worker_error",
    "worker_crashed", "timeout",
}  # fmt: skip


class _Log:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.reasons: list[str] = []

    def add(self, reason: str, message: str) -> None:
        if message not in self.messages:
            self.messages.append(message)
            self.reasons.append(reason)


def _read_bytes(path: Path, name: str, limits: Limits) -> bytes:
    size = path.stat().st_size
    if size == 0:
        raise AssetError("empty_file", f"{name} is empty")
    if size > limits.max_file_bytes:
        raise AssetError("too_large", f"{name} has {size} bytes, over the limit {limits.max_file_bytes}")
    return path.read_bytes()


def _open(data: bytes, name: str, limits: Limits) -> Any:
    """Header only, with the pixel limit (decompression bombs) applied before any decode."""
    try:
        return open_checked(data, name, limits)
    except AssetError as err:
        if err.reason == "image_too_large":
            raise AssetError(
                "image_too_large",
                f"{name} declares more than {limits.max_texture_pixels} pixels (possible decompression bomb)",
            ) from None
        detail = str(err).split("cannot be decoded: ")[-1].split(" <_io.")[0]  # no object addresses
        raise AssetError("not_an_image", f"{name} is not a readable image ({detail})") from None


def _png_bit_depth(data: bytes) -> int | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return data[24]
    return None


def decode_rgb(
    data: bytes, name: str, limits: Limits, background: Sequence[int], log: _Log, draft: int
) -> Any:
    """Bytes -> an 8-bit RGB PIL image, EXIF orientation applied; repairs are logged."""
    from PIL import Image, ImageOps

    image = _open(data, name, limits)
    width, height = image.size
    if getattr(image, "n_frames", 1) > 1:
        log.add("animated", f"{name} has {image.n_frames} frames; the first is used")
    try:
        if image.format == "JPEG" and draft:  # decode big JPEGs at a reduced scale, still >= draft px
            image.draft(image.mode, (draft, draft))
        image.load()
        orientation = image.getexif().get(0x0112, 1)
        if orientation in (2, 3, 4, 5, 6, 7, 8):
            image = ImageOps.exif_transpose(image)
            log.add("exif_orientation", f"{name}: EXIF orientation {orientation} applied")
            if orientation >= 5:
                width, height = height, width
    except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
        raise AssetError("corrupt_image", f"{name} cannot be decoded (truncated or corrupt): {err}") from None
    mode = image.mode
    if _png_bit_depth(data) == 16 or mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        log.add("high_bit_depth", f"{name}: {mode} samples reduced to 8 bits")
        if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
            values = np.asarray(image, dtype=np.float64)
            if mode == "F":
                values = values * 255.0 if values.max(initial=0.0) <= 1.0 else values
            else:
                values = values / 257.0
            image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
            mode = "L"
    if mode == "CMYK":
        log.add("cmyk", f"{name}: CMYK converted to RGB")
        return image.convert("RGB"), (width, height)
    if mode == "P":
        log.add("palette", f"{name}: palette image converted to RGB")
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("1", "L", "LA", "La", "I", "F"):
        log.add("grayscale", f"{name}: grayscale ({mode}) converted to RGB")
    if image.mode in ("RGBA", "LA", "La", "PA", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if (alpha < 255).any():
            log.add("alpha", f"{name}: transparent pixels composited over RGB {tuple(background)}")
            flat = Image.new("RGBA", rgba.size, (*background, 255))
            flat.alpha_composite(rgba)
            return flat.convert("RGB"), (width, height)
        return rgba.convert("RGB"), (width, height)
    return image.convert("RGB"), (width, height)


def _save_png(image: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)


def process_image(task: dict[str, Any]) -> dict[str, Any]:
    """Validate, convert, bucket and store one image (and its mask); returns the record fields.

    Raises AssetError with a reason code when the image cannot be used.
    """
    from PIL import Image, ImageOps

    settings = task["settings"]
    limits = Limits(**settings["limits"])
    name, path, out = task["name"], Path(task["path"]), Path(task["out"])
    log = _Log()
    table = [tuple(b) for b in settings["table"]]
    data = _read_bytes(path, name, limits)
    draft = max(max(b) for b in table)
    image, (width, height) = decode_rgb(data, name, limits, settings["background"], log, draft=draft)
    bucket = nearest_bucket(width, height, table)
    if min(width, height) < settings["min_size"]:
        raise AssetError("too_small", f"{name} is {width}x{height}, under --min-size {settings['min_size']}")
    if width < bucket[0] or height < bucket[1]:
        message = f"{name} is {width}x{height}, smaller than its bucket {bucket[0]}x{bucket[1]}"
        if settings["small"] == "fail":
            raise AssetError("too_small", message)
        log.add("upscaled", f"{message}: upscaled")
    drafted = image.size  # a JPEG draft may have decoded it smaller than its declared size
    _save_png(fit_to_bucket(image, bucket, Image.Resampling.LANCZOS), out / "images" / f"{task['id']}.png")
    has_mask = False
    if task.get("mask"):
        mask_name = task["mask_name"]
        try:
            mask_data = _read_bytes(Path(task["mask"]), mask_name, limits)
            mask = _open(mask_data, mask_name, limits)
            mask.load()
            mask = ImageOps.exif_transpose(mask)
            if mask.mode in ("RGBA", "LA", "PA") or "transparency" in mask.info:
                alpha = mask.convert("RGBA").getchannel("A")
                mask = alpha if np.asarray(alpha).min() < 255 else mask.convert("L")
            else:
                mask = mask.convert("L")
            if abs(math.log((mask.width / mask.height) / (width / height))) > 0.02:
                raise AssetError(
                    "mask",
                    f"mask {mask_name} is {mask.width}x{mask.height}, not the shape of {width}x{height}",
                )
            mask = mask.resize(drafted, Image.Resampling.BILINEAR) if mask.size != drafted else mask
            _save_png(
                fit_to_bucket(mask, bucket, Image.Resampling.BILINEAR), out / "masks" / f"{task['id']}.png"
            )
            has_mask = True
        except AssetError as err:
            log.add("mask", f"{err}; the image is used without a mask")
        except Exception as err:  # noqa: BLE001 - a corrupt mask costs the mask, not the image
            log.add("mask", f"mask {mask_name} cannot be decoded ({err}); the image is used without a mask")
    if not has_mask:
        (out / "masks" / f"{task['id']}.png").unlink(missing_ok=True)
    return {
        "width": width,
        "height": height,
        "bucket": list(bucket),
        "mask": has_mask,
        "warnings": log.messages,
        "warning_reasons": log.reasons,
    }


def image_task(task: dict[str, Any], send: Any) -> None:
    """Worker entry (`voxforge.data.workers.run_tasks`): one image -> ("result", fields)."""
    try:
        send(("result", {"status": "done", **process_image(task)}))
    except AssetError as err:
        send(("result", {"status": "failed", "reason": err.reason, "error": str(err)}))
