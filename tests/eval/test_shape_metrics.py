"""COV / MMD with Chamfer distance on hand-made shape sets, and FID / KID in a view classifier's features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from voxforge.eval.image_attributes import AttributeClassifierConfig
from voxforge.eval.mesh_metrics import EMPTY_DISTANCE
from voxforge.eval.shape_metrics import (
    chamfer_matrix,
    coverage_mmd,
    image_distances,
    sample_point_sets,
    shape_set_scores,
    view_classifier,
)


def _mesh(m: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(m.vertices, np.float32), np.asarray(m.faces, np.int64)


SHAPES = {
    "sphere": _mesh(trimesh.creation.icosphere(2, radius=0.4)),
    "box": _mesh(trimesh.creation.box((0.8, 0.3, 0.3))),
    "torus": _mesh(trimesh.creation.torus(0.3, 0.08, major_sections=24, minor_sections=8)),
}


def test_coverage_and_mmd_of_a_hand_matrix():
    distances = np.array([[0.1, 0.5, 0.7], [0.2, 0.9, 0.8], [0.5, 0.4, 0.6]])
    cov, mmd, matched = coverage_mmd(distances)
    assert matched == [0, 0, 1]
    assert cov == pytest.approx(2 / 3)  # reference 2 is nobody's nearest
    assert mmd == pytest.approx((0.1 + 0.4 + 0.6) / 3)


def test_the_reference_set_itself_covers_everything_and_a_collapsed_set_one_shape():
    reference = list(SHAPES.values())
    itself = shape_set_scores(reference, reference, points=1024)
    collapsed = shape_set_scores([SHAPES["sphere"]] * 3, reference, points=1024)
    assert itself.cov == 1.0 and itself.matched == [0, 1, 2]
    assert collapsed.cov == pytest.approx(1 / 3) and collapsed.matched == [0, 0, 0]
    # the same shape differs only by sampling noise; different shapes by far more
    assert itself.mmd < 0.06
    assert collapsed.mmd > 3 * itself.mmd
    off_diagonal = itself.distances[~np.eye(3, dtype=bool)]
    assert off_diagonal.min() > 3 * np.diag(itself.distances).max()


def test_a_scaled_shape_is_farther_the_more_it_is_scaled():
    sphere_v, faces = SHAPES["sphere"]
    sets = sample_point_sets([(sphere_v * s, faces) for s in (1.0, 0.9, 0.6)], points=2048)
    d = chamfer_matrix(sets[1:], sets[:1])[:, 0]
    assert 0.05 < d[0] < d[1]  # 0.1·0.4 per side ≈ 0.08; 0.4·0.4 ≈ 0.32


def test_an_empty_generated_mesh_is_as_far_as_possible():
    empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
    scores = shape_set_scores([empty, SHAPES["box"]], [SHAPES["box"], SHAPES["torus"]], points=256)
    assert scores.distances[0].tolist() == [2 * EMPTY_DISTANCE] * 2
    assert scores.matched[1] == 0


def _images(colour: float, count: int, seed: int) -> torch.Tensor:  # [N, 3, 16, 16]: a square on white
    g = torch.Generator().manual_seed(seed)
    images = torch.ones(count, 3, 16, 16)
    for i in range(count):
        x, y = torch.randint(0, 8, (2,), generator=g).tolist()
        images[i, :, y : y + 8, x : x + 8] = colour + 0.05 * torch.rand(3, 1, 1, generator=g)
    return images


@pytest.mark.parametrize("labelled", [True, False])
def test_fid_and_kid_separate_other_images_from_the_same_kind(labelled):
    cfg = AttributeClassifierConfig(image_size=16, width=4, levels=1, feature_dim=8, steps=8, batch_size=16)
    dark, light = _images(0.1, 48, 0), _images(0.7, 48, 1)
    train = torch.cat([dark, light])
    labels = ["dark"] * 48 + ["light"] * 48 if labelled else None
    judge = view_classifier(train, labels, cfg=cfg)
    same = image_distances(_images(0.1, 48, 2), _images(0.1, 48, 3), judge.embed)
    other = image_distances(_images(0.1, 48, 2), _images(0.7, 48, 4), judge.embed)
    assert other["fid"] > 5 * same["fid"] + 1e-6
    assert other["kid"] > same["kid"] + 1e-4
