"""What every request of the app goes through before any model runs: its parameters, its
uploaded files, and the folder its outputs go to. No gradio here, so the checks are plain
functions the tests (and other front ends) call directly.

- Parameters: `check_int` / `check_float` / `check_choice` raise `RequestError` naming the
  parameter, its range and the value received (an HTTP client can send anything a slider
  would never let through).
- Uploaded images: `check_image_upload` decides by content, never by the file name — the
  file's byte size is checked before it is read and its header is parsed by
  `voxforge.data.safety.open_checked` (Pillow, header only: no pixel is decoded), so a text
  file renamed `.png` is "not an image" and a 20000×20000 PNG is rejected by its declared
  size before decoding. Only the formats in `IMAGE_FORMATS` pass. Messages name the upload
  by its base name, never by the server's path.
- Outputs: `JobFolders.new(kind)` makes `OUT/<kind>/<time>-<n>/` for one request; the app
  writes nothing else (gradio's upload cache is pointed inside OUT too, `server.py`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from voxforge.data.safety import Limits, open_checked
from voxforge.errors import UserError
from voxforge.representations.mesh import AssetError

__all__ = [
    "IMAGE_FORMATS",
    "JobFolders",
    "RequestError",
    "RequestLimits",
    "check_choice",
    "check_float",
    "check_image_upload",
    "check_image_uploads",
    "check_int",
    "user_message",
]

#: Pillow format names an uploaded image may have (decided from the file's content)
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF")


class RequestError(UserError):
    """A request the app refuses; the message is shown in the page as it is."""


@dataclass(frozen=True)
class RequestLimits:
    """Bounds of what one request may ask for (CPU-sized defaults)."""

    max_images: int = 8  # condition images of one image → 3D request
    max_image_bytes: int = 32 * 2**20
    max_image_pixels: int = 16 * 2**20  # declared width × height (decompression bombs)
    max_steps: int = 200  # sampler steps of one stage
    max_cfg: float = 30.0
    max_seed: int = 2**31 - 1
    max_side: int = 2048  # text → image width and height
    max_prompt_chars: int = 2000


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{name} must be a whole number between {lo} and {hi}, got {value!r}")
    if value != int(value):
        raise RequestError(f"{name} must be a whole number between {lo} and {hi}, got {value}")
    if not lo <= value <= hi:
        raise RequestError(f"{name} must be between {lo} and {hi}, got {int(value)}")
    return int(value)


def check_float(name: str, value: object, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}")
    if not lo <= float(value) <= hi:  # NaN fails here too
        raise RequestError(f"{name} must be between {lo:g} and {hi:g}, got {value}")
    return float(value)


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    if value not in choices:
        raise RequestError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _upload_path(upload: object) -> Path:
    """A file of a request: a path (gradio's `filepath` type) or a dict with one."""
    if isinstance(upload, dict):
        upload = upload.get("path") or upload.get("name")
    if not isinstance(upload, str | Path) or not str(upload):
        raise RequestError(f"expected an uploaded file, got {type(upload).__name__}")
    return Path(upload)


def check_image_upload(upload: object, limits: RequestLimits = RequestLimits()) -> Path:
    """The path of an uploaded image, after its size and content checks (no pixel decoded)."""
    path = _upload_path(upload)
    name = path.name
    if not path.is_file():
        raise RequestError(f"{name}: uploaded file not found")
    size = path.stat().st_size
    if size == 0:
        raise RequestError(f"{name}: the file is empty")
    if size > limits.max_image_bytes:
        raise RequestError(
            f"{name}: {size} bytes, larger than the {limits.max_image_bytes >> 20} MiB allowed"
        )
    try:
        image = open_checked(path.read_bytes(), name, Limits(max_texture_pixels=limits.max_image_pixels))
    except AssetError as err:
        if err.reason == "image_too_large":
            raise RequestError(
                f"{name}: the image declares more than {limits.max_image_pixels} pixels (possible "
                "decompression bomb); send a smaller image"
            ) from None
        raise RequestError(
            f"{name}: not an image (its content is none of {', '.join(IMAGE_FORMATS)}, whatever its name)"
        ) from None
    if image.format not in IMAGE_FORMATS:
        raise RequestError(f"{name}: {image.format} images are not accepted ({', '.join(IMAGE_FORMATS)})")
    width, height = image.size
    if width < 8 or height < 8:
        raise RequestError(f"{name}: {width}x{height} pixels is too small (at least 8x8)")
    return path


def check_image_uploads(uploads: object, limits: RequestLimits = RequestLimits()) -> list[Path]:
    if uploads is None or uploads == []:
        raise RequestError("upload at least one image")
    if not isinstance(uploads, list | tuple):
        uploads = [uploads]
    if len(uploads) > limits.max_images:
        raise RequestError(f"{len(uploads)} images: at most {limits.max_images} views of one object")
    return [check_image_upload(upload, limits) for upload in uploads]


def user_message(err: UserError, paths: Sequence[Path]) -> str:
    """An error of the library with the server's paths of the uploads replaced by their names."""
    message = str(err)
    for path in paths:
        message = message.replace(str(path), path.name)
    return message


class JobFolders:
    """One fresh folder per request under the app's output folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def new(self, kind: str) -> Path:
        """OUT/<kind>/<YYYYmmdd-HHMMSS>-<random>/, unique even across app restarts."""
        parent = self.root / kind
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=parent))

    def contains(self, path: str | Path) -> bool:
        return Path(path).resolve().is_relative_to(self.root)
