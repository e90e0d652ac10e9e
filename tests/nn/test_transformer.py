import torch

from voxforge.nn.attention import VarLen
from voxforge.nn.rope import RotaryEmbedding, grid_coords
from voxforge.nn.transformer import MLP, CrossAttention, DiTBlock, SelfAttention, TransformerBlock


def _randomize(module):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.1)


def test_attention_modules_shapes_and_gradients():
    torch.manual_seed(0)
    self_attn = SelfAttention(32, 4, qk_norm=True)
    cross = CrossAttention(32, 12, 4, qk_norm=True)
    x, ctx = torch.randn(2, 8, 32, requires_grad=True), torch.randn(2, 5, 12)
    rope = RotaryEmbedding(8)(grid_coords(2).float())
    out = self_attn(x, rope=rope) + cross(x, ctx)
    assert out.shape == (2, 8, 32)
    out.square().mean().backward()
    for module in (self_attn, cross):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in module.parameters())
    assert MLP(32, 64, 7)(x).shape == (2, 8, 7)


def test_dit_block_without_context_is_identity_at_init_and_trains():
    block = DiTBlock(32, 4, mlp_ratio=2.0)
    x, cond = torch.randn(2, 6, 32), torch.randn(2, 32)
    torch.testing.assert_close(block(x, cond), x)
    block(x, cond).square().sum().backward()
    assert block.modulation[1].weight.grad.abs().sum() > 0


def test_dit_block_packed_layout_equals_per_sample_dense():
    torch.manual_seed(0)
    block = DiTBlock(32, 4, context_dim=16)
    _randomize(block)
    block.eval()
    lens = [5, 3]
    layout = VarLen.from_seqlens(lens)
    x, cond, ctx = torch.randn(8, 32), torch.randn(2, 32), torch.randn(2, 4, 16)
    coords = torch.randint(0, 8, (8, 3)).float()
    rope = RotaryEmbedding(8)(coords)
    packed = block(x, cond, ctx, rope=rope, layout=layout)
    dense = []
    for b, (start, n) in enumerate(zip([0, 5], lens)):
        sl = slice(start, start + n)
        freqs = type(rope)(rope.cos[sl], rope.sin[sl])
        dense.append(block(x[None, sl], cond[b : b + 1], ctx[b : b + 1], rope=freqs)[0])
    torch.testing.assert_close(packed, torch.cat(dense), atol=1e-5, rtol=1e-5)


def test_cross_attention_context_mask_matches_truncated_context():
    torch.manual_seed(0)
    cross = CrossAttention(16, 8, 2)
    x, ctx = torch.randn(2, 3, 16), torch.randn(2, 5, 8)
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    out = cross(x, ctx, context_mask=mask)
    torch.testing.assert_close(out[1], cross(x[1:], ctx[1:, :2])[0], atol=1e-5, rtol=1e-5)
    packed = cross(x.flatten(0, 1), ctx, layout=VarLen.uniform(2, 3), context_mask=mask)
    torch.testing.assert_close(packed, out.flatten(0, 1), atol=1e-5, rtol=1e-5)


def test_transformer_block_shape_and_bf16_autocast():
    block = TransformerBlock(32, 4)
    x = torch.randn(2, 7, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.shape == (2, 7, 32) and torch.isfinite(out).all()
