"""Sinusoidal embeddings: diffusion timesteps and absolute N-D positions.

Timesteps of a rectified flow live in [0, 1]; `TimestepEmbedder` multiplies them by
`scale` (1000 by default, as DiT/TRELLIS do) before the sinusoid so its frequencies spread
over the same range as for integer diffusion steps, then maps them with a SiLU MLP to the
model width. The sinusoid is computed in fp32 (small differences in t must stay visible
under bf16 autocast).

`sincos_position_embedding` gives fixed absolute positions for coordinates `[L, axes]`:
each axis gets an equal share of the channels (cos and sin halves), padded with zeros when
the width does not divide; it serves dense grids and sparse voxel coordinates alike.
`order="sin_cos"` puts each axis's sine half first, the layout of TRELLIS's
`AbsolutePositionEmbedder` (same frequencies, same axis blocks, same zero padding), so a
TRELLIS checkpoint's transformer sees the positions it was trained with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["TimestepEmbedder", "sincos_position_embedding", "timestep_embedding"]


def timestep_embedding(
    t: Tensor, dim: int, max_period: float = 10000.0, *, order: str = "cos_sin"
) -> Tensor:  # t: [B] -> [B, dim]
    """cat(cos(t f), sin(t f)) with frequencies f from 1 down to 1/max_period (fp32).

    `order="sin_cos"` swaps the halves: cat(sin(t f), cos(t f)).
    """
    if order not in ("cos_sin", "sin_cos"):
        raise ValueError(f"sinusoid order must be 'cos_sin' or 'sin_cos', got '{order}'")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    halves = [torch.cos(args), torch.sin(args)]
    emb = torch.cat(halves if order == "cos_sin" else halves[::-1], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> [B, width] through a sinusoid and a SiLU MLP."""

    def __init__(self, width: int, frequency_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.frequency_dim, self.scale = frequency_dim, scale
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:  # t: [B] -> [B, width]
        emb = timestep_embedding(t * self.scale, self.frequency_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


def sincos_position_embedding(
    coords: Tensor,  # [..., L, axes]
    dim: int,
    max_period: float = 10000.0,
    *,
    order: str = "cos_sin",  # per axis: "cos_sin" (voxforge) or "sin_cos" (TRELLIS)
) -> Tensor:  # [..., L, dim] fp32
    axes = coords.shape[-1]
    per_axis = dim // axes // 2 * 2
    if per_axis == 0:
        raise ValueError(f"width {dim} is too small for a {axes}-D position embedding")
    parts = [
        timestep_embedding(coords[..., a].reshape(-1), per_axis, max_period, order=order) for a in range(axes)
    ]
    emb = torch.cat(parts, dim=-1).reshape(*coords.shape[:-1], axes * per_axis)
    if emb.shape[-1] < dim:
        emb = torch.cat([emb, emb.new_zeros(*emb.shape[:-1], dim - emb.shape[-1])], dim=-1)
    return emb
