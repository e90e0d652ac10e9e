"""Sources of the captioned image and video families: files, metadata rows, captions.

Both families read a source (a folder, or an archive expanded into OUT/archives/<sha>/) the
same way, and differ only in which files are items and what an item carries besides its
caption (the image family's masks, the video family's kind):

- `read_source` lists the files of a source with the family's extensions and its `.txt`
  captions, skipping hidden folders, `__MACOSX` and the output folder (a link that leads out
  of the source is a failed record, or ignored when it is a caption), and the rows of its
  `metadata.jsonl` / `metadata.csv` files (`metadata_rows`: `file_name` and `text`, the
  diffusers ImageFolder convention; a row naming a file outside the source is ignored with
  a note);
- `SourceItem.read_caption` takes an item's `.txt` and its metadata row (the metadata wins,
  with `caption_conflict`), `set_caption` records `missing_caption` when there is neither,
  and `keep_labels` keeps the row's other scalar columns as the item's `extra`.

`SourceItem` is what the shared prepare job (`captioned_prepare`) needs of an item; each
family subclasses it with what it adds.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from voxforge.data.safety import is_within

__all__ = ["METADATA_FILES", "SourceFiles", "SourceItem", "metadata_rows", "read_source"]

METADATA_FILES = ("metadata.jsonl", "metadata.csv")

#: (source index, source, file name, reason, error) -> the family's failed record
Failed = Callable[[int, str, str, str, str], dict[str, Any]]


@dataclass
class SourceItem:
    """One file of a source, as the prepare job plans, hashes and records it."""

    source_index: int
    source: str  # the SRC as given
    file_name: str  # posix path inside the source
    path: Path
    caption: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # found while reading the source
    warning_reasons: list[str] = field(default_factory=list)
    id: str | None = None
    sha: str | None = None
    stat: tuple[int, float] = (0, 0.0)

    def warn(self, reason: str, message: str) -> None:
        self.warnings.append(message)
        self.warning_reasons.append(reason)

    def read_caption(self, files: Mapping[str, Path], row: Mapping[str, Any] | None) -> str | None:
        """The caption of the metadata row, else of the `.txt` beside the file; None if neither."""
        relative, text = self.file_name, None
        caption_file = files.get(str(PurePosixPath(relative).with_suffix(".txt")))
        if caption_file is not None:
            try:
                text = caption_file.read_text(encoding="utf-8-sig", errors="replace").strip()
            except OSError as err:
                self.warn("missing_caption", f"{relative}: caption file unreadable ({err})")
        if row is not None:
            meta = row.get("text", row.get("caption"))
            if isinstance(meta, str):
                if text is not None and text != meta.strip():
                    self.warn(
                        "caption_conflict", f"{relative}: the .txt and the metadata differ; metadata used"
                    )
                text = meta.strip()
        return text

    def keep_labels(self, row: Mapping[str, Any], skip: Collection[str]) -> None:
        """Keep the scalar columns of the metadata row other than `skip` as the item's `extra`."""
        self.extra = {
            k: v for k, v in row.items() if k not in skip and isinstance(v, str | int | float | bool)
        }

    def set_caption(self, text: str | None) -> None:
        """The caption; None (no .txt, no metadata) is an empty one with `missing_caption`."""
        if text is None:
            self.warn("missing_caption", f"{self.file_name} has no caption (.txt or metadata): empty caption")
            text = ""
        self.caption = text


@dataclass
class SourceFiles:
    """What `read_source` found in one source."""

    files: dict[str, Path]  # posix path from the root -> file (the family's extensions and .txt)
    rows: dict[str, dict[str, Any]]  # file -> its metadata row (deeper metadata files win)
    listed_in: dict[str, Path]  # file -> the metadata file of its row
    failures: list[dict[str, Any]]  # failed records (links out of the source)
    notes: list[str]  # rows and metadata files ignored, and why


def read_source(
    index: int,
    display: str,
    root: Path,
    out: Path,
    extensions: Collection[str],
    failed: Failed,
    *,
    outside: str,
    object_note: str | None = None,
) -> SourceFiles:
    """The files and metadata rows of one source (a folder, or an expanded archive at `root`).

    Files with a suffix in `extensions` and `.txt` captions are listed; a link that leads out
    of the source is a `path_outside_source` failure ("... outside {outside}") unless it is a
    caption, which is not read. Metadata files are read by `metadata_rows` with `object_note`.
    """
    found = SourceFiles({}, {}, {}, [], [])
    root_real, out_real = root.resolve(), out.resolve()
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
            suffix = path.suffix.lower()
            if (suffix not in extensions and suffix != ".txt") or filename.startswith("."):
                continue
            if not is_within(path, root_real):  # a link out of the source: a caption is not read
                if suffix != ".txt":
                    found.failures.append(
                        failed(index, display, relative, "path_outside_source",
                               f"{relative} is a symbolic link to {os.path.realpath(path)}, outside {outside}")
                    )  # fmt: skip
                continue
            if path.is_file():
                found.files[relative] = path
    for file in sorted(metadata, key=lambda p: (len(p.parts), p.name)):  # deeper files win
        for relative, row in metadata_rows(root, file, found.notes, object_note):
            found.rows[relative], found.listed_in[relative] = row, file
    return found


def metadata_rows(
    root: Path, file: Path, notes: list[str], object_note: str | None = None
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(posix path from root, row) per usable row of a metadata.jsonl / metadata.csv.

    A JSON line that is not an object is noted as `object_note` while the file is read, or,
    when that is None, as a row without a `file_name` with the other rows.
    """
    relative = file.relative_to(root).as_posix()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        notes.append(f"{relative}: cannot be read ({err}); ignored")
        return
    rows: list[tuple[int, Any]] = []
    if file.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                notes.append(f"{relative}:{number}: not JSON ({err.msg}); line ignored")
                continue
            if not isinstance(row, dict) and object_note is not None:
                notes.append(f"{relative}:{number}: {object_note}; line ignored")
                continue
            rows.append((number, row))
    else:
        rows = list(enumerate(csv.DictReader(io.StringIO(text)), 2))
    root_real = root.resolve()
    for number, row in rows:
        name = row.get("file_name") if isinstance(row, dict) else None
        if not isinstance(name, str) or not name.strip():
            notes.append(f"{relative}:{number}: no file_name; line ignored")
            continue
        target = (file.parent / name.replace("\\", "/")).resolve()
        if not target.is_relative_to(root_real):
            notes.append(f"{relative}:{number}: file_name {name!r} points outside the source; line ignored")
            continue
        yield target.relative_to(root_real).as_posix(), row
