import numpy as np
import pytest

from voxforge.eval.voxels import voxel_iou, yaw_aligned_iou
from voxforge.representations.voxels import coords_to_grid


def test_voxel_iou_of_grids():
    a = coords_to_grid(np.array([[0, 0, 0], [1, 0, 0]]), 4)
    b = coords_to_grid(np.array([[1, 0, 0], [2, 0, 0]]), 4)
    assert voxel_iou(a, b) == pytest.approx(1 / 3)
    assert voxel_iou(a, a) == 1.0
    empty = np.zeros_like(a)
    assert voxel_iou(empty, empty) == 1.0 and voxel_iou(empty, a) == 0.0


def test_yaw_aligned_iou_finds_rotations_and_mirrors():
    coords = np.array([[2, 3, 1], [2, 3, 2], [2, 4, 1], [5, 3, 1]])
    turned = np.stack([coords[:, 2], coords[:, 1], 7 - coords[:, 0]], axis=1)  # 90° about +Y in an 8³ grid
    mirrored = coords * np.array([-1, 1, 1]) + np.array([7, 0, 0])
    assert yaw_aligned_iou(turned, coords, 8) == pytest.approx(1.0)
    assert yaw_aligned_iou(mirrored, coords, 8) == pytest.approx(1.0)
    assert yaw_aligned_iou(np.zeros((0, 3), np.int64), coords, 8) == 0.0
