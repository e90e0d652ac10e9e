"""Captioned image datasets: `voxforge data images SRC [SRC2 ...] OUT` and the dataset that reads it.

Ingest (see docs/image.md, "Data"). Each SRC is a folder, a `.zip` or a `.tar`/`.tar.gz`
(archives are checked from their directory before anything is extracted, into
OUT/archives/<sha>/, never next to the user's files). Every image file is validated on its
own, and a file that fails is recorded in OUT/manifest.jsonl with a reason while the job goes
on. The order of the checks is cheap and certain first: byte size; the declared pixel count
from the header before any pixel is decoded (`voxforge.data.safety.open_checked`, the guard
against decompression bombs); the decode itself (truncated and corrupt files); then repairs
that keep the image with a warning: EXIF orientation applied, CMYK / 16-bit / palette /
grayscale converted to 8-bit RGB, transparency composited over `background`, the first frame
of an animation. An image smaller than its bucket is upscaled with a warning, or fails with
`small: fail`; one whose shorter side is under `min_size` always fails.

Buckets follow Sana and SDXL: a fixed table of (W, H), multiples of `multiple`, with an area
near resolution² and aspect ratios up to `max_aspect`; each image goes to the bucket of the
nearest aspect ratio (in log space) and is resized (covering the bucket) and centre-cropped
to it. A mask beside an image (`<name>_mask.png`) or named by a `mask` column of the metadata
marks regions (faces, hands) that weigh more in the loss; it is resized and cropped exactly
like its image and stored as OUT/masks/<id>.png.

Resume. An item's id is the first 16 hex digits of the sha256 of its bytes (duplicates are
recorded, not processed twice). A re-run reads the manifest back, re-hashes only files whose
size or modification time changed, and skips an item whose image exists and whose settings
(`params`) are unchanged; captions, weights and labels are refreshed without reprocessing.
Records are appended to the manifest as they finish (a killed run loses nothing finished) and
the file is rewritten, one line per source file, at the end.

Mixing. `weights` gives each source its share of the draws: an item's `weight` is its source's
weight divided by the number of done items in that source, so the weights of one source sum
to the source's weight whatever its size. `bucket_batch_sampler` draws by these weights.

Dataset. `ImageCaptionDataset` returns {"image": [3, H, W] in [-1, 1], "caption", "mask":
[1, H, W] loss weights (ones without a mask), "id"}; augmentations (`random_crop`, `flip`,
`rotate_deg`) are one affine warp applied to image and mask alike, drawn from a generator
seeded by (seed, index, epoch) so workers and resumed runs see the same data. With `latents=`
(a folder in the `voxforge.data.latents` layout) items carry cached `latent`s instead.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import stat
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from voxforge.config.core import ConfigValueError, option
from voxforge.data.archive import _member_path
from voxforge.data.safety import Limits, is_within, open_checked
from voxforge.errors import UserError
from voxforge.representations.mesh import AssetError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "IMAGE_EXTENSIONS",
    "WARNING_REASONS",
    "ImagePrepareConfig",
    "ImageAugmentConfig",
    "ImageDataConfig",
    "ImageCaptionDataset",
    "BucketBatchSampler",
    "bucket_batch_sampler",
    "bucket_table",
    "nearest_bucket",
    "collate_images",
    "prepare_images",
    "read_manifest",
]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
ARCHIVE_MEMBERS = IMAGE_EXTENSIONS | {".txt", ".jsonl", ".csv"}
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
MANIFEST = "manifest.jsonl"
DATASET_INFO = "dataset.json"
FORMAT_VERSION = 1

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


@dataclass
class ImagePrepareConfig:
    """Settings of `voxforge data images` (what an item's output depends on is in `params`)."""

    resolution: int = option(512, ge=16, le=8192, help="target side: buckets have about resolution² pixels")
    multiple: int = option(32, ge=1, help="bucket sides are multiples of this (the autoencoder's stride)")
    max_aspect: float = option(2.0, ge=1.0, le=8.0, help="widest bucket aspect ratio (and its inverse)")
    buckets: str = option("aspect", choices=("aspect", "square"), help="aspect buckets or one square")
    weights: tuple[float, ...] = option((), help="mixing weight per source (default 1 each)")
    min_size: int = option(0, ge=0, help="images whose shorter side is under this fail (too_small)")
    small: str = option("warn", choices=("warn", "fail"), help="an image smaller than its bucket")
    background: tuple[int, ...] = option((255, 255, 255), help="RGB that transparent pixels become")
    workers: int = option(-1, ge=-1, help="worker processes (-1: auto, 0: in this process)")
    time_limit: float | None = option(120.0, gt=0, help="seconds per image in a worker (None: unlimited)")
    retry_failed: bool = option(False, help="process failed items again")
    progress: bool = option(True, help="show a progress bar")
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if len(self.background) != 3 or not all(0 <= v <= 255 for v in self.background):
            raise ConfigValueError("background", f"expected three values 0-255, got {list(self.background)}")
        if any(w < 0 for w in self.weights) or (self.weights and sum(self.weights) <= 0):
            raise ConfigValueError("weights", f"weights must be >= 0 and not all 0, got {list(self.weights)}")
        if self.multiple > self.resolution:
            raise ConfigValueError(
                "multiple", f"{self.multiple} is larger than the resolution {self.resolution}"
            )

    def table(self) -> list[tuple[int, int]]:
        return bucket_table(
            self.resolution, self.multiple, self.max_aspect if self.buckets == "aspect" else 1.0
        )

    def params(self) -> dict[str, Any]:
        """The settings an item's stored image depends on (a change reprocesses it)."""
        return {
            "version": FORMAT_VERSION,
            "resolution": self.resolution,
            "multiple": self.multiple,
            "max_aspect": self.max_aspect if self.buckets == "aspect" else 1.0,
            "min_size": self.min_size,
            "small": self.small,
            "background": list(self.background),
            "max_pixels": self.limits.max_texture_pixels,
            "max_bytes": self.limits.max_file_bytes,
        }


# ----------------------------------------------------------------------------------------------
# buckets


def bucket_table(resolution: int, multiple: int = 32, max_aspect: float = 2.0) -> list[tuple[int, int]]:
    """(W, H) buckets, multiples of `multiple`, area within 20 % of resolution², sorted by aspect."""
    area = resolution * resolution
    side = max(multiple, round(resolution / multiple) * multiple)
    found = {(side, side)}
    width = multiple
    while width <= resolution * max_aspect + multiple:
        height = max(multiple, round(area / width / multiple) * multiple)
        aspect = max(width / height, height / width)
        if aspect <= max_aspect + 1e-9 and 0.8 <= width * height / area <= 1.25:
            found |= {(width, height), (height, width)}  # the table is symmetric: portrait = landscape
        width += multiple
    by_aspect: dict[float, tuple[int, int]] = {}
    for w, h in sorted(found, key=lambda b: (b[0] / b[1], abs(b[0] * b[1] - area))):
        by_aspect.setdefault(round(w / h, 6), (w, h))  # one bucket per aspect: the closest area
    return sorted(by_aspect.values(), key=lambda b: b[0] / b[1])


def nearest_bucket(width: int, height: int, buckets: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log space) to width / height."""
    target = math.log(width / height)
    best = min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))
    return int(best[0]), int(best[1])


def fit_to_bucket(image: Any, bucket: tuple[int, int], resample: int) -> Any:
    """Resize a PIL image to cover `bucket` (W, H), then crop its centre to exactly that size."""
    width, height = bucket
    scale = max(width / image.width, height / image.height)
    size = (
        max(width, math.ceil(image.width * scale - 1e-6)),
        max(height, math.ceil(image.height * scale - 1e-6)),
    )
    if size != image.size:
        image = image.resize(size, resample, reducing_gap=3.0 if scale < 0.5 else None)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    return image.crop((left, top, left + width, top + height))


# ----------------------------------------------------------------------------------------------
# one image


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


# ----------------------------------------------------------------------------------------------
# sources: folders, archives, captions, masks


@dataclass
class _Item:
    source_index: int
    source: str  # the SRC as given
    file_name: str  # posix path inside the source
    path: Path
    caption: str = ""
    mask: Path | None = None
    mask_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    log: _Log = field(default_factory=_Log)
    id: str | None = None
    sha: str | None = None
    mask_sha: str | None = None
    stat: tuple[int, float] = (0, 0.0)
    params: dict[str, Any] = field(default_factory=dict)


def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_member(
    name: str, size: int, limits: Limits, archive: str, state: dict[str, int]
) -> PurePosixPath | None:
    """Checks shared by zip and tar members; the member's path, or None when it is not extracted."""
    path = _member_path(name)
    if path is None:
        raise AssetError("path_outside_source", f"{archive}: member {name!r} is not a plain relative path")
    state["members"] += 1
    if state["members"] > limits.max_archive_members:
        raise AssetError("zip_bomb", f"{archive} has more than {limits.max_archive_members} members")
    if path.suffix.lower() not in ARCHIVE_MEMBERS or any(p.startswith(("__MACOSX", ".")) for p in path.parts):
        return None
    if size > limits.max_file_bytes:
        raise AssetError("zip_bomb", f"{archive}: member {name!r} declares {size} bytes, over the limit")
    state["total"] += size
    if state["total"] > limits.max_archive_bytes:
        raise AssetError("zip_bomb", f"{archive}: members declare more than {limits.max_archive_bytes} bytes")
    return path


def _copy_bounded(stream: Any, target: Path, declared: int, archive: str, name: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(target, "wb") as out:
        while block := stream.read(1 << 20):
            written += len(block)
            if written > declared:
                raise AssetError("zip_bomb", f"{archive}: member {name!r} is larger than declared")
            out.write(block)


def expand_image_archive(source: Path, destination: Path, limits: Limits) -> None:
    """Extract the images, captions and metadata of a zip or tar into `destination` (checked first).

    The same rules as `voxforge.data.archive` for meshes: plain relative member names only, no
    links, declared sizes and zip compression ratios within `limits`, streams cut off past
    their declared size; written under a temporary name and renamed when complete (an existing
    destination is a finished expansion).
    """
    if destination.is_dir():
        return
    if source.stat().st_size > limits.max_archive_bytes:
        raise AssetError("too_large", f"{source.name} is larger than {limits.max_archive_bytes} bytes")
    temporary = destination.with_name(destination.name + ".partial")
    shutil.rmtree(temporary, ignore_errors=True)
    state = {"members": 0, "total": 0}
    try:
        if _archive_kind(source) == "zip":
            try:
                archive = zipfile.ZipFile(source)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
                raise AssetError(
                    "bad_archive", f"{source.name} is not a readable zip archive: {err}"
                ) from None
            with archive:
                chosen = []
                for info in archive.infolist():
                    if info.is_dir():
                        continue
                    if stat.S_ISLNK(info.external_attr >> 16):
                        raise AssetError(
                            "path_outside_source", f"{source.name}: member {info.filename!r} is a link"
                        )
                    path = _check_member(info.filename, info.file_size, limits, source.name, state)
                    if path is None:
                        continue
                    if info.flag_bits & 0x1:
                        raise AssetError(
                            "bad_archive", f"{source.name}: member {info.filename!r} is encrypted"
                        )
                    ratio = info.file_size / max(info.compress_size, 1)
                    if info.file_size > 1 << 20 and ratio > limits.max_archive_ratio:
                        raise AssetError(
                            "zip_bomb", f"{source.name}: member {info.filename!r} expands {ratio:.0f}x"
                        )
                    chosen.append((info, path))
                for info, path in chosen:
                    try:
                        with archive.open(info) as stream:
                            _copy_bounded(
                                stream, temporary / path, info.file_size, source.name, info.filename
                            )
                    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as err:
                        raise AssetError(
                            "bad_archive", f"{source.name}: member {info.filename!r}: {err}"
                        ) from None
        else:
            try:
                archive = tarfile.open(source, mode="r:*")
            except (tarfile.TarError, OSError, EOFError) as err:
                raise AssetError(
                    "bad_archive", f"{source.name} is not a readable tar archive: {err}"
                ) from None
            with archive:
                try:  # one pass: each header is checked before its data is read
                    for member in archive:
                        if member.isdir():
                            continue
                        if not member.isfile():
                            raise AssetError(
                                "path_outside_source",
                                f"{source.name}: member {member.name!r} is a link or device, not a file",
                            )
                        path = _check_member(member.name, member.size, limits, source.name, state)
                        if path is None:
                            continue
                        stream = archive.extractfile(member)
                        _copy_bounded(stream, temporary / path, member.size, source.name, member.name)
                except (tarfile.TarError, OSError, EOFError, zipfile.BadZipFile) as err:
                    raise AssetError("bad_archive", f"{source.name}: {err}") from None
        temporary.mkdir(parents=True, exist_ok=True)
        temporary.rename(destination)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _metadata(root: Path, file: Path, log: list[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(posix path from root, row) per row of a metadata.jsonl / metadata.csv (diffusers ImageFolder)."""
    relative = file.relative_to(root).as_posix()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        log.append(f"{relative}: cannot be read ({err}); ignored")
        return
    if file.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                log.append(f"{relative}:{number}: not JSON ({err.msg}); line ignored")
                continue
            if not isinstance(row, dict):
                log.append(f"{relative}:{number}: not a JSON object; line ignored")
                continue
            rows.append((number, row))
    else:
        rows = list(enumerate(csv.DictReader(io.StringIO(text)), 2))
    for number, row in rows:
        name = row.get("file_name")
        if not isinstance(name, str) or not name.strip():
            log.append(f"{relative}:{number}: no file_name; line ignored")
            continue
        target = (file.parent / name.replace("\\", "/")).resolve()
        if not target.is_relative_to(root.resolve()):
            log.append(f"{relative}:{number}: file_name {name!r} points outside the source; line ignored")
            continue
        yield target.relative_to(root.resolve()).as_posix(), row


def discover(
    index: int, src: Path, display: str, root: Path, out: Path
) -> tuple[list[_Item], list[dict], list[str]]:
    """Images of one source (a folder, or an expanded archive at `root`): items, failed records, notes."""
    items: dict[str, _Item] = {}
    failures: list[dict[str, Any]] = []
    notes: list[str] = []
    root_real, out_real = root.resolve(), out.resolve()
    files: dict[str, Path] = {}
    metadata: list[Path] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(directory)
        dirnames[:] = sorted(
            d for d in dirnames if not d.startswith((".", "__MACOSX")) and (here / d).resolve() != out_real
        )
        for filename in sorted(filenames):
            path = here / filename
            relative = path.relative_to(root).as_posix()
            if filename in METADATA_FILES:
                metadata.append(path)
            if path.suffix.lower() not in IMAGE_EXTENSIONS | {".txt"} or filename.startswith("."):
                continue
            if not is_within(path, root_real):  # a caption there is not read; an image is a failure
                if path.suffix.lower() == ".txt":
                    continue
                failures.append(
                    _failed(index, display, relative, "path_outside_source",
                            f"{relative} is a symbolic link to {os.path.realpath(path)}, outside {src}")
                )  # fmt: skip
                continue
            if path.is_file():
                files[relative] = path
    stems = {}
    for relative in files:
        pure = PurePosixPath(relative)
        if pure.suffix.lower() in IMAGE_EXTENSIONS:
            stems.setdefault(str(pure.with_suffix("")), relative)
    masks: dict[str, str] = {}  # image file -> its mask file
    for relative in files:
        pure = PurePosixPath(relative)
        stem = str(pure.with_suffix(""))
        if pure.suffix.lower() in IMAGE_EXTENSIONS and stem.endswith("_mask") and stem[:-5] in stems:
            masks[stems[stem[:-5]]] = relative
    for relative, path in files.items():
        if PurePosixPath(relative).suffix.lower() in IMAGE_EXTENSIONS and relative not in masks.values():
            items[relative] = _Item(index, display, relative, path)
    rows: dict[str, dict[str, Any]] = {}
    listed_in: dict[str, Path] = {}  # image -> the metadata file of its row (deeper files win)
    for file in sorted(metadata, key=lambda p: (len(p.parts), p.name)):
        for relative, row in _metadata(root, file, notes):
            rows[relative], listed_in[relative] = row, file
    for relative, item in items.items():
        caption_file = files.get(str(PurePosixPath(relative).with_suffix(".txt")))
        text = None
        if caption_file is not None:
            try:
                text = caption_file.read_text(encoding="utf-8-sig", errors="replace").strip()
            except OSError as err:
                item.log.add("missing_caption", f"{relative}: caption file unreadable ({err})")
        row = rows.get(relative)
        if row is not None:
            meta = row.get("text", row.get("caption"))
            if isinstance(meta, str):
                if text is not None and text != meta.strip():
                    item.log.add(
                        "caption_conflict", f"{relative}: the .txt and the metadata differ; metadata used"
                    )
                text = meta.strip()
            item.extra = {
                k: v for k, v in row.items()
                if k not in ("file_name", "text", "caption", "mask") and isinstance(v, str | int | float | bool)
            }  # fmt: skip
            mask = row.get("mask")
            if isinstance(mask, str) and mask.strip():  # relative to the metadata file's folder
                target = (listed_in[relative].parent / mask.strip().replace("\\", "/")).resolve()
                if not target.is_relative_to(root_real) or not target.is_file():
                    item.log.add(
                        "missing_mask",
                        f"{relative}: mask {mask!r} not found (or outside the source); no mask",
                    )
                else:
                    item.mask, item.mask_name = target, target.relative_to(root_real).as_posix()
        if text is None:
            item.log.add("missing_caption", f"{relative} has no caption (.txt or metadata): empty caption")
            text = ""
        item.caption = text
        if item.mask is None and relative in masks:
            item.mask, item.mask_name = files[masks[relative]], masks[relative]
    return [items[k] for k in sorted(items)], failures, notes


def _failed(index: int, source: str, file_name: str, reason: str, error: str, sha: str | None = None) -> dict:
    return {
        "id": sha[:16] if sha else None, "source": source, "source_index": index, "file_name": file_name,
        "status": "failed", "reason": reason, "error": error, "warnings": [], "warning_reasons": [],
        "width": None, "height": None, "bucket": None, "caption": "", "weight": 0.0,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# the prepare job


def read_manifest(out: str | Path) -> list[dict[str, Any]]:
    """The records of OUT/manifest.jsonl; for a (source, file_name) listed twice the last wins."""
    path = Path(out) / MANIFEST
    if not path.is_file():
        return []
    records: dict[tuple[str, str], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run
            continue
        if isinstance(record, dict) and "file_name" in record:
            records[(str(record.get("source")), str(record["file_name"]))] = record
    return list(records.values())


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def prepare_images(
    sources: Sequence[str | Path], out: str | Path, config: ImagePrepareConfig | None = None
) -> dict[str, Any]:
    """Prepare (or finish preparing) the sources into OUT; returns the summary (dataset.json + counts)."""
    from voxforge.data.workers import default_workers, run_tasks

    config = config or ImagePrepareConfig()
    out = Path(out)
    if not sources:
        raise UserError("give at least one source folder or archive")
    weights = list(config.weights) or [1.0] * len(sources)
    if len(weights) != len(sources):
        raise UserError(
            f"--weights has {len(weights)} values for {len(sources)} sources; give one per source"
        )
    for src in map(Path, sources):
        if not src.exists():
            raise UserError(f"source {src} does not exist")
        if not src.is_dir() and _archive_kind(src) is None:
            raise UserError(f"source {src} is neither a folder nor a .zip / .tar / .tar.gz archive")
        if src.is_dir() and (src.resolve() == out.resolve() or is_within(src, out)):
            raise UserError(f"the source folder {src} must not be (or lie inside) the output folder {out}")
    out.mkdir(parents=True, exist_ok=True)
    params = config.params()
    table = config.table()
    settings = {**params, "table": [list(b) for b in table], "limits": asdict(config.limits)}
    previous = {(r.get("source"), r.get("file_name")): r for r in read_manifest(out)}
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    items: list[_Item] = []
    for index, src in enumerate(map(Path, sources)):
        display = str(src)
        root = src
        if not src.is_dir():
            sha = _sha256(src)
            root = out / "archives" / sha[:16]
            try:
                expand_image_archive(src, root, config.limits)
            except AssetError as err:
                records.append(_failed(index, display, src.name, err.reason, str(err), sha))
                continue
        found, failures, source_notes = discover(index, src, display, root, out)
        items += found
        records += failures
        notes += [f"{display}: {n}" for n in source_notes]

    # hash (cached by size and mtime), dedupe, plan
    owners: dict[str, _Item] = {}
    tasks: list[dict[str, Any]] = []
    planned: dict[str, _Item] = {}
    kept: dict[str, dict[str, Any]] = {}  # key -> previous record reused as it is
    for item in items:
        key = f"{item.source_index}:{item.file_name}"
        before = previous.get((item.source, item.file_name))
        try:
            info = item.path.stat()
            item.mask_sha = _sha256(item.mask) if item.mask is not None else None
            if before and before.get("bytes") == info.st_size and before.get("mtime") == info.st_mtime:
                item.sha = before.get("sha")
            item.sha = item.sha or _sha256(item.path)
        except OSError as err:
            records.append(_failed(item.source_index, item.source, item.file_name, "unreadable", str(err)))
            continue
        item.id = item.sha[:16]
        item.stat = (info.st_size, info.st_mtime)
        if item.id in owners:
            first = owners[item.id]
            records.append(
                _failed(item.source_index, item.source, item.file_name, "duplicate",
                        f"{item.file_name} has the same content as {first.source}/{first.file_name}", item.sha)
            )  # fmt: skip
            continue
        owners[item.id] = item
        item_params = {**params, "mask": item.mask_sha}
        item.params = item_params
        if before and before.get("sha") == item.sha and before.get("params") == item_params:
            done = before.get("status") == "done" and (out / "images" / f"{item.id}.png").is_file()
            if done or (before.get("status") == "failed" and not config.retry_failed):
                kept[key] = before
                planned[key] = item
                continue
        planned[key] = item
        tasks.append(
            {
                "key": key, "id": item.id, "name": f"{item.source}/{item.file_name}", "path": str(item.path),
                "mask": str(item.mask) if item.mask else None, "mask_name": item.mask_name,
                "out": str(out), "settings": settings,
            }
        )  # fmt: skip

    results: dict[str, dict[str, Any]] = {}
    log_file = open(out / MANIFEST, "a", encoding="utf-8")  # noqa: SIM115 - closed below

    def record_of(key: str, fields: dict[str, Any]) -> dict[str, Any]:
        item = planned[key]
        record = {
            "id": item.id, "source": item.source, "source_index": item.source_index,
            "file_name": item.file_name, "status": fields["status"], "reason": fields.get("reason"),
            "error": fields.get("error"),
            "warnings": item.log.messages + fields.get("warnings", []),
            "warning_reasons": item.log.reasons + fields.get("warning_reasons", []),
            "width": fields.get("width"), "height": fields.get("height"), "bucket": fields.get("bucket"),
            "mask": fields.get("mask", False), "caption": item.caption, "weight": 0.0, "extra": item.extra,
            "sha": item.sha, "bytes": item.stat[0], "mtime": item.stat[1], "params": item.params,
        }  # fmt: skip
        return record

    progress = None
    if config.progress and tasks:
        from tqdm import tqdm

        progress = tqdm(total=len(tasks), desc="images", unit="image", file=sys.stderr, dynamic_ncols=True)

    def on_message(key: str, message: Any) -> None:
        results[key] = record_of(key, message[1])
        log_file.write(json.dumps(results[key]) + "\n")
        log_file.flush()

    def on_failure(key: str, reason: str, detail: str) -> None:
        on_message(key, ("result", {"status": "failed", "reason": reason, "error": detail}))

    def on_finished(key: str) -> None:
        if progress is not None:
            progress.update(1)

    workers = config.workers
    if workers < 0:
        workers = 0 if len(tasks) < 64 else default_workers()
    began = time.perf_counter()
    try:
        run_tasks(
            tasks, image_task, workers=workers, time_limit=config.time_limit if workers else None,
            on_message=on_message, on_failure=on_failure, on_finished=on_finished, threads=1 if workers else None,
        )  # fmt: skip
    finally:
        log_file.close()
        if progress is not None:
            progress.close()
    for key, item in planned.items():
        if key in results:
            records.append(results[key])
        else:  # unchanged: the previous record with today's caption, labels and source name
            before = dict(kept[key])
            pairs = zip(before.get("warnings", []), before.get("warning_reasons", []))
            found = [(m, c) for m, c in pairs if c not in DISCOVERY_WARNINGS]  # made by processing
            before["warnings"] = item.log.messages + [m for m, _ in found]
            before["warning_reasons"] = item.log.reasons + [c for _, c in found]
            before.update(
                caption=item.caption, extra=item.extra, source=item.source, source_index=item.source_index
            )
            records.append(before)
    counts = [0] * len(sources)
    for record in records:
        if record["status"] == "done":
            counts[record["source_index"]] += 1
    for record in records:
        index = record["source_index"]
        record["weight"] = weights[index] / counts[index] if record["status"] == "done" else 0.0
    records.sort(key=lambda r: (r["source_index"], r["file_name"]))
    _write_atomic(out / MANIFEST, "".join(json.dumps(r) + "\n" for r in records))
    info = summarize(records, config, sources, weights, notes)
    _write_atomic(out / DATASET_INFO, json.dumps(info, indent=1) + "\n")
    info["this_run"] = {
        "processed": len(results),
        "skipped": len(kept),
        "seconds": time.perf_counter() - began,
    }
    return info


def summarize(
    records: list[dict[str, Any]],
    config: ImagePrepareConfig,
    sources: Sequence[Any],
    weights: list[float],
    notes: list[str],
) -> dict[str, Any]:
    """The content of dataset.json: the bucket table, counts per source, bucket, failure and warning."""
    done = [r for r in records if r["status"] == "done"]
    failures: dict[str, int] = {}
    warned: dict[str, int] = {}
    for record in records:
        if record["status"] == "failed":
            failures[record["reason"]] = failures.get(record["reason"], 0) + 1
        for code in sorted(set(record.get("warning_reasons") or [])):
            warned[code] = warned.get(code, 0) + 1
    buckets: dict[str, int] = {}
    for record in done:
        name = f"{record['bucket'][0]}x{record['bucket'][1]}"
        buckets[name] = buckets.get(name, 0) + 1
    return {
        "format": "voxforge.images", "version": FORMAT_VERSION, "resolution": config.resolution,
        "multiple": config.multiple, "max_aspect": config.max_aspect if config.buckets == "aspect" else 1.0,
        "buckets": [list(b) for b in config.table()], "count": len(done), "failed": len(records) - len(done),
        "masks": sum(1 for r in done if r.get("mask")),
        "sources": [
            {"path": str(s), "weight": w,
             "done": sum(1 for r in done if r["source_index"] == i),
             "failed": sum(1 for r in records if r["source_index"] == i and r["status"] == "failed")}
            for i, (s, w) in enumerate(zip(sources, weights))
        ],
        "bucket_counts": dict(sorted(buckets.items())), "failures": failures, "warnings": warned, "notes": notes,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# the dataset


@dataclass
class ImageAugmentConfig:
    """Augmentations, one affine warp per item (image and mask alike), seeded by (seed, index, epoch)."""

    random_crop: float = option(
        0.0, ge=0.0, lt=1.0, help="zoom in by up to this fraction of each side at a random position"
    )
    flip: bool = option(False, help="mirror left-right half of the time")
    flip_captions: bool = option(True, help="on a flip, swap the words left and right in the caption")
    rotate_deg: float = option(
        0.0, ge=0.0, le=30.0, help="rotate by up to this many degrees (zoomed to fill)"
    )

    @property
    def active(self) -> bool:
        return self.random_crop > 0 or self.flip or self.rotate_deg > 0


@dataclass
class ImageDataConfig:
    """The `data` section of an image stage: a folder written by `voxforge data images`."""

    path: str = option("", help="folder written by `voxforge data images` (manifest.jsonl, images/)")
    resolution: int | None = option(
        None, ge=16, help="train at this resolution (None: as prepared; buckets are rescaled)"
    )
    mask_weight: float = option(2.0, ge=0.0, help="loss weight inside a mask's regions (1: masks ignored)")
    weighted: bool = option(True, help="draw items by their sources' mixing weights")
    latents: str | None = option(
        None, help="a folder of cached latents of these images (`voxforge.data.latents` layout)"
    )
    augment: ImageAugmentConfig = field(default_factory=ImageAugmentConfig)


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(caption: str) -> str:
    """The caption of a mirrored image: left <-> right (case kept)."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, caption)


def _affine(
    rng: np.random.Generator, cfg: ImageAugmentConfig, width: int, height: int
) -> tuple[np.ndarray | None, bool]:
    """theta [2, 3] for `affine_grid` (None: identity) and whether the item is flipped."""
    flip = bool(cfg.flip and rng.random() < 0.5)
    angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)) if cfg.rotate_deg > 0 else 0.0
    zoom = 1.0 / (1.0 - rng.uniform(0.0, cfg.random_crop)) if cfg.random_crop > 0 else 1.0
    if angle == 0.0 and zoom == 1.0:
        return None, flip
    cos, sin = math.cos(angle), math.sin(angle)
    cover = cos + max(width / height, height / width) * abs(sin)  # zoom that hides rotated corners
    scale = 1.0 / (cover * zoom)  # output -> input, in units of the half size
    room = max(0.0, 1.0 - 1.0 / zoom)
    shift = rng.uniform(-room, room, size=2)
    # a rotation in pixels, written in normalized coordinates: D^-1 R D with D = diag(W, H) / 2
    theta = np.array(
        [
            [cos * scale, -sin * scale * height / width, shift[0]],
            [sin * scale * width / height, cos * scale, shift[1]],
        ]
    )
    return theta, flip


class ImageCaptionDataset:
    """Items {"image": [3, H, W] in [-1, 1], "caption", "mask": [1, H, W], "id"} of a prepared folder.

    `resolution` (None: as prepared) maps each stored bucket to the nearest-aspect bucket of
    the table at that resolution, so one folder prepared at the highest resolution serves every
    stage of a progressive recipe. `mask`: the per-pixel loss weight, `mask_weight` inside a
    mask's regions and 1 elsewhere (all ones without a mask). `weights()` are the mixing
    weights of the manifest, `buckets()` the (W, H) of every item (for `bucket_batch_sampler`).
    """

    def __init__(
        self,
        path: str | Path,
        resolution: int | None = None,
        augment: ImageAugmentConfig | None = None,
        *,
        mask_weight: float = 2.0,
        seed: int = 0,
        ids: Sequence[str] | None = None,
        latents: str | Path | None = None,
    ):
        self.root = Path(path)
        info_path = self.root / DATASET_INFO
        if not info_path.is_file():
            raise UserError(
                f"{self.root} has no {DATASET_INFO}; run `voxforge data images SRC {self.root}` first"
            )
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{info_path} is not valid JSON ({err})") from None
        records = [
            r
            for r in read_manifest(self.root)
            if r.get("status") == "done" and (self.root / "images" / f"{r['id']}.png").is_file()
        ]
        if ids is not None:
            wanted = set(ids)
            records = [r for r in records if r["id"] in wanted]
        if not records:
            raise UserError(f"{self.root} holds no usable images (see {self.root / MANIFEST})")
        self.records = records
        self.augment = augment or ImageAugmentConfig()
        self.mask_weight, self.seed, self.epoch = float(mask_weight), int(seed), 0
        self.resolution = int(resolution or self.info["resolution"])
        if resolution is None or int(resolution) == int(self.info["resolution"]):
            self.table = [tuple(b) for b in self.info["buckets"]]
            self._bucket = [tuple(r["bucket"]) for r in records]
        else:
            multiple = min(int(self.info.get("multiple", 32)), self.resolution)
            self.table = bucket_table(self.resolution, multiple, float(self.info.get("max_aspect", 2.0)))
            self._bucket = [nearest_bucket(*r["bucket"], self.table) for r in records]
        # voxforge.data.latents imports torch (through data.steps): imported here, not at the top,
        # so the ingest workers, which import this module, stay free of torch
        from voxforge.data.latents import LATENTS_DIR

        self.latents = None if latents is None else Path(latents) / LATENTS_DIR
        if self.latents is not None:
            if self.augment.active:
                raise UserError(
                    f"{latents}: cached latents encode the stored images as they are; turn the "
                    "augmentations off (data.augment) or train on the images (data.latents: null)"
                )
            if resolution is not None and int(resolution) != int(self.info["resolution"]):
                raise UserError(
                    f"{latents}: cached latents are at the prepared resolution {self.info['resolution']}, "
                    f"not {resolution}; encode a folder prepared at {resolution}"
                )
            missing = [r["id"] for r in records if not (self.latents / f"{r['id']}.npz").is_file()]
            if missing:
                raise UserError(
                    f"{latents}: {len(missing)} of {len(records)} images have no latent (first: {missing[0]}); "
                    f"encode {self.root} again"
                )

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:  # the engine calls it (`voxforge.stages.base.EpochAware`)
        self.epoch = int(epoch)

    def buckets(self) -> list[tuple[int, int]]:
        return list(self._bucket)

    def weights(self) -> list[float]:
        return [float(r.get("weight", 1.0)) for r in self.records]

    def captions(self) -> list[str]:
        return [r.get("caption", "") for r in self.records]

    def _load(self, path: Path, mode: str, bucket: tuple[int, int]) -> Any:
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert(mode)
        if image.size != bucket:
            image = fit_to_bucket(
                image, bucket, Image.Resampling.BICUBIC if mode == "RGB" else Image.Resampling.BILINEAR
            )
        return np.asarray(image, dtype=np.float32) / 255.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        record, bucket = self.records[index], self._bucket[index]
        if self.latents is not None:
            return self._latent_item(record, bucket)
        image = torch.from_numpy(self._load(self.root / "images" / f"{record['id']}.png", "RGB", bucket))
        image = image.permute(2, 0, 1)  # [3, H, W] in [0, 1]
        region = self._region(record, bucket)
        caption = record.get("caption", "")
        if self.augment.active:
            rng = np.random.default_rng([self.seed, index, self.epoch])
            theta, flip = _affine(rng, self.augment, bucket[0], bucket[1])
            if theta is not None:
                stack = image if region is None else torch.cat([image, region])
                grid = torch.nn.functional.affine_grid(
                    torch.tensor(theta, dtype=torch.float32)[None], [1, stack.shape[0], bucket[1], bucket[0]],
                    align_corners=False,
                )  # fmt: skip
                stack = torch.nn.functional.grid_sample(
                    stack[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False
                )[0]
                image, region = (stack, None) if region is None else (stack[:3], stack[3:])
            if flip:
                image = image.flip(-1)
                region = None if region is None else region.flip(-1)
                if self.augment.flip_captions:
                    caption = swap_left_right(caption)
        weight = self._weight(region, bucket)
        return {
            "image": (image * 2.0 - 1.0).clamp(-1.0, 1.0),
            "caption": caption,
            "mask": weight,
            "id": record["id"],
        }

    def _region(self, record: dict[str, Any], bucket: tuple[int, int]) -> Tensor | None:
        """The item's mask, [1, H, W] in [0, 1], or None."""
        import torch

        mask_file = self.root / "masks" / f"{record['id']}.png"
        if record.get("mask") and mask_file.is_file():
            return torch.from_numpy(self._load(mask_file, "L", bucket))[None]
        return None

    def _weight(self, region: Tensor | None, bucket: tuple[int, int]) -> Tensor:
        """Per-pixel loss weights [1, H, W]: mask_weight inside the region, 1 elsewhere."""
        import torch

        if region is None:
            return torch.ones(1, bucket[1], bucket[0])
        return 1.0 + (self.mask_weight - 1.0) * region.clamp(0.0, 1.0)

    def _latent_item(self, record: dict[str, Any], bucket: tuple[int, int]) -> dict[str, Any]:
        import torch

        from voxforge.data.latents import read_latent  # see __init__

        latent = torch.from_numpy(read_latent(self.latents / f"{record['id']}.npz").latent)
        return {
            "latent": latent,
            "caption": record.get("caption", ""),
            "mask": self._weight(self._region(record, bucket), bucket),
            "id": record["id"],
        }

    @classmethod
    def from_config(
        cls, cfg: ImageDataConfig, *, seed: int = 0, ids: Sequence[str] | None = None
    ) -> ImageCaptionDataset:
        if not cfg.path:
            raise UserError("data.path is empty: name a folder written by `voxforge data images`")
        return cls(
            cfg.path,
            cfg.resolution,
            cfg.augment,
            mask_weight=cfg.mask_weight,
            seed=seed,
            ids=ids,
            latents=cfg.latents or None,
        )


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-bucket items: image [B, 3, H, W], mask [B, 1, H, W], caption and id lists."""
    import torch

    key = "image" if "image" in items[0] else "latent"
    sizes = {tuple(item[key].shape) for item in items}
    if len(sizes) > 1:
        raise ValueError(f"a batch mixes {key} sizes {sorted(sizes)}; batch with bucket_batch_sampler")
    return {
        key: torch.stack([item[key] for item in items]),
        "mask": torch.stack([item["mask"] for item in items]),
        "caption": [item["caption"] for item in items],
        "id": [item["id"] for item in items],
    }


class BucketBatchSampler:
    """Batches of one bucket each, deterministic in (seed, epoch), resumable, split across ranks.

    Like `voxforge.train.data.ResumableBatchSampler`, global batch b (G = batch_size x
    world_size items) depends only on (seed, epoch, b) and rank r takes its every
    world_size-th item, so 1 process at 2B draws what 2 processes at B draw. With equal
    weights an epoch is a permutation: the items of each bucket, in permutation order, cut
    into global batches (a bucket's remainder waits for another epoch) and the batches
    shuffled. With mixing weights every global batch picks a bucket with probability
    proportional to its total weight, then G distinct items of it by weight; an epoch then has
    `len // G` batches. Buckets with fewer than G items are never drawn (`unused`).
    """

    def __init__(
        self,
        buckets: Sequence[Sequence[int]],
        batch_size: int,
        *,
        weights: Sequence[float] | None = None,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        start_batch: int = 0,
    ):
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)
        self.seed, self.shuffle, self.epoch, self.start_batch = (
            int(seed),
            shuffle,
            int(epoch),
            int(start_batch),
        )
        self.global_batch = self.batch_size * self.world_size
        keys = [tuple(int(v) for v in b) for b in buckets]
        groups: dict[tuple[int, int], list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key, []).append(index)
        self.groups = {k: np.asarray(v) for k, v in sorted(groups.items()) if len(v) >= self.global_batch}
        self.unused = sum(len(v) for v in groups.values()) - sum(len(v) for v in self.groups.values())
        if not self.groups:
            largest = max((len(v) for v in groups.values()), default=0)
            raise UserError(
                f"no bucket has a full batch: the largest holds {largest} images, a global batch is "
                f"{self.batch_size} x {self.world_size} processes; lower the batch size or prepare with "
                "`--buckets square`"
            )
        self.weights = None
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if len(weights) != len(keys) or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError("weights: one non-negative weight per item, not all zero")
            if not np.allclose(weights, weights[0]):
                self.weights = weights
        if self.weights is None:
            self.batches_per_epoch = sum(len(v) // self.global_batch for v in self.groups.values())
        else:
            self.batches_per_epoch = max(1, sum(len(v) for v in self.groups.values()) // self.global_batch)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch - self.start_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """Every global batch (item indices) of an epoch."""
        import torch

        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        keys = list(self.groups)
        if self.weights is None:
            batches = []
            for key in keys:
                members = self.groups[key]
                if self.shuffle:
                    members = members[torch.randperm(len(members), generator=generator).numpy()]
                full = len(members) // self.global_batch * self.global_batch
                batches += list(members[:full].reshape(-1, self.global_batch))
            if self.shuffle:
                batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            return batches
        totals = torch.tensor([self.weights[self.groups[k]].sum() for k in keys])
        picks = torch.multinomial(totals, self.batches_per_epoch, replacement=True, generator=generator)
        batches = []
        for pick in picks.tolist():
            members = self.groups[keys[pick]]
            chosen = torch.multinomial(
                torch.as_tensor(self.weights[members]) + 1e-12,
                self.global_batch,
                replacement=False,
                generator=generator,
            )
            batches.append(members[chosen.numpy()])
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.epoch_batches(self.epoch)[self.start_batch :]:
            yield batch[self.rank :: self.world_size].tolist()


def bucket_batch_sampler(
    dataset: ImageCaptionDataset, batch_size: int, *, weighted: bool = True, **kwargs: Any
) -> BucketBatchSampler:
    """A `BucketBatchSampler` over a dataset's buckets (and its mixing weights when `weighted`)."""
    return BucketBatchSampler(
        dataset.buckets(), batch_size, weights=dataset.weights() if weighted else None, **kwargs
    )
