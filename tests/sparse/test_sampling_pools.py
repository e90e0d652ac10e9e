"""Down-sampling pools (TRELLIS's mean counts a zero) and the memo of the coarse level."""

from __future__ import annotations

import torch

from tests.sparse.helpers import random_sparse
from voxforge.sparse.sampling import sparse_downsample, sparse_upsample


def test_mean_incl_zero_is_scatter_reduce_mean_over_zeros():
    x = random_sparse(batch=2, shape=(6, 5, 4), channels=3)
    out = sparse_downsample(x, 2, "mean_incl_zero")
    plain = sparse_downsample(x, 2)
    assert torch.equal(out.coords, plain.coords)
    parent = out.cache[("fine", 2)].parent
    ref = torch.zeros(out.num_points, 3).scatter_reduce(
        0, parent[:, None].expand(-1, 3), x.feats, reduce="mean", include_self=True
    )
    torch.testing.assert_close(out.feats, ref)
    counts = torch.bincount(parent, minlength=out.num_points).float()[:, None]
    torch.testing.assert_close(out.feats, plain.feats * counts / (counts + 1))


def test_coarse_level_is_memoised_on_the_fine_tensor():
    x = random_sparse(batch=2, shape=(8, 8, 8), channels=2)
    a = sparse_downsample(x, 2)
    b = sparse_downsample(x.replace(x.feats * 2), 2)  # same voxels: same coarse coords and cache
    assert a.coords is b.coords and a.cache is b.cache
    torch.testing.assert_close(b.feats, 2 * a.feats)
    up = sparse_upsample(b, 2)
    assert up.coords is x.coords and up.cache is x.cache
    other = random_sparse(batch=2, shape=(8, 8, 8), channels=2, seed=1)
    assert sparse_downsample(other, 2).cache is not a.cache
