import pytest
import torch

from voxforge.config.core import from_dict
from voxforge.errors import ConfigError, UserError
from voxforge.models.image_encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DinoV2Encoder,
    ImageEncoderConfig,
    ViTEncoder,
    build_image_encoder,
)


@pytest.mark.parametrize("stem", ["conv", "patch"])
def test_vit_tokens_shape_gradients_and_resize(stem):
    cfg = ImageEncoderConfig(image_size=32, patch_size=8, width=32, depth=2, heads=4, stem=stem)
    enc = build_image_encoder(cfg)
    assert isinstance(enc, ViTEncoder) and enc.trainable
    images = torch.rand(2, 3, 48, 48)  # resized to 32 inside
    tokens = enc(images)
    assert tokens.shape == (2, enc.num_tokens, enc.out_dim) == (2, 17, 32)
    tokens.square().mean().backward()
    assert all(p.grad is not None for p in enc.parameters())
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        enc(torch.rand(2, 4, 32, 32))


@pytest.fixture
def tiny_dinov2_dir(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=28,
        patch_size=14,
    )
    torch.manual_seed(0)
    transformers.Dinov2Model(config).save_pretrained(tmp_path / "dinov2")
    return tmp_path / "dinov2"


def test_dinov2_loads_from_a_local_directory_frozen(tiny_dinov2_dir):
    cfg = from_dict(
        ImageEncoderConfig, {"kind": "dinov2", "image_size": 28, "pretrained": str(tiny_dinov2_dir)}
    )
    enc = build_image_encoder(cfg)
    assert isinstance(enc, DinoV2Encoder) and not enc.trainable
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.model.training
    images = torch.rand(2, 3, 56, 56)
    tokens = enc(images)
    assert tokens.shape == (2, enc.num_tokens, 32) == (2, 5, 32)
    # parameter-free LayerNorm of the last block's (pre-norm) tokens
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    resized = torch.nn.functional.interpolate(images, size=(28, 28), mode="bilinear", antialias=True)
    hidden = enc.model(pixel_values=(resized - mean) / std, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(tokens, torch.nn.functional.layer_norm(hidden, (32,)))
    assert not torch.allclose(tokens[0], tokens[1])


def test_dinov2_without_weights_names_the_builtin_alternative(tmp_path):
    pytest.importorskip("transformers")
    cfg = ImageEncoderConfig(
        kind="dinov2", image_size=28, pretrained=str(tmp_path / "absent"), local_files_only=True
    )
    with pytest.raises(UserError, match="image_encoder.kind=vit"):
        build_image_encoder(cfg)


def test_dinov2_rejects_a_model_of_another_kind(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    transformers.ViTModel(config).save_pretrained(tmp_path / "vit")
    cfg = ImageEncoderConfig(kind="dinov2", image_size=28, pretrained=str(tmp_path / "vit"))
    with pytest.raises(UserError, match="not DINOv2"):
        build_image_encoder(cfg)


def test_config_checks_patch_multiples():
    with pytest.raises(ConfigError, match="multiple of its patch size 14"):
        from_dict(ImageEncoderConfig, {"kind": "dinov2", "image_size": 64})
    with pytest.raises(ConfigError, match="patch_size"):
        from_dict(ImageEncoderConfig, {"image_size": 30, "patch_size": 8})
    with pytest.raises(ConfigError, match="power-of-two"):
        from_dict(ImageEncoderConfig, {"image_size": 36, "patch_size": 6, "stem": "conv"})
    assert from_dict(ImageEncoderConfig, {"image_size": 36, "patch_size": 6}).stem == "patch"
