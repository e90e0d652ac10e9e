from __future__ import annotations

import pytest
import torch

from tests.sparse.helpers import random_sparse
from voxforge.nn.attention import flash_attn_available
from voxforge.sparse import (
    SparseCrossAttention,
    SparseSelfAttention,
    SparseTransformerBlock,
    sparse_full_attention,
    sparse_window_attention,
    window_partition,
)


def _softmax_attention(q, k, v):  # [L, H, D] each
    scores = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def _qkv(n, heads=2, dim=8, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, heads, dim, generator=gen, dtype=dtype) for _ in range(3)]


def test_full_attention_equals_per_sample_dense():
    x = random_sparse(batch=3, shape=(6, 6, 6), density=0.2)
    q, k, v = _qkv(x.num_points)
    out = sparse_full_attention(q, k, v, x.varlen, backend="torch")
    for rows in x.layout:
        assert torch.allclose(out[rows], _softmax_attention(q[rows], k[rows], v[rows]), atol=1e-5)


@pytest.mark.parametrize("window,shift", [(2, 0), (3, 1), (4, 2)])
def test_window_attention_equals_brute_force_per_window(window, shift):
    x = random_sparse(batch=2, shape=(8, 7, 6), density=0.3)
    q, k, v = _qkv(x.num_points, seed=1)
    part = window_partition(x, window, shift)
    out = sparse_window_attention(q, k, v, part, backend="torch")
    batched = sparse_window_attention(q, k, v, part, backend="torch", max_slots=20)  # many padded batches
    ref = torch.empty_like(out)
    win = (x.coords[:, 1:].long() + shift) // window
    ids = torch.cat([x.coords[:, :1].long(), win], 1)
    for key in torch.unique(ids, dim=0):
        rows = (ids == key).all(1).nonzero().squeeze(1)
        ref[rows] = _softmax_attention(q[rows], k[rows], v[rows])
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(batched, ref, atol=1e-5)
    assert part.layout.max_len <= window**3 and int(part.layout.seqlens.sum()) == x.num_points
    assert window_partition(x, window, shift) is part  # cached


def test_empty_tensor_window_attention():
    from voxforge.sparse import SparseTensor

    x = SparseTensor(torch.zeros(0, 4, dtype=torch.int32), torch.zeros(0, 16), spatial_shape=(4, 4, 4))
    layer = SparseSelfAttention(16, 2, attn_mode="swin", window_size=2)
    assert layer(x).shape == (0, 16)


def test_window_covering_grid_equals_full_attention():
    x = random_sparse(batch=2, shape=(4, 4, 4))
    q, k, v = _qkv(x.num_points, seed=2)
    whole = sparse_window_attention(q, k, v, window_partition(x, 4), backend="torch")
    assert torch.allclose(whole, sparse_full_attention(q, k, v, x.varlen, backend="torch"), atol=1e-5)


@pytest.mark.parametrize("mode", ["full", "swin"])
def test_self_attention_layer_gradients_and_permutation_equivariance(mode):
    x = random_sparse(batch=2, shape=(6, 6, 6), channels=16, density=0.25)
    layer = SparseSelfAttention(
        16, 2, attn_mode=mode, window_size=3, shift_window=1, use_rope=True, qk_norm=True
    )
    feats = x.feats.clone().requires_grad_(True)
    out = layer(x.replace(feats))
    out.feats.square().mean().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    # rows shuffled within each sample: same per-voxel outputs
    perm = torch.cat([torch.randperm(s.stop - s.start) + s.start for s in x.layout])
    shuffled = x.replace(x.feats[perm], coords=x.coords[perm], spatial_shape=x.spatial_shape)
    assert torch.allclose(layer(shuffled).feats, out.feats[perm].detach(), atol=1e-5)


def test_block_and_cross_attention_shapes():
    x = random_sparse(batch=2, shape=(6, 6, 6), channels=16)
    block = SparseTransformerBlock(16, 4, attn_mode="swin", window_size=4, shift_window=2)
    y = block(x)
    assert y.shape == x.shape and y.cache is x.cache
    context = torch.randn(2, 5, 12)
    cross = SparseCrossAttention(16, 12, 4)
    z = cross(y, context)
    assert z.shape == x.shape
    # queries of sample 0 only see context 0
    altered = context.clone()
    altered[1] += 1
    z2 = cross(y, altered)
    rows0 = x.layout[0]
    assert torch.allclose(z.feats[rows0], z2.feats[rows0]) and not torch.allclose(z.feats, z2.feats)
    with pytest.raises(ValueError, match="attn_mode"):
        SparseSelfAttention(16, 2, attn_mode="window")


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or not flash_attn_available(), reason="needs CUDA and flash-attn"
)
def test_flash_attn_varlen_matches_torch_for_windows_and_full():
    x = random_sparse(batch=2, shape=(16, 16, 16), density=0.2).to("cuda")
    q, k, v = (t.cuda().half().requires_grad_(True) for t in _qkv(x.num_points, heads=4, dim=32))
    part = window_partition(x, 4, 2)
    for fn in (
        lambda b: sparse_window_attention(q, k, v, part, backend=b),
        lambda b: sparse_full_attention(q, k, v, x.varlen, backend=b),
    ):
        ref = fn("torch")
        grads_ref = torch.autograd.grad(ref.float().square().sum(), (q, k, v))
        out = fn("flash_attn")
        grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
        assert torch.allclose(out.float(), ref.float(), atol=2e-3, rtol=2e-3)
        for g, g_ref in zip(grads, grads_ref):
            assert torch.allclose(g.float(), g_ref.float(), atol=2e-2, rtol=2e-2)
