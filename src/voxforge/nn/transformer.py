"""Transformer building blocks shared by the image encoder, the dense structure DiT
(stage 1) and the sparse latent DiT (stage 2).

Every block accepts tokens in one of two layouts:
- dense `x: [B, L, C]` (all sequences the same length), or
- packed `x: [N, C]` plus a `VarLen` layout (sequences of different lengths concatenated,
  e.g. the occupied voxels of each asset). Attention then stays inside each sequence and
  per-sample conditioning (`cond: [B, C]`) is gathered to the tokens by `batch_index`.

`DiTBlock` follows DiT/TRELLIS: pre-norm self-attention and MLP whose LayerNorms have no
gain of their own and are modulated by shift/scale/gate computed from the timestep
embedding (adaLN). The modulation layer starts at zero ("adaLN-zero"): every residual
branch starts closed, the block is the identity at initialisation, which keeps deep stacks
stable from the first step. Cross-attention to the condition tokens sits between the two
with an ordinary affine LayerNorm and an ungated residual, as in TRELLIS.

qk-norm is on for both attentions by default; `cross_qk_norm=False` keeps it on the
self-attention only, which is TRELLIS's released configuration (`qk_rms_norm` true,
`qk_rms_norm_cross` false). The 6-way adaLN split is (shift, scale, gate) for the attention
then for the MLP, TRELLIS's order, so its `adaLN_modulation` weights load unchanged.
"""

from __future__ import annotations

from torch import Tensor, nn

from voxforge.nn.attention import VarLen, attention, key_padding_mask, varlen_attention
from voxforge.nn.norms import LayerNorm32, MultiHeadRMSNorm
from voxforge.nn.rope import RopeFreqs, apply_rope

__all__ = ["DiTBlock", "MLP", "CrossAttention", "SelfAttention", "TransformerBlock", "modulate"]


def _split_heads(x: Tensor, heads: int) -> Tensor:  # [..., C] -> [..., H, C/H]
    return x.unflatten(-1, (heads, -1))


def _qk_norms(head_dim: int, heads: int, on: bool, kind: str) -> tuple[nn.Module, nn.Module]:
    if not on:
        return nn.Identity(), nn.Identity()
    return MultiHeadRMSNorm(head_dim, heads, kind=kind), MultiHeadRMSNorm(head_dim, heads, kind=kind)


def _check_heads(dim: int, heads: int) -> int:
    if dim % heads:
        raise ValueError(f"width {dim} is not divisible by {heads} heads")
    return dim // heads


class SelfAttention(nn.Module):
    """Multi-head self-attention with optional qk RMSNorm and rotary positions."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        qk_norm: bool = False,
        qk_norm_kind: str = "rms",
        bias: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        self.heads, self.backend = heads, backend
        head_dim = _check_heads(dim, heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.q_norm, self.k_norm = _qk_norms(head_dim, heads, qk_norm, qk_norm_kind)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: Tensor,  # [B, L, C] or packed [N, C]
        *,
        rope: RopeFreqs | None = None,  # cos/sin [L, D/2] (or [B, L, D/2]); packed: [N, D/2]
        layout: VarLen | None = None,  # packed sequences
        mask: Tensor | None = None,  # dense only: broadcastable to [B, H, L, L], True = attend
    ) -> Tensor:  # same shape as x
        q, k, v = _split_heads(self.qkv(x), 3 * self.heads).chunk(3, dim=-2)  # [..., H, D] each
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        if layout is not None:
            out = varlen_attention(q, k, v, layout, layout, backend=self.backend)
        else:
            out = attention(q, k, v, backend=self.backend, mask=mask)
        return self.proj(out.flatten(-2))


class CrossAttention(nn.Module):
    """Multi-head attention of tokens to a dense context (e.g. image tokens)."""

    def __init__(
        self,
        dim: int,
        context_dim: int,
        heads: int,
        *,
        qk_norm: bool = False,
        qk_norm_kind: str = "rms",
        bias: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        self.heads, self.backend = heads, backend
        head_dim = _check_heads(dim, heads)
        self.q = nn.Linear(dim, dim, bias=bias)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=bias)
        self.q_norm, self.k_norm = _qk_norms(head_dim, heads, qk_norm, qk_norm_kind)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: Tensor,  # [B, L, C] or packed [N, C]
        context: Tensor,  # [B, T, Cc]
        *,
        layout: VarLen | None = None,  # packed queries
        context_mask: Tensor | None = None,  # [B, T] bool, True = a real context token
    ) -> Tensor:  # same shape as x
        q = self.q_norm(_split_heads(self.q(x), self.heads))
        k, v = _split_heads(self.kv(context), 2 * self.heads).chunk(2, dim=-2)  # [B, T, H, D]
        k = self.k_norm(k)
        if layout is None:
            mask = key_padding_mask(context_mask) if context_mask is not None else None
            out = attention(q, k, v, backend=self.backend, mask=mask)
        else:
            batch, tokens = context.shape[:2]
            if context_mask is None:
                kv_layout = VarLen.uniform(batch, tokens, device=context.device)
                k, v = k.flatten(0, 1), v.flatten(0, 1)
            else:
                kv_layout = VarLen.from_seqlens(context_mask.sum(1), device=context.device)
                k, v = k[context_mask], v[context_mask]
            out = varlen_attention(q, k, v, layout, kv_layout, backend=self.backend)
        return self.proj(out.flatten(-2))


class MLP(nn.Module):
    """Linear -> GELU (tanh approximation) -> Linear."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:  # [..., dim] -> [..., out_dim]
        return self.fc2(self.act(self.fc1(x)))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:  # x: [..., C]; shift, scale broadcastable
    return x * (1 + scale) + shift


def _per_token(values: Tensor, x: Tensor, layout: VarLen | None) -> Tensor:
    """Per-sample vectors [B, K] broadcast to the tokens of x ([B, 1, K] dense, [N, K] packed)."""
    if layout is not None:
        return values[layout.batch_index]
    return values[:, None, :] if x.ndim == 3 else values


class TransformerBlock(nn.Module):
    """Pre-norm self-attention + MLP block (no conditioning), e.g. for a ViT encoder."""

    def __init__(
        self, dim: int, heads: int, *, mlp_ratio: float = 4.0, qk_norm: bool = False, backend: str = "auto"
    ):
        super().__init__()
        self.norm1 = LayerNorm32(dim, eps=1e-6)
        self.attn = SelfAttention(dim, heads, qk_norm=qk_norm, backend=backend)
        self.norm2 = LayerNorm32(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: Tensor,
        *,
        rope: RopeFreqs | None = None,
        layout: VarLen | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:  # x: [B, L, C] or packed [N, C]
        x = x + self.attn(self.norm1(x), rope=rope, layout=layout, mask=mask)
        return x + self.mlp(self.norm2(x))


class DiTBlock(nn.Module):
    """adaLN-zero modulated self-attention, cross-attention (optional) and MLP."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        context_dim: int | None = None,
        mlp_ratio: float = 4.0,
        qk_norm: bool = True,
        cross_qk_norm: bool | None = None,  # None: as qk_norm; TRELLIS: False
        qk_norm_kind: str = "rms",
        backend: str = "auto",
    ):
        super().__init__()
        cross_qk_norm = qk_norm if cross_qk_norm is None else cross_qk_norm
        self.norm1 = LayerNorm32(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads, qk_norm=qk_norm, qk_norm_kind=qk_norm_kind, backend=backend)
        if context_dim is not None:
            self.norm2 = LayerNorm32(dim, elementwise_affine=True, eps=1e-6)
            self.cross_attn = CrossAttention(
                dim, context_dim, heads, qk_norm=cross_qk_norm, qk_norm_kind=qk_norm_kind, backend=backend
            )
        else:
            self.norm2 = self.cross_attn = None
        self.norm3 = LayerNorm32(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)

    def forward(
        self,
        x: Tensor,  # [B, L, C] or packed [N, C]
        cond: Tensor,  # [B, C] timestep (and other global) embedding
        context: Tensor | None = None,  # [B, T, Cc] tokens to cross-attend to
        *,
        rope: RopeFreqs | None = None,
        layout: VarLen | None = None,
        context_mask: Tensor | None = None,  # [B, T] bool
    ) -> Tensor:  # same shape as x
        mod = _per_token(self.modulation(cond), x, layout)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=-1)
        h = modulate(self.norm1(x), shift_a, scale_a)
        x = x + gate_a * self.attn(h, rope=rope, layout=layout)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block cross-attends: pass the context tokens")
            x = x + self.cross_attn(self.norm2(x), context, layout=layout, context_mask=context_mask)
        h = modulate(self.norm3(x), shift_m, scale_m)
        return x + gate_m * self.mlp(h)
