"""Attention over sparse voxels: full per sample, or in (shifted) windows as TRELLIS's "swin".

Both modes reduce to packed variable-length attention (`voxforge.nn.attention.varlen_attention`,
PyTorch SDPA with padding + key masks, or flash-attn's varlen kernel on CUDA):

- full: the sequences are the samples — a `SparseTensor` is already packed by sample and
  `x.varlen` is its layout; tokens of different assets never attend to each other.
- windows: voxel (b, i, j, k) belongs to window `(b, (ijk + shift) // w)`. Sorting rows by
  the window's grid key (stable, so in-window order follows row order) packs each window's
  voxels contiguously; the windows are then the sequences. Output rows are put back in the
  tensor's order with the inverse permutation. A window holds at most w³ voxels, so the
  attention cost is O(N · w³) instead of O(N²), and the padded torch path allocates
  `[windows, max_window_len]` rather than `[B, max_sample_len]`. Shifting by w/2 in
  alternate blocks lets information cross window borders (Swin). The partition depends on
  coordinates only and is cached on the tensor.

The layers reuse the dense blocks of `voxforge.nn` (`SelfAttention`, `CrossAttention`,
`MLP`, `LayerNorm32`): every part of them except attention is per token, so running a block
on rows permuted into window order and permuting back is exactly windowed attention. Rotary
positions (optional) come from the voxel coordinates, so they survive any permutation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from voxforge.nn.attention import VarLen, varlen_attention
from voxforge.nn.norms import LayerNorm32
from voxforge.nn.rope import RopeFreqs, RotaryEmbedding
from voxforge.nn.transformer import MLP, CrossAttention, SelfAttention
from voxforge.sparse.tensor import SparseTensor, grid_keys

__all__ = [
    "SparseCrossAttention",
    "SparseSelfAttention",
    "SparseTransformerBlock",
    "WindowPartition",
    "sparse_full_attention",
    "sparse_window_attention",
    "window_partition",
]

ATTN_MODES = ("full", "swin")


@dataclass(frozen=True)
class WindowPartition:
    order: Tensor  # [N] int64: rows sorted by window
    inverse: Tensor  # [N] int64: position of each row inside `order`
    layout: VarLen  # the windows as packed sequences
    window_index: Tensor  # [N] int64: window of each row (in tensor order)


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(int(a) for a in v)  # type: ignore[return-value]


def window_partition(
    x: SparseTensor, window_size: int | tuple[int, int, int], shift: int | tuple[int, int, int] = 0
) -> WindowPartition:
    """Group voxels into windows of `window_size` after shifting coordinates by `shift` (cached)."""
    w, s = _triple(window_size), _triple(shift)
    if min(w) < 1 or min(s) < 0:
        raise ValueError(f"window size must be positive and shift non-negative, got {w} and {s}")

    def build() -> WindowPartition:
        offset = torch.tensor(s, device=x.device)
        size = torch.tensor(w, device=x.device)
        win_ijk = (x.coords[:, 1:].long() + offset) // size
        win_shape = tuple(-(-(dim + sh) // ws) for dim, sh, ws in zip(x.spatial_shape, s, w))
        keys = grid_keys(x.batch_index, win_ijk, win_shape)
        sorted_keys, order = torch.sort(keys, stable=True)
        window_keys, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=x.device)
        window_index = torch.repeat_interleave(torch.arange(window_keys.numel(), device=x.device), counts)
        return WindowPartition(order, inverse, VarLen.from_seqlens(counts), window_index[inverse])

    return x._cached(("window_partition", w, s), build)


def sparse_full_attention(
    q: Tensor,  # [N, H, D] rows of a SparseTensor
    k: Tensor,  # [Nk, H, D]
    v: Tensor,  # [Nk, H, Dv]
    layout: VarLen,  # query samples (e.g. x.varlen)
    kv_layout: VarLen | None = None,  # key samples; default = layout (self-attention)
    *,
    backend: str = "auto",
) -> Tensor:  # [N, H, Dv]
    """Each sample's queries attend to all keys of the same sample."""
    return varlen_attention(q, k, v, layout, kv_layout or layout, backend=backend)


def sparse_window_attention(
    q: Tensor,  # [N, H, D] in the tensor's row order
    k: Tensor,  # [N, H, D]
    v: Tensor,  # [N, H, Dv]
    partition: WindowPartition,
    *,
    backend: str = "auto",
) -> Tensor:  # [N, H, Dv] in the tensor's row order
    """Each voxel attends to the voxels of its window only."""
    order = partition.order
    out = varlen_attention(q[order], k[order], v[order], partition.layout, partition.layout, backend=backend)
    return out[partition.inverse]


def _permute_rope(rope: RopeFreqs | None, order: Tensor) -> RopeFreqs | None:
    return None if rope is None else RopeFreqs(rope.cos[order], rope.sin[order])


class SparseSelfAttention(nn.Module):
    """Multi-head self-attention on a sparse batch, full per sample or in shifted windows."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        *,
        attn_mode: str = "full",
        window_size: int = 8,
        shift_window: int = 0,
        qk_norm: bool = False,
        use_rope: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if attn_mode not in ATTN_MODES:
            raise ValueError(f"attn_mode must be one of {ATTN_MODES}, got '{attn_mode}'")
        self.attn_mode, self.window_size, self.shift_window = attn_mode, window_size, shift_window
        self.attn = SelfAttention(channels, num_heads, qk_norm=qk_norm, backend=backend)
        self.rope = RotaryEmbedding(channels // num_heads) if use_rope else None

    def forward(self, x: SparseTensor) -> SparseTensor:  # [N, C] -> [N, C]
        rope = self.rope(x.coords[:, 1:]) if self.rope is not None else None
        if self.attn_mode == "full":
            return x.replace(self.attn(x.feats, rope=rope, layout=x.varlen))
        part = window_partition(x, self.window_size, self.shift_window)
        out = self.attn(x.feats[part.order], rope=_permute_rope(rope, part.order), layout=part.layout)
        return x.replace(out[part.inverse])

    def extra_repr(self) -> str:
        return f"attn_mode={self.attn_mode}, window_size={self.window_size}, shift_window={self.shift_window}"


class SparseCrossAttention(nn.Module):
    """Voxels of each sample attend to that sample's context tokens (dense `[B, T, Cc]`)."""

    def __init__(
        self,
        channels: int,
        context_channels: int,
        num_heads: int,
        *,
        qk_norm: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.attn = CrossAttention(channels, context_channels, num_heads, qk_norm=qk_norm, backend=backend)

    def forward(self, x: SparseTensor, context: Tensor, context_mask: Tensor | None = None) -> SparseTensor:
        if context.shape[0] != x.batch_size:
            raise ValueError(f"context has {context.shape[0]} samples, the sparse batch {x.batch_size}")
        return x.replace(self.attn(x.feats, context, layout=x.varlen, context_mask=context_mask))


class SparseTransformerBlock(nn.Module):
    """Pre-norm (windowed) self-attention + MLP on a sparse batch (TRELLIS's SLat encoder block)."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        attn_mode: str = "swin",
        window_size: int = 8,
        shift_window: int = 0,
        qk_norm: bool = False,
        use_rope: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = LayerNorm32(channels, eps=1e-6)
        self.attn = SparseSelfAttention(
            channels,
            num_heads,
            attn_mode=attn_mode,
            window_size=window_size,
            shift_window=shift_window,
            qk_norm=qk_norm,
            use_rope=use_rope,
            backend=backend,
        )
        self.norm2 = LayerNorm32(channels, eps=1e-6)
        self.mlp = MLP(channels, int(channels * mlp_ratio))

    def forward(self, x: SparseTensor) -> SparseTensor:
        h = x + self.attn(x.replace(self.norm1(x.feats)))
        return h.replace(h.feats + self.mlp(self.norm2(h.feats)))
