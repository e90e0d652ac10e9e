from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.sparse.helpers import gather_dense, random_sparse
from voxforge.sparse import SparseConv3d, neighbor_map, sparse_conv3d, spconv_available
from voxforge.sparse.conv import kernel_offsets


@pytest.mark.parametrize("kernel_size,dilation", [(3, 1), (3, 2), (5, 1)])
def test_submanifold_conv_equals_dense_conv_at_active_sites(kernel_size, dilation):
    x = random_sparse(batch=2, shape=(7, 6, 8), channels=5, density=0.35)
    conv = SparseConv3d(5, 4, kernel_size, dilation=dilation, backend="torch")
    out = conv(x)
    ref = F.conv3d(
        x.dense(), conv.weight, conv.bias, padding=dilation * (kernel_size // 2), dilation=dilation
    )
    assert torch.allclose(out.feats, gather_dense(ref, x), atol=1e-5)
    assert out.cache is x.cache


def test_neighbor_map_is_cached_and_correct():
    x = random_sparse()
    nbr = neighbor_map(x)
    assert neighbor_map(x) is nbr and nbr.shape == (x.num_points, 27)
    assert torch.equal(nbr[:, 13], torch.arange(x.num_points))  # centre offset = itself
    offsets = kernel_offsets(3)
    rows, ks = torch.nonzero(nbr >= 0, as_tuple=True)
    expected = x.coords[rows].long()
    expected[:, 1:] += offsets[ks]
    assert torch.equal(x.coords[nbr[rows, ks]].long(), expected)


def test_conv_gradients_match_gradcheck():
    x = random_sparse(batch=2, shape=(4, 4, 3), channels=2, density=0.5)
    feats = x.feats.double().requires_grad_(True)
    weight = torch.randn(3, 2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f, w, b: sparse_conv3d(x.replace(f), w, b, backend="torch").feats,
        (feats, weight, bias),
        fast_mode=True,
    )


def test_conv_gradients_equal_dense_conv_gradients():
    x = random_sparse(channels=3)
    conv = SparseConv3d(3, 2, backend="torch")
    feats = x.feats.clone().requires_grad_(True)
    conv(x.replace(feats)).feats.square().sum().backward()
    dense_in = x.dense().requires_grad_(True)
    w = conv.weight.detach().clone().requires_grad_(True)
    ref = gather_dense(F.conv3d(dense_in, w, conv.bias.detach(), padding=1), x)
    ref.square().sum().backward()
    assert torch.allclose(conv.weight.grad, w.grad, atol=1e-4)
    assert torch.allclose(feats.grad, gather_dense(dense_in.grad, x), atol=1e-5)


def test_conv_under_bf16_autocast_runs_in_bf16():
    x = random_sparse(channels=4)
    conv = SparseConv3d(4, 4, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.feats.float(), conv(x).feats, atol=0.1, rtol=0.05)


def test_bad_backend_and_channels():
    from voxforge.errors import UserError

    with pytest.raises(UserError, match="expected one of"):
        SparseConv3d(2, 2, backend="cuda")
    with pytest.raises(ValueError, match="input channels"):
        SparseConv3d(3, 2)(random_sparse(channels=4))


def test_spconv_hint_names_the_wheel_for_the_local_cuda(monkeypatch):
    from voxforge.errors import MissingDependencyError
    from voxforge.sparse import conv

    assert conv.spconv_wheel("12.4") == "spconv-cu124"
    assert conv.spconv_wheel("12.8") == "spconv-cu126"  # newest build of the same major version
    assert conv.spconv_wheel("12.2") == "spconv-cu121"
    assert conv.spconv_wheel("11.8") == "spconv-cu118"
    assert conv.spconv_wheel(None) == "spconv-cu124" and conv.spconv_wheel("13.0") == "spconv-cu124"
    monkeypatch.setattr(conv, "spconv_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    with pytest.raises(MissingDependencyError, match="pip install spconv-cu121") as err:
        sparse_conv3d(random_sparse(channels=2), torch.zeros(2, 2, 3, 3, 3), backend="spconv")
    assert "voxforge[" not in str(err.value)  # no extra holds spconv


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not spconv_available(), reason="needs CUDA and spconv")
def test_spconv_backend_matches_torch_values_and_gradients():
    x = random_sparse(batch=2, shape=(9, 8, 7), channels=8).to("cuda")
    conv = SparseConv3d(8, 16, backend="torch").cuda()
    feats = x.feats.clone().requires_grad_(True)
    ref = conv(x.replace(feats))
    ref.feats.square().sum().backward()
    grads_ref = (feats.grad.clone(), conv.weight.grad.clone())
    feats.grad = None
    conv.weight.grad = None
    conv.backend = "spconv"
    out = conv(x.replace(feats))
    out.feats.square().sum().backward()
    assert torch.allclose(out.feats, ref.feats, atol=1e-3, rtol=1e-3)
    assert torch.allclose(feats.grad, grads_ref[0], atol=1e-3, rtol=1e-3)
    assert torch.allclose(conv.weight.grad, grads_ref[1], atol=1e-2, rtol=1e-3)
