import copy
import warnings

import pytest
import torch

from tests.stages.image_helpers import tiny_pretrained_text_encoder
from voxforge.errors import ConfigError, UserError
from voxforge.models.image import (
    ImageAEConfig,
    ImageFlowConfig,
    LoRAConfig,
    LoRATransformer,
    TextEncoderConfig,
    apply_lora,
    build_autoencoder,
    build_text_encoder,
    build_transformer,
    load_autoencoder,
    load_builtin_text_encoder,
    load_transformer_weights,
    lora_state_dict,
    tokenize_words,
)

pytest.importorskip("diffusers")
pytest.importorskip("peft")

pytestmark = pytest.mark.usefixtures("one_thread")

AE = ImageAEConfig(
    latent_channels=4,
    block_out_channels=[8, 16, 16],
    block_types=["ResBlock", "ResBlock", "EfficientViTBlock"],
    encoder_layers=[1, 1, 1],
    decoder_layers=[1, 1, 1],
    attention_head_dim=8,
)
FLOW = ImageFlowConfig(in_channels=4, num_layers=2, heads=2, head_dim=8, cross_heads=2)
TEXT = TextEncoderConfig(width=16, layers=1, heads=2, max_length=8, unk_buckets=16)


def velocity(model, x, embeds, mask, t=(500.0, 20.0)):
    return model(
        x,
        encoder_hidden_states=embeds,
        timestep=torch.tensor(t),
        encoder_attention_mask=mask,
        return_dict=False,
    )[0]


def test_autoencoder_builds_compresses_and_reloads_from_a_local_folder(tmp_path):
    torch.manual_seed(0)
    ae = build_autoencoder(AE).eval()
    assert ae.spatial_compression_ratio == 4
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latent = ae.encode(x).latent
        assert latent.shape == (2, 4, 8, 8)
        assert ae.decode(latent).sample.shape == x.shape
    ae.save_pretrained(tmp_path / "ae")
    again = build_autoencoder(ImageAEConfig(pretrained=str(tmp_path / "ae")))
    with torch.no_grad():
        assert torch.equal(again.encode(x).latent, latent)
    with pytest.raises(UserError, match="never downloads"):
        load_autoencoder(tmp_path / "missing")


def test_autoencoder_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.encoder_layers"):
        build_autoencoder(ImageAEConfig(block_out_channels=[8, 16], block_types=["ResBlock", "ResBlock"]))
    with pytest.raises(ConfigError, match="model.block_types"):
        build_autoencoder(
            ImageAEConfig(
                block_out_channels=[8],
                block_types=["Conv"],
                encoder_layers=[1],
                decoder_layers=[1],
            )
        )


def test_transformer_is_resolution_free_and_loads_pretrained(tmp_path):
    torch.manual_seed(0)
    model = build_transformer(FLOW, caption_channels=16, sample_size=8).eval()
    embeds, mask = torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        small = velocity(model, torch.randn(2, 4, 8, 8), embeds, mask)
        large = velocity(model, torch.randn(2, 4, 16, 16), embeds, mask)
    assert small.shape == (2, 4, 8, 8) and large.shape == (2, 4, 16, 16)
    assert not any("pos_embed" in k for k in model.state_dict())  # no absolute position embedding
    model.save_pretrained(tmp_path / "sana")
    pretrained = build_transformer(
        ImageFlowConfig(pretrained=str(tmp_path / "sana")), caption_channels=16, sample_size=16
    )
    assert pretrained.config.sample_size == 16
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(velocity(pretrained, x, embeds, mask), velocity(model, x, embeds, mask))
    with pytest.raises(UserError, match="width 16"):
        build_transformer(ImageFlowConfig(pretrained=str(tmp_path / "sana")), caption_channels=32)


def test_misfitting_weights_are_refused_with_every_key_named():
    model = build_transformer(FLOW, caption_channels=16)
    wider = build_transformer(
        ImageFlowConfig(in_channels=4, num_layers=2, heads=4, head_dim=8, cross_heads=2)
    )
    with pytest.raises(UserError) as err:
        load_transformer_weights(model, wider.state_dict(), "other/run")
    message = str(err.value)
    assert "other/run" in message and "shapes differ" in message
    assert "patch_embed.proj.weight (32, 4, 1, 1) vs (16, 4, 1, 1)" in message
    assert "caption_projection.linear_1.weight" in message
    deeper = build_transformer(
        ImageFlowConfig(in_channels=4, num_layers=3, heads=2, head_dim=8, cross_heads=2)
    )
    with pytest.raises(UserError, match=r"unexpected: transformer_blocks\.2\."):
        load_transformer_weights(model, deeper.state_dict(), "deeper")


def test_builtin_text_encoder_vocabulary_save_load_and_unknown_words(tmp_path):
    state = torch.random.get_rng_state()
    encoder = build_text_encoder(TEXT, captions=["Two red circles", "one blue square, on the left"])
    assert torch.equal(torch.random.get_rng_state(), state)  # seeded init, caller's RNG untouched
    assert encoder.vocabulary[2:] == sorted(
        set(tokenize_words("two red circles one blue square on the left"))
    )
    embeds, mask = encoder.encode(["two red circles", "", "two purple circles", "two orange circles"])
    assert embeds.shape == (4, 8, 16) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [4, 1, 4, 4]  # <bos> + words; the empty caption keeps <bos>
    ids, _ = encoder.ids(["red purple orange"])
    assert ids[0, 1] < len(encoder.vocabulary) <= min(ids[0, 2], ids[0, 3])  # unknown words: hashed rows
    assert ids[0, 2] != ids[0, 3] and not torch.allclose(embeds[2], embeds[3])
    again = build_text_encoder(TEXT, captions=["one blue square, on the left", "Two red circles"])
    assert torch.equal(again.encode(["two red circles"])[0], embeds[:1])  # same captions, same encoder
    encoder.save(tmp_path / "te")
    loaded = load_builtin_text_encoder(tmp_path / "te")
    assert loaded.vocabulary == encoder.vocabulary
    assert torch.equal(loaded.encode(["two red circles", ""])[0], embeds[:2])
    with pytest.warns(UserWarning, match="truncated"):
        loaded.encode(["one two three four five six seven eight nine"])


def test_pretrained_text_encoder_from_local_folders(tmp_path):
    path = tiny_pretrained_text_encoder(tmp_path)
    encoder = build_text_encoder(TextEncoderConfig(kind="pretrained", path=str(path), max_length=6))
    assert encoder.dim == 16
    embeds, mask = encoder.encode(["A Red circle ", "blue"])
    assert embeds.shape == (2, 6, 16) and embeds.dtype == torch.float32
    assert mask.sum(1).tolist() == [3, 1]  # lower-cased, right-padded to max_length
    lower, _ = encoder.encode(["a red circle"])
    assert torch.allclose(lower[0, :3], embeds[0, :3], atol=1e-6)
    with pytest.raises(ConfigError, match="text_encoder.path"):
        build_text_encoder(TextEncoderConfig(kind="pretrained"))
    with pytest.raises(UserError, match="never downloads"):
        build_text_encoder(TextEncoderConfig(kind="pretrained", path=str(tmp_path / "nothing")))


def test_lora_registers_only_adapters_and_moves_with_its_base():
    torch.manual_seed(0)
    base = build_transformer(FLOW, caption_channels=16)
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    model = apply_lora(base, LoRAConfig(rank=2, alpha=4.0))
    names = [n for n, _ in model.named_parameters()]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    assert all(p.requires_grad for p in model.parameters())
    assert not any(p.requires_grad for n, p in base.named_parameters() if "lora_" not in n)
    state = model.state_dict()
    assert set(state) == set(names)  # the engine's checkpoint: adapters only
    targets = {n.split("__lora_")[0].split("__")[-1] for n in model.adapters}
    assert targets == {"to_q", "to_k", "to_v", "0"}  # to_out.0 is the last path element "0"
    assert model.config is base.config and model.dtype == torch.float32  # the wrapper reads as the model
    model.double()
    assert next(iter(base.parameters())).dtype == torch.float64
    model.float().eval()
    assert not base.training
    twin = copy.deepcopy(model)  # the engine's evaluation copy keeps the adapters inside its base
    next(iter(twin.parameters())).data.add_(1.0)
    assert not torch.equal(next(iter(twin.parameters())), next(iter(model.parameters())))
    assert any("lora_A" in n for n, _ in twin.base.named_parameters())
    assert all(torch.equal(frozen[k], v) for k, v in base.state_dict().items() if k in frozen)
    with pytest.raises(ConfigError, match="lora.targets"):
        apply_lora(build_transformer(FLOW, caption_channels=16), LoRAConfig(targets=["nothing_here"]))


def test_saved_lora_loads_through_diffusers_and_gives_the_same_output(tmp_path):
    from diffusers import SanaTransformer2DModel
    from diffusers.loaders.lora_pipeline import SanaLoraLoaderMixin

    torch.manual_seed(0)
    base = build_transformer(FLOW, caption_channels=16)
    base.save_pretrained(tmp_path / "base")
    model = apply_lora(base, LoRAConfig(rank=2, alpha=6.0)).eval()  # alpha != rank: metadata matters
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))  # trained-looking adapters (B is no longer 0)
    state, meta = lora_state_dict(model)
    assert all(k.endswith(("lora_A.weight", "lora_B.weight")) for k in state)
    SanaLoraLoaderMixin.save_lora_weights(
        str(tmp_path / "lora"), transformer_lora_layers=state, transformer_lora_adapter_metadata=meta
    )
    fresh = SanaTransformer2DModel.from_pretrained(str(tmp_path / "base"), local_files_only=True).eval()
    weights, metadata = SanaLoraLoaderMixin.lora_state_dict(str(tmp_path / "lora"), return_lora_metadata=True)
    assert all(k.startswith("transformer.") for k in weights)
    SanaLoraLoaderMixin.load_lora_into_transformer(weights, transformer=fresh, metadata=metadata)
    x, embeds = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    plain = SanaTransformer2DModel.from_pretrained(str(tmp_path / "base"), local_files_only=True).eval()
    with torch.no_grad(), warnings.catch_warnings():
        ours, theirs = velocity(model, x, embeds, mask), velocity(fresh, x, embeds, mask)
        without = velocity(plain, x, embeds, mask)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert (ours - without).abs().max() > 1e-2  # the adapters do change the output


def test_lora_wrapper_state_round_trip():
    torch.manual_seed(0)
    model = apply_lora(build_transformer(FLOW, caption_channels=16), LoRAConfig(rank=2))
    torch.manual_seed(1)
    other = apply_lora(build_transformer(FLOW, caption_channels=16), LoRAConfig(rank=2))
    other.load_state_dict(model.state_dict())
    assert isinstance(other, LoRATransformer)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))


def test_fenced_linear_attention_matches_diffusers_and_stays_finite_in_fp16():
    torch.manual_seed(0)
    fenced = build_transformer(FLOW, caption_channels=16).eval()
    plain = build_transformer(
        ImageFlowConfig(**{**FLOW.__dict__, "attention_fp32": False}), caption_channels=16
    )
    plain.load_state_dict(fenced.state_dict())
    plain.eval()
    kinds = {type(p).__name__ for p in fenced.attn_processors.values()}
    assert "FencedLinearAttention" in kinds and "SanaLinearAttnProcessor2_0" not in kinds
    x, embeds, mask = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 16), torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(velocity(fenced, x, embeds, mask), velocity(plain, x, embeds, mask), atol=1e-5)
        for model in (fenced, plain):  # keys that ReLU zeroes everywhere: the normaliser is 0
            model.transformer_blocks[0].attn1.to_k.weight.zero_()
        with torch.autocast("cpu", dtype=torch.float16):
            ours, theirs = velocity(fenced, x, embeds, mask), velocity(plain, x, embeds, mask)
    assert torch.isfinite(ours).all()
    assert not torch.isfinite(theirs).all()  # diffusers' processor: 0 / 0 in fp16
