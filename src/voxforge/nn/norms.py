"""Normalisation layers that compute in fp32 whatever the autocast dtype.

Under bf16/fp16 autocast the mean and variance of wide activations lose precision, which
shows up as loss spikes in long runs (the reason TRELLIS and most DiT code keep "*32"
norms). Each layer casts its input to fp32, normalises, applies its gain in fp32 and casts
back to the input dtype, so the surrounding blocks keep their low-precision speed.

`MultiHeadRMSNorm` is the qk-norm of the attention blocks: an RMSNorm over the head
dimension with a separate gain per head, applied to queries and keys before the dot
product. It bounds the attention logits, the main cause of divergence at large widths.
`kind="l2"` computes it as TRELLIS does (`F.normalize(x) * sqrt(D) * gain`: the L2 norm
clamped at 1e-12 instead of an epsilon added to the mean square); the two agree to ~eps/|x|²,
which is below fp32 noise for ordinary activations but not for tiny ones, so a model loaded
from TRELLIS's weights uses "l2" to reproduce its outputs exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GroupNorm32", "LayerNorm32", "MultiHeadRMSNorm", "RMSNorm"]


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension, computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:  # [..., dim] -> [..., dim]
        out = x.float()
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            out = out * self.weight.float()
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"


class LayerNorm32(nn.LayerNorm):
    """nn.LayerNorm computed in fp32 (autocast disabled), output in the input dtype."""

    def forward(self, x: Tensor) -> Tensor:  # [..., dim]
        with torch.autocast(x.device.type, enabled=False):
            weight = self.weight.float() if self.weight is not None else None
            bias = self.bias.float() if self.bias is not None else None
            out = F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)
        return out.to(x.dtype)


class GroupNorm32(nn.GroupNorm):
    """nn.GroupNorm computed in fp32 (autocast disabled), output in the input dtype."""

    def forward(self, x: Tensor) -> Tensor:  # [B, C, *spatial]
        with torch.autocast(x.device.type, enabled=False):
            weight = self.weight.float() if self.weight is not None else None
            bias = self.bias.float() if self.bias is not None else None
            out = F.group_norm(x.float(), self.num_groups, weight, bias, self.eps)
        return out.to(x.dtype)


class MultiHeadRMSNorm(nn.Module):
    """RMSNorm over the head dimension with one gain vector per head (qk-norm).

    kind "rms": x * rsqrt(mean(x²) + eps); kind "l2": x / max(|x|₂, 1e-12) * sqrt(D) (TRELLIS).
    """

    def __init__(self, head_dim: int, heads: int, eps: float = 1e-6, kind: str = "rms"):
        super().__init__()
        if kind not in ("rms", "l2"):
            raise ValueError(f"qk-norm kind must be 'rms' or 'l2', got '{kind}'")
        self.eps, self.kind = eps, kind
        self.weight = nn.Parameter(torch.ones(heads, head_dim))

    def forward(self, x: Tensor) -> Tensor:  # [..., H, D] -> [..., H, D]
        out = x.float()
        if self.kind == "l2":
            out = F.normalize(out, dim=-1) * (out.shape[-1] ** 0.5 * self.weight.float())
        else:
            out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"heads={self.weight.shape[0]}, head_dim={self.weight.shape[1]}, kind={self.kind}"
