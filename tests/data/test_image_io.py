"""Images handed to commands: every bad file is one clear UserError naming it."""

import numpy as np
import pytest
from PIL import Image

from tests.data.hostile import bomb_png
from voxforge.data.image_io import read_image
from voxforge.errors import UserError


def test_reads_rgba_and_reports_alpha(tmp_path):
    Image.new("RGB", (5, 4), (10, 20, 30)).save(tmp_path / "rgb.png")
    Image.new("RGBA", (3, 2), (1, 2, 3, 4)).save(tmp_path / "rgba.png")
    rgb = read_image(tmp_path / "rgb.png")
    assert rgb.rgba.shape == (4, 5, 4) and not rgb.has_alpha and (rgb.rgba[..., 3] == 255).all()
    rgba = read_image(tmp_path / "rgba.png")
    assert rgba.has_alpha and rgba.rgba[0, 0].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("bomb.png", bomb_png(50_000, 50_000), "decompression bomb"),
        ("big.png", bomb_png(9_000, 9_000), "decompression bomb"),  # under Pillow's own 2x limit
        ("text.png", b"this is not an image\n", "not a readable"),
        ("empty.png", b"", "empty"),
    ],
)
def test_bad_files_are_user_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        read_image(path, max_pixels=64 * 2**20)
    assert name in str(info.value)


def test_missing_and_truncated(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_image(tmp_path / "absent.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "t.png"
    )
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="t.png: not a readable"):
        read_image(tmp_path / "t.png")


def test_byte_limit(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match="larger than"):
        read_image(tmp_path / "a.png", max_bytes=10)
