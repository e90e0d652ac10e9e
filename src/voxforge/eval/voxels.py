"""Metrics of generated structures: IoU of occupied voxels, plain and yaw-aligned.

Structures are `coords [N, 3]` of occupied voxels on the DESIGN grid (or the dense bool grids
`coords_to_grid` makes of them). Synthetic and most real assets have an arbitrary yaw that no
single view reveals, so a generated structure that is right up to a turn about +Y scores low
on the plain IoU; `yaw_aligned_iou` takes the best IoU over rotations about the grid's +Y
axis (15° steps by default) and their mirror images, and is reported next to the plain one.
"""

from __future__ import annotations

import math

import numpy as np

from voxforge.representations.voxels import coords_to_grid

__all__ = ["voxel_iou", "yaw_aligned_iou"]


def voxel_iou(pred: np.ndarray, true: np.ndarray) -> float:  # bool grids [R, R, R] each
    """|pred ∧ true| / |pred ∨ true|; 1 when both are empty."""
    union = np.logical_or(pred, true).sum()
    return float(np.logical_and(pred, true).sum() / union) if union else 1.0


def yaw_aligned_iou(pred: np.ndarray, true: np.ndarray, resolution: int, step_degrees: float = 15.0) -> float:
    """Best IoU of `pred` (coords [N, 3]) rotated about the grid's +Y axis (and mirrored) vs `true`."""
    target = coords_to_grid(true, resolution)
    if len(pred) == 0:
        return voxel_iou(np.zeros_like(target), target)
    centre = (resolution - 1) / 2.0
    points = pred.astype(np.float64) - centre
    best = 0.0
    for mirror in (1.0, -1.0):
        for k in range(int(round(360.0 / step_degrees))):
            angle = math.radians(k * step_degrees)
            c, s = math.cos(angle), math.sin(angle)
            x, y, z = points[:, 0] * mirror, points[:, 1], points[:, 2]
            turned = np.stack([c * x + s * z, y, -s * x + c * z], axis=1) + centre
            idx = np.rint(turned).astype(np.int64)
            idx = idx[((idx >= 0) & (idx < resolution)).all(axis=1)]
            grid = np.zeros_like(target)
            grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
            best = max(best, voxel_iou(grid, target))
    return best
