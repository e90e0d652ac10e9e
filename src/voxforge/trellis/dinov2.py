"""TRELLIS's image conditioning: where its DINOv2 comes from, and what it is shown.

TRELLIS loads `dinov2_vitl14_reg` through `torch.hub` (network, pickled code); voxforge
never does. `find_dinov2` resolves the weights from local files only, in this order:

1. `--dinov2 PATH` (a `.safetensors` / `.pth` file with facebookresearch key names, or a
   transformers `Dinov2WithRegisters` folder);
2. a `dinov2_*.safetensors` beside `pipeline.json` (with its `.json` config if it has one),
   else a transformers folder `dinov2/` there (what `voxforge import trellis` copies);
3. the torch-hub cache where `torch.hub.load` leaves the file TRELLIS uses:
   `$TORCH_HOME` (else `$XDG_CACHE_HOME/torch`, else `~/.cache/torch`)
   `/hub/checkpoints/dinov2_vitl14_reg4_pretrain.pth` (the name follows `pipeline.json`'s
   `image_cond_model`);

otherwise a `UserError` lists every place it looked and how to provide the file.
`load_dinov2` (from `voxforge.models.dinov2`) then builds the encoder.

`prepare_image` is `TrellisImageTo3DPipeline.preprocess_image` + `encode_image`'s image
handling, reimplemented on the same Pillow operations so the pixels are the same:

- TRELLIS removes the background with rembg unless the image already has a non-trivial
  alpha channel. rembg (a U^2-Net download) is not available to voxforge, so the alpha
  channel is used when present; an opaque image is taken whole, as if every pixel were
  the object (after TRELLIS's downscale to at most 1024 px), and `PreparedImage.note` says
  that the conditioning then differs from TRELLIS's.
- The object's box is the pixels with alpha > 0.8·255; the crop is a square of
  int(1.2 × the box's longer side) around the box centre (Pillow rounds the corners, and
  pads with transparent black where the square leaves the frame), resized to 518×518 with
  Lanczos (Pillow premultiplies alpha while resampling).
- The colour is premultiplied by alpha (black background) and quantised back to 8 bits by
  truncation, as TRELLIS does by building a PIL image from it; `encode_image` reads that
  RGB image as float / 255 (its own resize to 518 is a no-op by then) and normalises it
  with ImageNet's mean and std (`voxforge.models.dinov2.imagenet_normalize`).

The conditioning tokens are `DinoV2.condition_tokens`: the last block's tokens before the
backbone's final norm, under a LayerNorm without affine parameters (`condition_tokens`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from voxforge.data.image_io import read_image
from voxforge.errors import UserError
from voxforge.models.dinov2 import DinoV2, imagenet_normalize, load_dinov2
from voxforge.trellis.spec import Compare, GoldenCheck, ModelSpec

__all__ = [
    "GOLDENS",
    "SPECS",
    "TRELLIS_IMAGE_SIZE",
    "PreparedImage",
    "condition_tokens",
    "find_dinov2",
    "hub_checkpoint_name",
    "load_dinov2",
    "load_image",
    "load_images",
    "prepare_image",
    "torch_hub_checkpoints",
]

TRELLIS_IMAGE_SIZE = 518
DEFAULT_IMAGE_COND_MODEL = "dinov2_vitl14_reg"
_DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2"
_ALPHA_THRESHOLD = 0.8 * 255  # pixels of the object, for its bounding box
_CROP_MARGIN = 1.2
_MAX_SIDE_WITHOUT_ALPHA = 1024


# ----------------------------------------------------------------------------- the weights


def hub_checkpoint_name(image_cond_model: str = DEFAULT_IMAGE_COND_MODEL) -> str:
    """torch.hub's file name for a DINOv2 hub entry, e.g. dinov2_vitl14_reg -> dinov2_vitl14_reg4_pretrain.pth."""
    m = re.fullmatch(r"(dinov2_vit[sblg]\d+)(_reg)?", image_cond_model)
    if m is None:
        raise UserError(
            f"pipeline.json: image_cond_model '{image_cond_model}' is not a DINOv2 hub model "
            "(expected e.g. dinov2_vitl14_reg); pass the weights with --dinov2 PATH"
        )
    return f"{m.group(1)}{'_reg4' if m.group(2) else ''}_pretrain.pth"


def torch_hub_checkpoints() -> Path:
    """torch.hub's download folder, resolved as torch does (without importing torch.hub)."""
    home = os.environ.get("TORCH_HOME")
    if not home:
        home = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "torch")
    return Path(os.path.expanduser(home)) / "hub" / "checkpoints"


def _image_cond_model(root: Path) -> str:
    """pipeline.json's `args.image_cond_model`, tolerantly (the pipeline loader validates the file)."""
    try:
        data = json.loads((root / "pipeline.json").read_text())
        name = data.get("args", {}).get("image_cond_model", DEFAULT_IMAGE_COND_MODEL)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return DEFAULT_IMAGE_COND_MODEL
    return name if isinstance(name, str) else DEFAULT_IMAGE_COND_MODEL


def find_dinov2(src_folder: str | Path, explicit: str | Path | None = None) -> Path:
    """The DINOv2 weights for the TRELLIS folder `src_folder` (see the module docstring)."""
    root = Path(src_folder)
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if not path.exists():
            raise UserError(f"--dinov2 {explicit}: no such file or folder")
        return path
    model_name = _image_cond_model(root)
    beside = sorted(root.glob("dinov2_*.safetensors"))
    if len(beside) == 1:
        return beside[0]
    if len(beside) > 1:
        named = [p for p in beside if p.stem.startswith(model_name)]
        if len(named) == 1:
            return named[0]
        raise UserError(
            f"{root}: several DINOv2 weight files ({', '.join(p.name for p in beside)}); "
            "choose one with --dinov2 PATH"
        )
    folder = root / "dinov2"
    if (folder / "config.json").is_file():
        return folder
    file_name = hub_checkpoint_name(model_name)
    cached = torch_hub_checkpoints() / file_name
    if cached.is_file():
        return cached
    arch = file_name.removesuffix("_pretrain.pth").removesuffix("_reg4")  # the URL's folder
    raise UserError(
        f"no DINOv2 weights for {root} (its image encoder '{model_name}'). Looked for:\n"
        "  1. --dinov2 PATH: not given\n"
        f"  2. {root / 'dinov2_*.safetensors'} or a transformers folder {folder}: none\n"
        f"  3. {cached}: absent (torch.hub's cache; $TORCH_HOME moves it)\n"
        "voxforge never downloads weights. Provide them one of these ways: pass --dinov2 PATH "
        "(a .safetensors or .pth with facebookresearch key names, or a transformers "
        "Dinov2WithRegisters folder with config.json + model.safetensors); or copy "
        f"{file_name} (from {_DINOV2_URL}/{arch}/{file_name}, or from a machine where "
        f"torch.hub.load('facebookresearch/dinov2', '{model_name}') has run) to {cached}; "
        f"or save it as .safetensors beside pipeline.json, e.g. {root / (model_name + '.safetensors')}"
    )


# ----------------------------------------------------------------------------- the image


@dataclass
class PreparedImage:
    image: Tensor  # [3, 518, 518] float32 in [0, 1], premultiplied on black, before ImageNet normalisation
    used_alpha: bool  # the object was cut out by the image's alpha channel
    note: str  # what differs from TRELLIS ("" when nothing does)


def prepare_image(
    rgba: np.ndarray, *, has_alpha: bool = True, where: str = "image", size: int = TRELLIS_IMAGE_SIZE
) -> PreparedImage:
    """An RGBA image [H, W, 4] uint8 (straight alpha) -> TRELLIS's 518×518 condition image."""
    if rgba.ndim != 3 or rgba.shape[-1] != 4 or rgba.dtype != np.uint8:
        raise ValueError(f"expected an RGBA uint8 image [H, W, 4], got {rgba.dtype} {tuple(rgba.shape)}")
    image = Image.fromarray(np.ascontiguousarray(rgba), "RGBA")
    used_alpha = bool(has_alpha and not np.all(rgba[..., 3] == 255))
    note = ""
    if not used_alpha:
        rgb = image.convert("RGB")
        scale = min(1.0, _MAX_SIDE_WITHOUT_ALPHA / max(rgb.size))
        if scale < 1:
            rgb = rgb.resize((int(rgb.width * scale), int(rgb.height * scale)), Image.Resampling.LANCZOS)
        image = rgb.convert("RGBA")
        note = (
            f"{where}: no alpha channel, so the whole image is taken as the object. TRELLIS would "
            "remove the background with rembg, which voxforge does not run: give an RGBA image "
            "with a transparent background to condition exactly as TRELLIS does"
        )
    alpha = np.asarray(image)[..., 3]
    rows, cols = np.nonzero(alpha > _ALPHA_THRESHOLD)
    if rows.size == 0:
        raise UserError(f"{where}: no pixel is opaque enough (alpha > 204) to locate the object")
    left, top, right, bottom = cols.min(), rows.min(), cols.max(), rows.max()
    centre_x, centre_y = (left + right) / 2, (top + bottom) / 2
    half = int(max(right - left, bottom - top) * _CROP_MARGIN) // 2
    if half < 1:
        raise UserError(f"{where}: the object is a single pixel; nothing to crop around")
    box = (centre_x - half, centre_y - half, centre_x + half, centre_y + half)
    cropped = image.crop(box).resize((size, size), Image.Resampling.LANCZOS)
    values = np.asarray(cropped).astype(np.float32) / 255  # [S, S, 4]
    premultiplied = (values[..., :3] * values[..., 3:4] * 255).astype(np.uint8)  # truncation, as TRELLIS
    pixels = torch.from_numpy(premultiplied.astype(np.float32) / 255).permute(2, 0, 1).contiguous()
    return PreparedImage(pixels, used_alpha, note)


def load_image(path: str | Path, *, size: int = TRELLIS_IMAGE_SIZE) -> PreparedImage:
    """Read a user's image (size-checked, `voxforge.data.image_io`) and prepare it as TRELLIS does."""
    loaded = read_image(path, what="condition image")
    return prepare_image(loaded.rgba, has_alpha=loaded.has_alpha, where=str(path), size=size)


def load_images(paths: Sequence[str | Path]) -> tuple[Tensor, list[str]]:
    """Several condition images -> ([N, 3, 518, 518] in [0, 1], the notes of those that differ from TRELLIS)."""
    if not paths:
        raise UserError("no condition image given")
    prepared = [load_image(p) for p in paths]
    return torch.stack([p.image for p in prepared]), [p.note for p in prepared if p.note]


@torch.no_grad()
def condition_tokens(model: DinoV2, images: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, T, C]
    """TRELLIS's `encode_image` on prepared images: ImageNet-normalise, DINOv2, affine-free LayerNorm."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W], got {tuple(images.shape)}")
    return model.condition_tokens(imagenet_normalize(images.float()))


# ----------------------------------------------------------------------------- verification


def _run_golden(models: Mapping[str, Any], golden: Mapping[str, Tensor]) -> dict[str, Tensor]:
    model = models["DINOv2"]
    with torch.no_grad():
        x_prenorm = model(golden["image"].float())  # [B, 1 + R + P, C]
    return {"x_prenorm": x_prenorm, "tokens": F.layer_norm(x_prenorm, x_prenorm.shape[-1:])}


SPECS: list[ModelSpec] = []  # DINOv2 is not a TRELLIS checkpoint class: load_dinov2 builds it
GOLDENS: list[GoldenCheck] = [
    GoldenCheck(
        file="dinov2.safetensors",
        needs=("DINOv2",),
        run=_run_golden,
        compare={"x_prenorm": Compare("tensor", 2e-4, 1e-4), "tokens": Compare("tensor", 2e-4, 1e-4)},
    )
]
