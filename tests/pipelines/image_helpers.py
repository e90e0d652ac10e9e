"""Tiny real Sana components for the image-family tests: a random-weight
SanaTransformer2DModel + AutoencoderDC (4x downsampling, 32 px images, 8x8 latents) and a
tiny Gemma-2 with a word-level tokenizer built offline (no download)."""

from __future__ import annotations

import pytest
import torch

from voxforge.flow import time_grid

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


def save_tiny_sana(folder):
    sana = build(diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT), text=True)
    sana.save_pretrained(folder)
    return sana
