"""Standard text-to-image metrics, computed only from weights the user points at.

- `standard_fid(real, fake, weights=PATH)`: FID in the pool features of the Inception-v3 that
  the literature uses (`voxforge.eval.inception`, pytorch-fid's weight file). Unlike the
  offline judge's FID (`voxforge.eval.image_attributes`), these numbers compare with other
  papers' — at their sample counts: FID is biased upwards at small N (a few hundred images
  give tens of points more than 50 000 would), so compare runs only at equal N.
- `clip_score(images, prompts, model_dir=PATH)`: CLIP score (Hessel et al. 2021, as
  torchmetrics defines it): 100 × max(cos(image embedding, text embedding), 0), averaged over
  the pairs, with a transformers `CLIPModel` folder (for example a local copy of
  openai/clip-vit-large-patch14) and its own preprocessing (resize, centre crop, normalise).

Images are float tensors [N, 3, H, W] in [0, 1] (or uint8 [N, H, W, 3]); nothing is
downloaded (`local_files_only`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import MissingDependencyError, UserError
from voxforge.eval.image_attributes import as_image_tensor, frechet_distance
from voxforge.eval.inception import FIDInception, load_fid_inception

__all__ = ["clip_score", "inception_features", "load_clip", "standard_fid"]


def inception_features(
    images: Any,
    inception: FIDInception | str | Path,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> Tensor:  # -> [N, 2048] float64
    model = inception if isinstance(inception, FIDInception) else load_fid_inception(inception, device)
    x = as_image_tensor(images)
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            out.append(model(x[start : start + batch_size].to(device)).double().cpu())
    return torch.cat(out)


def standard_fid(
    real: Any,
    fake: Any,
    weights: FIDInception | str | Path,
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> float:
    """FID between two image sets in Inception-v3 pool features (pytorch-fid's weights)."""
    model = weights if isinstance(weights, FIDInception) else load_fid_inception(weights, device)
    return frechet_distance(
        inception_features(real, model, batch_size=batch_size, device=device),
        inception_features(fake, model, batch_size=batch_size, device=device),
    )


def _image_processor() -> Any:
    """CLIP's PIL image processor: the default one needs torchvision, which voxforge does not install."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


def load_clip(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[Any, Any, Any]:
    """(CLIPModel, tokenizer, image processor) from a local transformers folder."""
    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError as exc:  # pragma: no cover - transformers is in the image extra
        raise MissingDependencyError("CLIP score needs transformers: pip install 'voxforge[image]'") from exc
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        raise UserError(f"CLIP model {folder}: no config.json (expected a transformers CLIPModel folder)")
    try:
        model = CLIPModel.from_pretrained(folder, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        processor = _image_processor().from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"CLIP model {folder}: cannot load ({exc})") from exc
    return model.eval().requires_grad_(False).to(device), tokenizer, processor


def _embedding(output: Any) -> Tensor:
    """transformers < 5 returns the projected embedding; 5 returns it as the output's pooler_output."""
    return output if isinstance(output, Tensor) else output.pooler_output


def clip_score(
    images: Any,
    prompts: Sequence[str],
    model_dir: str | Path | tuple[Any, Any, Any],
    *,
    batch_size: int = 32,
    device: torch.device | str = "cpu",
) -> float:
    """Mean of 100 · max(cos(image, text), 0) over the (image, prompt) pairs."""
    x = as_image_tensor(images)
    if len(x) != len(prompts):
        raise ValueError(f"{len(x)} images but {len(prompts)} prompts")
    model, tokenizer, processor = model_dir if isinstance(model_dir, tuple) else load_clip(model_dir, device)
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    max_length = getattr(model.config.text_config, "max_position_embeddings", 77)
    scores = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            batch = [np.ascontiguousarray(p) for p in pixels[start : start + batch_size]]
            image_in = processor(images=batch, return_tensors="pt")["pixel_values"].to(device)
            text_in = tokenizer(
                list(prompts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            image_emb = _embedding(model.get_image_features(pixel_values=image_in))
            text_emb = _embedding(model.get_text_features(**text_in))
            cos = torch.nn.functional.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)
            scores.append((100 * cos).clamp_min(0).cpu())
    return float(torch.cat(scores).mean())
