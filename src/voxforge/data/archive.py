"""Safe expansion of zip archives of meshes.

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
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

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
