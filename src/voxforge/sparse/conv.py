"""Submanifold sparse 3-D convolution (k³ kernel, outputs on the input voxels).

Semantics: on the active voxels, `sparse_conv3d(x, w, b)` equals
`F.conv3d(x.dense(), w, b, padding=dilation * (k // 2), dilation=dilation)` read back at
those voxels; empty voxels count as zeros. The weight uses `nn.Conv3d`'s layout
`[Cout, Cin, k, k, k]`, kernel index (a, b, c) reading the neighbour at offset
`((a, b, c) - k // 2) * dilation` along (i, j, k). One layout for every backend, so
checkpoints move between them.

Pure-PyTorch backend ("torch"), gather-matmul-scatter:
1. Neighbour map `[N, k³]` (row of the voxel at each offset, -1 if empty): every voxel's
   grid key is sorted once; the k³ shifted keys are found with `searchsorted` — a hash
   table without hashing, vectorised. Cached on the tensor (shared by all convs of a level).
2. For each offset, the valid (out, in) row pairs: `out[o] += feats[in] @ W_offset`
   (`index_add_`). The centre offset is the identity pairing and is a plain matmul.
3. A custom autograd Function saves only `feats` and the weight: backward regathers per
   offset instead of keeping k³ gathered copies alive, so training memory is O(N·C), not
   O(k³·N·C) as an im2col or a naive autograd graph would be.
Under autocast the matmuls run in the autocast dtype (both directions), like `nn.Conv3d`.

spconv backend ("spconv", CUDA): spconv 2.x's `SubMConv3d` with our weight permuted to its
`[Cout, k, k, k, Cin]` layout for the call; its index pairs are cached on the tensor like the
neighbour map. "auto" picks spconv when it is installed and the tensor is on CUDA.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from voxforge.errors import MissingDependencyError, UserError
from voxforge.sparse.tensor import SparseTensor, grid_keys, lookup_keys

__all__ = ["SparseConv3d", "kernel_offsets", "neighbor_map", "sparse_conv3d", "spconv_available"]

CONV_BACKENDS = ("auto", "torch", "spconv")


def kernel_offsets(kernel_size: int, dilation: int = 1, device: Any = None) -> Tensor:  # [k³, 3] int64
    """Offsets in the order of the flattened `[k, k, k]` kernel (i slowest)."""
    r = torch.arange(kernel_size, device=device) - kernel_size // 2
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)
    return grid * dilation


def neighbor_map(x: SparseTensor, kernel_size: int = 3, dilation: int = 1) -> Tensor:  # [N, k³] int64
    """Row of the neighbour at each kernel offset, -1 where that voxel is empty (cached)."""

    def build() -> Tensor:
        sorted_keys, order = x.sorted_keys()
        offsets = kernel_offsets(kernel_size, dilation, x.device)  # [K, 3]
        ijk = x.coords[:, 1:].long()[None] + offsets[:, None]  # [K, N, 3]
        shape = torch.tensor(x.spatial_shape, device=x.device)
        inside = ((ijk >= 0) & (ijk < shape)).all(-1)  # [K, N]
        batch = x.batch_index.expand(offsets.shape[0], -1)
        keys = grid_keys(batch.reshape(-1), ijk.reshape(-1, 3), x.spatial_shape).view_as(inside)
        rows = lookup_keys(sorted_keys, order, keys.reshape(-1)).view_as(inside)
        return torch.where(inside, rows, torch.full_like(rows, -1)).t().contiguous()

    return x._cached(("neighbor_map", kernel_size, dilation), build)


def _conv_pairs(x: SparseTensor, kernel_size: int, dilation: int) -> tuple[tuple[Tensor, Tensor] | None, ...]:
    """Per kernel offset: (out rows, in rows), or None for the centre (identity) offset."""

    def build() -> tuple[tuple[Tensor, Tensor] | None, ...]:
        nbr = neighbor_map(x, kernel_size, dilation)
        centre = nbr.shape[1] // 2
        pairs: list[tuple[Tensor, Tensor] | None] = []
        for k in range(nbr.shape[1]):
            if k == centre:
                pairs.append(None)
                continue
            out_rows = torch.nonzero(nbr[:, k] >= 0).squeeze(1)
            pairs.append((out_rows, nbr[out_rows, k]))
        return tuple(pairs)

    return x._cached(("conv_pairs", kernel_size, dilation), build)


class _GatherMatmulScatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, feats: Tensor, weight: Tensor, pairs: tuple) -> Tensor:
        # feats [N, Cin], weight [K, Cin, Cout] -> [N, Cout]
        out = feats.new_zeros(feats.shape[0], weight.shape[2])
        for k, pair in enumerate(pairs):
            if pair is None:
                out += feats @ weight[k]
            elif pair[0].numel():
                out.index_add_(0, pair[0], feats[pair[1]] @ weight[k])
        ctx.save_for_backward(feats, weight)
        ctx.pairs = pairs
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        feats, weight = ctx.saved_tensors
        need_feats, need_weight = ctx.needs_input_grad[:2]
        grad_feats = torch.zeros_like(feats) if need_feats else None
        grad_weight = torch.zeros_like(weight) if need_weight else None
        grad_out = grad_out.to(feats.dtype)
        for k, pair in enumerate(ctx.pairs):
            if pair is None:
                g_out, f_in = grad_out, feats
            elif pair[0].numel():
                g_out, f_in = grad_out[pair[0]], feats[pair[1]]
            else:
                continue
            if need_weight:
                grad_weight[k] = f_in.t() @ g_out
            if need_feats:
                g_in = g_out @ weight[k].t()
                if pair is None:
                    grad_feats += g_in
                else:
                    grad_feats.index_add_(0, pair[1], g_in)
        return grad_feats, grad_weight, None


# spconv publishes one wheel per CUDA release (`spconv-cu118`, ...), none for CPU, so it can
# sit in no extra: pip cannot pick the build that matches the local torch.
SPCONV_CUDA_BUILDS = ((11, 8), (12, 0), (12, 1), (12, 4), (12, 6))


def spconv_wheel(cuda_version: str | None) -> str:
    """The spconv 2.x wheel for a CUDA version such as `torch.version.cuda` ("12.4").

    The newest build not newer than that CUDA with the same major version (CUDA keeps minor
    versions compatible); `spconv-cu124` when the version is unknown or has no build.
    """
    try:
        major, minor = (int(part) for part in (cuda_version or "").split(".")[:2])
    except ValueError:
        return "spconv-cu124"
    builds = [b for b in SPCONV_CUDA_BUILDS if b[0] == major and b <= (major, minor)]
    build = max(builds) if builds else (12, 4)
    return f"spconv-cu{build[0]}{build[1]}"


class SpconvMissingError(MissingDependencyError):
    """spconv is not in an extra (one wheel per CUDA version), so the hint names the wheel."""

    def __init__(self) -> None:
        cuda = torch.version.cuda
        wheel = spconv_wheel(cuda)
        builds = ", ".join(f"cu{a}{b}" for a, b in SPCONV_CUDA_BUILDS)
        built_for = f"this torch is built for CUDA {cuda}" if cuda else "this torch has no CUDA"
        UserError.__init__(
            self,
            "sparse conv backend 'spconv' needs the optional package spconv 2.x (CUDA only), one wheel "
            f"per CUDA version ({builds}). Install the one for your CUDA: pip install {wheel}  "
            f"({built_for}); or use backend 'auto' or 'torch'",
        )
        self.package, self.extra = wheel, ""


@functools.cache
def _spconv_module() -> Any:
    try:
        return importlib.import_module("spconv.pytorch")
    except ImportError:
        return None


def spconv_available() -> bool:
    return _spconv_module() is not None


def _pick_backend(backend: str, x: SparseTensor) -> str:
    if backend not in CONV_BACKENDS:
        raise UserError(f"sparse conv backend '{backend}': expected one of {', '.join(CONV_BACKENDS)}")
    if backend == "spconv":
        if not spconv_available():
            raise SpconvMissingError()
        if x.device.type != "cuda":
            raise UserError(
                f"sparse conv backend 'spconv' needs CUDA tensors (got {x.device}); use 'auto' or 'torch'"
            )
        return "spconv"
    if backend == "auto" and spconv_available() and x.device.type == "cuda":
        return "spconv"
    return "torch"


def _compute_dtype(x: SparseTensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


@functools.lru_cache(maxsize=64)
def _spconv_layer(cin: int, cout: int, kernel_size: int, dilation: int) -> Any:
    """A weightless spconv SubMConv3d per shape (building one allocates and inits a weight)."""
    layer = _spconv_module().SubMConv3d(
        cin,
        cout,
        kernel_size,
        dilation=dilation,
        bias=False,
        indice_key=f"voxforge_subm{kernel_size}_{dilation}",
    )
    del layer.weight  # each call sets ours, so gradients reach our parameter
    layer.weight = None
    return layer


def _spconv_conv(x: SparseTensor, weight: Tensor, dilation: int, dtype: torch.dtype) -> Tensor:
    spconv = _spconv_module()
    layer = _spconv_layer(weight.shape[1], weight.shape[0], weight.shape[2], dilation)
    sp = spconv.SparseConvTensor(x.feats.to(dtype), x.coords, list(x.spatial_shape), x.batch_size)
    sp.indice_dict = x.cache.setdefault("spconv_indice_dict", {})  # index pairs shared by the level's convs
    layer.weight = weight.permute(0, 2, 3, 4, 1).contiguous().to(dtype)  # spconv's [Cout, k, k, k, Cin]
    try:
        return layer(sp).features
    finally:
        layer.weight = None


def sparse_conv3d(
    x: SparseTensor,  # [N, Cin]
    weight: Tensor,  # [Cout, Cin, k, k, k]
    bias: Tensor | None = None,  # [Cout]
    *,
    dilation: int = 1,
    backend: str = "auto",
) -> SparseTensor:  # [N, Cout] on the same voxels
    """Submanifold convolution; see the module docstring for the exact semantics."""
    if weight.ndim != 5 or weight.shape[2] != weight.shape[3] or weight.shape[2] != weight.shape[4]:
        raise ValueError(f"conv weight must be [Cout, Cin, k, k, k], got {tuple(weight.shape)}")
    if weight.shape[2] % 2 == 0:
        raise ValueError(f"submanifold conv needs an odd kernel size, got {weight.shape[2]}")
    if weight.shape[1] != x.num_channels:
        raise ValueError(f"conv expects {weight.shape[1]} input channels, the tensor has {x.num_channels}")
    dtype = _compute_dtype(x)
    if _pick_backend(backend, x) == "spconv":
        out = _spconv_conv(x, weight, dilation, dtype)
    else:
        pairs = _conv_pairs(x, weight.shape[2], dilation)
        # [K, Cin, Cout], made contiguous once: a slice w[k] of the permuted view is strided,
        # and every offset's matmul would copy it (half of a small SLat flow's forward)
        w = weight.flatten(2).permute(2, 1, 0).to(dtype).contiguous()
        with torch.autocast(x.device.type, enabled=False):
            out = _GatherMatmulScatter.apply(x.feats.to(dtype), w, pairs)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return x.replace(out)


class SparseConv3d(nn.Module):
    """Submanifold k³ convolution layer (weights and init as `nn.Conv3d`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        dilation: int = 1,
        bias: bool = True,
        backend: str = "auto",
    ):
        super().__init__()
        if backend not in CONV_BACKENDS:
            raise UserError(f"sparse conv backend '{backend}': expected one of {', '.join(CONV_BACKENDS)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.dilation, self.backend = kernel_size, dilation, backend
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, kernel_size, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv3d's default
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size**3
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_conv3d(x, self.weight, self.bias, dilation=self.dilation, backend=self.backend)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"dilation={self.dilation}, bias={self.bias is not None}, backend={self.backend}"
        )
