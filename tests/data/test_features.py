"""Feature aggregation: occlusion-aware projection, fallbacks, rgb and a tiny DINOv2."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxforge.data.features import FeatureError, aggregate_features, get_extractor
from voxforge.data.voxelize import voxelize
from voxforge.errors import UserError
from voxforge.render.cameras import Cameras, hammersley_sphere, intrinsics, look_at
from voxforge.render.mesh_raster import render_mesh
from voxforge.representations.mesh import MeshPart, TexturedMesh

RES = 16


def two_plates() -> TexturedMesh:
    """A red plate at z = +0.2 in front of a blue plate at z = -0.2 (both 0.6 wide)."""

    def plate(z, color):
        v = np.array([[-0.3, -0.3, z], [0.3, -0.3, z], [0.3, 0.3, z], [-0.3, 0.3, z]], np.float32)
        return MeshPart(v, np.array([[0, 1, 2], [0, 2, 3]]), base_color=np.array(color, np.float32))

    return TexturedMesh([plate(0.2, (1, 0, 0, 1)), plate(-0.2, (0, 0, 1, 1))])


def axis_cameras(size: int = 48) -> Cameras:
    """One camera in front (+Z) and one behind (-Z) the plates."""
    eyes = np.array([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0]])
    return Cameras(look_at(eyes), np.repeat(intrinsics(40, size, size)[None], 2, 0), size, size)


def plate_voxels(mesh: TexturedMesh) -> tuple[np.ndarray, np.ndarray]:
    vertices, faces = mesh.merged()
    coords = voxelize(vertices, faces, RES)
    z_centre = (coords[:, 2] + 0.5) / RES - 0.5
    return coords, z_centre


def test_hidden_voxels_do_not_take_the_occluders_colour():
    mesh = two_plates()
    cams = axis_cameras()
    rgba, depth = render_mesh(mesh, cams)
    coords, z = plate_voxels(mesh)
    feats, info = aggregate_features(coords, RES, rgba, depth, cams, get_extractor("rgb"), return_info=True)
    # Keep voxels away from the plate rims, where bilinear sampling mixes in the background.
    core = (np.abs((coords[:, :2] + 0.5) / RES - 0.5) < 0.2).all(1)
    front, back = core & (z > 0), core & (z < 0)
    assert front.sum() > 10 and back.sum() > 10
    np.testing.assert_allclose(feats[front], np.tile([1, 0, 0], (front.sum(), 1)), atol=1e-6)
    np.testing.assert_allclose(feats[back], np.tile([0, 0, 1], (back.sum(), 1)), atol=1e-6)
    # Each plate's voxels are seen by exactly one of the two cameras.
    assert (info["views_per_voxel"][core] == 1).all()
    # Without the depth test (TRELLIS's average) the back plate picks up the front's red.
    naive = aggregate_features(coords, RES, rgba, None, cams, get_extractor("rgb"))
    assert naive[back, 0].mean() > 0.4


def test_voxels_seen_by_no_view_take_the_nearest_visible_feature():
    mesh = two_plates()
    cams = axis_cameras()[:1]  # front camera only: the back plate is never visible
    rgba, depth = render_mesh(mesh, cams)
    coords, z = plate_voxels(mesh)
    feats, info = aggregate_features(coords, RES, rgba, depth, cams, get_extractor("rgb"), return_info=True)
    assert info["fallback"] == "nearest_visible" and info["unseen"] >= (z < 0).sum()
    core_back = (z < 0) & (np.abs((coords[:, :2] + 0.5) / RES - 0.5) < 0.2).all(1)
    np.testing.assert_allclose(feats[core_back], np.tile([1, 0, 0], (core_back.sum(), 1)), atol=1e-6)


def test_no_visible_voxel_falls_back_to_the_all_view_average():
    mesh = two_plates()
    cams = axis_cameras()
    rgba, depth = render_mesh(mesh, cams)
    coords = np.array([[8, 8, 8], [7, 8, 8]])  # the empty middle: behind the red plate in view 0
    feats, info = aggregate_features(coords, RES, rgba, depth, cams, get_extractor("rgb"), return_info=True)
    assert info["fallback"] == "all_views" and info["unseen"] == 2
    np.testing.assert_allclose(feats[0], [0.5, 0, 0.5], atol=1e-6)  # red from the front, blue from behind


def test_rgb_extractor_shapes_and_resampling():
    images = np.zeros((2, 20, 30, 4), np.uint8)
    images[..., 0] = 255
    images[0, ..., 3] = 255  # view 1 is fully transparent: premultiplied to black
    full = get_extractor("rgb")(images)
    assert full.shape == (2, 3, 20, 30) and full[0, 0].min() == 1 and full[1].max() == 0
    small = get_extractor("rgb", size=7)(images)
    assert small.shape == (2, 3, 7, 7)


def test_feature_sampling_is_bilinear_at_the_projected_pixel():
    # One voxel, one camera: the feature equals the bilinear sample at its projection.
    cams = axis_cameras(16)[:1]
    coords = np.array([[9, 6, 8]])
    pix, _ = cams.project((coords + 0.5) / RES - 0.5)
    image = np.zeros((1, 16, 16, 4), np.uint8)
    image[..., 3] = 255
    image[0, :, :, 0] = np.arange(16)[None, :] * 10  # red grows with the column
    depth = np.full((1, 16, 16), 2.0, np.float32)
    feats = aggregate_features(coords, RES, image, depth, cams, get_extractor("rgb"))
    expected = np.interp(pix[0, 0, 0] - 0.5, np.arange(16), np.arange(16) * 10) / 255
    assert feats[0, 0] == pytest.approx(expected, abs=1e-5)


def test_tiny_dinov2_from_a_local_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=14,
        image_size=56,
        num_register_tokens=4,
    )
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path)
    extractor = get_extractor("dinov2", model=str(tmp_path), batch_size=2)
    assert extractor.name == "dinov2" and extractor.dim == 32
    mesh = two_plates()
    cams = hammersley_sphere(3, width=32, height=32)
    rgba, depth = render_mesh(mesh, cams)
    maps = extractor(rgba)
    assert maps.shape == (3, 32, 4, 4) and torch.isfinite(maps).all()
    coords, _ = plate_voxels(mesh)
    feats = aggregate_features(coords, RES, rgba, depth, cams, extractor)
    assert feats.shape == (len(coords), 32) and feats.dtype == np.float32 and np.isfinite(feats).all()
    # Pre-norm tokens: not layer-normalised (TRELLIS's x_prenorm), so not zero-mean per token.
    assert maps.mean(1).abs().max() > 1e-3


def test_dinov2_without_weights_names_the_builtin_alternative(tmp_path):
    pytest.importorskip("transformers")
    with pytest.raises(UserError, match="--features rgb") as info:
        get_extractor("dinov2", model=str(tmp_path / "missing"))
    assert "weights not found" in str(info.value)


def test_unknown_extractor_and_options():
    with pytest.raises(FeatureError, match="unknown feature extractor"):
        get_extractor("clip")
    with pytest.raises(FeatureError, match="no options"):
        get_extractor("rgb", model="x")


def test_mismatched_inputs_are_rejected():
    cams = axis_cameras(8)
    with pytest.raises(FeatureError, match="does not match"):
        aggregate_features(
            np.zeros((1, 3), int), RES, np.zeros((2, 9, 8, 4), np.uint8), None, cams, get_extractor("rgb")
        )
    with pytest.raises(FeatureError, match="coords"):
        aggregate_features(
            np.zeros((1, 2), int), RES, np.zeros((2, 8, 8, 4), np.uint8), None, cams, get_extractor("rgb")
        )
