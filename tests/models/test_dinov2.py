"""voxforge's DINOv2 (with registers): loading from local files, strict keys, transformers parity."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from voxforge.errors import UserError
from voxforge.models.dinov2 import (
    DinoV2,
    DinoV2Config,
    config_from_state,
    convert_transformers_state,
    imagenet_normalize,
    load_dinov2,
)

TINY = DinoV2Config(img_size=56, patch_size=14, embed_dim=32, depth=2, num_heads=2, num_register_tokens=4)


def _randomised(cfg: DinoV2Config = TINY, seed: int = 0) -> DinoV2:
    torch.manual_seed(seed)
    model = DinoV2(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == cfg.embed_dim else 0.0))
    return model


def test_token_layout_and_condition_norm():
    model = _randomised()
    image = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        x = model(image)
        tokens = model.condition_tokens(image)
    assert x.shape == (2, TINY.num_tokens(), 32) == (2, 1 + 4 + 16, 32)
    assert torch.allclose(tokens.mean(-1), torch.zeros(2, 21), atol=1e-5)
    assert torch.allclose(tokens.var(-1, unbiased=False), torch.ones(2, 21), atol=1e-3)
    # registers carry no position: input tokens 1..R are the register parameters themselves
    first = model.tokens(image)
    assert torch.equal(first[:, 1:5], model.register_tokens.expand(2, -1, -1))


def test_positions_interpolate_to_other_grids():
    model = _randomised()
    with torch.no_grad():
        assert model.position_embedding(56, 56) is model.pos_embed
        out = model(torch.randn(1, 3, 70, 42))  # 5 x 3 patches
    assert out.shape == (1, 1 + 4 + 15, 32)
    offset = DinoV2(
        DinoV2Config(**{**TINY.__dict__, "interpolate_offset": 0.1, "interpolate_antialias": False})
    )
    assert offset.position_embedding(98, 28).shape == (1, 1 + 7 * 2, 32)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_facebookresearch_file_loads_with_inferred_or_json_config(tmp_path, suffix):
    cfg = DinoV2Config(**{**TINY.__dict__, "embed_dim": 64, "num_heads": 1})  # heads = 64 / 64, as inferred
    model = _randomised(cfg)
    path = tmp_path / f"dinov2_tiny{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    image = torch.randn(1, 3, 56, 56)
    loaded = load_dinov2(path)
    assert loaded.cfg == cfg and not loaded.training
    assert torch.equal(loaded(image), model(image).detach())

    # a same-stem .json (the fixture's format) wins over inference: here 4 heads
    cfg4 = DinoV2Config(**{**cfg.__dict__, "num_heads": 4})
    model4 = _randomised(cfg4, seed=1)
    state4 = {k: v.contiguous() for k, v in model4.state_dict().items()}
    save_file(state4, path) if suffix == ".safetensors" else torch.save(state4, path)
    args = {**cfg4.__dict__, "ffn_layer": "mlp", "block_chunks": 0}
    del args["layer_norm_eps"], args["qkv_bias"]
    path.with_suffix(".json").write_text(json.dumps({"code": "test", "args": args}))
    loaded4 = load_dinov2(path)
    assert loaded4.cfg.num_heads == 4
    assert torch.allclose(loaded4(image), model4(image).detach(), atol=1e-6)


def test_config_inferred_from_shapes_of_the_official_model():
    with torch.device("meta"):
        official = DinoV2()  # dinov2_vitl14_reg
    cfg = config_from_state(official.state_dict())
    assert cfg == DinoV2Config()
    assert official.cfg.num_tokens() == 1 + 4 + 37 * 37


def test_strict_loading_names_missing_unexpected_and_misshaped_keys(tmp_path):
    state = {k: v.clone() for k, v in _randomised().state_dict().items()}
    state.pop("blocks.1.ls2.gamma")
    state["blocks.0.attn.extra"] = torch.zeros(3)
    state["blocks.0.mlp.fc2.bias"] = torch.zeros(31)
    path = tmp_path / "broken.safetensors"
    save_file(state, path)
    cfg = {**TINY.__dict__}
    path.with_suffix(".json").write_text(json.dumps({"args": cfg}))
    with pytest.raises(UserError) as err:
        load_dinov2(path)
    message = str(err.value)
    assert str(path) in message
    assert "missing (1): blocks.1.ls2.gamma" in message
    assert "unexpected (1): blocks.0.attn.extra" in message
    assert "blocks.0.mlp.fc2.bias: file (31,), model (32,)" in message


def test_bad_files_and_configs_are_user_errors(tmp_path):
    pickled = tmp_path / "object.pth"
    torch.save({"cls_token": torch.zeros(1), "net": torch.nn.Linear(2, 2)}, pickled)
    with pytest.raises(UserError, match="weights_only=True"):
        load_dinov2(pickled)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"teacher": {"cls_token": torch.zeros(1)}}, wrapped)
    with pytest.raises(UserError, match="not a flat state dict of tensors \\(not a tensor: teacher"):
        load_dinov2(wrapped)
    with pytest.raises(UserError, match="not found"):
        load_dinov2(tmp_path / "absent.safetensors")
    other = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2)}, other)
    with pytest.raises(UserError, match="no 'cls_token'"):
        load_dinov2(other)
    with pytest.raises(UserError, match="ffn_layer='swiglufused' is not supported"):
        DinoV2Config.from_args({"ffn_layer": "swiglufused"}, "x.json")
    with pytest.raises(UserError, match="unknown DINOv2 argument 'depthh'"):
        DinoV2Config.from_args({"depthh": 3}, "x.json")
    with pytest.raises(UserError, match="config.json"):
        load_dinov2(tmp_path)  # a folder that is not a transformers folder


def test_transformers_conversion_fuses_qkv_and_names_stray_keys():
    q, k, v = torch.full((4, 4), 1.0), torch.full((4, 4), 2.0), torch.full((4, 4), 3.0)
    state = {
        "encoder.layer.0.attention.attention.query.weight": q,
        "encoder.layer.0.attention.attention.key.weight": k,
        "encoder.layer.0.attention.attention.value.weight": v,
        "encoder.layer.0.attention.output.dense.bias": torch.zeros(4),
        "layernorm.weight": torch.ones(4),
    }
    out = convert_transformers_state(state)
    assert torch.equal(out["blocks.0.attn.qkv.weight"], torch.cat([q, k, v]))
    assert set(out) == {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "norm.weight"}
    with pytest.raises(UserError, match="unexpected key 'pooler.dense.weight'"):
        convert_transformers_state({**state, "pooler.dense.weight": q})
    with pytest.raises(UserError, match="block 0 lacks the attention value weight"):
        convert_transformers_state({k_: v_ for k_, v_ in state.items() if "value" not in k_})


def test_matches_transformers_dinov2_with_registers(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
        num_register_tokens=4,
        layerscale_value=0.5,
    )
    torch.manual_seed(0)
    reference = transformers.Dinov2WithRegistersModel(config).eval()
    with torch.no_grad():  # LayerScale and norms away from their initial values
        for name, p in reference.named_parameters():
            if "lambda1" in name or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    reference.save_pretrained(tmp_path / "hf")
    model = load_dinov2(tmp_path / "hf")
    assert model.cfg.num_heads == 4 and model.cfg.init_values == 0.5
    for size in [(56, 56), (70, 42)]:
        image = imagenet_normalize(torch.rand(2, 3, *size))
        with torch.no_grad():
            out = reference(pixel_values=image, output_hidden_states=True)
            x_prenorm = model(image)
        assert (out.hidden_states[-1] - x_prenorm).abs().max() < 1e-5
        assert (out.last_hidden_state - model.normed(x_prenorm)).abs().max() < 1e-5


def test_image_encoder_config_names_a_weights_file(tmp_path):
    from voxforge.models.image_encoders import DinoV2Encoder, ImageEncoderConfig, build_image_encoder

    model = _randomised()
    path = tmp_path / "dinov2_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    path.with_suffix(".json").write_text(json.dumps({"args": {**TINY.__dict__}}))
    encoder = build_image_encoder(ImageEncoderConfig(kind="dinov2", image_size=28, pretrained=str(path)))
    assert isinstance(encoder, DinoV2Encoder) and not encoder.trainable
    assert encoder.out_dim == 32 and encoder.num_tokens == 1 + 4 + 4
    images = torch.rand(2, 3, 28, 28)
    tokens = encoder.train()(images)
    assert not encoder.model.training and tokens.shape == (2, encoder.num_tokens, 32)
    assert torch.allclose(tokens, model.condition_tokens(imagenet_normalize(images)).detach(), atol=1e-6)
    absent = ImageEncoderConfig(kind="dinov2", image_size=28, pretrained=str(tmp_path / "absent.pth"))
    with pytest.raises(UserError, match="absent.pth: DINOv2 weights not found"):
        build_image_encoder(absent)  # a file name never falls through to the hub


def test_official_transformers_layout_converts_to_the_official_model():
    transformers = pytest.importorskip("transformers")
    from voxforge.models.dinov2 import config_from_transformers

    # facebook/dinov2-with-registers-large's config, built on the meta device (no weights)
    config = transformers.Dinov2WithRegistersConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, image_size=518, patch_size=14
    )
    with torch.device("meta"):
        reference = transformers.Dinov2WithRegistersModel(config)
        ours = DinoV2(config_from_transformers(config.to_dict()))
    assert ours.cfg == DinoV2Config()  # dinov2_vitl14_reg
    converted = convert_transformers_state(reference.state_dict())
    expected = ours.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)
