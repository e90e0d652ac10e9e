import torch

from voxforge.nn.embeddings import TimestepEmbedder, sincos_position_embedding, timestep_embedding
from voxforge.nn.norms import GroupNorm32, LayerNorm32, MultiHeadRMSNorm, RMSNorm
from voxforge.nn.rope import RotaryEmbedding, apply_rope, grid_coords


def test_rmsnorm_normalises_in_fp32_and_keeps_dtype():
    torch.manual_seed(0)
    norm = RMSNorm(16)
    x = torch.randn(3, 16) * 5
    out = norm(x)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(3), atol=1e-4, rtol=1e-4)
    low = norm(x.bfloat16())
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), norm(x.bfloat16().float()), atol=1e-2, rtol=1e-2)


def test_layernorm32_and_groupnorm32_output_input_dtype_under_autocast():
    ln, gn = LayerNorm32(8), GroupNorm32(2, 8)
    x = torch.randn(2, 8, 4).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ln(x.transpose(1, 2)).dtype == torch.bfloat16
        assert gn(x).dtype == torch.bfloat16
    ref = torch.nn.functional.layer_norm(x.float().transpose(1, 2), (8,))
    torch.testing.assert_close(ln(x.transpose(1, 2)).float(), ref, atol=2e-2, rtol=2e-2)


def test_multihead_rmsnorm_has_per_head_gain():
    norm = MultiHeadRMSNorm(4, 3)
    with torch.no_grad():
        norm.weight[1] = 2.0
    out = norm(torch.randn(5, 3, 4))
    torch.testing.assert_close(out[:, 1].pow(2).mean(-1), torch.full((5,), 4.0), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(out[:, 0].pow(2).mean(-1), torch.ones(5), atol=1e-3, rtol=1e-3)


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(p, r):
        fq, fk = rope(torch.tensor([p], dtype=torch.float32)), rope(torch.tensor([r], dtype=torch.float32))
        return (apply_rope(q, fq) * apply_rope(k, fk)).sum()

    a = score([1, 2, 3], [4, 0, 5])
    b = score([11, 7, 3], [14, 5, 5])  # same offset
    c = score([1, 2, 3], [4, 1, 5])  # different offset
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(a, c, atol=1e-3)


def test_rope_preserves_norm_and_leaves_spare_pairs_unrotated():
    rope = RotaryEmbedding(head_dim=10)  # 5 pairs: 1 per axis + 2 spare
    coords = grid_coords(2).float()  # [8, 3]
    x = torch.randn(2, 8, 3, 10)
    out = apply_rope(x, rope(coords))
    torch.testing.assert_close(out.norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[..., 6:], x[..., 6:])


def test_grid_coords_are_row_major():
    coords = grid_coords(3)
    assert coords.shape == (27, 3)
    assert (
        coords[1].tolist() == [0, 0, 1]
        and coords[3].tolist() == [0, 1, 0]
        and coords[9].tolist() == [1, 0, 0]
    )


def test_timestep_embedding_and_embedder():
    emb = timestep_embedding(torch.tensor([0.0, 1.0, 500.0]), 32)
    assert emb.shape == (3, 32) and torch.allclose(emb[0, :16], torch.ones(16))
    embedder = TimestepEmbedder(24)
    t = torch.rand(4, requires_grad=False)
    out = embedder(t)
    assert out.shape == (4, 24)
    out.sum().backward()
    assert embedder.mlp[0].weight.grad is not None
    assert not torch.allclose(embedder(torch.tensor([0.1])), embedder(torch.tensor([0.101])))


def test_sincos_position_embedding_shape_and_distinct_rows():
    emb = sincos_position_embedding(grid_coords(4).float(), 40)
    assert emb.shape == (64, 40)
    assert torch.cdist(emb, emb).add(torch.eye(64) * 1e3).min() > 1e-3
