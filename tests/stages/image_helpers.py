"""Tiny image-family artefacts shared by the image stage tests (built once per session).

12 synthetic captioned 32-px images prepared into one square bucket; a 2-level DC-AE
(2x compression, 4 latent channels) trained for 2 steps; the tiny flow overrides.
"""

from __future__ import annotations

from pathlib import Path

COMMON = [
    "train.progress=false",
    "train.tensorboard=false",
    "train.sample_every=0",
    "optim.warmup_steps=0",
    "train.precision=fp32",
]
AE_OVERRIDES = COMMON + [
    "model.latent_channels=4",
    "model.block_out_channels=[8,16]",
    "model.block_types=[ResBlock,EfficientViTBlock]",
    "model.encoder_layers=[1,1]",
    "model.decoder_layers=[1,1]",
    "model.attention_head_dim=8",
    "data.eval_images=3",
    "data.scale_images=4",
    "train.max_steps=2",
    "train.batch_size=4",
    "train.checkpoint_every=2",
    "train.ema_rates=[0.9]",
]
FLOW_OVERRIDES = COMMON + [
    "model.in_channels=4",
    "model.num_layers=2",
    "model.heads=2",
    "model.head_dim=8",
    "model.cross_heads=2",
    "text_encoder.width=16",
    "text_encoder.layers=1",
    "text_encoder.heads=2",
    "text_encoder.max_length=16",
    "data.eval_images=3",
    "train.max_steps=2",
    "train.batch_size=4",
    "train.checkpoint_every=2",
    "train.ema_rates=[0.9]",
    "sampler.steps=2",
]

_CACHE: dict[Path, dict[str, Path]] = {}


def prepared_images(base: Path, size: int = 32, num: int = 12, **synth) -> Path:
    from voxforge.data.images import ImagePrepareConfig, prepare_images
    from voxforge.data.synth_images import SynthImagesConfig, write_synth_images

    out = base / f"images_{size}"
    if not (out / "dataset.json").is_file():
        write_synth_images(base / f"src_{size}", SynthImagesConfig(num=num, size=size, seed=0, **synth))
        config = ImagePrepareConfig(resolution=size, multiple=8, buckets="square", workers=0, progress=False)
        prepare_images([base / f"src_{size}"], out, config)
    return out


def image_artefacts(base: Path) -> dict[str, Path]:
    """{"images": prepared 32-px folder, "images64": the same at 64 px, "ae_run": a trained image_ae run}."""
    if base in _CACHE:
        return _CACHE[base]
    from voxforge.recipe import load_recipe
    from voxforge.train.engine import train

    images = prepared_images(base)
    ae_run = base / "image_ae"
    train(load_recipe("image_ae_tiny", AE_OVERRIDES + [f"data.path={images}"]), ae_run)
    _CACHE[base] = {"images": images, "images64": prepared_images(base, 64), "ae_run": ae_run}
    return _CACHE[base]


def flow_overrides(artefacts: dict[str, Path], *extra: str) -> list[str]:
    return FLOW_OVERRIDES + [
        f"data.path={artefacts['images']}",
        f"data.autoencoder={artefacts['ae_run']}",
        *extra,
    ]


def tiny_pretrained_text_encoder(folder: Path) -> Path:
    """A tiny Gemma-2 + word-level tokenizer saved in a diffusers pipeline's layout
    (`folder/text_encoder`, `folder/tokenizer`); returns the model folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<unk>", "a", "red", "blue", "circle", "square"]
    words += [
        "one",
        "two",
        "three",
        "small",
        "large",
        "on",
        "the",
        "left",
        "right",
        "at",
        "top",
        "background",
    ]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder / "tokenizer")
    config = Gemma2Config(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        Gemma2Model(config).save_pretrained(folder / "text_encoder")
    return folder / "text_encoder"
