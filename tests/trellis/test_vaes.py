"""TRELLIS's autoencoders in voxforge: golden outputs, conversions, and the options they use."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from voxforge.config.core import ConfigValueError
from voxforge.errors import UserError
from voxforge.models.slat_vae import (
    GaussianHeadConfig,
    SLatGaussianDecoder,
    SLatVAEConfig,
    SparseTransformerStack,
    hammersley_points,
    position_embedding,
)
from voxforge.models.ss_vae import SSVAEConfig, SSVAEEncoder
from voxforge.nn.embeddings import sincos_position_embedding
from voxforge.representations.gaussians import load_ply
from voxforge.sparse.tensor import SparseTensor
from voxforge.trellis import vaes
from voxforge.trellis.loading import check_state_dict, read_weights

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "trellis"
SPECS = {spec.trellis_class: spec for spec in vaes.SPECS}
CHECKS = {check.file: check for check in vaes.GOLDENS}


def _fixtures() -> Path:
    if not (FIXTURES / "ckpts").is_dir():
        pytest.skip(f"{FIXTURES} not present")
    return FIXTURES


def _load_by_class() -> dict[str, torch.nn.Module]:
    """Every checkpoint of the fixture folder whose class this module converts, loaded strictly."""
    models = {}
    for path in sorted((_fixtures() / "ckpts").glob("*.json")):
        meta = json.loads(path.read_text())
        if meta["name"] not in SPECS:
            continue
        spec = SPECS[meta["name"]]
        module = spec.build(meta["args"])
        state = spec.convert(meta["args"], read_weights(path.with_suffix(".safetensors")))
        check_state_dict(module, state, str(path))
        module.load_state_dict(state, strict=True)
        models[meta["name"]] = module.eval()
    return models


@pytest.fixture(scope="module")
def trellis_models():
    return _load_by_class()


@pytest.mark.parametrize(
    "file, tolerance",
    [
        ("ss_vae.safetensors", (2e-4, 1e-4)),
        ("slat_enc.safetensors", (2e-4, 1e-4)),
        ("slat_dec_gs.safetensors", (1e-4, 1e-4)),
    ],
)
def test_golden_outputs_match_trellis(trellis_models, file, tolerance):
    from safetensors.torch import load_file

    check = CHECKS[file]
    path = _fixtures() / "golden" / file
    if not path.is_file():
        pytest.skip(f"{path} not present")
    golden = load_file(str(path))
    if file == "ss_vae.safetensors":  # dense 64³ convolutions: one sample keeps the test short
        golden = {k: v[:1] for k, v in golden.items()}
    missing = [name for name in check.needs if name not in trellis_models]
    assert not missing, f"fixture checkpoints for {missing} not found"
    outputs = check.run(trellis_models, golden)
    comparisons = check.comparisons(golden)
    assert comparisons
    for key, compare in comparisons.items():
        assert (compare.atol, compare.rtol) == tolerance
        out, ref = outputs[key], golden[key]
        assert out.shape == ref.shape, key
        err = (out - ref).abs()
        assert bool((err <= compare.atol + compare.rtol * ref.abs()).all()), (
            f"{key}: max abs error {float(err.max()):.3g}"
        )


def test_decoded_trellis_gaussians_survive_ply_export(trellis_models, tmp_path):
    from safetensors.torch import load_file

    golden = load_file(str(_fixtures() / "golden" / "slat_dec_gs.safetensors"))
    decoder = trellis_models["SLatGaussianDecoder"]
    with torch.no_grad():
        g = decoder(SparseTensor(golden["coords"], golden["latents"]))[0]
    back = load_ply(g.save_ply(tmp_path / "g.ply"))
    assert torch.allclose(back.scales, golden["0.scaling"], atol=1e-6, rtol=1e-5)
    assert torch.allclose(back.opacities, golden["0.opacity"][:, 0], atol=1e-6)
    assert torch.allclose(back.rotations, golden["0.rotation"], atol=1e-6)
    assert torch.allclose(back.means, golden["0.xyz"], atol=1e-7)


# ------------------------------------------------------------------------- conversions
def test_ss_encoder_keys_renumber_middle_blocks_after_the_levels():
    args = {
        "in_channels": 1,
        "latent_channels": 4,
        "num_res_blocks": 1,
        "num_res_blocks_middle": 2,
        "channels": [8, 16],
    }
    rules = vaes._ss_rules(args, "SparseStructureEncoder")
    from voxforge.trellis.common import rename

    state = {
        "blocks.1.conv.weight": torch.zeros(16, 8, 2, 2, 2),
        "middle_block.1.conv2.bias": torch.zeros(16),
        "out_layer.0.weight": torch.zeros(16),
    }
    out = rename(state, rules)
    # levels: res(8), down, res(16) = blocks 0..2; middle blocks follow as 3, 4
    assert set(out) == {"blocks.1.weight", "blocks.4.conv2.bias", "norm_out.weight"}


def test_ss_decoder_widths_are_reversed_and_middle_comes_first():
    args = {
        "out_channels": 1,
        "latent_channels": 4,
        "num_res_blocks": 1,
        "num_res_blocks_middle": 1,
        "channels": [16, 8],
    }
    cfg = vaes.ss_vae_config(args, "SparseStructureDecoder")
    assert cfg.channels == [8, 16]
    decoder = SPECS["SparseStructureDecoder"].build(args)
    assert decoder.blocks[0].conv1.in_channels == 16  # the middle block, at the latent width
    assert decoder.blocks[2].conv.out_channels == 8 * 8  # up-sampling conv to 8x the finer width


def test_unknown_key_and_unsupported_options_raise_user_errors():
    args = {
        "resolution": 8,
        "in_channels": 4,
        "model_channels": 16,
        "latent_channels": 2,
        "num_blocks": 1,
        "num_heads": 2,
    }
    state = {"input_layer.weight": torch.zeros(16, 4), "blocks.0.attn.mystery.weight": torch.zeros(1)}
    with pytest.raises(UserError, match="blocks.0.attn.mystery.weight"):
        SPECS["SLatEncoder"].convert(args, state)
    with pytest.raises(UserError, match="shift_order"):
        SPECS["SLatEncoder"].build({**args, "attn_mode": "shift_order"})
    with pytest.raises(UserError, match="rope"):
        SPECS["SLatEncoder"].build({**args, "pe_mode": "rope"})
    with pytest.raises(UserError, match="num_blocks"):
        SPECS["SLatEncoder"].build({k: v for k, v in args.items() if k != "num_blocks"})


def test_sparse_transformer_rules_cover_the_whole_backbone():
    cfg = SLatVAEConfig(width=16, heads=2, qk_norm=True, norm_affine=False, out_norm_affine=False)
    stack = SparseTransformerStack(3, 5, cfg, blocks=2)
    trellis_keys = [
        "input_layer.weight",
        "blocks.1.attn.to_qkv.bias",
        "blocks.1.attn.to_out.weight",
        "blocks.0.attn.q_rms_norm.gamma",
        "blocks.0.attn.k_rms_norm.gamma",
        "blocks.1.mlp.mlp.0.weight",
        "blocks.1.mlp.mlp.2.bias",
        "out_layer.bias",
    ]
    from voxforge.trellis.common import rename

    out = rename({k: torch.zeros(1) for k in trellis_keys}, vaes.sparse_transformer_rules(""))
    assert set(out) <= set(stack.state_dict())
    assert "blocks.0.attn.q_norm.weight" in out and "output.bias" in out


# ------------------------------------------------------------------------- the options
def test_ss_vae_downsample_option():
    small = {"resolution": 8, "channels": [4, 8], "num_res_blocks": 0, "num_res_blocks_middle": 0}
    default = SSVAEEncoder(SSVAEConfig(**small))
    trellis = SSVAEEncoder(SSVAEConfig(**small, downsample="conv2"))
    assert default.blocks[0].kernel_size == (3, 3, 3) and default.blocks[0].padding == (1, 1, 1)
    assert trellis.blocks[0].kernel_size == (2, 2, 2) and trellis.blocks[0].padding == (0, 0, 0)
    mean, _ = trellis(torch.zeros(1, 1, 8, 8, 8))
    assert mean.shape == (1, 8, 4, 4, 4)


def test_position_embedding_orders():
    coords = torch.tensor([[0, 1, 2], [5, 7, 63]])
    dim = 20  # 3 axes x 2 x 3 frequencies = 18, two zero channels
    assert torch.equal(position_embedding(coords, dim), sincos_position_embedding(coords.float(), dim))
    emb = position_embedding(coords, dim, "sin_cos")
    half = dim // 3 // 2
    freqs = 1.0 / 10000 ** (torch.arange(half) / half)
    for axis in range(3):
        args = coords[:, axis, None].float() * freqs
        block = emb[:, axis * 2 * half : (axis + 1) * 2 * half]
        assert torch.allclose(block[:, :half], torch.sin(args), atol=1e-6)
        assert torch.allclose(block[:, half:], torch.cos(args), atol=1e-6)
    assert torch.equal(emb[:, 18:], torch.zeros(2, 2))


def test_stack_shift_pattern_norms_and_trunk():
    cfg = SLatVAEConfig(
        width=16, heads=2, window_size=4, norm_affine=False, out_norm_affine=False, out_norm_eps=1e-5
    )
    stack = SparseTransformerStack(3, 5, cfg, blocks=4)
    assert [b.attn.shift_window for b in stack.blocks] == [0, 2, 0, 2]
    assert stack.blocks[0].norm1.weight is None and stack.out_norm.weight is None
    assert stack.out_norm.eps == 1e-5
    trunk = SparseTransformerStack(3, None, cfg, blocks=1)
    assert trunk.output is None and trunk.out_norm is None
    x = SparseTensor(torch.tensor([[0, 0, 0, 0], [0, 1, 2, 3]]), torch.randn(2, 3))
    assert trunk(x).feats.shape == (2, 16)
    assert not any("out" in k for k in trunk.state_dict())


def test_trellis_head_of_a_zero_output():
    head = GaussianHeadConfig(
        parametrisation="trellis",
        gaussians_per_voxel=4,
        scaling_bias=0.004,
        filter_3d=0.0009,
        opacity_init=0.1,
    )
    cfg = SLatVAEConfig(resolution=8, latent_channels=2, width=16, heads=2, decoder_blocks=1, head=head)
    decoder = SLatGaussianDecoder(cfg)  # output layer starts at zero
    assert "offset_perturbation" in decoder.state_dict()
    coords = torch.tensor([[0, 1, 2, 3], [1, 7, 7, 7]])
    out = decoder(SparseTensor(coords, torch.randn(2, 2)))
    assert [len(g) for g in out] == [4, 4]
    g = out[0]
    assert torch.allclose(g.scales, torch.full((4, 3), math.sqrt(0.004**2 + 0.0009**2)), rtol=1e-5)
    assert torch.allclose(g.opacities, torch.full((4,), 0.1), atol=1e-6)
    assert torch.equal(g.rotations, torch.tensor([[1.0, 0, 0, 0]]).expand(4, 4))
    centre = (torch.tensor([1, 2, 3]) + 0.5) / 8 - 0.5
    expected = centre + (hammersley_points(4) * 2 - 1) / 1.5 * (0.5 * 1.5 / 8)
    assert torch.allclose(g.means, expected, atol=1e-6)


def test_trellis_head_layout_and_output_lr():
    head = GaussianHeadConfig(parametrisation="trellis", gaussians_per_voxel=2, output_lr={"rotation": 0.1})
    cfg = SLatVAEConfig(resolution=4, latent_channels=2, width=16, heads=2, decoder_blocks=1, head=head)
    decoder = SLatGaussianDecoder(cfg)
    with torch.no_grad():
        decoder.stack.output.bias[18:26] = torch.arange(8.0)  # rotations: attribute-major after 3 x K·3
    g = decoder(SparseTensor(torch.tensor([[0, 1, 1, 1]]), torch.zeros(1, 2)))[0]
    quats = torch.arange(8.0).view(2, 4) * 0.1 + torch.tensor([1.0, 0, 0, 0])
    assert torch.allclose(g.quats, quats)
    with pytest.raises(ConfigValueError, match="unknown attributes"):
        GaussianHeadConfig(output_lr={"xyz": 1.0})


def test_default_head_is_unchanged():
    cfg = SLatVAEConfig(resolution=4, latent_channels=2, width=16, heads=2, decoder_blocks=1)
    decoder = SLatGaussianDecoder(cfg)
    assert "offset_perturbation" not in decoder.state_dict() and "offset_bias" not in decoder.state_dict()
