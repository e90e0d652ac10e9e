import numpy as np
import pytest
import torch
from PIL import Image

from tests.stages.ss_helpers import stage1_artefacts
from voxforge.errors import UserError
from voxforge.pipelines import structure
from voxforge.pipelines.structure import (
    StructurePipeline,
    _Views,
    load_condition_image,
    remove_plain_background,
    yaw_aligned_iou,
)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    runs = stage1_artefacts(tmp_path_factory.getbasetemp() / "stage1")
    return StructurePipeline.from_runs(runs["flow_run"])


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
    monkeypatch.setattr(structure, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(UserError, match="over the limit"):
        load_condition_image(tmp_path / "big.png", 32)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="not a readable image"):
        load_condition_image(tmp_path / "junk.png", 32)


def test_multi_image_modes(pipeline):
    torch.manual_seed(0)
    flow = pipeline.flow
    x, t = torch.randn(1, 4, 4, 4, 4), torch.full((1,), 0.7)
    tokens = torch.randn(1, 3, flow.image_encoder.num_tokens, flow.context_dim)
    with torch.no_grad():
        per_view = [flow(x, t, context=tokens[:, k]) for k in range(3)]
        views = _Views(tokens, "stochastic")
        cycled = [pipeline._model_fn(x, t, views) for _ in range(4)]
        averaged = pipeline._model_fn(x, t, _Views(tokens, "multidiffusion"))
    for got, k in zip(cycled, [0, 1, 2, 0]):
        torch.testing.assert_close(got, per_view[k])
    torch.testing.assert_close(averaged, torch.stack(per_view).mean(0), atol=1e-5, rtol=1e-5)
    images = torch.rand(2, 3, 32, 32)
    for mode in ("stochastic", "multidiffusion"):
        coords = pipeline.generate(images, seed=1, mode=mode, sampler=structure.default_sampler(steps=2))
        assert coords.ndim == 2 and coords.shape[1] == 3 and (coords < 16).all()
    with pytest.raises(UserError, match="multi-image mode"):
        pipeline.generate(images, mode="average")


def test_unconditional_and_batched_generation_are_seeded(pipeline):
    sampler = structure.default_sampler(steps=2)
    a = pipeline.unconditional(2, seed=5, sampler=sampler)
    b = pipeline.unconditional(2, seed=5, sampler=sampler)
    assert len(a) == 2 and all(np.array_equal(u, v) for u, v in zip(a, b))
    latents = pipeline.sample_latents(None, num=2, seed=5, sampler=sampler)
    assert latents.shape == (2, 4, 4, 4, 4)


def test_yaw_aligned_iou_finds_rotations_and_mirrors():
    coords = np.array([[2, 3, 1], [2, 3, 2], [2, 4, 1], [5, 3, 1]])
    turned = np.stack([coords[:, 2], coords[:, 1], 7 - coords[:, 0]], axis=1)  # 90° about +Y in an 8³ grid
    mirrored = coords * np.array([-1, 1, 1]) + np.array([7, 0, 0])
    assert yaw_aligned_iou(turned, coords, 8) == pytest.approx(1.0)
    assert yaw_aligned_iou(mirrored, coords, 8) == pytest.approx(1.0)
    assert yaw_aligned_iou(np.zeros((0, 3), np.int64), coords, 8) == 0.0
