"""`SparseTensor`: features on the occupied voxels of a batch of grids.

Layout (the DESIGN.md contract):
- `coords: [N, 4]` int32 rows `(batch, i, j, k)`, `0 <= i < spatial_shape[0]` and so on;
- `feats: [N, C]` any float dtype; row n of `feats` belongs to row n of `coords`.

Rows are grouped by sample: the batch column never decreases, so sample b's voxels are the
contiguous slice `batch_offsets[b]:batch_offsets[b + 1]`. That one invariant makes a sparse
batch a packed variable-length sequence (`varlen`, the `VarLen` of `voxforge.nn.attention`),
so the dense transformer blocks of `voxforge.nn` run on it unchanged, and lets per-sample
reductions (GroupNorm statistics, pooling) use offsets instead of sorting. Build from
unordered rows with `SparseTensor.from_unsorted`.

Derived structures that depend only on the coordinates — convolution neighbour maps,
window partitions, the coarse-to-fine mapping left by down-sampling — are memoised in
`cache`, a dict shared by every tensor made with `replace(feats)`. A network computes each
of them once per resolution level per forward, however many layers use it. Moving to
another device drops the cache (its index tensors live on the old device).

Grid keys: `grid_keys(batch, ijk, shape)` packs (b, i, j, k) into one int64 in row-major
order. Sorting keys orders voxels by batch then position, and `searchsorted` on sorted keys
is the hash-free "hash table" every pure-PyTorch lookup here uses (conv neighbours,
up-sampling parents).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from voxforge.nn.attention import VarLen

__all__ = ["SparseTensor", "grid_keys", "lookup_keys", "sparse_cat"]


def grid_keys(
    batch: Tensor,  # [N] integer
    ijk: Tensor,  # [N, 3] integer, inside `shape`
    shape: Sequence[int],  # (S0, S1, S2)
) -> Tensor:  # [N] int64
    """Row-major int64 key of (batch, i, j, k); order of keys = order by batch, i, j, k."""
    s0, s1, s2 = (int(s) for s in shape)
    ijk = ijk.long()
    return ((batch.long() * s0 + ijk[:, 0]) * s1 + ijk[:, 1]) * s2 + ijk[:, 2]


def lookup_keys(
    sorted_keys: Tensor,  # [M] int64 ascending
    order: Tensor,  # [M] int64: sorted position -> original row
    queries: Tensor,  # [Q] int64
) -> Tensor:  # [Q] int64 row of each query, -1 when absent
    """Find each query key among `sorted_keys`; the searchsorted stand-in for a hash table."""
    if sorted_keys.numel() == 0:
        return torch.full_like(queries, -1)
    pos = torch.searchsorted(sorted_keys, queries).clamp_(max=sorted_keys.numel() - 1)
    found = sorted_keys[pos] == queries
    return torch.where(found, order[pos], torch.full_like(pos, -1))


class SparseTensor:
    """A batch of sparse voxel grids with features; see the module docstring for the layout."""

    __slots__ = ("coords", "feats", "spatial_shape", "batch_size", "cache")

    def __init__(
        self,
        coords: Tensor,  # [N, 4] (batch, i, j, k), batch column non-decreasing
        feats: Tensor,  # [N, C]
        *,
        spatial_shape: Sequence[int] | None = None,  # (S0, S1, S2); default max coordinate + 1
        batch_size: int | None = None,  # default max batch index + 1
        check: bool = True,
        cache: dict[Any, Any] | None = None,
    ):
        if coords.ndim != 2 or coords.shape[1] != 4:
            raise ValueError(
                f"SparseTensor coords must be [N, 4] (batch, i, j, k), got {tuple(coords.shape)}"
            )
        if feats.ndim != 2 or feats.shape[0] != coords.shape[0]:
            raise ValueError(
                f"SparseTensor feats must be [N, C] with N = {coords.shape[0]} rows, got {tuple(feats.shape)}"
            )
        if coords.dtype.is_floating_point or coords.dtype == torch.bool:
            raise ValueError(f"SparseTensor coords must be integers, got {coords.dtype}")
        if coords.device != feats.device:
            raise ValueError(f"coords on {coords.device} but feats on {feats.device}")
        coords = coords.to(torch.int32)
        n = coords.shape[0]
        if spatial_shape is None:
            spatial_shape = (coords[:, 1:].amax(0) + 1).tolist() if n else (1, 1, 1)
        if batch_size is None:
            batch_size = int(coords[:, 0].max()) + 1 if n else 1
        self.spatial_shape = tuple(int(s) for s in spatial_shape)
        self.batch_size = int(batch_size)
        if len(self.spatial_shape) != 3 or min(self.spatial_shape) < 1:
            raise ValueError(f"spatial_shape must be three positive sizes, got {spatial_shape}")
        if check and n:
            low = coords.amin(0)
            high = coords.amax(0)
            if bool((low < 0).any()):
                raise ValueError(f"SparseTensor coords must be non-negative, got minimum {low.tolist()}")
            limits = [self.batch_size, *self.spatial_shape]
            if any(int(h) >= lim for h, lim in zip(high.tolist(), limits)):
                raise ValueError(
                    f"SparseTensor coords maximum {high.tolist()} outside (batch_size, *spatial_shape) = {limits}"
                )
            if bool((coords[1:, 0] < coords[:-1, 0]).any()):
                raise ValueError(
                    "SparseTensor rows must be grouped by batch (batch column non-decreasing); "
                    "build it with SparseTensor.from_unsorted(coords, feats)"
                )
        self.coords = coords
        self.feats = feats
        self.cache = {} if cache is None else cache

    # ----------------------------------------------------------------------------- building
    @classmethod
    def from_unsorted(cls, coords: Tensor, feats: Tensor, **kwargs: Any) -> SparseTensor:
        """Sort rows by (batch, i, j, k) first; rejects duplicate voxels."""
        coords = coords.to(torch.int64)
        shape = kwargs.get("spatial_shape") or (coords[:, 1:].amax(0) + 1).tolist()
        keys = grid_keys(coords[:, 0], coords[:, 1:], shape)
        keys, order = torch.sort(keys)
        if keys.numel() > 1 and bool((keys[1:] == keys[:-1]).any()):
            raise ValueError("SparseTensor coords contain the same voxel twice")
        return cls(coords[order], feats[order], **kwargs)

    @classmethod
    def from_dense(
        cls,
        dense: Tensor,  # [B, C, S0, S1, S2]
        mask: Tensor | None = None,  # [B, S0, S1, S2] bool; default: voxels with any non-zero channel
    ) -> SparseTensor:
        if dense.ndim != 5:
            raise ValueError(f"from_dense expects [B, C, S0, S1, S2], got {tuple(dense.shape)}")
        if mask is None:
            mask = (dense != 0).any(dim=1)
        coords = torch.nonzero(mask).to(torch.int32)  # row-major: grouped by batch
        feats = dense.permute(0, 2, 3, 4, 1)[mask]
        return cls(coords, feats, spatial_shape=dense.shape[2:], batch_size=dense.shape[0], check=False)

    def replace(self, feats: Tensor, coords: Tensor | None = None, **kwargs: Any) -> SparseTensor:
        """Same voxels (and shared cache) with new features; new coords start a fresh cache."""
        if coords is None:
            if feats.shape[0] != self.coords.shape[0]:
                raise ValueError(
                    f"replace: feats have {feats.shape[0]} rows, the tensor {self.coords.shape[0]}"
                )
            return SparseTensor(
                self.coords,
                feats,
                spatial_shape=self.spatial_shape,
                batch_size=self.batch_size,
                check=False,
                cache=self.cache,
            )
        kwargs.setdefault("batch_size", self.batch_size)
        return SparseTensor(coords, feats, **kwargs)

    # ----------------------------------------------------------------------------- layout
    @property
    def num_points(self) -> int:
        return int(self.coords.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.feats.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_points, self.num_channels)

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    def _cached(self, key: Any, build: Any) -> Any:
        if key not in self.cache:
            self.cache[key] = build()
        return self.cache[key]

    @property
    def batch_index(self) -> Tensor:  # [N] int64
        return self._cached("batch_index", lambda: self.coords[:, 0].long())

    @property
    def seqlens(self) -> Tensor:  # [B] int64 voxels per sample
        return self._cached("seqlens", lambda: torch.bincount(self.batch_index, minlength=self.batch_size))

    @property
    def batch_offsets(self) -> Tensor:  # [B + 1] int64: sample b is rows offsets[b]:offsets[b+1]
        def build() -> Tensor:
            offsets = torch.zeros(self.batch_size + 1, dtype=torch.int64, device=self.device)
            offsets[1:] = torch.cumsum(self.seqlens, 0)
            return offsets

        return self._cached("batch_offsets", build)

    @property
    def layout(self) -> list[slice]:
        """Python slices of each sample's rows (one host sync, then cached)."""

        def build() -> list[slice]:
            offsets = self.batch_offsets.tolist()
            return [slice(a, b) for a, b in zip(offsets[:-1], offsets[1:])]

        return self._cached("layout", build)

    @property
    def varlen(self) -> VarLen:
        """The packed-sequence layout for `voxforge.nn` attention and transformer blocks."""
        return self._cached("varlen", lambda: VarLen.from_seqlens(self.seqlens))

    def keys(self) -> Tensor:  # [N] int64 grid keys of the rows
        return self._cached(
            "keys", lambda: grid_keys(self.coords[:, 0], self.coords[:, 1:], self.spatial_shape)
        )

    def sorted_keys(self) -> tuple[Tensor, Tensor]:  # (keys ascending [N], row of each [N])
        return self._cached("sorted_keys", lambda: torch.sort(self.keys()))

    # ----------------------------------------------------------------------------- conversions
    def to(self, *args: Any, **kwargs: Any) -> SparseTensor:
        """`tensor.to` semantics for feats; coords follow the device (int32 stays)."""
        feats = self.feats.to(*args, **kwargs)
        if feats.device == self.device:
            return self.replace(feats)
        return SparseTensor(
            self.coords.to(feats.device),
            feats,
            spatial_shape=self.spatial_shape,
            batch_size=self.batch_size,
            check=False,
        )

    def float(self) -> SparseTensor:
        return self.replace(self.feats.float())

    def detach(self) -> SparseTensor:
        return self.replace(self.feats.detach())

    def dense(self) -> Tensor:  # [B, C, S0, S1, S2], zeros where empty
        out = self.feats.new_zeros((self.batch_size, *self.spatial_shape, self.num_channels))
        c = self.coords.long()
        out[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = self.feats
        return out.permute(0, 4, 1, 2, 3).contiguous()

    def unbind(self) -> list[tuple[Tensor, Tensor]]:
        """Per sample: (ijk coords [Ni, 3], feats [Ni, C])."""
        return [(self.coords[s, 1:], self.feats[s]) for s in self.layout]

    # ----------------------------------------------------------------------------- arithmetic
    def _other(self, other: Any) -> Any:
        if isinstance(other, SparseTensor):
            if other.coords is not self.coords and (
                other.coords.shape != self.coords.shape or not torch.equal(other.coords, self.coords)
            ):
                raise ValueError("element-wise op on sparse tensors with different voxels")
            return other.feats
        return other

    def __add__(self, other: Any) -> SparseTensor:
        return self.replace(self.feats + self._other(other))

    __radd__ = __add__

    def __sub__(self, other: Any) -> SparseTensor:
        return self.replace(self.feats - self._other(other))

    def __mul__(self, other: Any) -> SparseTensor:
        return self.replace(self.feats * self._other(other))

    __rmul__ = __mul__

    def __neg__(self) -> SparseTensor:
        return self.replace(-self.feats)

    def __repr__(self) -> str:
        return (
            f"SparseTensor(points={self.num_points}, channels={self.num_channels}, batch_size={self.batch_size}, "
            f"spatial_shape={self.spatial_shape}, dtype={self.dtype}, device={self.device})"
        )


def sparse_cat(tensors: Sequence[SparseTensor]) -> SparseTensor:
    """Stack sparse batches along the batch axis (sample ids are renumbered in order)."""
    if not tensors:
        raise ValueError("sparse_cat needs at least one tensor")
    shape = tuple(max(t.spatial_shape[a] for t in tensors) for a in range(3))
    coords, start = [], 0
    for t in tensors:
        c = t.coords.clone()
        c[:, 0] += start
        coords.append(c)
        start += t.batch_size
    feats = torch.cat([t.feats for t in tensors])
    return SparseTensor(torch.cat(coords), feats, spatial_shape=shape, batch_size=start, check=False)
