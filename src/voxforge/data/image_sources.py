"""The sources of `voxforge data images`: folders, zip / tar archives, captions and masks.

Each SRC is a folder, a `.zip` or a `.tar`/`.tar.gz` (archives are checked from their
directory before anything is extracted, into OUT/archives/<sha>/, never next to the user's
files). `discover` lists a source's images with their captions (a `.txt` beside the image,
or `metadata.jsonl` / `metadata.csv` with `file_name` and `text`: the diffusers ImageFolder
convention; a missing caption is an empty caption plus a warning), their masks
(`<name>_mask.png` beside the image, or a `mask` column of the metadata) and the metadata's
other columns (kept as labels); paths that lead outside the source are refused.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from voxforge.data.archive import _member_path
from voxforge.data.image_validate import _Log
from voxforge.data.safety import Limits, is_within
from voxforge.representations.mesh import AssetError

__all__ = ["IMAGE_EXTENSIONS", "METADATA_FILES", "discover", "expand_image_archive"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
ARCHIVE_MEMBERS = IMAGE_EXTENSIONS | {".txt", ".jsonl", ".csv"}
METADATA_FILES = ("metadata.jsonl", "metadata.csv")


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
