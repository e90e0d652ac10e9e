"""Zip archives: members are extracted inside the destination only, bombs and lies are caught."""

from __future__ import annotations

import stat
import zipfile

import pytest

from tests.data.hostile import CUBE_OBJ, small_png, write_zip
from voxforge.data.archive import expand_archive
from voxforge.data.safety import Limits
from voxforge.representations.mesh import AssetError


def reason(source, destination, limits=None) -> str:
    with pytest.raises(AssetError) as err:
        expand_archive(source, destination, limits or Limits())
    assert not destination.exists(), "a failed expansion must leave nothing behind"
    assert not destination.with_name(destination.name + ".partial").exists()
    return err.value.reason


def test_expands_meshes_textures_and_skips_other_files(tmp_path):
    archive = write_zip(
        tmp_path / "a.zip",
        {
            "models/cube.obj": CUBE_OBJ.encode(),
            "models/tex.png": small_png(),
            "readme.txt": b"hello",
            "run.sh": b"rm -rf /",
            "nested/inner.zip": b"PK",
        },
    )
    meshes = expand_archive(archive, tmp_path / "out", Limits())
    assert [p.relative_to(tmp_path / "out").as_posix() for p in meshes] == ["models/cube.obj"]
    assert (tmp_path / "out" / "models" / "tex.png").is_file()
    assert not (tmp_path / "out" / "run.sh").exists()
    # a finished destination is reused (resumed run)
    assert expand_archive(archive, tmp_path / "out", Limits()) == meshes


@pytest.mark.parametrize(
    "name", ["../evil.obj", "/abs/evil.obj", "a/../../evil.obj", "C:/evil.obj", "a\\..\\..\\evil.obj"]
)
def test_zip_slip_member_names(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr(zipfile.ZipInfo(name), CUBE_OBJ)
    assert reason(archive, tmp_path / "dest") == "path_outside_source"
    assert not (tmp_path / "evil.obj").exists()


def test_symlink_member(tmp_path):
    archive = tmp_path / "a.zip"
    info = zipfile.ZipInfo("link.obj")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(archive, "w") as out:
        out.writestr(info, "/etc/passwd")
    assert reason(archive, tmp_path / "dest") == "path_outside_source"


def test_zip_bomb_by_ratio(tmp_path):
    archive = write_zip(tmp_path / "a.zip", {"bomb.obj": b"\x00" * (20 << 20)})
    assert reason(archive, tmp_path / "dest") == "zip_bomb"


def test_zip_bomb_by_total_and_member_size(tmp_path):
    archive = write_zip(
        tmp_path / "a.zip", {"a.obj": CUBE_OBJ.encode() * 100, "b.obj": CUBE_OBJ.encode() * 100}
    )
    assert reason(archive, tmp_path / "d1", Limits(max_archive_bytes=30_000)) == "zip_bomb"
    assert reason(archive, tmp_path / "d2", Limits(max_file_bytes=10_000)) == "zip_bomb"


def test_too_many_members(tmp_path):
    archive = write_zip(tmp_path / "a.zip", {f"{i}.obj": b"v 0 0 0\n" for i in range(20)})
    assert reason(archive, tmp_path / "dest", Limits(max_archive_members=10)) == "zip_bomb"


def test_lying_declared_size(tmp_path):
    """A member whose header declares fewer bytes than it holds is stopped at the declared size."""
    archive = write_zip(tmp_path / "a.zip", {"a.obj": CUBE_OBJ.encode() * 50}, compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    real = len(CUBE_OBJ.encode() * 50)
    small = (100).to_bytes(4, "little")
    # patch the uncompressed size in the local header (offset 22) and the central directory
    data[22:26] = small
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = small
    archive.write_bytes(bytes(data))
    assert real > 100
    assert reason(archive, tmp_path / "dest") in ("zip_bomb", "corrupt_file")


def test_not_a_zip(tmp_path):
    archive = tmp_path / "a.zip"
    archive.write_bytes(b"this is not a zip file at all")
    assert reason(archive, tmp_path / "dest") == "corrupt_file"


def test_encrypted_member_is_unsupported(tmp_path):
    archive = write_zip(tmp_path / "a.zip", {"a.obj": CUBE_OBJ.encode()})
    data = bytearray(archive.read_bytes())
    data[6] |= 1  # general purpose flag: encrypted (local header)
    central = data.rfind(b"PK\x01\x02")
    data[central + 8] |= 1
    archive.write_bytes(bytes(data))
    assert reason(archive, tmp_path / "dest") == "unsupported"
