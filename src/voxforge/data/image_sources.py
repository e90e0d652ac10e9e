"""The sources of `voxforge data images`: folders, zip / tar archives, captions and masks.

Each SRC is a folder, a `.zip` or a `.tar`/`.tar.gz` (archives are checked from their
directory before anything is extracted, into OUT/archives/<sha>/, never next to the user's
files). `discover` lists a source's images with their captions (a `.txt` beside the image,
or `metadata.jsonl` / `metadata.csv` with `file_name` and `text`: the diffusers ImageFolder
convention; a missing caption is an empty caption plus a warning), their masks
(`<name>_mask.png` beside the image, or a `mask` column of the metadata) and the metadata's
other columns (kept as labels); paths that lead outside the source are refused. What the
video family reads the same way (files, metadata rows, captions, archive checks) lives in
`captioned_sources` and `voxforge.data.archive`; this module adds the image extensions and
the masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from voxforge.data.archive import expand_media_archive
from voxforge.data.captioned_sources import METADATA_FILES, SourceItem, read_source
from voxforge.data.safety import Limits

__all__ = ["IMAGE_EXTENSIONS", "METADATA_FILES", "discover", "expand_image_archive"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
ARCHIVE_MEMBERS = IMAGE_EXTENSIONS | {".txt", ".jsonl", ".csv"}


@dataclass
class _Item(SourceItem):
    mask: Path | None = None
    mask_name: str | None = None
    mask_sha: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # what its stored image depends on

    def warn(self, reason: str, message: str) -> None:
        if message not in self.warnings:  # each message once, as `image_validate._Log` keeps them
            super().warn(reason, message)


def expand_image_archive(source: Path, destination: Path, limits: Limits) -> None:
    """Extract the images, captions and metadata of a zip or tar into `destination` (checked first).

    The rules of `voxforge.data.archive.expand_media_archive` (shared with the video family):
    plain relative member names only, no links, declared sizes and zip compression ratios
    within `limits`, streams cut off past their declared size; written under a temporary name
    and renamed when complete (an existing destination is a finished expansion).
    """
    expand_media_archive(source, destination, limits, ARCHIVE_MEMBERS)


def discover(
    index: int, src: Path, display: str, root: Path, out: Path
) -> tuple[list[_Item], list[dict], list[str]]:
    """Images of one source (a folder, or an expanded archive at `root`): items, failed records, notes."""
    source = read_source(
        index,
        display,
        root,
        out,
        IMAGE_EXTENSIONS,
        _failed,
        outside=str(src),
        object_note="not a JSON object",
    )
    files, root_real = source.files, root.resolve()
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
    items: dict[str, _Item] = {}
    for relative, path in files.items():
        if PurePosixPath(relative).suffix.lower() in IMAGE_EXTENSIONS and relative not in masks.values():
            items[relative] = _Item(index, display, relative, path)
    for relative, item in items.items():
        row = source.rows.get(relative)
        text = item.read_caption(files, row)
        if row is not None:
            item.keep_labels(row, ("file_name", "text", "caption", "mask"))
            mask = row.get("mask")
            if isinstance(mask, str) and mask.strip():  # relative to the metadata file's folder
                target = (source.listed_in[relative].parent / mask.strip().replace("\\", "/")).resolve()
                if not target.is_relative_to(root_real) or not target.is_file():
                    item.warn(
                        "missing_mask",
                        f"{relative}: mask {mask!r} not found (or outside the source); no mask",
                    )
                else:
                    item.mask, item.mask_name = target, target.relative_to(root_real).as_posix()
        item.set_caption(text)
        if item.mask is None and relative in masks:
            item.mask, item.mask_name = files[masks[relative]], masks[relative]
    return [items[k] for k in sorted(items)], source.failures, source.notes


def _failed(index: int, source: str, file_name: str, reason: str, error: str, sha: str | None = None) -> dict:
    return {
        "id": sha[:16] if sha else None, "source": source, "source_index": index, "file_name": file_name,
        "status": "failed", "reason": reason, "error": error, "warnings": [], "warning_reasons": [],
        "width": None, "height": None, "bucket": None, "caption": "", "weight": 0.0,
    }  # fmt: skip
