from __future__ import annotations

import torch
import torch.nn.functional as F

from tests.sparse.helpers import random_sparse
from voxforge.sparse import SparseGELU, SparseGroupNorm32, SparseLayerNorm32, SparseLinear


def test_linear_and_activation_act_per_voxel():
    x = random_sparse(channels=6)
    lin = SparseLinear(6, 5)
    y = SparseGELU()(lin(x))
    assert torch.allclose(y.feats, F.gelu(x.feats @ lin.weight.t() + lin.bias))
    assert y.cache is x.cache


def test_group_norm_matches_dense_per_sample():
    x = random_sparse(batch=3, channels=8)
    x = x.replace(x.feats * 3 + 5)  # non-trivial mean
    norm = SparseGroupNorm32(4, 8)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    y = norm(x)
    for rows in x.layout:
        ref = F.group_norm(x.feats[rows].t()[None], 4, norm.weight, norm.bias, norm.eps)[0].t()
        assert torch.allclose(y.feats[rows], ref, atol=1e-5)


def test_norms_compute_in_fp32_under_autocast():
    x = random_sparse(channels=8).to(torch.bfloat16)
    norm = SparseGroupNorm32(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
        z = SparseLayerNorm32(8)(x)
    assert y.dtype == torch.bfloat16 and z.dtype == torch.bfloat16
    ref = norm(x.float())
    assert torch.allclose(y.feats.float(), ref.feats, atol=2e-2)


def test_group_norm_gradients_flow():
    x = random_sparse(channels=4)
    feats = x.feats.clone().requires_grad_(True)
    SparseGroupNorm32(2, 4)(x.replace(feats)).feats.pow(2).sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
