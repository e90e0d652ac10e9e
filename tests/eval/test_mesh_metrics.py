"""Chamfer distance and normal consistency against hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from voxforge.eval.mesh_metrics import EMPTY_DISTANCE, mesh_scores, sample_surface


def _square(z: float = 0.0, size: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.tensor([[0, 0, z], [size, 0, z], [size, size, z], [0, size, z]], dtype=torch.float64)
    return v, torch.tensor([[0, 1, 2], [0, 2, 3]])


def _cube() -> tuple[torch.Tensor, torch.Tensor]:  # the unit cube centred at the origin, 12 triangles
    v = torch.tensor([[i & 1, i >> 1 & 1, i >> 2 & 1] for i in range(8)], dtype=torch.float64) - 0.5
    quads = [[0, 2, 3, 1], [4, 5, 7, 6], [0, 1, 5, 4], [2, 6, 7, 3], [0, 4, 6, 2], [1, 3, 7, 5]]
    f = torch.tensor([[a, b, c] for a, b, c, d in quads] + [[a, c, d] for a, b, c, d in quads])
    return v, f


def test_samples_lie_on_the_surface_uniformly_by_area():
    v, f = _square()
    v2 = v.clone()
    v2[:, 0] *= 3  # second square three times as large, at z = 1
    v2[:, 2] = 1.0
    points, normals = sample_surface(
        torch.cat([v, v2]), torch.cat([f, f + 4]), 8000, torch.Generator().manual_seed(0)
    )
    on_big = (points[:, 2] == 1.0).double().mean()
    assert on_big == pytest.approx(0.75, abs=0.02)
    assert float(points[:, :2].min()) >= 0 and float(points[:, 0].max()) <= 3
    assert torch.allclose(
        normals.abs(), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(normals)
    )


def test_identical_meshes_score_near_zero_and_full_consistency():
    v, f = _cube()
    s = mesh_scores(v, f, v, f, points=4000, seed=1)
    # two independent samplings of the same surface (area 6): the mean distance to the nearest
    # of n uniform points on area A is sqrt(A / n) / 2 (2-D Poisson), 0.0194 here, per direction
    expected = (6 / 4000) ** 0.5 / 2
    assert s.accuracy == pytest.approx(expected, rel=0.15) and s.completeness == pytest.approx(
        expected, rel=0.15
    )
    assert s.normal_consistency > 0.95  # only samples near the 12 edges find another face's normal


def test_parallel_planes_are_their_distance_apart():
    v, f = _square()
    s = mesh_scores(v + torch.tensor([0, 0, 0.1], dtype=torch.float64), f, v, f, points=4000, seed=0)
    # every point's nearest point on the other plane is 0.1 below / above it (sampling adds a little)
    assert s.accuracy == pytest.approx(0.1, abs=0.01) and s.completeness == pytest.approx(0.1, abs=0.01)
    assert s.chamfer == pytest.approx(0.2, abs=0.02)
    assert s.normal_consistency == pytest.approx(1.0)  # same normals, winding ignored


def test_perpendicular_planes_have_zero_normal_consistency_and_winding_is_ignored():
    v, f = _square()
    wall = v[:, [2, 0, 1]].clone()  # the square in the plane x = 0
    assert mesh_scores(wall, f, v, f, points=2000).normal_consistency == pytest.approx(0.0, abs=1e-9)
    flipped = mesh_scores(v, f[:, [0, 2, 1]], v, f, points=2000)
    assert flipped.normal_consistency == pytest.approx(1.0)


def test_a_scaled_cube_is_worse_than_the_cube_and_empty_meshes_score_the_maximum():
    v, f = _cube()
    near = mesh_scores(v * 1.1, f, v, f, points=3000).chamfer
    far = mesh_scores(v * 1.4, f, v, f, points=3000).chamfer
    # faces 0.05 and 0.2 away; the scaled cube's extra area sits further out, so >= 2 * offset
    assert 0.1 <= near < far and far >= 0.4
    empty = mesh_scores(v[:0], f[:0], v, f, points=100)
    assert empty.chamfer == 2 * EMPTY_DISTANCE and empty.normal_consistency == 0.0
