from __future__ import annotations

import pytest
import torch

from tests.sparse.helpers import random_sparse
from voxforge.sparse import SparseTensor, sparse_cat


def test_layout_offsets_and_varlen():
    x = random_sparse(batch=3)
    counts = torch.bincount(x.coords[:, 0].long(), minlength=3)
    assert x.batch_offsets.tolist() == [0, *torch.cumsum(counts, 0).tolist()]
    for b, rows in enumerate(x.layout):
        assert bool((x.coords[rows, 0] == b).all())
    assert x.varlen.seqlens.tolist() == counts.tolist()
    assert x.varlen.batch_index.tolist() == x.coords[:, 0].tolist()
    assert x.coords.dtype == torch.int32 and x.spatial_shape == (6, 7, 5) and x.batch_size == 3


def test_dense_round_trip_and_unbind():
    x = random_sparse()
    mask = torch.zeros(x.batch_size, *x.spatial_shape, dtype=torch.bool)
    c = x.coords.long()
    mask[c[:, 0], c[:, 1], c[:, 2], c[:, 3]] = True
    back = SparseTensor.from_dense(x.dense(), mask)
    assert torch.equal(back.coords, x.coords) and torch.equal(back.feats, x.feats)
    parts = x.unbind()
    assert sum(p[1].shape[0] for p in parts) == x.num_points


def test_replace_shares_cache_and_arithmetic():
    x = random_sparse()
    y = x.replace(x.feats * 2)
    assert y.cache is x.cache
    assert torch.allclose((x + y).feats, x.feats * 3)
    assert torch.allclose((y - x).feats, x.feats)
    assert torch.allclose((x * 2).feats, y.feats)
    other = random_sparse(seed=5)
    with pytest.raises(ValueError, match="different voxels"):
        _ = x + other


def test_validation_messages():
    feats = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="grouped by batch"):
        SparseTensor(torch.tensor([[1, 0, 0, 0], [0, 1, 1, 1]]), feats)
    with pytest.raises(ValueError, match="non-negative"):
        SparseTensor(torch.tensor([[0, -1, 0, 0], [0, 1, 1, 1]]), feats)
    with pytest.raises(ValueError, match="outside"):
        SparseTensor(torch.tensor([[0, 0, 0, 0], [0, 4, 1, 1]]), feats, spatial_shape=(4, 4, 4))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        SparseTensor(torch.zeros(2, 3, dtype=torch.int32), feats)
    with pytest.raises(ValueError, match="same voxel twice"):
        SparseTensor.from_unsorted(torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]]), feats)


def test_from_unsorted_sorts_rows_with_features():
    coords = torch.tensor([[1, 0, 0, 1], [0, 2, 0, 0], [1, 0, 0, 0]])
    feats = torch.tensor([[1.0], [2.0], [3.0]])
    x = SparseTensor.from_unsorted(coords, feats)
    assert x.coords.tolist() == [[0, 2, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]]
    assert x.feats.squeeze(1).tolist() == [2.0, 3.0, 1.0]


def test_to_dtype_keeps_cache_and_sparse_cat():
    x = random_sparse()
    half = x.to(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.cache is x.cache and half.coords.dtype == torch.int32
    both = sparse_cat([x, random_sparse(batch=1, seed=3)])
    assert (
        both.batch_size == 3 and both.num_points == x.num_points + random_sparse(batch=1, seed=3).num_points
    )
    assert both.coords[:, 0].max().item() == 2
