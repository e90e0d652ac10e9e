"""2× (or f×) down- and up-sampling of sparse voxels with coordinate bookkeeping.

- `sparse_downsample(x, f, pool)`: a coarse voxel exists where any of its f³ children is
  active (`coords // f`, made unique per sample); its features are the mean or max of those
  children, or with `pool="mean_incl_zero"` their sum / (count + 1) — what TRELLIS's
  SparseDownsample computes (a `scatter_reduce` mean over a zero-initialised tensor with
  `include_self=True`, so the initial zero counts as a child), needed to reproduce its
  checkpoints. The coarse tensor remembers the fine level — its coords, the child→parent map
  and the fine cache — under `cache[("fine", f)]`. The coarse coordinates, the map and the
  coarse cache are memoised on the fine tensor's cache: every later down-sampling of the same
  voxels (the next layer, the next sampling step of a flow) reuses them, and with them the
  coarse level's neighbour maps, instead of re-running the unique.
- `sparse_upsample(x, f)`: the inverse bookkeeping. With that memo, it restores exactly the
  fine voxels, in their original row order, each taking its parent's features. The fine cache
  comes back too, so the neighbour maps of the fine level are not rebuilt, and a U-Net skip
  connection is a plain `sparse_upsample(h) + skip` (same rows). Given `target=` (a fine
  tensor, e.g. the skip) it maps parent features onto the target's voxels, memo or not.
- `sparse_subdivide(x, f)`: every voxel becomes its f³ children (no memo needed) — for
  decoders that grow resolution, as TRELLIS's "SparseSubdivide".

Unique coarse coordinates come from `torch.unique` over int64 grid keys: the keys order by
(batch, i, j, k), so the coarse tensor is grouped by batch as `SparseTensor` requires. Pooling
sums in fp32 (`index_add_`) so bf16 inputs do not lose the mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from voxforge.sparse.tensor import SparseTensor, grid_keys, lookup_keys

__all__ = [
    "SparseDownsample",
    "SparseSubdivide",
    "SparseUpsample",
    "sparse_downsample",
    "sparse_subdivide",
    "sparse_upsample",
]


@dataclass(frozen=True)
class _FineLevel:
    coords: Tensor  # [N_fine, 4]
    parent: Tensor  # [N_fine] int64 coarse row of each fine voxel
    spatial_shape: tuple[int, int, int]
    cache: dict[Any, Any]


def _decode_keys(keys: Tensor, shape: tuple[int, int, int]) -> Tensor:  # [M] int64 -> [M, 4] int32
    s0, s1, s2 = shape
    k = keys % s2
    rest = keys // s2
    j = rest % s1
    rest = rest // s1
    i = rest % s0
    b = rest // s0
    return torch.stack([b, i, j, k], dim=1).to(torch.int32)


POOLS = ("mean", "max", "mean_incl_zero")


@dataclass(frozen=True)
class _CoarseLevel:
    coords: Tensor  # [M, 4] int32
    parent: Tensor  # [N_fine] int64
    counts: Tensor  # [M] int64 children per parent
    spatial_shape: tuple[int, int, int]
    cache: dict[Any, Any]  # shared by every coarse tensor of these voxels


def _coarse_level(x: SparseTensor, factor: int) -> _CoarseLevel:
    def build() -> _CoarseLevel:
        shape = tuple(-(-s // factor) for s in x.spatial_shape)
        keys = grid_keys(x.batch_index, x.coords[:, 1:].long() // factor, shape)
        unique_keys, parent = torch.unique(keys, return_inverse=True)
        counts = torch.bincount(parent, minlength=unique_keys.numel())
        cache: dict[Any, Any] = {("fine", factor): _FineLevel(x.coords, parent, x.spatial_shape, x.cache)}
        return _CoarseLevel(_decode_keys(unique_keys, shape), parent, counts, shape, cache)

    return x._cached(("coarse", factor), build)


def sparse_downsample(x: SparseTensor, factor: int = 2, pool: str = "mean") -> SparseTensor:
    """Pool children into parents (`coords // factor`); see the module docstring."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {', '.join(POOLS)}, got '{pool}'")
    level = _coarse_level(x, factor)
    m, c = level.coords.shape[0], x.num_channels
    feats = x.feats.float()
    if pool == "max":
        pooled = feats.new_zeros(m, c).scatter_reduce(
            0, level.parent[:, None].expand(-1, c), feats, reduce="amax", include_self=False
        )
    else:
        sums = feats.new_zeros(m, c).index_add_(0, level.parent, feats)
        counts = level.counts + 1 if pool == "mean_incl_zero" else level.counts.clamp(min=1)
        pooled = sums / counts[:, None]
    return SparseTensor(
        level.coords,
        pooled.to(x.dtype),
        spatial_shape=level.spatial_shape,
        batch_size=x.batch_size,
        check=False,
        cache=level.cache,
    )


def sparse_upsample(x: SparseTensor, factor: int = 2, target: SparseTensor | None = None) -> SparseTensor:
    """Parent features onto the fine voxels remembered by `sparse_downsample` (or `target`'s)."""
    fine: _FineLevel | None = x.cache.get(("fine", factor))
    if target is None:
        if fine is None:
            raise ValueError(
                f"sparse_upsample: this tensor was not made by sparse_downsample(factor={factor}); "
                "pass target= (the fine tensor) or use sparse_subdivide"
            )
        return SparseTensor(
            fine.coords,
            x.feats[fine.parent],
            spatial_shape=fine.spatial_shape,
            batch_size=x.batch_size,
            check=False,
            cache=fine.cache,
        )
    if fine is not None and target.coords is fine.coords:
        return target.replace(x.feats[fine.parent])
    parent_ijk = target.coords[:, 1:].long() // factor
    shape = torch.tensor(x.spatial_shape, device=x.device)
    rows = lookup_keys(*x.sorted_keys(), grid_keys(target.batch_index, parent_ijk, x.spatial_shape))
    missing = (rows < 0) | (parent_ijk >= shape).any(1)
    if bool(missing.any()):
        raise ValueError(
            f"sparse_upsample: {int(missing.sum())} target voxels have no parent in the coarse tensor "
            f"(factor {factor})"
        )
    return target.replace(x.feats[rows])


def sparse_subdivide(x: SparseTensor, factor: int = 2) -> SparseTensor:
    """Each voxel becomes its factor³ children carrying its features (rows stay batch-grouped)."""
    r = torch.arange(factor, device=x.device)
    children = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), dim=-1).reshape(-1, 3)  # [f³, 3]
    ijk = x.coords[:, None, 1:].long() * factor + children  # [N, f³, 3]
    batch = x.batch_index[:, None].expand(-1, children.shape[0])
    coords = torch.cat([batch[..., None], ijk], dim=-1).reshape(-1, 4).to(torch.int32)
    feats = x.feats.repeat_interleave(children.shape[0], dim=0)
    shape = tuple(s * factor for s in x.spatial_shape)
    return SparseTensor(coords, feats, spatial_shape=shape, batch_size=x.batch_size, check=False)


class SparseDownsample(nn.Module):
    def __init__(self, factor: int = 2, pool: str = "mean"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got '{pool}'")
        self.factor, self.pool = factor, pool

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_downsample(x, self.factor, self.pool)


class SparseUpsample(nn.Module):
    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor, target: SparseTensor | None = None) -> SparseTensor:
        return sparse_upsample(x, self.factor, target)


class SparseSubdivide(nn.Module):
    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_subdivide(x, self.factor)
