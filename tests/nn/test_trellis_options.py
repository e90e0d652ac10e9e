"""Options of the nn primitives that express TRELLIS's layouts: l2 qk-norm, sin-first sinusoids, cross qk-norm."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from voxforge.nn.embeddings import sincos_position_embedding, timestep_embedding
from voxforge.nn.norms import MultiHeadRMSNorm
from voxforge.nn.transformer import DiTBlock


def test_l2_qk_norm_is_normalize_times_sqrt_dim_and_close_to_rms():
    torch.manual_seed(0)
    norm = MultiHeadRMSNorm(8, 3, kind="l2")
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 3, 8)
    ref = F.normalize(x, dim=-1) * math.sqrt(8) * norm.weight
    torch.testing.assert_close(norm(x), ref)
    rms = MultiHeadRMSNorm(8, 3)
    rms.load_state_dict(norm.state_dict())
    torch.testing.assert_close(rms(x), ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(norm(torch.zeros(1, 3, 8)), torch.zeros(1, 3, 8))  # no division by zero


def test_sin_cos_order_swaps_the_halves_of_every_axis():
    t = torch.tensor([0.0, 3.0, 10.0])
    cs, sc = timestep_embedding(t, 8), timestep_embedding(t, 8, order="sin_cos")
    assert torch.equal(sc, torch.cat([cs[:, 4:], cs[:, :4]], -1))
    coords = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 7.0]])
    a = sincos_position_embedding(coords, 20)  # 3 axes x 6 channels + 2 zeros
    b = sincos_position_embedding(coords, 20, order="sin_cos")
    for axis in range(3):
        block = slice(6 * axis, 6 * axis + 6)
        assert torch.equal(b[:, block], torch.cat([a[:, block][:, 3:], a[:, block][:, :3]], -1))
    assert torch.equal(b[:, 18:], torch.zeros(2, 2))
    freqs = 1.0 / 10000 ** (torch.arange(3) / 3)  # TRELLIS's frequency layout
    torch.testing.assert_close(b[:, :3], torch.sin(coords[:, :1] * freqs))


def test_cross_qk_norm_follows_qk_norm_unless_set():
    default = DiTBlock(16, 2, context_dim=8)
    assert isinstance(default.cross_attn.q_norm, MultiHeadRMSNorm)
    trellis = DiTBlock(16, 2, context_dim=8, cross_qk_norm=False, qk_norm_kind="l2")
    assert isinstance(trellis.attn.q_norm, MultiHeadRMSNorm) and trellis.attn.q_norm.kind == "l2"
    assert isinstance(trellis.cross_attn.q_norm, torch.nn.Identity)
    assert not any("cross_attn.q_norm" in k or "cross_attn.k_norm" in k for k in trellis.state_dict())
