"""Cameras: OpenCV convention, TRELLIS view sets, JSON and Blender round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voxforge.render.cameras import (
    CameraError,
    Cameras,
    condition_views,
    hammersley_sphere,
    intrinsics,
    look_at,
    sphere_hammersley,
)


def trellis_sphere_hammersley(i: int, n: int, offset: tuple[float, float]) -> tuple[float, float]:
    """TRELLIS's formula, written out independently: (yaw, pitch)."""
    value, scale, k = 0.0, 0.5, i
    while k:
        value += (k % 2) * scale
        k //= 2
        scale /= 2
    u = i / n + offset[0] / n
    v = value + offset[1]
    return v * 2 * math.pi, math.acos(1 - 2 * u) - math.pi / 2


def test_hammersley_matches_trellis_sequence():
    offset = (0.3, 0.7)
    yaw, pitch = sphere_hammersley(37, offset)
    for i in range(37):
        ref_yaw, ref_pitch = trellis_sphere_hammersley(i, 37, offset)
        assert yaw[i] == pytest.approx(ref_yaw) and pitch[i] == pytest.approx(ref_pitch)


def test_feature_views_orbit_the_origin_at_radius_two():
    cams = hammersley_sphere(150, width=64, height=48)
    assert len(cams) == 150 and cams.world_to_cam.shape == (150, 4, 4) and cams.K.shape == (150, 3, 3)
    np.testing.assert_allclose(np.linalg.norm(cams.centers, axis=1), 2.0, rtol=1e-5)
    pix, depth = cams.project(np.zeros((1, 3)))
    np.testing.assert_allclose(pix[:, 0], [[32, 24]] * 150, atol=1e-3)  # principal point (W/2, H/2)
    np.testing.assert_allclose(depth[:, 0], 2.0, rtol=1e-5)
    np.testing.assert_allclose(cams.fov_deg(), 40.0, rtol=1e-5)
    # OpenCV axes: image rows grow downwards, so world +Y (up) projects above the centre.
    pix, _ = cams.project(np.array([[0.0, 0.1, 0.0]]))
    away_from_poles = np.abs(np.array(cams.extras["pitch"])) < 1.2
    assert (pix[away_from_poles, 0, 1] < 24).all()
    # The rotation is orthonormal with determinant +1.
    rot = cams.world_to_cam[:, :3, :3].astype(np.float64)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)


def test_trellis_blender_positions_map_to_our_y_up_frame():
    # yaw 0, pitch 0: Blender (2, 0, 0) -> ours (2, 0, 0); yaw 90: Blender (0, 2, 0) -> ours (0, 0, -2).
    from voxforge.render.cameras import _orbit_eyes

    eyes = _orbit_eyes(np.array([0.0, math.pi / 2, 0.0]), np.array([0.0, 0.0, math.pi / 2]), np.full(3, 2.0))
    np.testing.assert_allclose(eyes, [[2, 0, 0], [0, 0, -2], [0, 2, 0]], atol=1e-12)


def test_field_of_view_reaches_the_image_edge():
    K = intrinsics(40.0, 100, 50)
    w2c = look_at(np.array([[0.0, 0.0, 3.0]]))
    cams = Cameras(w2c, K[None], 100, 50)
    edge = 3.0 * math.tan(math.radians(20))
    pix, _ = cams.project(np.array([[edge, 0.0, 0.0]]))
    # Looking down -Z with +Y up, world +X is image right: the FoV spans the larger side (100 px).
    np.testing.assert_allclose(pix[0, 0], [100.0, 25.0], atol=1e-3)


def test_condition_views_fit_the_unit_cube_and_are_seeded():
    cams = condition_views(24, np.random.default_rng(5), fov_range=(10, 70), width=32, height=32)
    fov = np.radians(cams.fov_deg())
    radius = np.linalg.norm(cams.centers, axis=1)
    assert (fov >= np.radians(10) - 1e-6).all() and (fov <= np.radians(70) + 1e-6).all()
    np.testing.assert_allclose(np.sin(fov / 2) * radius, math.sqrt(3) / 2, rtol=1e-5)
    again = condition_views(24, np.random.default_rng(5), width=32, height=32)
    np.testing.assert_array_equal(cams.world_to_cam, again.world_to_cam)
    other = condition_views(24, np.random.default_rng(6), width=32, height=32)
    assert not np.allclose(cams.world_to_cam, other.world_to_cam)


def test_json_round_trip_is_exact_and_slicing_keeps_extras():
    cams = condition_views(5, np.random.default_rng(0), width=40, height=30)
    back = Cameras.from_json(cams.to_json())
    np.testing.assert_array_equal(back.world_to_cam, cams.world_to_cam)
    np.testing.assert_array_equal(back.K, cams.K)
    assert (back.width, back.height) == (40, 30) and back.extras == cams.extras
    sub = cams[1:3]
    assert len(sub) == 2 and sub.extras["fov_deg"] == cams.extras["fov_deg"][1:3]
    np.testing.assert_array_equal(sub.K, cams.K[1:3])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "other"}', "format"),
        ('{"format": "voxforge.cameras/1", "width": 4}', "missing keys"),
        (
            '{"format": "voxforge.cameras/1", "width": 4, "height": 4, "world_to_cam": [[1]], "K": [[1]]}',
            "world_to_cam",
        ),
        (
            '{"format": "voxforge.cameras/1", "width": -1, "height": 4, '
            '"world_to_cam": [[[1,0,0,0],[0,1,0,0],[0,0,1,0],[0,0,0,1]]], "K": [[[1,0,0],[0,1,0],[0,0,1]]]}',
            "width",
        ),
    ],
)
def test_bad_camera_json_names_the_file(text, message):
    with pytest.raises(CameraError, match=message) as info:
        Cameras.from_json(text, source="views/cameras.json")
    assert "views/cameras.json" in str(info.value)


def test_blender_round_trip_and_axes():
    cams = hammersley_sphere(6, width=16, height=16)
    c2w = cams.to_blender()
    back = Cameras.from_blender(c2w, cams.K, 16, 16)
    np.testing.assert_allclose(back.world_to_cam, cams.world_to_cam, atol=1e-6)
    # Blender cameras look along their local -Z: towards the origin.
    position = c2w[:, :3, 3]
    looking = -c2w[:, :3, 2]
    np.testing.assert_allclose(
        (looking * -position).sum(1) / np.linalg.norm(position, axis=1), 1.0, atol=1e-6
    )
    # Blender is Z-up: our +Y (world up) is Blender's +Z; image up (local +Y) leans towards +Z.
    assert (c2w[np.abs(np.array(cams.extras["pitch"])) < 1.2, 2, 1] > 0).all()


def test_look_at_handles_the_poles():
    w2c = look_at(np.array([[0.0, 2.0, 0.0], [0.0, -2.0, 0.0]]))
    assert np.isfinite(w2c).all()
    rot = w2c[:, :3, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-9)
    np.testing.assert_allclose(rot[:, 2], [[0, -1, 0], [0, 1, 0]], atol=1e-12)  # facing the origin


def test_invalid_arguments():
    with pytest.raises(CameraError):
        hammersley_sphere(0)
    with pytest.raises(CameraError):
        condition_views(3, np.random.default_rng(0), fov_range=(80, 10))
    with pytest.raises(CameraError):
        intrinsics(180.0, 8, 8)
    with pytest.raises(CameraError):
        Cameras(np.eye(4)[None], np.eye(3)[None], 0, 8)
