"""Point-wise layers on `SparseTensor`s: linear, norms, activations.

Everything here acts on `feats` and keeps the voxels (and their shared cache), so these
layers are thin wrappers over the dense ones in `torch.nn` / `voxforge.nn`.

Norms compute in fp32 with autocast off, like the dense `LayerNorm32`/`GroupNorm32`
(statistics of wide bf16 activations drift). GroupNorm is the one layer that needs the
sparse layout: its statistics are per sample and per channel group, taken over that
sample's voxels only — what `nn.GroupNorm` on the densified grid would compute if the empty
voxels were not there. Sums use `index_add_` over `batch_index` in two passes (mean, then
centred squares) rather than E[x^2] - E[x]^2, which cancels badly for large means.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from voxforge.nn.norms import LayerNorm32
from voxforge.sparse.tensor import SparseTensor

__all__ = [
    "SparseActivation",
    "SparseGELU",
    "SparseGroupNorm32",
    "SparseLayerNorm32",
    "SparseLinear",
    "SparseReLU",
    "SparseSiLU",
    "sparse_group_norm",
]


class SparseLinear(nn.Linear):
    """`nn.Linear` applied to every voxel's feature vector."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # [N, Cin] -> [N, Cout]
        return x.replace(super().forward(x.feats))


class SparseLayerNorm32(LayerNorm32):
    """LayerNorm over each voxel's channels, in fp32."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(super().forward(x.feats))


def sparse_group_norm(
    x: SparseTensor,
    num_groups: int,
    weight: Tensor | None = None,  # [C]
    bias: Tensor | None = None,  # [C]
    eps: float = 1e-5,
) -> SparseTensor:
    """GroupNorm with statistics per (sample, group) over that sample's voxels; fp32 inside."""
    n, c = x.shape
    if c % num_groups:
        raise ValueError(f"{c} channels are not divisible into {num_groups} groups")
    with torch.autocast(x.device.type, enabled=False):
        feats = x.feats.float().view(n, num_groups, c // num_groups)
        index = x.batch_index
        count = (x.seqlens.float() * (c // num_groups)).clamp(min=1.0)[:, None]  # [B, 1]
        zeros = feats.new_zeros(x.batch_size, num_groups)
        mean = zeros.index_add(0, index, feats.sum(-1)) / count  # [B, G]
        centred = feats - mean[index][..., None]
        var = zeros.index_add(0, index, centred.pow(2).sum(-1)) / count
        out = (centred * torch.rsqrt(var + eps)[index][..., None]).view(n, c)
        if weight is not None:
            out = out * weight.float()
        if bias is not None:
            out = out + bias.float()
    return x.replace(out.to(x.dtype))


class SparseGroupNorm32(nn.GroupNorm):
    """Per-sample GroupNorm on a sparse batch (see `sparse_group_norm`)."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class SparseActivation(nn.Module):
    """Wraps any element-wise module (GELU, SiLU, ...) to act on `feats`."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(self.module(x.feats))


class SparseGELU(SparseActivation):
    def __init__(self, approximate: str = "none"):
        super().__init__(nn.GELU(approximate=approximate))


class SparseSiLU(SparseActivation):
    def __init__(self):
        super().__init__(nn.SiLU())


class SparseReLU(SparseActivation):
    def __init__(self):
        super().__init__(nn.ReLU())
