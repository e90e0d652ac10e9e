"""Scaled dot-product attention behind one function, dense or packed variable-length.

Layout: tokens first, heads second — `q: [B, L, H, D]` for dense batches and
`q: [N, H, D]` for packed variable-length batches (all sequences concatenated, described
by a `VarLen`). It is flash-attn's layout, and it is what a linear layer produces after a
reshape, so no transpose is needed before the fast path. The PyTorch reference transposes
to SDPA's `[B, H, L, D]` itself.

Backends (`backend="auto" | "torch" | "flash_attn"`):
- `torch`: `torch.nn.functional.scaled_dot_product_attention` — runs everywhere, is the
  reference, and on CUDA already dispatches to fused kernels.
- `flash_attn`: the flash-attn package, imported lazily; CUDA with fp16/bf16 tensors only,
  no arbitrary masks. Asking for it explicitly when it cannot run is an error that says why.
- `auto`: flash-attn when it is installed and the inputs qualify, otherwise torch.

Packed sequences (sparse voxels of different counts per asset, stage 2) go through
`varlen_attention`; its torch reference pads to the longest sequence and masks the padding,
flash-attn uses its varlen kernel on the packed tensor directly.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from voxforge.errors import MissingDependencyError, UserError

Backend = Literal["auto", "torch", "flash_attn"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "flash_attn")

__all__ = [
    "BACKENDS",
    "Backend",
    "VarLen",
    "attention",
    "flash_attn_available",
    "key_padding_mask",
    "varlen_attention",
]


class FlashAttnMissingError(MissingDependencyError):
    """flash-attn is not in an extra (it builds against the local CUDA), so the hint differs."""

    def __init__(self):
        UserError.__init__(
            self,
            "attention backend 'flash_attn' needs the optional package 'flash-attn' (CUDA only). "
            "Install it with: pip install flash-attn --no-build-isolation; or use backend 'auto' or 'torch'",
        )
        self.package, self.extra = "flash-attn", ""


@functools.cache
def _flash_attn_module():
    try:
        return importlib.import_module("flash_attn")
    except ImportError:
        return None


def flash_attn_available() -> bool:
    """True when the flash-attn package can be imported (it still needs CUDA at run time)."""
    return _flash_attn_module() is not None


def _flash_unusable_reason(q: Tensor, k: Tensor, v: Tensor, masked: bool) -> str | None:
    if not flash_attn_available():
        return "the flash-attn package is not installed"
    if not q.is_cuda:
        return f"flash-attn runs on CUDA tensors only (got {q.device.type})"
    if q.dtype not in (torch.float16, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"flash-attn needs fp16 or bf16 tensors of one dtype (got {q.dtype}, {k.dtype}, {v.dtype})"
    if q.shape[-1] % 8 or q.shape[-1] > 256:
        return f"flash-attn needs a head dimension divisible by 8 and at most 256 (got {q.shape[-1]})"
    if masked:
        return "flash-attn takes no arbitrary attention mask (use packed sequences for padding)"
    return None


def _pick_backend(backend: str, q: Tensor, k: Tensor, v: Tensor, masked: bool) -> str:
    if backend not in BACKENDS:
        raise UserError(f"attention backend '{backend}': expected one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    reason = _flash_unusable_reason(q, k, v, masked)
    if backend == "flash_attn" and reason is not None:
        if not flash_attn_available():
            raise FlashAttnMissingError()
        raise UserError(
            f"attention backend 'flash_attn' cannot run here: {reason}; use backend 'auto' or 'torch'"
        )
    return "flash_attn" if reason is None else "torch"


def _check_dense(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"attention expects [B, L, H, D] tensors, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape != v.shape[:-1] + (k.shape[-1],) or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(
            f"attention: incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )


def attention(
    q: Tensor,  # [B, Lq, H, D]
    k: Tensor,  # [B, Lk, H, D]
    v: Tensor,  # [B, Lk, H, Dv]
    *,
    backend: Backend | str = "auto",
    mask: Tensor | None = None,  # bool (True = attend) or additive float, broadcastable to [B, H, Lq, Lk]
    scale: float | None = None,
) -> Tensor:  # [B, Lq, H, Dv]
    """Multi-head attention softmax(q k^T * scale) v, scale defaulting to 1/sqrt(D)."""
    _check_dense(q, k, v)
    if _pick_backend(backend, q, k, v, mask is not None) == "flash_attn":
        return _flash_attn_module().flash_attn_func(q, k, v, softmax_scale=scale)
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, scale=scale
    )
    return out.transpose(1, 2)


def key_padding_mask(valid: Tensor) -> Tensor:  # valid: [B, Lk] bool -> [B, 1, 1, Lk]
    """A mask for `attention` that hides padded keys (True in `valid` = a real token)."""
    return valid[:, None, None, :].bool()


@dataclass(frozen=True)
class VarLen:
    """Layout of packed variable-length sequences: `seqlens[b]` tokens of sequence b, in order.

    A packed tensor `[N, ...]` holds sequence 0's tokens, then sequence 1's, and so on
    (N = sum(seqlens)). `batch_index[n]` is the sequence of token n; `cu_seqlens` are the
    offsets flash-attn's varlen kernels take.
    """

    seqlens: Tensor  # [B] int64
    cu_seqlens: Tensor  # [B + 1] int32
    batch_index: Tensor  # [N] int64
    max_len: int

    @classmethod
    def from_seqlens(cls, seqlens: Tensor | list[int], device: torch.device | str | None = None) -> VarLen:
        lens = torch.as_tensor(seqlens, dtype=torch.int64, device=device)
        if lens.ndim != 1 or lens.numel() == 0:
            raise ValueError(
                f"seqlens must be a non-empty 1-D list of lengths, got shape {tuple(lens.shape)}"
            )
        if bool((lens < 0).any()):
            raise ValueError("seqlens must be non-negative")
        cu = torch.zeros(lens.numel() + 1, dtype=torch.int32, device=lens.device)
        cu[1:] = torch.cumsum(lens, 0).to(torch.int32)
        index = torch.repeat_interleave(torch.arange(lens.numel(), device=lens.device), lens)
        return cls(lens, cu, index, int(lens.max()))

    @classmethod
    def uniform(cls, batch: int, length: int, device: torch.device | str | None = None) -> VarLen:
        return cls.from_seqlens([length] * batch, device=device)

    @property
    def batch_size(self) -> int:
        return int(self.seqlens.numel())

    @property
    def num_tokens(self) -> int:
        return int(self.batch_index.numel())

    def positions(self) -> Tensor:  # [N] index of each token inside its sequence
        starts = self.cu_seqlens[:-1].to(torch.int64)
        return torch.arange(self.num_tokens, device=self.seqlens.device) - starts[self.batch_index]

    def pad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, ...] -> (padded [B, max_len, ...], valid [B, max_len] bool)."""
        if x.shape[0] != self.num_tokens:
            raise ValueError(f"packed tensor has {x.shape[0]} tokens, the layout {self.num_tokens}")
        out = x.new_zeros((self.batch_size, self.max_len, *x.shape[1:]))
        pos = self.positions()
        out[self.batch_index, pos] = x
        valid = torch.zeros(self.batch_size, self.max_len, dtype=torch.bool, device=x.device)
        valid[self.batch_index, pos] = True
        return out, valid

    def unpad(self, x: Tensor) -> Tensor:  # x: [B, max_len, ...] -> [N, ...]
        return x[self.batch_index, self.positions()]


def varlen_attention(
    q: Tensor,  # [Nq, H, D] packed queries
    k: Tensor,  # [Nk, H, D] packed keys
    v: Tensor,  # [Nk, H, Dv]
    q_layout: VarLen,
    kv_layout: VarLen,
    *,
    backend: Backend | str = "auto",
    scale: float | None = None,
) -> Tensor:  # [Nq, H, Dv]
    """Attention of each query sequence to the key sequence of the same index only."""
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(
            f"varlen_attention expects [N, H, D] tensors, got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    if q_layout.batch_size != kv_layout.batch_size:
        raise ValueError(f"{q_layout.batch_size} query sequences but {kv_layout.batch_size} key sequences")
    if bool((kv_layout.seqlens == 0).any()):
        raise ValueError("every key sequence needs at least one token")
    if _pick_backend(backend, q, k, v, False) == "flash_attn":
        return _flash_attn_module().flash_attn_varlen_func(
            q,
            k,
            v,
            q_layout.cu_seqlens,
            kv_layout.cu_seqlens,
            q_layout.max_len,
            kv_layout.max_len,
            softmax_scale=scale,
        )
    qp, _ = q_layout.pad(q)  # [B, Lq, H, D]
    kp, valid = kv_layout.pad(k)
    vp, _ = kv_layout.pad(v)
    mask = key_padding_mask(valid) if not bool(valid.all()) else None
    out = attention(qp, kp, vp, backend="torch", mask=mask, scale=scale)
    return q_layout.unpad(out)
