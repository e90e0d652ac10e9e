"""Mesh reconstruction metrics: Chamfer distance and normal consistency on sampled surface points.

Both meshes are sampled uniformly by area (`sample_surface`: a point per draw, the face chosen
with probability proportional to its area, uniform barycentrics inside it, each point carrying
its face's unit normal), from a `torch.Generator` so a score is a function of its seed. Then,
with `d(p, Q)` the Euclidean distance from p to the nearest sample of Q and `n(p, Q)` that
sample's normal:

- ``accuracy = mean_{p in P} d(p, Q)`` (prediction -> truth), ``completeness = mean_{q in Q} d(q, P)``;
- ``chamfer = accuracy + completeness`` (the symmetric Chamfer distance on distances, not
  squared: in world units, so 0.01 is 1 % of the [-0.5, 0.5]³ box);
- ``normal_consistency = (mean_p |n_p · n(p, Q)| + mean_q |n_q · n(q, P)|) / 2`` in [0, 1]
  (Occupancy Networks' definition: absolute, so the winding of either mesh does not matter).

Nearest neighbours come from `scipy.spatial.cKDTree` (exact, O(N log N)). trimesh's
`sample_surface` is not used because its sampler draws from numpy's global state; the few
lines here take a generator instead. An empty mesh scores `EMPTY_DISTANCE` (the diagonal of the
unit box) and consistency 0, so an untrained model that extracts nothing still has a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

__all__ = ["EMPTY_DISTANCE", "MeshScores", "mesh_scores", "sample_surface"]

#: distance reported for a mesh without faces: the diagonal of the [-0.5, 0.5]³ box
EMPTY_DISTANCE = math.sqrt(3.0)


@dataclass
class MeshScores:
    chamfer: float
    accuracy: float
    completeness: float
    normal_consistency: float

    def to_dict(self) -> dict[str, float]:
        return {
            "chamfer": self.chamfer,
            "accuracy": self.accuracy,
            "completeness": self.completeness,
            "normal_consistency": self.normal_consistency,
        }


def sample_surface(
    vertices: Tensor,  # [V, 3]
    faces: Tensor,  # [F, 3] int
    count: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:  # points [count, 3], unit face normals [count, 3] (float64)
    """Points uniform by area on a triangle mesh, with their faces' normals (zero-area faces never drawn)."""
    v = vertices.detach().double().cpu()
    f = faces.detach().long().cpu()
    tri = v[f]  # [F, 3, 3]
    cross = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=1)
    area = cross.norm(dim=1)
    if len(f) == 0 or float(area.sum()) <= 0:
        raise ValueError("sample_surface: the mesh has no face of positive area")
    chosen = torch.multinomial(area / area.sum(), count, replacement=True, generator=generator)
    r = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    flip = r.sum(1) > 1  # fold the unit square onto the triangle
    r[flip] = 1 - r[flip]
    t = tri[chosen]
    points = t[:, 0] + r[:, :1] * (t[:, 1] - t[:, 0]) + r[:, 1:] * (t[:, 2] - t[:, 0])
    normals = cross[chosen] / area[chosen, None]
    return points, normals


def _nearest(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    distance, index = cKDTree(target).query(source, k=1)
    return distance, index


def mesh_scores(
    pred_vertices: Tensor,
    pred_faces: Tensor,
    true_vertices: Tensor,
    true_faces: Tensor,
    *,
    points: int = 10000,
    seed: int = 0,
) -> MeshScores:
    """Chamfer distance and normal consistency of a predicted mesh against the true one (module docstring)."""
    if points < 1:
        raise ValueError(f"mesh_scores: points must be >= 1, got {points}")
    generator = torch.Generator().manual_seed(seed)
    q, nq = sample_surface(true_vertices, true_faces, points, generator)
    try:
        p, np_ = sample_surface(pred_vertices, pred_faces, points, generator)
    except ValueError:  # nothing extracted
        return MeshScores(2 * EMPTY_DISTANCE, EMPTY_DISTANCE, EMPTY_DISTANCE, 0.0)
    p_np, q_np = p.numpy(), q.numpy()
    d_pq, i_pq = _nearest(p_np, q_np)
    d_qp, i_qp = _nearest(q_np, p_np)
    nc_p = np.abs((np_.numpy() * nq.numpy()[i_pq]).sum(1)).mean()
    nc_q = np.abs((nq.numpy() * np_.numpy()[i_qp]).sum(1)).mean()
    accuracy, completeness = float(d_pq.mean()), float(d_qp.mean())
    return MeshScores(accuracy + completeness, accuracy, completeness, float((nc_p + nc_q) / 2))
