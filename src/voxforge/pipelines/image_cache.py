"""The image family's encode step: a prepared image folder → a latent + caption-embedding cache.

`voxforge encode --model AUTOENCODER --data PREPARED --out CACHE [--text-encoder TE]` runs
`cache_image_data`; the layout, the resume rule and the reader are `voxforge.data.image_cache`.
This module loads the frozen parts and says who they are:

- the autoencoder: a diffusers `AutoencoderDC` folder (an image_ae run's export), identified by
  the sha256 of its files;
- the text encoder (optional): a `TextEncoderConfig` and, for the builtin encoder, the folder
  of a saved one (an image_flow run's `text_encoder/`). Without a folder a builtin encoder is
  built from the prepared folder's captions, as the flow stage does at its first start; the
  encoder used is saved in `CACHE/text_encoder/` (a re-run with the same config reuses it) and
  a flow run that trains on the cache adopts it, so training and sampling see the vocabulary
  the embeddings were made with. A pretrained encoder is identified by its model and
  tokenizer folders' files and its `max_length`.

Latents are the autoencoder's raw output (the flow stage multiplies them by `scaling_factor`,
as it does with latents it encodes itself), in batches of one bucket.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from voxforge.config.core import to_dict
from voxforge.data.image_cache import (
    CACHE_INDEX,
    TEXT_ENCODER_DIR,
    encode_image_cache,
    files_digest,
    read_cache_index,
)
from voxforge.data.image_dataset import ImageCaptionDataset
from voxforge.data.latent_shards import check_sizes
from voxforge.models.image import TextEncoder, TextEncoderConfig, build_text_encoder, load_autoencoder

__all__ = ["BUILTIN_KEYS", "cache_image_data", "text_encoder_folders"]

#: what a saved builtin encoder records of its config (`BuiltinTextEncoder.save`)
BUILTIN_KEYS = ("max_length", "width", "layers", "heads", "unk_buckets", "seed")


def text_encoder_folders(cfg: TextEncoderConfig, folder: str | Path | None) -> list[Path]:
    """The folders whose files are the text encoder: the saved builtin folder, or a pretrained
    encoder's model folder and its tokenizer folder (found as `PretrainedTextEncoder` finds it)."""
    if cfg.kind == "builtin":
        if folder is None:
            raise ValueError("a builtin text encoder is identified by its saved folder")
        return [Path(folder)]
    model = Path(cfg.path)
    tokenizer = Path(cfg.tokenizer) if cfg.tokenizer else model
    if not cfg.tokenizer and not (tokenizer / "tokenizer_config.json").is_file():
        tokenizer = model.parent / "tokenizer"
    return [model, tokenizer]


def _builtin_config(folder: Path) -> dict[str, Any] | None:
    meta = folder / "text_encoder.json"
    if not meta.is_file():
        return None
    saved = json.loads(meta.read_text())
    return {k: saved.get(k) for k in BUILTIN_KEYS}


def _text_encoder(
    cfg: TextEncoderConfig, folder: str | Path | None, out: Path, captions: list[str]
) -> tuple[TextEncoder, Path | None]:
    """The encoder to cache with, and (builtin) its folder inside the cache."""
    if cfg.kind == "pretrained":
        return build_text_encoder(cfg), None
    own = out / TEXT_ENCODER_DIR
    if folder is not None:
        source = Path(folder).resolve()
        if source != own.resolve():
            shutil.rmtree(own, ignore_errors=True)
            shutil.copytree(source, own)
        return build_text_encoder(cfg, folder=own), own
    wanted = {k: getattr(cfg, k) for k in BUILTIN_KEYS}
    if _builtin_config(own) == wanted:
        return build_text_encoder(cfg, folder=own), own
    shutil.rmtree(own, ignore_errors=True)
    encoder = build_text_encoder(cfg, captions=captions)
    encoder.save(own)
    return encoder, own


def cache_image_data(
    prepared: str | Path,
    out: str | Path,
    *,
    autoencoder: str | Path,
    text_encoder: TextEncoderConfig | None = None,
    text_folder: str | Path | None = None,
    resolution: int | None = None,
    flip: bool = False,
    batch_size: int = 8,
    shard_mb: float = 256.0,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Encode `prepared` into the cache `out` with the autoencoder folder (a diffusers
    `AutoencoderDC`) and, when given, the text encoder; returns the summary of
    `voxforge.data.image_cache.encode_image_cache`."""
    check_sizes(batch_size, shard_mb)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    previous = read_cache_index(out) if (out / CACHE_INDEX).is_file() else {}
    memo = {
        **(previous.get("autoencoder") or {}).get("files", {}),
        **(previous.get("text_encoder") or {}).get("files", {}),
    }
    ae_folder = Path(autoencoder).resolve()
    ae = load_autoencoder(ae_folder).requires_grad_(False).to(device)
    ae_sha, ae_files = files_digest([ae_folder], memo)
    ae_identity = {
        "path": str(ae_folder),
        "sha256": ae_sha,
        "latent_channels": int(ae.config.latent_channels),
        "compression": int(ae.spatial_compression_ratio),
        "scaling_factor": float(ae.config.scaling_factor),
        "files": ae_files,
    }

    @torch.no_grad()
    def encode_images(images: Tensor) -> Tensor:  # [B, 3, H, W] in [-1, 1] -> [B, C, h, w]
        return ae.encode(images.to(device)).latent

    encode_text, text_identity = None, None
    if text_encoder is not None:
        captions = ImageCaptionDataset(prepared, resolution).captions()
        encoder, own = _text_encoder(text_encoder, text_folder, out, captions)
        encoder = encoder.to(device)
        te_sha, te_files = files_digest(text_encoder_folders(text_encoder, own), memo)
        text_identity = {
            "kind": text_encoder.kind,
            "config": to_dict(text_encoder),
            "folder": str(own.resolve()) if own else "",
            "sha256": te_sha,
            "dim": int(encoder.dim),
            "max_length": int(encoder.max_length),
            "files": te_files,
        }

        @torch.no_grad()
        def encode_text(prompts: list[str]) -> tuple[Tensor, Tensor]:
            return encoder.encode(prompts)

    return encode_image_cache(
        prepared,
        out,
        encode_images=encode_images,
        autoencoder=ae_identity,
        encode_text=encode_text,
        text_encoder=text_identity,
        resolution=resolution,
        flip=flip,
        batch_size=batch_size,
        shard_bytes=int(shard_mb * (1 << 20)),
        dtype=dtype,
        log=log,
    )
