"""TRELLIS's image conditioning: the DINOv2 golden, the weight resolver, the image preparation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from voxforge.errors import UserError
from voxforge.models.dinov2 import DinoV2, DinoV2Config
from voxforge.trellis.dinov2 import (
    GOLDENS,
    SPECS,
    TRELLIS_IMAGE_SIZE,
    condition_tokens,
    find_dinov2,
    hub_checkpoint_name,
    load_dinov2,
    load_image,
    load_images,
    prepare_image,
)
from voxforge.trellis.verify import run_check

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "trellis"
WEIGHTS = FIXTURES / "dinov2_vit_reg_small.safetensors"
GOLDEN = FIXTURES / "golden" / "dinov2.safetensors"


@pytest.fixture
def fixture_weights():
    if not (WEIGHTS.is_file() and GOLDEN.is_file()):
        pytest.skip(f"TRELLIS golden fixtures not found at {FIXTURES}")
    return WEIGHTS


def test_golden_x_prenorm_and_tokens(fixture_weights):
    model = load_dinov2(fixture_weights)
    golden = load_file(str(GOLDEN))
    (check,) = GOLDENS
    assert check.file == GOLDEN.name and check.needs == ("DINOv2",) and SPECS == []
    rows = run_check(check, {"DINOv2": model}, golden)
    assert {row.output for row in rows} == {"x_prenorm", "tokens"}
    for row in rows:
        assert row.passed, row
        assert row.max_abs is not None and row.max_abs < 2e-4
    # the same tokens through TRELLIS's encode path from a [0, 1] image
    cfg = model.cfg
    assert golden["tokens"].shape[1] == cfg.num_tokens()
    image01 = golden["image"] * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    image01 = image01 + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert (condition_tokens(model, image01) - golden["tokens"]).abs().max() < 2e-4


# ----------------------------------------------------------------------------- the resolver


def _tiny_weights(path: Path) -> Path:
    cfg = DinoV2Config(img_size=28, patch_size=14, embed_dim=64, depth=1, num_heads=1)
    save_file({k: v.contiguous() for k, v in DinoV2(cfg).state_dict().items()}, path)
    return path


def _trellis_folder(tmp_path: Path, image_cond_model: str = "dinov2_vitl14_reg") -> Path:
    root = tmp_path / "TRELLIS-image-large"
    root.mkdir()
    (root / "pipeline.json").write_text(json.dumps({"args": {"image_cond_model": image_cond_model}}))
    return root


def test_resolver_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    root = _trellis_folder(tmp_path)
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "dinov2_vitl14_reg4_pretrain.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert find_dinov2(root) == cached  # 3. the hub cache
    beside = _tiny_weights(root / "dinov2_vit_reg_small.safetensors")
    assert find_dinov2(root) == beside  # 2. beside pipeline.json wins over the cache
    beside.unlink()
    folder = root / "dinov2"  # a transformers folder, as `voxforge import trellis` copies it
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert find_dinov2(root) == folder  # 2b. over the cache
    explicit = _tiny_weights(tmp_path / "mine.safetensors")
    assert find_dinov2(root, explicit) == explicit  # 1. --dinov2 wins over both
    assert find_dinov2(root, str(explicit)) == explicit
    shutil.move(explicit, root / "dinov2_mine.safetensors")
    assert find_dinov2(root) == root / "dinov2_mine.safetensors"  # the file before the folder
    assert isinstance(load_dinov2(find_dinov2(root)), DinoV2)


def test_resolver_error_says_where_it_looked_and_how_to_provide(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    root = _trellis_folder(tmp_path)
    with pytest.raises(UserError) as err:
        find_dinov2(root)
    message = str(err.value)
    assert "--dinov2 PATH: not given" in message
    assert str(root / "dinov2_*.safetensors") in message
    assert str(tmp_path / "th" / "hub" / "checkpoints" / "dinov2_vitl14_reg4_pretrain.pth") in message
    assert "never downloads" in message and "Dinov2WithRegisters" in message
    assert "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth" in message
    with pytest.raises(UserError, match="--dinov2 .*absent.pth: no such file"):
        find_dinov2(root, tmp_path / "absent.pth")


def test_resolver_default_cache_and_several_files(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = _trellis_folder(tmp_path, "dinov2_vitb14")
    with pytest.raises(UserError, match=r"xdg/torch/hub/checkpoints/dinov2_vitb14_pretrain\.pth"):
        find_dinov2(root)
    _tiny_weights(root / "dinov2_a.safetensors")
    _tiny_weights(root / "dinov2_b.safetensors")
    with pytest.raises(UserError, match="several DINOv2 weight files"):
        find_dinov2(root)
    named = _tiny_weights(root / "dinov2_vitb14.safetensors")
    assert find_dinov2(root) == named
    assert hub_checkpoint_name("dinov2_vitl14_reg") == "dinov2_vitl14_reg4_pretrain.pth"
    with pytest.raises(UserError, match="not a DINOv2 hub model"):
        hub_checkpoint_name("clip_vit")


def test_fixture_folder_resolves_its_own_dinov2(fixture_weights, tmp_path):
    root = tmp_path / "copy"
    root.mkdir()
    shutil.copy(FIXTURES / "pipeline.json", root)
    shutil.copy(fixture_weights, root)
    shutil.copy(fixture_weights.with_suffix(".json"), root)
    found = find_dinov2(root)
    assert found.name == fixture_weights.name
    assert (
        load_dinov2(found).cfg.num_heads
        == json.loads(fixture_weights.with_suffix(".json").read_text())["args"]["num_heads"]
    )


# ----------------------------------------------------------------------------- the image


def _object_image(width=400, height=300, box=(50, 60, 150, 160), alpha=255) -> np.ndarray:
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = 90  # background colour under transparent alpha: must not leak in
    left, top, right, bottom = box
    rgba[top:bottom, left:right] = (255, 128, 0, alpha)
    return rgba


def test_alpha_crop_is_centred_square_with_margin():
    prepared = prepare_image(_object_image())
    image = prepared.image
    assert image.shape == (3, TRELLIS_IMAGE_SIZE, TRELLIS_IMAGE_SIZE) and image.dtype == torch.float32
    assert prepared.used_alpha and prepared.note == ""
    # object of 100 px (box side 99) in a square of int(99 * 1.2) = 118 px: 100/118 of the side
    red = image[0] > 0.5
    middle = red[TRELLIS_IMAGE_SIZE // 2]
    assert abs(int(middle.sum()) - round(518 * 100 / 118)) <= 3
    # Pillow rounds the crop box (40.5, ..) -> (40, ..): the object's centre sits at 60 of 118
    columns = torch.nonzero(middle).flatten()
    assert abs((columns.min() + columns.max()).item() / 2 + 0.5 - 518 * 60 / 118) <= 2
    assert image[:, 2, 2].abs().max() == 0  # premultiplied on black, the grey never leaks in
    assert torch.allclose(image[:, 259, 259], torch.tensor([255, 128, 0]) / 255)
    assert torch.equal((image * 255).round() / 255, image)  # quantised to 8 bits, as TRELLIS


def test_half_transparent_object_is_premultiplied():
    prepared = prepare_image(_object_image(alpha=230))
    assert abs(prepared.image[0, 259, 259].item() - int(230 / 255 * 255) / 255) < 2 / 255


def test_opaque_image_is_taken_whole_and_says_so(tmp_path):
    rgba = _object_image(width=64, height=48)
    rgba[..., 3] = 255
    path = tmp_path / "photo.jpg"
    Image.fromarray(rgba[..., :3]).save(path, quality=95)
    prepared = load_image(path)
    assert not prepared.used_alpha
    assert "rembg" in prepared.note and str(path) in prepared.note
    assert prepared.image.shape == (3, 518, 518)
    # the frame fills the centre: the grey background is kept (nothing was removed)
    assert prepared.image[:, 259, 259].sub(90 / 255).abs().max() < 0.03


def test_rgba_file_and_unusable_images(tmp_path):
    path = tmp_path / "object.png"
    Image.fromarray(_object_image(), "RGBA").save(path)
    prepared = load_image(path)
    assert prepared.used_alpha
    assert torch.equal(prepared.image, prepare_image(_object_image()).image)
    empty = _object_image(alpha=100)  # nothing above 0.8 * 255
    with pytest.raises(UserError, match="alpha > 204"):
        prepare_image(empty, where="ghost.png")
    with pytest.raises(UserError, match="not found"):
        load_image(tmp_path / "absent.png")
    batch, notes = load_images([path, path])
    assert batch.shape == (2, 3, 518, 518) and notes == []
