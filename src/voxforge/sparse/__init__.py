"""Sparse voxel tensors and the ops of a sparse network, each with a pure-PyTorch path.

- `tensor`: `SparseTensor` (coords [N, 4] = batch, i, j, k; feats [N, C]) and grid keys.
- `nn`: point-wise layers — linear, LayerNorm / per-sample GroupNorm (fp32), activations.
- `conv`: submanifold k³ convolution (torch gather-matmul-scatter; spconv on CUDA).
- `sampling`: down-/up-sampling with coordinate bookkeeping, subdivision.
- `attention`: full per-sample and shifted-window attention, transformer block.
"""

from voxforge.sparse.attention import (
    SparseCrossAttention,
    SparseSelfAttention,
    SparseTransformerBlock,
    WindowPartition,
    sparse_full_attention,
    sparse_window_attention,
    window_partition,
)
from voxforge.sparse.conv import SparseConv3d, kernel_offsets, neighbor_map, sparse_conv3d, spconv_available
from voxforge.sparse.nn import (
    SparseActivation,
    SparseGELU,
    SparseGroupNorm32,
    SparseLayerNorm32,
    SparseLinear,
    SparseReLU,
    SparseSiLU,
    sparse_group_norm,
)
from voxforge.sparse.sampling import (
    SparseDownsample,
    SparseSubdivide,
    SparseUpsample,
    sparse_downsample,
    sparse_subdivide,
    sparse_upsample,
)
from voxforge.sparse.tensor import SparseTensor, grid_keys, lookup_keys, sparse_cat

__all__ = [
    "SparseActivation",
    "SparseConv3d",
    "SparseCrossAttention",
    "SparseDownsample",
    "SparseGELU",
    "SparseGroupNorm32",
    "SparseLayerNorm32",
    "SparseLinear",
    "SparseReLU",
    "SparseSelfAttention",
    "SparseSiLU",
    "SparseSubdivide",
    "SparseTensor",
    "SparseTransformerBlock",
    "SparseUpsample",
    "WindowPartition",
    "grid_keys",
    "kernel_offsets",
    "lookup_keys",
    "neighbor_map",
    "sparse_cat",
    "sparse_conv3d",
    "sparse_downsample",
    "sparse_full_attention",
    "sparse_group_norm",
    "sparse_subdivide",
    "sparse_upsample",
    "sparse_window_attention",
    "spconv_available",
    "window_partition",
]
