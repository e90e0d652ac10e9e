"""ImagePipeline against diffusers' SanaPipeline: same weights, noise and steps → the same image.

Tiny random-weight SanaTransformer2DModel + AutoencoderDC (+ a tiny Gemma-2 with a word-level
tokenizer built offline), fp32 on the CPU. SanaPipeline runs with its optional extras off
(resolution binning, caption cleaning, the complex-human-instruction prefix) and on voxforge's
time grid: `sigmas=` for FlowMatchEuler, an installed grid for its DPM-Solver (see
tests/flow/test_dpm.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxforge.errors import UserError
from voxforge.flow import time_grid
from voxforge.pipelines.image import ImagePipeline

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ["<pad>", "<eos>", "<bos>", "<unk>", "a", "red", "blue", "green", "circle", "square", "small", "big"]
CAPTION_DIM = 12
SHIFT = 3.0


def tiny_transformer(seed: int = 0):
    torch.manual_seed(seed)
    return diffusers.SanaTransformer2DModel(
        patch_size=1,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_cross_attention_heads=2,
        cross_attention_head_dim=8,
        cross_attention_dim=16,
        caption_channels=CAPTION_DIM,
        sample_size=8,
    ).eval()


def tiny_autoencoder(seed: int = 1):
    torch.manual_seed(seed)
    blocks = ("ResBlock", "ResBlock", "EfficientViTBlock")
    return diffusers.AutoencoderDC(
        in_channels=3,
        latent_channels=4,
        attention_head_dim=2,
        encoder_block_types=blocks,
        decoder_block_types=blocks,
        encoder_block_out_channels=(8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        encoder_qkv_multiscales=((), (), (5,)),
        decoder_qkv_multiscales=((), (), (5,)),
        encoder_layers_per_block=(1, 1, 1),
        decoder_layers_per_block=(1, 1, 1),
        downsample_block_type="conv",
        upsample_block_type="interpolate",
        decoder_norm_types="rms_norm",
        decoder_act_fns="silu",
        scaling_factor=0.41407,
    ).eval()


def tiny_text_encoder(seed: int = 2):
    torch.manual_seed(seed)
    model = tokenizers.Tokenizer(
        tokenizers.models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>")
    )
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    model.post_processor = tokenizers.processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", WORDS.index("<bos>"))]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=model, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    config = transformers.Gemma2Config(
        vocab_size=len(WORDS),
        hidden_size=CAPTION_DIM,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=6,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return tokenizer, transformers.Gemma2Model(config).eval()


class FlowDPMOnGrid(diffusers.DPMSolverMultistepScheduler):
    """Sana's DPM scheduler with voxforge's time grid (float timesteps, from t = 1)."""

    def set_timesteps(self, num_inference_steps=None, device=None, **kwargs):
        super().set_timesteps(num_inference_steps, device=device, **kwargs)
        self.sigmas = time_grid(num_inference_steps, self.config.flow_shift).float()
        self.timesteps = (self.sigmas[:-1] * 1000).to(device)


def sana_dpm(shift: float = SHIFT):
    return FlowDPMOnGrid(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=shift,
        solver_order=2,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
    )


def build(scheduler, *, text: bool = False):
    tokenizer, text_encoder = tiny_text_encoder() if text else (None, None)
    pipe = diffusers.SanaPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=tiny_autoencoder(),
        transformer=tiny_transformer(),
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class FixedEmbeddings:
    """A text encoder that returns given embeddings (the parity test bypasses text)."""

    def __init__(self, table: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.table = table

    def encode(self, prompts):
        embeds, masks = zip(*(self.table[p] for p in prompts))
        return torch.stack(embeds), torch.stack(masks)


def random_text(seed: int, length: int = 6, used: int = 4):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(length, dtype=torch.bool)
    mask[:used] = True
    return torch.randn(length, CAPTION_DIM, generator=g), mask


SANA_OFF = dict(use_resolution_binning=False, clean_caption=False, complex_human_instruction=None)


@pytest.mark.parametrize(
    ("sampler", "size", "cfg"),
    [("euler", (32, 32), 4.5), ("euler", (64, 32), 1.0), ("dpm", (32, 32), 4.5), ("dpm", (32, 64), 2.0)],
)
def test_same_image_as_sana_pipeline(sampler, size, cfg):
    steps = 5
    scheduler = (
        diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT) if sampler == "euler" else sana_dpm(SHIFT)
    )
    sana = build(scheduler)
    table = {"p0": random_text(10), "p1": random_text(11, used=6), "": random_text(12, used=1)}
    ours = ImagePipeline(
        sana.transformer,
        sana.vae,
        FixedEmbeddings(table),
        latent_scale=sana.vae.config.scaling_factor,
        flow_shift=SHIFT,
    )
    prompts = ["p0", "p1"]
    noise = ours.make_latent_noise(2, size, seed=7)
    embeds, mask = ours.encode_prompts(prompts)
    neg_embeds, neg_mask = ours.encode_prompts(["", ""])
    extra = {"sigmas": np.linspace(1.0, 0.0, steps + 1)[:-1].tolist()} if sampler == "euler" else {}
    common = dict(
        prompt_embeds=embeds,
        prompt_attention_mask=mask.long(),
        negative_prompt=None,
        negative_prompt_embeds=neg_embeds,
        negative_prompt_attention_mask=neg_mask.long(),
        num_inference_steps=steps,
        guidance_scale=cfg,
        width=size[0],
        height=size[1],
        **SANA_OFF,
        **extra,
    )
    reference_latents = sana(latents=noise.clone(), output_type="latent", **common).images
    reference = sana(latents=noise.clone(), output_type="np", **common).images
    latents = ours.generate(
        prompts, steps=steps, cfg=cfg, seed=7, size=size, sampler=sampler, output="latent"
    )
    image = ours.generate(prompts, steps=steps, cfg=cfg, seed=7, size=size, sampler=sampler, output="float")
    assert image.shape == (2, size[1], size[0], 3)
    torch.testing.assert_close(latents, reference_latents, atol=1e-4, rtol=1e-4)
    assert np.abs(image - reference).max() < 1e-4
    assert 0.01 < image.std()  # a real image, not a saturated one
    assert not np.allclose(image[0], image[1], atol=1e-3)  # the prompt matters


def save_tiny_sana(folder):
    sana = build(diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT), text=True)
    sana.save_pretrained(folder)
    return sana


def test_from_diffusers_folder_generates_sana_pipeline_images(tmp_path):
    sana = save_tiny_sana(tmp_path / "sana")
    ours = ImagePipeline.from_diffusers(tmp_path / "sana", max_sequence_length=8)
    assert ours.flow_shift == SHIFT and ours.resolution == (32, 32) and ours.factor == 4
    prompts, negative, steps = ["a red circle", "a big blue square"], "green", 4
    noise = ours.make_latent_noise(2, (32, 32), seed=3)
    reference = sana(
        prompt=prompts,
        negative_prompt=negative,
        latents=noise,
        num_inference_steps=steps,
        guidance_scale=4.5,
        height=32,
        width=32,
        max_sequence_length=8,
        sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1].tolist(),
        output_type="np",
        **SANA_OFF,
    ).images
    image = ours.generate(prompts, negative=negative, steps=steps, cfg=4.5, seed=3, output="float")
    assert np.abs(image - reference).max() < 1e-4
    uint8 = ours.generate(prompts, negative=negative, steps=steps, cfg=4.5, seed=3)
    assert uint8.dtype == np.uint8 and uint8.shape == (2, 32, 32, 3)
    assert np.array_equal(uint8, (reference * 255).round().astype(np.uint8))
    # from_model recognises the folder
    assert isinstance(ImagePipeline.from_model(tmp_path / "sana"), ImagePipeline)


def test_seed_per_image_and_determinism(tmp_path):
    sana = build(diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    table = {p: random_text(i) for i, p in enumerate(["a", "b", ""])}
    ours = ImagePipeline(
        sana.transformer, sana.vae, FixedEmbeddings(table), latent_scale=0.4, flow_shift=SHIFT
    )
    both = ours.generate(["a", "b"], steps=2, seed=5)
    again = ours.generate(["a", "b"], steps=2, seed=5)
    assert np.array_equal(both, again)
    alone = ours.generate(["b"], steps=2, seed=6)  # image i uses seed + i
    assert np.abs(alone[0].astype(int) - both[1].astype(int)).max() <= 1
    assert not np.array_equal(ours.generate(["a"], steps=2, seed=9)[0], both[0])


def test_bad_inputs_are_user_errors(tmp_path):
    sana = build(diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT))
    ours = ImagePipeline(
        sana.transformer,
        sana.vae,
        FixedEmbeddings({"a": random_text(0), "": random_text(1)}),
        latent_scale=0.4,
        flow_shift=SHIFT,
    )
    with pytest.raises(UserError, match="multiples of 4"):
        ours.generate(["a"], steps=1, size=(30, 32))
    with pytest.raises(UserError, match="sampler"):
        ours.generate(["a"], steps=1, sampler="ddim")
    with pytest.raises(UserError, match="steps"):
        ours.generate(["a"], steps=0)
    with pytest.raises(UserError, match="negative prompts"):
        ours.generate(["a"], negative=["", ""], steps=1)
    with pytest.raises(UserError, match="not found"):
        ImagePipeline.from_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither"):
        ImagePipeline.from_model(tmp_path / "empty")
    (tmp_path / "half" / "transformer").mkdir(parents=True)
    with pytest.raises(UserError, match="missing vae/"):
        ImagePipeline.from_diffusers(tmp_path / "half")
