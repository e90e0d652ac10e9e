"""Rotary position embedding over integer (or real) N-D coordinates, 3-D by default.

Each attention head's D channels form D/2 rotation pairs. The pairs are divided evenly
among the axes (x, y, z); pair p of axis a turns by angle `coord[a] * theta^(-p / P)` with
P pairs per axis. Pairs left over when D/2 is not a multiple of the axis count get angle
0 (they pass through unrotated), so any even head dimension works.

Positions come from coordinates, not from token order, so one module serves a dense grid
(`grid_coords(r)` → `[r^3, 3]`) and sparse voxels (`[N, 3]` of a packed batch) alike. The
rotation runs in fp32 and is cast back to the input dtype: angles of large coordinates
lose their precision in bf16.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["RopeFreqs", "RotaryEmbedding", "apply_rope", "grid_coords"]


class RopeFreqs(NamedTuple):
    cos: Tensor  # [..., L, D/2]
    sin: Tensor  # [..., L, D/2]


def grid_coords(resolution: int, axes: int = 3, device: torch.device | str | None = None) -> Tensor:
    """Integer coordinates of a dense grid in row-major (x slowest) order: `[r^axes, axes]`."""
    ranges = [torch.arange(resolution, device=device)] * axes
    return torch.stack(torch.meshgrid(*ranges, indexing="ij"), dim=-1).reshape(-1, axes)


class RotaryEmbedding(nn.Module):
    """Computes the rotation angles of coordinates for heads of size `head_dim`."""

    def __init__(self, head_dim: int, axes: int = 3, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
        self.head_dim, self.axes, self.theta = head_dim, axes, theta
        per_axis = head_dim // 2 // axes
        if per_axis == 0:
            raise ValueError(f"head dimension {head_dim} is too small for {axes}-D rotary embedding")
        freqs = theta ** (-torch.arange(per_axis, dtype=torch.float64) / per_axis)
        self.register_buffer("freqs", freqs.float(), persistent=False)  # [P]

    def forward(self, coords: Tensor) -> RopeFreqs:  # coords: [..., L, axes]
        if coords.shape[-1] != self.axes:
            raise ValueError(f"expected coordinates with {self.axes} axes, got shape {tuple(coords.shape)}")
        angles = coords.float()[..., None] * self.freqs.to(coords.device)  # [..., L, axes, P]
        angles = angles.flatten(-2)  # [..., L, axes * P]
        missing = self.head_dim // 2 - angles.shape[-1]
        if missing:
            angles = torch.cat([angles, angles.new_zeros(*angles.shape[:-1], missing)], dim=-1)
        return RopeFreqs(torch.cos(angles), torch.sin(angles))

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, axes={self.axes}, theta={self.theta}"


def apply_rope(x: Tensor, freqs: RopeFreqs) -> Tensor:  # x: [..., L, H, D] -> [..., L, H, D]
    """Rotate consecutive channel pairs (2i, 2i+1) of every head by the token's angles."""
    cos = freqs.cos.unsqueeze(-2)  # [..., L, 1, D/2]
    sin = freqs.sin.unsqueeze(-2)
    pairs = x.float().unflatten(-1, (-1, 2))  # [..., L, H, D/2, 2]
    even, odd = pairs[..., 0], pairs[..., 1]
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)
