"""The flow transformers' TRELLIS options: per-block skips, resample-first blocks, plain final norms."""

from __future__ import annotations

import torch

from voxforge.models.slat_flow import SLatFlowConfig, SLatFlowTransformer
from voxforge.models.ss_flow import SSFlowConfig, SSFlowTransformer
from voxforge.sparse import SparseTensor

TRELLIS_SLAT = dict(
    skip_wiring="block",
    resample_first=True,
    downsample_pool="mean_incl_zero",
    ape_order="sin_cos",
    cross_qk_norm=False,
    qk_norm_kind="l2",
    out_norm_affine=False,
    out_norm_eps=1e-5,
)


def _sparse(resolution=16, seed=0) -> SparseTensor:
    gen = torch.Generator().manual_seed(seed)
    ijk = torch.unique(torch.randint(0, resolution, (300, 3), generator=gen), dim=0)
    coords = torch.cat([torch.zeros(len(ijk), 1, dtype=torch.long), ijk], 1)
    coords = torch.cat([coords, torch.cat([torch.ones(50, 1, dtype=torch.long), ijk[:50]], 1)])
    return SparseTensor(coords, torch.randn(len(coords), 4, generator=gen), spatial_shape=(resolution,) * 3)


def _randomise(model, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)


def test_block_wiring_widths_and_two_levels_with_grad_checkpoint():
    cfg = SLatFlowConfig(
        resolution=16,
        in_channels=4,
        io_channels=[8, 16],
        io_res_blocks=2,
        width=32,
        depth=1,
        heads=2,
        **TRELLIS_SLAT,
    )
    model = SLatFlowTransformer(cfg, 8)
    assert model.up[1].conv1.in_channels == 2 * 32 and model.up[0].conv1.in_channels == 2 * 16
    assert all(block.conv1.in_channels == 2 * 8 for block in model.up_res[0])
    assert "out_norm.weight" not in model.state_dict()
    _randomise(model)
    x, t, ctx = _sparse(), torch.tensor([0.2, 0.8]), torch.randn(2, 3, 8)
    out = model(x, t, ctx)
    assert torch.equal(out.coords, x.coords) and out.feats.shape == x.feats.shape
    model.cfg.grad_checkpoint = True
    feats = x.feats.clone().requires_grad_(True)
    again = model(x.replace(feats), t, ctx)
    torch.testing.assert_close(again.feats, out.feats)
    again.feats.square().sum().backward()
    assert feats.grad is not None and all(p.grad is not None for p in model.parameters())


def test_resample_first_changes_only_the_down_block():
    base = dict(resolution=16, in_channels=4, io_channels=[8], io_res_blocks=1, width=16, depth=1, heads=2)
    a = SLatFlowTransformer(SLatFlowConfig(**base), 8)
    b = SLatFlowTransformer(SLatFlowConfig(**base, resample_first=True), 8)
    _randomise(a)
    b.load_state_dict(a.state_dict())
    x = _sparse()
    x = x.replace(a.input_layer(x.feats))  # [N, 8]
    emb = torch.randn(2, 16)
    coarse = a.down[0](x, emb)
    assert not torch.allclose(coarse.feats, b.down[0](x, emb).feats)  # pooling does not commute with norm
    torch.testing.assert_close(a.up[0](coarse, emb).feats, b.up[0](coarse, emb).feats)  # nearest copy does
    torch.testing.assert_close(a.down_res[0][0](x, emb).feats, b.down_res[0][0](x, emb).feats)


def test_ss_flow_without_final_modulation_is_layernorm_then_linear():
    cfg = SSFlowConfig(
        resolution=4, in_channels=2, width=24, depth=1, heads=2, final_modulation=False, final_norm_eps=1e-5
    )
    model = SSFlowTransformer(cfg, 8)
    assert model.final_modulation is None and not any(
        k.startswith("final_modulation") for k in model.state_dict()
    )
    _randomise(model)
    x, ctx = torch.randn(2, 2, 4, 4, 4), torch.randn(2, 3, 8)
    captured = {}
    model.out_layer.register_forward_hook(lambda m, args, out: captured.setdefault("in", args[0]))
    model(x, torch.tensor([0.1, 0.9]), ctx)
    h = captured["in"]
    torch.testing.assert_close(h.mean(-1), torch.zeros(h.shape[:-1]), atol=1e-5, rtol=0)
