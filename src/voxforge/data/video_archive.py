"""Safe expansion of zip and tar archives of videos, images and their captions.

The rules are those of `voxforge.data.archive` (mesh zips) and of the image family's
archives, with the member types of the video family: every member name must be a plain
relative path (`voxforge.data.archive._member_path`: no `..`, no absolute or drive paths, no
NUL), links and device files are refused, the member count, each declared size, the total
declared size and each zip member's compression ratio are checked from the directory (zip) or
from each header before its data is read (tar, one pass), encrypted zip members are refused,
and each stream is cut off the moment it grows past its declared size. Only the extensions
asked for are extracted; nested archives are not opened. The destination (inside the
output folder, never next to the user's files) is written under a temporary name and renamed
when complete, so an existing destination is a finished expansion.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import Any

from voxforge.data.archive import _member_path
from voxforge.data.safety import Limits
from voxforge.representations.mesh import AssetError

__all__ = ["archive_kind", "expand_media_archive"]


def archive_kind(path: Path) -> str | None:
    """The kind of archive the file name says: "zip", "tar" or None."""
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "tar"
    return None


class _Budget:
    def __init__(self, limits: Limits, archive: str, extensions: Collection[str]):
        self.limits, self.archive, self.extensions = limits, archive, extensions
        self.members = self.total = 0

    def check(self, name: str, size: int) -> PurePosixPath | None:
        """The member's path when it is extracted, None when it is skipped; raises when refused."""
        path = _member_path(name)
        if path is None:
            raise AssetError(
                "path_outside_source", f"{self.archive}: member {name!r} is not a plain relative path"
            )
        self.members += 1
        if self.members > self.limits.max_archive_members:
            raise AssetError(
                "zip_bomb", f"{self.archive} has more than {self.limits.max_archive_members} members"
            )
        hidden = any(part.startswith(("__MACOSX", ".")) for part in path.parts)
        if path.suffix.lower() not in self.extensions or hidden:
            return None
        if size > self.limits.max_file_bytes:
            raise AssetError(
                "zip_bomb", f"{self.archive}: member {name!r} declares {size} bytes, over the limit"
            )
        self.total += size
        if self.total > self.limits.max_archive_bytes:
            raise AssetError(
                "zip_bomb", f"{self.archive}: members declare more than {self.limits.max_archive_bytes} bytes"
            )
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


def _expand_zip(source: Path, temporary: Path, budget: _Budget) -> None:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise AssetError("bad_archive", f"{source.name} is not a readable zip archive: {err}") from None
    with archive:
        chosen = []
        for info in archive.infolist():  # the whole directory is checked before anything is written
            if info.is_dir():
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                raise AssetError("path_outside_source", f"{source.name}: member {info.filename!r} is a link")
            path = budget.check(info.filename, info.file_size)
            if path is None:
                continue
            if info.flag_bits & 0x1:
                raise AssetError("bad_archive", f"{source.name}: member {info.filename!r} is encrypted")
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > 1 << 20 and ratio > budget.limits.max_archive_ratio:
                raise AssetError("zip_bomb", f"{source.name}: member {info.filename!r} expands {ratio:.0f}x")
            chosen.append((info, path))
        for info, path in chosen:
            try:
                with archive.open(info) as stream:
                    _copy_bounded(stream, temporary / path, info.file_size, source.name, info.filename)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as err:
                raise AssetError("bad_archive", f"{source.name}: member {info.filename!r}: {err}") from None


def _expand_tar(source: Path, temporary: Path, budget: _Budget) -> None:
    try:
        archive = tarfile.open(source, mode="r:*")
    except (tarfile.TarError, OSError, EOFError) as err:
        raise AssetError("bad_archive", f"{source.name} is not a readable tar archive: {err}") from None
    with archive:
        try:
            for member in archive:  # one pass: each header is checked before its data is read
                if member.isdir():
                    continue
                if not member.isfile():
                    raise AssetError(
                        "path_outside_source",
                        f"{source.name}: member {member.name!r} is a link or device, not a file",
                    )
                path = budget.check(member.name, member.size)
                if path is None:
                    continue
                _copy_bounded(
                    archive.extractfile(member), temporary / path, member.size, source.name, member.name
                )
        except (tarfile.TarError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise AssetError("bad_archive", f"{source.name}: {err}") from None


def expand_media_archive(
    source: Path, destination: Path, limits: Limits, extensions: Collection[str]
) -> None:
    """Extract the members of `source` whose suffix is in `extensions` into `destination`."""
    if destination.is_dir():
        return
    if source.stat().st_size > limits.max_archive_bytes:
        raise AssetError("too_large", f"{source.name} is larger than {limits.max_archive_bytes} bytes")
    kind = archive_kind(source)
    if kind is None:
        raise AssetError("bad_archive", f"{source.name} is neither a .zip nor a .tar archive")
    temporary = destination.with_name(destination.name + ".partial")
    shutil.rmtree(temporary, ignore_errors=True)
    budget = _Budget(limits, source.name, {e.lower() for e in extensions})
    try:
        (_expand_zip if kind == "zip" else _expand_tar)(source, temporary, budget)
        temporary.mkdir(parents=True, exist_ok=True)
        temporary.rename(destination)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
