"""TRELLIS's Z-up outputs turned into voxforge's Y-up frame, consistently for every kind."""

from __future__ import annotations

import numpy as np
import torch

from voxforge.pipelines.trellis import Z_UP_TO_Y_UP, voxels_z_up_to_y_up, z_up_to_y_up
from voxforge.representations.gaussians import Gaussians


def _covariances(g: Gaussians) -> torch.Tensor:  # [N, 3, 3]
    w, x, y, z = g.rotations.unbind(-1)
    rot = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )
    return rot @ torch.diag_embed(g.scales**2) @ rot.transpose(1, 2)


def test_up_axis_becomes_y_and_covariances_rotate():
    torch.manual_seed(0)
    n = 64
    g = Gaussians(
        means=torch.rand(n, 3) - 0.5,
        log_scales=torch.randn(n, 3) * 0.3 - 3,
        quats=torch.randn(n, 4),
        opacity_logits=torch.randn(n),
        sh_dc=torch.randn(n, 3),
    )
    out = z_up_to_y_up(g)
    top = torch.argmax(g.means[:, 2])  # highest point in TRELLIS's frame (z up) ...
    assert torch.argmax(out.means[:, 1]) == top  # ... is the highest in voxforge's (y up)
    rot = Z_UP_TO_Y_UP
    assert torch.allclose(out.means, g.means @ rot.T)
    assert torch.allclose(_covariances(out), rot @ _covariances(g) @ rot.T, atol=1e-6)
    assert torch.equal(out.sh_dc, g.sh_dc) and torch.equal(out.opacity_logits, g.opacity_logits)
    assert np.isclose(np.linalg.det(rot.numpy()), 1.0)  # a rotation: no mirrored assets


def test_voxels_follow_the_same_rotation():
    resolution = 8
    ijk = np.stack(np.meshgrid(*[np.arange(resolution)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = (ijk + 0.5) / resolution - 0.5
    moved = voxels_z_up_to_y_up(ijk, resolution)
    assert np.allclose((moved + 0.5) / resolution - 0.5, centres @ Z_UP_TO_Y_UP.numpy().T)
    assert moved.min() == 0 and moved.max() == resolution - 1
