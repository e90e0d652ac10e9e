import numpy as np
import pytest

from voxforge.errors import UserError
from voxforge.representations.voxels import (
    coords_to_grid,
    grid_to_coords,
    load_voxels,
    render_preview,
    save_voxels,
    voxel_faces,
    voxel_mesh,
)


def test_grid_round_trip_and_bounds_check():
    coords = np.array([[0, 1, 2], [3, 3, 3]])
    grid = coords_to_grid(coords, 4)
    assert grid.sum() == 2 and grid[0, 1, 2]
    assert np.array_equal(grid_to_coords(grid), coords)
    with pytest.raises(ValueError, match="outside"):
        coords_to_grid(np.array([[0, 0, 4]]), 4)


def test_save_and_load_voxels(tmp_path):
    coords = np.array([[3, 1, 2], [0, 0, 0], [3, 1, 2]])
    save_voxels(tmp_path / "v.npz", coords, 8)
    loaded, resolution = load_voxels(tmp_path / "v.npz")
    assert resolution == 8 and loaded.tolist() == [[0, 0, 0], [3, 1, 2]]
    with np.load(tmp_path / "v.npz") as data:
        assert data["coords"].dtype == np.uint16
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a voxel file"):
        load_voxels(tmp_path / "bad.npz")


def test_voxel_mesh_is_the_watertight_union_boundary_in_the_object_frame():
    single = voxel_mesh(np.array([[0, 0, 0]]), 2)
    assert single.is_watertight and len(single.vertices) == 8 and len(single.faces) == 12
    assert np.allclose(single.bounds, [[-0.5] * 3, [0.0] * 3])
    assert single.volume == pytest.approx(0.125)  # outward normals
    pair = voxel_mesh(np.array([[0, 0, 0], [1, 0, 0]]), 2)
    assert len(pair.faces) == 10 * 2 and pair.is_watertight  # the shared face is gone
    corners, normals, _ = voxel_faces(np.array([[0, 0, 0], [1, 0, 0]]), 2)
    assert len(corners) == 10 and not ((normals == [1, 0, 0]).all(1) & (corners[:, 0] == 0)).any()
    with pytest.raises(UserError, match="empty"):
        voxel_mesh(np.zeros((0, 3), np.int64), 4)


def test_render_preview_draws_the_structure():
    blank = render_preview(np.zeros((0, 3), np.int64), 8, size=64)
    assert blank.shape == (64, 64, 3) and (blank == 255).all()
    image = render_preview(np.array([[3, 3, 3], [4, 3, 3]]), 8, size=64)
    drawn = (image != 255).any(axis=2)
    assert 20 < drawn.sum() < 64 * 64 / 4
