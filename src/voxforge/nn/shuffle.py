"""3-D pixel (un)shuffle: fold (depth or time, height, width) blocks into channels and back.

One channel order for every user: channel c·(fd·fh·fw) + (i·fh + j)·fw + k holds offset
(i, j, k) of input channel c. The sparse-structure VAE and flow patch their grids with one
factor per axis; the causal video autoencoder's shortcuts fold time and space by different
factors.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["pixel_shuffle_3d", "pixel_unshuffle_3d"]


def _factors(factor: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (factor, factor, factor) if isinstance(factor, int) else tuple(factor)


def pixel_unshuffle_3d(x: Tensor, factor: int | tuple[int, int, int]) -> Tensor:
    """[B, C, D, H, W] -> [B, C·fd·fh·fw, D/fd, H/fh, W/fw] (`factor`: one for all axes, or per axis)."""
    fd, fh, fw = _factors(factor)
    b, c, d, h, w = x.shape
    x = x.reshape(b, c, d // fd, fd, h // fh, fh, w // fw, fw).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * fd * fh * fw, d // fd, h // fh, w // fw)


def pixel_shuffle_3d(x: Tensor, factor: int | tuple[int, int, int]) -> Tensor:
    """The inverse of `pixel_unshuffle_3d`: [B, C·fd·fh·fw, D, H, W] -> [B, C, D·fd, H·fh, W·fw]."""
    fd, fh, fw = _factors(factor)
    b, c, d, h, w = x.shape
    c //= fd * fh * fw
    x = x.reshape(b, c, fd, fh, fw, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c, d * fd, h * fh, w * fw)
