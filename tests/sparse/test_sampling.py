from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.sparse.helpers import gather_dense, random_sparse
from voxforge.sparse import SparseConv3d, neighbor_map, sparse_downsample, sparse_subdivide, sparse_upsample


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_downsample_matches_dense_pooling(pool):
    x = random_sparse(batch=2, shape=(8, 6, 7), channels=3, density=0.3)
    coarse = sparse_downsample(x, 2, pool)
    assert coarse.spatial_shape == (4, 3, 4)
    dense = x.dense()
    occupied = torch.zeros(dense.shape[0], 1, *dense.shape[2:])
    c = x.coords.long()
    occupied[c[:, 0], 0, c[:, 1], c[:, 2], c[:, 3]] = 1
    padded = F.pad(dense, (0, 1, 0, 0, 0, 0))  # odd axis: ceil
    occ = F.pad(occupied, (0, 1, 0, 0, 0, 0))
    if pool == "mean":
        ref = F.avg_pool3d(padded, 2) / F.avg_pool3d(occ, 2).clamp(min=1e-12)
    else:
        ref = F.max_pool3d(torch.where(occ.bool(), padded, torch.tensor(-1e9)), 2)
    assert torch.equal(F.max_pool3d(occ, 2)[:, 0].nonzero().int(), coarse.coords)
    assert torch.allclose(coarse.feats, gather_dense(ref, coarse), atol=1e-5)


def test_upsample_restores_fine_rows_and_cache_for_skips():
    x = random_sparse(batch=2, shape=(8, 8, 8), channels=4)
    nbr = neighbor_map(x)
    coarse = sparse_downsample(x, 2)
    up = sparse_upsample(coarse, 2)
    assert torch.equal(up.coords, x.coords) and up.cache is x.cache
    assert neighbor_map(up) is nbr
    skip = (up + x).feats
    parents = sparse_downsample(x, 2).feats
    assert skip.shape == x.feats.shape
    # every fine voxel carries its parent's mean
    keys = (x.coords[:, 1:] // 2).long()
    for row in range(0, x.num_points, 7):
        match = (coarse.coords[:, 0] == x.coords[row, 0]) & (coarse.coords[:, 1:].long() == keys[row]).all(1)
        assert torch.allclose(up.feats[row], parents[match][0])


def test_upsample_onto_target_without_memo_and_missing_parent_error():
    x = random_sparse(batch=2, shape=(6, 6, 6))
    coarse = sparse_downsample(x, 2)
    bare = coarse.replace(coarse.feats, coords=coarse.coords.clone(), spatial_shape=coarse.spatial_shape)
    assert ("fine", 2) not in bare.cache
    up = sparse_upsample(bare, 2, target=x)
    assert torch.allclose(up.feats, sparse_upsample(coarse, 2).feats)
    with pytest.raises(ValueError, match="not made by sparse_downsample"):
        sparse_upsample(bare, 2)
    far = random_sparse(batch=2, shape=(12, 12, 12), seed=4)
    with pytest.raises(ValueError, match="no parent"):
        sparse_upsample(bare, 2, target=far)


def test_subdivide_children_and_gradients():
    x = random_sparse(batch=2, shape=(3, 3, 3), channels=2)
    fine = sparse_subdivide(x, 2)
    assert fine.num_points == 8 * x.num_points and fine.spatial_shape == (6, 6, 6)
    back = sparse_downsample(fine, 2)
    assert torch.equal(back.coords, x.coords) and torch.allclose(back.feats, x.feats)
    feats = x.feats.clone().requires_grad_(True)
    conv = SparseConv3d(2, 2)
    out = sparse_upsample(conv(sparse_downsample(x.replace(feats), 2, "max")), 2)
    out.feats.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
