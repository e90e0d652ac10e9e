"""Safe expansion of untrusted archives: zip archives of meshes, zip and tar archives of media.

A zip is untrusted twice over: its directory can lie about sizes, and its member names can
point anywhere. Before extracting anything this module checks, from the central directory:
the member count, every member's declared size, the total declared size and each member's
compression ratio (a zip bomb has a huge ratio), encryption, symlink members, and that each
name is a plain relative path that stays inside the destination folder. Extraction then
streams each member and stops the moment more bytes come out than were declared, so a lying
header cannot be used to write more than the limits allow. Only mesh, material, texture and
buffer files are extracted; nested archives are not opened.

The destination is always a folder inside the prepare output (OUT/archives/<sha>/), written
under a temporary name and renamed when complete, so a killed worker leaves no half archive.

`expand_media_archive` applies the same rules to the zip and tar sources of the captioned
image and video families (`image_sources`, `videos`), which differ only in the member
extensions they extract: links and device files are refused, the member count, each declared
size and the total declared size are checked from the zip directory (whole, before anything is
written) or from each tar header before its data is read (one pass), and a refused archive
fails as `path_outside_source`, `zip_bomb`, `bad_archive` or `too_large`.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import Any

from voxforge.data.safety import Limits
from voxforge.representations.mesh import AssetError

EXTRACTED_EXTENSIONS = {
    ".obj", ".mtl", ".glb", ".gltf", ".bin", ".ply", ".stl", ".off",
    ".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tga", ".tif", ".tiff", ".gif",
}  # fmt: skip
MESH_EXTENSIONS = {".obj", ".glb", ".gltf", ".ply", ".stl", ".off"}


def _member_path(name: str) -> PurePosixPath | None:
    """The member's relative path, or None when it is not a plain relative path."""
    cleaned = name.replace("\\", "/")
    path = PurePosixPath(cleaned)
    if cleaned.startswith("/") or (len(cleaned) > 1 and cleaned[1] == ":") or "\x00" in cleaned:
        return None
    if any(part in ("..", "") for part in path.parts) or not path.parts:
        return None
    return path


def check_archive(archive: zipfile.ZipFile, limits: Limits, name: str) -> list[zipfile.ZipInfo]:
    """Validate the directory; return the members to extract. Raises AssetError."""
    members = archive.infolist()
    if len(members) > limits.max_archive_members:
        raise AssetError(
            "zip_bomb", f"{name} has {len(members)} members, over the limit {limits.max_archive_members}"
        )
    chosen, total = [], 0
    for info in members:
        if info.is_dir():
            continue
        path = _member_path(info.filename)
        if path is None:
            raise AssetError(
                "path_outside_source", f"{name}: member {info.filename!r} is not a plain relative path"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise AssetError("path_outside_source", f"{name}: member {info.filename!r} is a symbolic link")
        if path.suffix.lower() not in EXTRACTED_EXTENSIONS:
            continue
        if info.flag_bits & 0x1:
            raise AssetError("unsupported", f"{name}: member {info.filename!r} is encrypted")
        if info.file_size > limits.max_file_bytes:
            raise AssetError(
                "zip_bomb",
                f"{name}: member {info.filename!r} declares {info.file_size} bytes, over the limit",
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > 1 << 20 and ratio > limits.max_archive_ratio:
            raise AssetError(
                "zip_bomb",
                f"{name}: member {info.filename!r} expands {ratio:.0f}x (limit {limits.max_archive_ratio:.0f}x)",
            )
        total += info.file_size
        if total > limits.max_archive_bytes:
            raise AssetError(
                "zip_bomb", f"{name}: members declare more than {limits.max_archive_bytes} bytes"
            )
        chosen.append(info)
    return chosen


def expand_archive(source: Path, destination: Path, limits: Limits) -> list[Path]:
    """Extract the usable members of `source` into `destination`; return mesh files found.

    `destination` must not exist yet, or is taken as complete (resumed run) when it does.
    """
    destination = Path(destination)
    if destination.is_dir():
        return sorted(
            p for p in destination.rglob("*") if p.suffix.lower() in MESH_EXTENSIONS and p.is_file()
        )
    if source.stat().st_size > limits.max_archive_bytes:
        raise AssetError("too_large", f"{source.name} is larger than {limits.max_archive_bytes} bytes")
    temporary = destination.with_name(destination.name + ".partial")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        try:
            archive = zipfile.ZipFile(source)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise AssetError("corrupt_file", f"{source.name} is not a readable zip archive: {err}") from None
        with archive:
            members = check_archive(archive, limits, source.name)
            root = temporary.resolve()
            for info in members:
                target = (temporary / _member_path(info.filename)).resolve()
                if not target.is_relative_to(root):
                    raise AssetError(
                        "path_outside_source", f"{source.name}: member {info.filename!r} escapes"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                try:
                    with archive.open(info) as stream, open(target, "wb") as out:
                        while block := stream.read(1 << 20):
                            written += len(block)
                            if written > info.file_size:
                                raise AssetError(
                                    "zip_bomb",
                                    f"{source.name}: member {info.filename!r} is larger than declared",
                                )
                            out.write(block)
                except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as err:
                    raise AssetError(
                        "corrupt_file", f"{source.name}: member {info.filename!r}: {err}"
                    ) from None
        temporary.rename(destination)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return sorted(p for p in destination.rglob("*") if p.suffix.lower() in MESH_EXTENSIONS and p.is_file())


# ----------------------------------------------------------------------------------------------
# zip and tar archives of captioned media (images, videos and their captions)


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
    """Extract the members of a zip or tar whose suffix is in `extensions` into `destination`.

    Plain relative member names only, no links, declared sizes and zip compression ratios
    within `limits`, streams cut off past their declared size, nested archives not opened;
    written under a temporary name and renamed when complete (an existing destination is a
    finished expansion). Raises AssetError.
    """
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
