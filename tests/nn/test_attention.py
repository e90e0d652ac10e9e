import pytest
import torch

from voxforge.errors import UserError
from voxforge.nn.attention import VarLen, attention, flash_attn_available, key_padding_mask, varlen_attention


def naive_attention(q, k, v, mask=None):  # [B, L, H, D]
    logits = torch.einsum("blhd,bmhd->bhlm", q, k) / q.shape[-1] ** 0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return torch.einsum("bhlm,bmhd->blhd", logits.softmax(-1), v)


def test_attention_matches_naive_softmax():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 3, 8), torch.randn(2, 7, 3, 8), torch.randn(2, 7, 3, 8)
    out = attention(q, k, v, backend="torch")
    assert out.shape == (2, 5, 3, 8)
    torch.testing.assert_close(out, naive_attention(q, k, v), atol=1e-5, rtol=1e-5)
    assert torch.allclose(attention(q, k, v), out)  # auto falls back to torch on CPU


def test_attention_key_padding_mask_hides_keys_and_gradients_flow():
    torch.manual_seed(0)
    q = torch.randn(2, 4, 2, 8, requires_grad=True)
    k, v = torch.randn(2, 6, 2, 8), torch.randn(2, 6, 2, 8)
    valid = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    out = attention(q, k, v, mask=key_padding_mask(valid))
    torch.testing.assert_close(out[1], attention(q[1:], k[1:, :3], v[1:, :3])[0], atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


def test_varlen_layout_pad_unpad_round_trip():
    layout = VarLen.from_seqlens([3, 1, 4])
    x = torch.arange(8.0)[:, None].expand(8, 2).clone()
    padded, valid = layout.pad(x)
    assert padded.shape == (3, 4, 2) and valid.sum() == 8
    assert layout.cu_seqlens.tolist() == [0, 3, 4, 8]
    assert layout.batch_index.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    assert torch.equal(layout.unpad(padded), x)


def test_varlen_attention_equals_per_sequence_attention():
    torch.manual_seed(1)
    q_layout, kv_layout = VarLen.from_seqlens([3, 5]), VarLen.from_seqlens([4, 2])
    q, k, v = torch.randn(8, 2, 8), torch.randn(6, 2, 8), torch.randn(6, 2, 8)
    out = varlen_attention(q, k, v, q_layout, kv_layout)
    first = attention(q[None, :3], k[None, :4], v[None, :4])[0]
    second = attention(q[None, 3:], k[None, 4:], v[None, 4:])[0]
    torch.testing.assert_close(out, torch.cat([first, second]), atol=1e-5, rtol=1e-5)


def test_bad_backend_and_unusable_flash_attn_are_user_errors():
    q = torch.randn(1, 2, 1, 8)
    with pytest.raises(UserError, match="expected one of"):
        attention(q, q, q, backend="xformers")
    with pytest.raises(UserError, match="flash"):
        attention(q, q, q, backend="flash_attn")  # CPU fp32: either missing or unusable, never silent


def test_shape_errors_are_explicit():
    with pytest.raises(ValueError, match=r"\[B, L, H, D\]"):
        attention(torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8))


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or not flash_attn_available(), reason="needs CUDA + flash-attn"
)
def test_flash_attn_matches_sdpa_values_and_gradients():
    torch.manual_seed(0)
    device, dtype = torch.device("cuda"), torch.bfloat16
    q, k, v = (torch.randn(2, 64, 4, 64, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    out_flash = attention(q, k, v, backend="flash_attn")
    grads_flash = torch.autograd.grad(out_flash.float().square().sum(), (q, k, v))
    out_ref = attention(q, k, v, backend="torch")
    grads_ref = torch.autograd.grad(out_ref.float().square().sum(), (q, k, v))
    torch.testing.assert_close(out_flash, out_ref, atol=2e-2, rtol=2e-2)
    for a, b in zip(grads_flash, grads_ref):
        torch.testing.assert_close(a, b, atol=5e-2, rtol=5e-2)
    layout = VarLen.from_seqlens([50, 78], device=device)
    qp, kp, vp = (t.detach().flatten(0, 1) for t in (q, k, v))
    torch.testing.assert_close(
        varlen_attention(qp, kp, vp, layout, layout, backend="flash_attn"),
        varlen_attention(qp, kp, vp, layout, layout, backend="torch"),
        atol=2e-2,
        rtol=2e-2,
    )
