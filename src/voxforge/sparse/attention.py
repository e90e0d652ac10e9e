"""Attention over sparse voxels: full per sample, or in (shifted) windows as TRELLIS's "swin".

Both modes are attention over packed variable-length sequences:

- full: the sequences are the samples — a `SparseTensor` is already packed by sample and
  `x.varlen` is its layout, so `voxforge.nn.attention.varlen_attention` runs it (SDPA with
  padding + key masks, or flash-attn's varlen kernel on CUDA); tokens of different assets
  never attend to each other.
- windows: voxel (b, i, j, k) belongs to window `(b, (ijk + shift) // w)`. Sorting rows by
  the window's grid key (stable, so in-window order follows row order) makes each window a
  contiguous sequence; the partition (order, inverse, layout) depends on coordinates only and
  is cached on the tensor. A window holds at most w³ voxels, so the cost is O(N · w³) instead
  of O(N²). flash-attn takes the permuted rows as varlen sequences directly. The torch path
  pads windows in batches of similar sizes (sorted by size, at most `max_slots` padded tokens
  per batch) gathered straight from the unpermuted rows: surface windows range from a few
  voxels to a few hundred, and padding all of them to the largest would double the memory.
  Shifting by w/2 in alternate blocks lets information cross window borders (Swin).

`SparseSelfAttention` has the parameters of `voxforge.nn.SelfAttention` (fused qkv, optional
qk RMSNorm, rotary positions from the voxel coordinates); cross-attention to image tokens and
the MLP reuse `voxforge.nn`'s blocks directly — they act per token, so a sparse batch is just
their packed layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from voxforge.errors import UserError
from voxforge.nn.attention import VarLen, attention, flash_attn_available, key_padding_mask, varlen_attention
from voxforge.nn.norms import LayerNorm32, MultiHeadRMSNorm
from voxforge.nn.rope import RotaryEmbedding, apply_rope
from voxforge.nn.transformer import MLP, CrossAttention
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
        layout = VarLen.from_seqlens(
            counts if counts.numel() else [0], device=x.device
        )  # no voxels: one empty window
        return WindowPartition(order, inverse, layout, window_index[inverse])

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


def _flash_eligible(q: Tensor) -> bool:
    return flash_attn_available() and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def sparse_window_attention(
    q: Tensor,  # [N, H, D] in the tensor's row order
    k: Tensor,  # [N, H, D]
    v: Tensor,  # [N, H, Dv]
    partition: WindowPartition,
    *,
    backend: str = "auto",
    max_slots: int = 8192,  # torch path: padded tokens per batch of windows
) -> Tensor:  # [N, H, Dv] in the tensor's row order
    """Each voxel attends to the voxels of its window only.

    flash-attn runs the packed windows through its varlen kernel. The torch path sorts
    windows by size and pads them in batches of similar sizes (at most `max_slots` padded
    tokens each), gathering straight from the unpermuted rows: padding waste stays small
    and memory bounded, where padding every window to the largest would double it.
    """
    if backend == "flash_attn" or (backend == "auto" and _flash_eligible(q)):
        order = partition.order
        out = varlen_attention(
            q[order], k[order], v[order], partition.layout, partition.layout, backend=backend
        )
        return out[partition.inverse]
    if backend not in ("auto", "torch"):
        raise UserError(f"attention backend '{backend}': expected one of auto, torch, flash_attn")
    if q.shape[0] == 0:
        return v.new_zeros(0, v.shape[1], v.shape[2])
    lens = partition.layout.seqlens
    starts = partition.layout.cu_seqlens[:-1].long()
    by_len = torch.argsort(lens, descending=True)
    sorted_lens = lens[by_len].tolist()
    rows_out, values_out = [], []
    first = 0
    while first < len(sorted_lens):
        longest = sorted_lens[first]
        windows = by_len[first : first + max(1, max_slots // longest)]
        first += windows.numel()
        pos = torch.arange(longest, device=q.device)
        valid = pos[None] < lens[windows, None]  # [W, L]
        rows = partition.order[torch.where(valid, starts[windows, None] + pos[None], 0)]  # [W, L]
        mask = None if bool(valid.all()) else key_padding_mask(valid)
        out = attention(q[rows], k[rows], v[rows], backend="torch", mask=mask)  # [W, L, H, Dv]
        rows_out.append(rows[valid])
        values_out.append(out[valid])
    result = v.new_zeros(q.shape[0], v.shape[1], v.shape[2])
    return result.index_copy(0, torch.cat(rows_out), torch.cat(values_out))


class SparseSelfAttention(nn.Module):
    """Multi-head self-attention on a sparse batch, full per sample or in shifted windows.

    Same parameters as `voxforge.nn.SelfAttention` (fused qkv, optional per-head qk RMSNorm,
    output projection); rotary positions, when on, come from the voxel coordinates.
    """

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
        qkv_bias: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        if attn_mode not in ATTN_MODES:
            raise ValueError(f"attn_mode must be one of {ATTN_MODES}, got '{attn_mode}'")
        if channels % num_heads:
            raise ValueError(f"width {channels} is not divisible by {num_heads} heads")
        head_dim = channels // num_heads
        self.num_heads, self.backend = num_heads, backend
        self.attn_mode, self.window_size, self.shift_window = attn_mode, window_size, shift_window
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.q_norm = MultiHeadRMSNorm(head_dim, num_heads) if qk_norm else nn.Identity()
        self.k_norm = MultiHeadRMSNorm(head_dim, num_heads) if qk_norm else nn.Identity()
        self.proj = nn.Linear(channels, channels)
        self.rope = RotaryEmbedding(head_dim) if use_rope else None

    def forward(self, x: SparseTensor) -> SparseTensor:  # [N, C] -> [N, C]
        q, k, v = self.qkv(x.feats).unflatten(-1, (3 * self.num_heads, -1)).chunk(3, dim=-2)  # [N, H, D]
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            freqs = self.rope(x.coords[:, 1:])
            q, k = apply_rope(q, freqs), apply_rope(k, freqs)
        if self.attn_mode == "full":
            out = sparse_full_attention(q, k, v, x.varlen, backend=self.backend)
        else:
            part = window_partition(x, self.window_size, self.shift_window)
            out = sparse_window_attention(q, k, v, part, backend=self.backend)
        return x.replace(self.proj(out.flatten(-2)))

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
    """Pre-norm (windowed) self-attention + MLP on a sparse batch (TRELLIS's SLat encoder block).

    `norm_affine=False` drops the gain and bias of both LayerNorms, as TRELLIS's
    `SparseTransformerBlock` does (`ln_affine=False`): its checkpoints carry no norm
    parameters, and an affine norm initialised to (1, 0) computes the same thing, so the
    option only decides which parameters exist (and are trained).
    """

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
        norm_affine: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = LayerNorm32(channels, eps=1e-6, elementwise_affine=norm_affine)
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
        self.norm2 = LayerNorm32(channels, eps=1e-6, elementwise_affine=norm_affine)
        self.mlp = MLP(channels, int(channels * mlp_ratio))

    def forward(self, x: SparseTensor) -> SparseTensor:  # [N, C] -> [N, C]
        h = x + self.attn(x.replace(self.norm1(x.feats)))
        return h.replace(h.feats + self.mlp(self.norm2(h.feats)))
