import numpy as np
import pytest
import torch
from PIL import Image

from voxforge.errors import UserError
from voxforge.pipelines import images
from voxforge.pipelines.images import load_condition_image, remove_plain_background


def test_plain_background_is_removed_from_the_border_inwards():
    rgb = np.full((40, 40, 3), 250, dtype=np.uint8)
    rgb[10:30, 12:28] = (200, 30, 30)
    rgb[18:22, 18:22] = 250  # enclosed background colour stays part of the object
    alpha = remove_plain_background(rgb)
    assert alpha[0, 0] == 0 and alpha[15, 15] == 255 and alpha[20, 20] == 255
    assert (alpha > 0).sum() == 18 * 14  # the object, one pixel in from its outline
    with pytest.raises(UserError, match="transparent background"):
        remove_plain_background(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    with pytest.raises(UserError, match="no object"):
        remove_plain_background(np.full((40, 40, 3), 7, dtype=np.uint8))


def test_condition_image_with_and_without_alpha_match(tmp_path):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[17:47, 21:43] = (40, 160, 60, 255)  # the RGB object below, one pixel in
    Image.fromarray(rgba).save(tmp_path / "a.png")
    rgb = np.full((64, 64, 3), 255, dtype=np.uint8)
    rgb[16:48, 20:44] = (40, 160, 60)
    Image.fromarray(rgb).save(tmp_path / "b.png")
    a, b = load_condition_image(tmp_path / "a.png", 32), load_condition_image(tmp_path / "b.png", 32)
    assert a.shape == (3, 32, 32) and torch.allclose(a, b, atol=1e-6)
    assert a[:, 0, 0].sum() == 0  # premultiplied onto black


def test_image_limits_are_checked_before_decoding(tmp_path, monkeypatch):
    Image.new("RGB", (50, 50), (255, 255, 255)).save(tmp_path / "big.png")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 100)
    # Pillow's global limit stays as the test found it (data.safety restores it after each parse)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with pytest.raises(UserError, match="larger than 100 pixels"):
        load_condition_image(tmp_path / "big.png", 32)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="not a readable image"):
        load_condition_image(tmp_path / "junk.png", 32)
