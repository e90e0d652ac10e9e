"""Voxelizer: DESIGN grid contract, open3d's exact set, exact reference, torch twin."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voxforge.data.voxelize import VoxelizeError, tribox_open3d, voxel_centers, voxelize, voxelize_torch

MESH_DIRS = ("plain", "textured", "vertexcolor")


def reference_voxelize(vertices: np.ndarray, faces: np.ndarray, resolution: int) -> set[tuple[int, int, int]]:
    """Brute force: open3d's per-triangle window, every voxel in it through the exact tribox3."""
    size = 1.0 / resolution
    verts = np.clip(np.asarray(vertices, np.float64), -0.5 + 1e-6, 0.5 - 1e-6)
    out: set[tuple[int, int, int]] = set()
    for face in np.asarray(faces):
        tri = verts[face]  # [3 vertex, 3 axis]
        lo, hi = tri.min(0), tri.max(0)
        start = [math.floor((lo[a] + 0.5) / size) for a in range(3)]
        count = [math.floor((hi[a] - lo[a]) / size + 0.5) + 2 for a in range(3)]
        grid = np.stack(
            np.meshgrid(*[np.arange(start[a], start[a] + count[a]) for a in range(3)], indexing="ij"), -1
        ).reshape(-1, 3)
        centres = (-0.5 + size / 2) + grid * size  # [K, 3]
        tv = np.repeat(tri[:, :, None], len(grid), axis=2)  # [3, 3, K]
        hit = tribox_open3d(np, tv, centres.T, size / 2)
        out.update(map(tuple, grid[hit].tolist()))
    return out


def as_set(coords: np.ndarray) -> set[tuple[int, int, int]]:
    return set(map(tuple, np.asarray(coords).tolist()))


def cube_mesh(half: float) -> tuple[np.ndarray, np.ndarray]:
    corners = np.array(
        [[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)], float
    )
    faces = np.array(
        [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
         [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    )  # fmt: skip
    return corners, faces


def normalized(mesh) -> tuple[np.ndarray, np.ndarray]:
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    vertices = vertices - (vertices.max(0) + vertices.min(0)) / 2
    vertices = vertices / (vertices.max(0) - vertices.min(0)).max()
    return vertices, np.asarray(mesh.faces, dtype=np.int64)


def real_meshes(root):
    import trimesh

    paths = sorted(p for d in MESH_DIRS for p in (root / d).rglob("*") if p.suffix.lower() in {
        ".obj", ".glb", ".ply", ".stl", ".off"})  # fmt: skip
    assert paths, f"no meshes under {root}"
    for path in paths:
        yield path, normalized(trimesh.load(path, force="mesh", process=False))


def test_small_triangle_occupies_the_voxel_that_contains_it():
    tri = np.array([[-0.3, -0.3, -0.3], [-0.29, -0.3, -0.3], [-0.3, -0.29, -0.3]])
    # R=4: voxel 0 covers [-0.5, -0.25] on each axis (DESIGN's index, no half-voxel shift).
    np.testing.assert_array_equal(voxelize(tri, [[0, 1, 2]], 4), [[0, 0, 0]])
    np.testing.assert_array_equal(voxelize(tri + 0.5, [[0, 1, 2]], 4), [[2, 2, 2]])


def test_voxel_centers_follow_the_grid_contract():
    np.testing.assert_allclose(voxel_centers(np.array([[0, 1, 3]]), 4), [[-0.375, -0.125, 0.375]])


def test_axis_aligned_box_on_grid_planes_is_a_closed_shell():
    # Faces lie exactly on the planes x, y, z = +-0.25 of the R=4 grid. A face touches the
    # voxels on both sides of its plane; open3d's window keeps the side that holds the
    # triangle's minimum, so both faces of each pair land in the 3x3x3 block [1, 3].
    vertices, faces = cube_mesh(0.25)
    got = as_set(voxelize(vertices, faces, 4))
    block = {(i, j, k) for i in range(1, 4) for j in range(1, 4) for k in range(1, 4)}
    assert got == block - {(2, 2, 2)}
    assert got == reference_voxelize(vertices, faces, 4)


def test_triangle_in_a_grid_plane_takes_only_the_voxel_above():
    tri = np.array([[-0.25, -0.4, -0.4], [-0.25, -0.3, -0.4], [-0.25, -0.4, -0.3]])
    assert as_set(voxelize(tri, [[0, 1, 2]], 4)) == {(1, 0, 0)}
    # A triangle whose maximum touches the plane from below reaches the voxel above it.
    tri = np.array([[-0.3, -0.4, -0.4], [-0.25, -0.3, -0.4], [-0.3, -0.4, -0.3]])
    assert as_set(voxelize(tri, [[0, 1, 2]], 4)) == {(0, 0, 0), (1, 0, 0)}


def test_vertices_outside_the_unit_box_are_clipped():
    tri = np.array([[-2.0, -2.0, 0.0], [2.0, -2.0, 0.0], [0.0, 2.0, 0.0]])
    coords = voxelize(tri, [[0, 1, 2]], 8)
    assert coords.min() >= 0 and coords.max() < 8
    assert as_set(coords) == reference_voxelize(tri, np.array([[0, 1, 2]]), 8)


def test_degenerate_and_empty_inputs():
    assert voxelize(np.zeros((0, 3)), np.zeros((0, 3), int), 8).shape == (0, 3)
    point = np.array([[0.01, 0.02, 0.03]] * 3)  # all three vertices equal
    assert as_set(voxelize(point, [[0, 1, 2]], 8)) == reference_voxelize(point, np.array([[0, 1, 2]]), 8)
    segment = np.array([[-0.4, 0.1, 0.1], [0.4, 0.1, 0.1], [0.4, 0.1, 0.1]])
    assert as_set(voxelize(segment, [[0, 1, 2]], 8)) == reference_voxelize(segment, np.array([[0, 1, 2]]), 8)


@pytest.mark.parametrize("kind", ["random", "on_grid", "half_grid", "big"])
def test_matches_exact_reference(kind):
    rng = np.random.default_rng(["random", "on_grid", "half_grid", "big"].index(kind))
    for resolution in (3, 8, 16):
        if kind == "big":  # a few triangles spanning many tiles of the grid
            vertices = rng.uniform(-0.5, 0.5, (12, 3))
        else:  # 20 small triangles scattered over the box
            centres = rng.uniform(-0.4, 0.4, (20, 1, 3))
            vertices = (centres + rng.uniform(-0.15, 0.15, (20, 3, 3))).reshape(60, 3)
        if kind == "on_grid":
            vertices = np.round(vertices * resolution) / resolution
        elif kind == "half_grid":
            vertices = np.round(vertices * 2 * resolution) / (2 * resolution)
        faces = np.arange(len(vertices)).reshape(-1, 3)
        assert as_set(voxelize(vertices, faces, resolution)) == reference_voxelize(
            vertices, faces, resolution
        )


def test_output_is_sorted_unique_int64():
    vertices, faces = cube_mesh(0.3)
    coords = voxelize(vertices, faces, 16)
    assert coords.dtype == np.int64 and coords.shape[1] == 3
    keys = (coords[:, 0] * 16 + coords[:, 1]) * 16 + coords[:, 2]
    assert np.all(np.diff(keys) > 0)


@pytest.mark.parametrize(
    ("vertices", "faces", "resolution", "message"),
    [
        (np.zeros((3, 2)), [[0, 1, 2]], 8, "shape"),
        (np.full((3, 3), np.nan), [[0, 1, 2]], 8, "NaN"),
        (np.zeros((3, 3)), [[0, 1, 3]], 8, "indices"),
        (np.zeros((3, 3)), [[0, 1, 2]], 0, "resolution"),
        (np.zeros((3, 3), dtype=np.int64), [[0, 1, 2]], 8, "floating"),
    ],
)
def test_bad_input_is_a_user_error(vertices, faces, resolution, message):
    with pytest.raises(VoxelizeError, match=message):
        voxelize(vertices, faces, resolution)


def test_torch_backend_matches_numpy(shared_meshes):
    import torch
    import trimesh

    for name in ("plain/suzanne.obj", "plain/featuretype.STL"):
        vertices, faces = normalized(trimesh.load(shared_meshes / name, force="mesh", process=False))
        expected = voxelize(vertices, faces, 16)
        np.testing.assert_array_equal(voxelize(vertices, faces, 16, backend="torch"), expected)
        got = voxelize_torch(torch.from_numpy(vertices), torch.from_numpy(faces), 16)
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.gpu
def test_torch_backend_on_cuda_matches_numpy(shared_meshes):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    for path, (vertices, faces) in real_meshes(shared_meshes):
        expected = voxelize(vertices, faces, 64)
        got = voxelize_torch(torch.from_numpy(vertices), torch.from_numpy(faces), 64, device="cuda")
        assert got.device.type == "cuda"
        np.testing.assert_array_equal(got.cpu().numpy(), expected, err_msg=str(path))


def open3d_voxelize(vertices: np.ndarray, faces: np.ndarray, resolution: int) -> set[tuple[int, int, int]]:
    """TRELLIS's voxelize step, verbatim in behaviour."""
    import open3d as o3d

    mesh = o3d.geometry.TriangleMesh()
    mesh.vertices = o3d.utility.Vector3dVector(np.clip(vertices.astype(np.float64), -0.5 + 1e-6, 0.5 - 1e-6))
    mesh.triangles = o3d.utility.Vector3iVector(faces.astype(np.int32))
    grid = o3d.geometry.VoxelGrid.create_from_triangle_mesh_within_bounds(
        mesh, voxel_size=1 / resolution, min_bound=(-0.5, -0.5, -0.5), max_bound=(0.5, 0.5, 0.5)
    )
    return {tuple(int(x) for x in voxel.grid_index) for voxel in grid.get_voxels()}


@pytest.mark.parametrize("resolution", [32, 64])
def test_identical_to_open3d_on_real_meshes(shared_meshes, resolution):
    pytest.importorskip("open3d")
    for path, (vertices, faces) in real_meshes(shared_meshes):
        ours = as_set(voxelize(vertices, faces, resolution))
        theirs = open3d_voxelize(vertices, faces, resolution)
        iou = len(ours & theirs) / max(1, len(ours | theirs))
        assert iou == 1.0, (
            f"{path.name}: IoU {iou:.6f} ({len(ours - theirs)} extra, {len(theirs - ours)} missing)"
        )


def test_identical_to_open3d_on_hostile_grid_aligned_triangles():
    pytest.importorskip("open3d")
    rng = np.random.default_rng(7)
    for trial in range(40):
        resolution = int(rng.choice([2, 4, 7, 16]))
        vertices = np.round(rng.uniform(-0.6, 0.6, (30, 3)) * resolution) / resolution
        if trial % 2:
            vertices[:, trial % 3] = np.round(rng.uniform(-0.5, 0.5) * resolution) / resolution
        faces = np.arange(30).reshape(-1, 3)
        assert as_set(voxelize(vertices, faces, resolution)) == open3d_voxelize(vertices, faces, resolution)
