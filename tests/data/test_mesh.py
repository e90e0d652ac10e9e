"""TexturedMesh: merging, normalization, colour spaces, texture convention, GLB round trip."""

from __future__ import annotations

import numpy as np
import pytest

from voxforge.data.gltf import load_glb
from voxforge.representations.mesh import (
    AssetError,
    MeshPart,
    TexturedMesh,
    linear_to_srgb,
    sample_texture,
    srgb_to_linear,
    vertex_rgba,
)


def two_part_mesh() -> TexturedMesh:
    texture = np.zeros((4, 8, 4), np.uint8)
    texture[:2] = [255, 0, 0, 255]  # top half red
    texture[2:] = [0, 0, 255, 255]  # bottom half blue
    a = MeshPart(
        vertices=np.array([[0, 0, 0], [2, 0, 0], [0, 1, 0]], np.float32),
        faces=np.array([[0, 1, 2]]),
        uv=np.array([[0.1, 0.1], [0.9, 0.1], [0.1, 0.9]], np.float32),
        texture=texture,
        base_color=np.array([1, 0.5, 1, 1], np.float32),
    )
    b = MeshPart(
        vertices=np.array([[0, 0, 1], [1, 0, 1], [0, 3, 1]], np.float32),
        faces=np.array([[0, 2, 1]]),
        vertex_colors=np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32),
    )
    return TexturedMesh(parts=[a, b], extras={"tag": "x"})


def test_merged_offsets_faces_per_part():
    vertices, faces = two_part_mesh().merged()
    assert vertices.shape == (6, 3) and vertices.dtype == np.float32
    assert faces.dtype == np.int64
    np.testing.assert_array_equal(faces, [[0, 1, 2], [3, 5, 4]])


def test_vertex_colors_rgb_get_alpha():
    part = two_part_mesh().parts[1]
    assert part.vertex_colors.shape == (3, 4)
    np.testing.assert_array_equal(part.vertex_colors[:, 3], 1.0)


def test_normalized_is_centred_unit_box():
    mesh = two_part_mesh().normalized()
    lo, hi = mesh.bounds()
    np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-6)
    assert np.isclose((hi - lo).max(), 1.0)
    assert mesh.extras == {"tag": "x"}


def test_normalized_rejects_zero_extent():
    part = MeshPart(np.zeros((3, 3)), np.array([[0, 1, 2]]))
    with pytest.raises(AssetError) as err:
        TexturedMesh([part]).normalized()
    assert err.value.reason == "degenerate"


def test_check_catches_bad_indices_and_nan():
    part = MeshPart(np.zeros((3, 3)), np.array([[0, 1, 3]]))
    with pytest.raises(AssetError, match="face indices") as err:
        part.check()
    assert err.value.reason == "bad_indices"
    part = MeshPart(np.array([[0, 0, 0], [1, 0, 0], [np.nan, 1, 0]]), np.array([[0, 1, 2]]))
    with pytest.raises(AssetError) as err:
        part.check()
    assert err.value.reason == "non_finite"


def test_uv_convention_v_zero_is_image_top():
    texture = two_part_mesh().parts[0].texture
    top = sample_texture(texture, np.array([[0.5, 0.1]], np.float32))
    bottom = sample_texture(texture, np.array([[0.5, 0.9]], np.float32))
    np.testing.assert_allclose(top[0], [1, 0, 0, 1])
    np.testing.assert_allclose(bottom[0], [0, 0, 1, 1])
    wrapped = sample_texture(texture, np.array([[1.5, 1.1]], np.float32))  # REPEAT
    np.testing.assert_allclose(wrapped, top)


def test_vertex_rgba_multiplies_base_texture_and_vertex_colors():
    mesh = two_part_mesh()
    colors = vertex_rgba(mesh.parts[0])
    np.testing.assert_allclose(colors[0], [1, 0, 0, 1])  # red texel x base (1, .5, 1)
    np.testing.assert_allclose(colors[2], [0, 0, 1, 1])
    np.testing.assert_allclose(vertex_rgba(mesh.parts[1])[1], [0, 1, 0, 1])


def test_srgb_linear_round_trip():
    values = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(values)), values, atol=1e-5)
    assert srgb_to_linear(np.array([0.5]))[0] == pytest.approx(0.214, abs=1e-3)


def test_glb_round_trip_is_exact(tmp_path):
    mesh = two_part_mesh()
    mesh.save_glb(tmp_path / "m.glb")
    assert not (tmp_path / "m.glb.tmp").exists()
    back = load_glb(tmp_path / "m.glb")
    assert back.extras == {"tag": "x"}
    assert len(back.parts) == 2
    for a, b in zip(mesh.parts, back.parts):
        np.testing.assert_array_equal(a.vertices, b.vertices)
        np.testing.assert_array_equal(a.faces, b.faces)
        np.testing.assert_allclose(a.base_color, b.base_color, atol=1e-6)
        assert (a.texture is None) == (b.texture is None)
        if a.texture is not None:
            np.testing.assert_array_equal(a.texture, b.texture)
            np.testing.assert_array_equal(a.uv, b.uv)
        if a.vertex_colors is not None:
            np.testing.assert_allclose(a.vertex_colors, b.vertex_colors, atol=1e-6)


def test_glb_is_readable_by_trimesh(tmp_path):
    import trimesh

    two_part_mesh().save_glb(tmp_path / "m.glb")
    scene = trimesh.load_scene(tmp_path / "m.glb")
    assert sum(len(g.faces) for g in scene.geometry.values()) == 2


def test_to_trimesh_bakes_colours():
    tm = two_part_mesh().to_trimesh()
    assert tm.vertices.shape == (6, 3) and tm.faces.shape == (2, 3)
    np.testing.assert_array_equal(tm.visual.vertex_colors[3], [255, 0, 0, 255])
