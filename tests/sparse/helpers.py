"""Random sparse batches for the sparse tests."""

from __future__ import annotations

import torch

from voxforge.sparse import SparseTensor


def random_sparse(
    batch: int = 2,
    shape: tuple[int, int, int] = (6, 7, 5),
    channels: int = 4,
    density: float = 0.3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> SparseTensor:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, *shape, generator=gen) < density
    mask[:, 0, 0, 0] = True  # every sample non-empty
    dense = torch.randn(batch, channels, *shape, generator=gen, dtype=dtype)
    return SparseTensor.from_dense(dense, mask)


def gather_dense(dense: torch.Tensor, x: SparseTensor) -> torch.Tensor:  # [B, C, *S] -> [N, C] at x's voxels
    c = x.coords.long()
    return dense.permute(0, 2, 3, 4, 1)[c[:, 0], c[:, 1], c[:, 2], c[:, 3]]
