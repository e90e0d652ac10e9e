"""Image encoders behind one interface: images [B, 3, H, W] in [0, 1] → tokens [B, T, C].

Two kinds, chosen by `ImageEncoderConfig.kind`:

- `vit` (default): a small ViT built here and trained from scratch together with the flow
  transformer. It needs no download, so the offline path, the tests and the demo use it.
  A linear patchify (or, with `stem: conv`, stride-2 3×3 convolutions down to the patch
  grid, as in "early convolutions help transformers see better", Xiao et al. 2021),
  learned positions, one learned summary token, pre-norm blocks from `voxforge.nn`, and a
  final LayerNorm. In a 400-step shape-classification probe on synthetic condition views
  (216 training assets) neither stem generalised well yet and the linear patchify did
  somewhat better, so the plain ViT stays the default; the conv stem is there to try.
- `dinov2`: DINOv2 through `transformers` (the optional `dino` extra), frozen, as TRELLIS
  conditions its flows. `pretrained` is a local directory or a hub id. Like TRELLIS we take
  the last block's tokens *before* the model's own final norm and normalise them with a
  parameter-free LayerNorm. Offline without the weights the error says so and names the
  built-in alternative (`image_encoder.kind=vit`). When `pretrained` names a weights *file*
  (`.safetensors` / `.pth` with facebookresearch key names, e.g. torch.hub's
  `dinov2_vitl14_reg4_pretrain.pth`, the encoder TRELLIS uses), voxforge's own DINOv2
  (`voxforge.models.dinov2`) runs it instead: the same network without transformers or the hub.

Frozen encoders are not part of the trained model's module tree (`ImageEncoder.trainable`
is False): the stage and the pipelines hold them next to the model, so the checkpoints,
the EMA shadows and the optimizer never carry hundreds of millions of fixed weights.

Every encoder resizes its input to `image_size` when it differs and applies its own
normalisation, so callers pass plain [0, 1] RGB (premultiplied on black, as the data
toolkit's condition images are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.config.core import ConfigValueError, option
from voxforge.errors import MissingDependencyError, UserError
from voxforge.models.dinov2 import DinoV2, is_dinov2_weights_file
from voxforge.models.dinov2 import load_dinov2 as load_native_dinov2
from voxforge.nn.norms import GroupNorm32, LayerNorm32
from voxforge.nn.transformer import TransformerBlock

__all__ = ["DinoV2Encoder", "ImageEncoder", "ImageEncoderConfig", "ViTEncoder", "build_image_encoder"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ImageEncoderConfig:
    kind: Literal["vit", "dinov2"] = option("vit", help="built-in ViT (trained jointly) or frozen DINOv2")
    image_size: int = option(
        64, ge=8, help="input side in pixels (DINOv2: a multiple of 14, TRELLIS uses 518)"
    )
    # built-in ViT
    patch_size: int = option(8, ge=1)
    stem: Literal["conv", "patch"] = option(
        "patch", help="conv: stride-2 3x3 convolutions down to the patch grid; patch: one linear patchify"
    )
    width: int = option(128, ge=8)
    depth: int = option(4, ge=1)
    heads: int = option(4, ge=1)
    mlp_ratio: float = option(4.0, gt=0.0)
    # DINOv2
    pretrained: str = option(
        "facebook/dinov2-with-registers-large",
        help="DINOv2: local directory or hub id (transformers), or a .safetensors/.pth weights file",
    )
    local_files_only: bool = option(False, help="DINOv2: never contact the hub")

    def __post_init__(self):
        if self.kind == "vit":
            if self.image_size % self.patch_size:
                raise ConfigValueError(
                    "image_size", f"{self.image_size} is not a multiple of patch_size {self.patch_size}"
                )
            if self.width % self.heads:
                raise ConfigValueError("heads", f"width {self.width} is not divisible by {self.heads} heads")
            if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
                raise ConfigValueError(
                    "stem", f"a conv stem needs a power-of-two patch_size, got {self.patch_size}"
                )
        elif self.image_size % 14:
            raise ConfigValueError(
                "image_size", f"DINOv2 needs a multiple of its patch size 14, got {self.image_size}"
            )


class ImageEncoder(nn.Module):
    """Base class: `forward(images [B, 3, H, W] in [0, 1]) -> tokens [B, T, out_dim]`."""

    out_dim: int
    num_tokens: int
    image_size: int
    trainable: bool

    def _resize(self, images: Tensor) -> Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected an image batch [B, 3, H, W], got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            images = F.interpolate(
                images.float(), size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        return images


class ConvStem(nn.Module):
    """[B, 3, S, S] -> [B, width, S/p, S/p] by log2(p) stride-2 3x3 convs (GroupNorm, SiLU), then 1x1."""

    def __init__(self, width: int, patch_size: int):
        super().__init__()
        layers: list[nn.Module] = []
        levels = patch_size.bit_length() - 1
        channels = 3
        for level in range(levels):
            out = max(8, width >> (levels - 1 - level))
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1),
                GroupNorm32(math.gcd(8, out), out),
                nn.SiLU(),
            ]
            channels = out
        layers.append(nn.Conv2d(channels, width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


class ViTEncoder(ImageEncoder):
    """A small ViT trained from scratch with the model it conditions."""

    trainable = True

    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        self.image_size, self.out_dim = cfg.image_size, cfg.width
        grid = cfg.image_size // cfg.patch_size
        self.num_tokens = grid * grid + 1
        if cfg.stem == "conv":
            self.patch_embed: nn.Module = ConvStem(cfg.width, cfg.patch_size)
        else:
            self.patch_embed = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.summary_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_tokens, cfg.width) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.width, cfg.heads, mlp_ratio=cfg.mlp_ratio) for _ in range(cfg.depth)
        )
        self.norm = LayerNorm32(cfg.width, eps=1e-6)

    def forward(self, images: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, 1 + (S/p)^2, width]
        x = self._resize(images) * 2 - 1
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # [B, (S/p)^2, width]
        x = torch.cat([self.summary_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class DinoV2Encoder(ImageEncoder):
    """Frozen DINOv2 (transformers) returning its normalised last-block tokens."""

    trainable = False

    def __init__(self, cfg: ImageEncoderConfig):
        super().__init__()
        self.image_size = cfg.image_size
        if is_dinov2_weights_file(cfg.pretrained):  # voxforge's own DINOv2, from local files only
            self.model: nn.Module = load_native_dinov2(cfg.pretrained)
            self.out_dim = self.model.cfg.embed_dim
            self.num_tokens = self.model.cfg.num_tokens(cfg.image_size, cfg.image_size)
        else:
            self.model = load_dinov2(cfg.pretrained, local_files_only=cfg.local_files_only)
            config = self.model.config
            self.out_dim = int(config.hidden_size)
            grid = cfg.image_size // int(config.patch_size)
            self.num_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0) + grid * grid
        self.model.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> DinoV2Encoder:
        return super().train(False)  # frozen: dropout and friends stay off

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, T, hidden]
        x = (self._resize(images).float() - self.mean) / self.std
        if isinstance(self.model, DinoV2):
            return self.model.condition_tokens(x)
        out = self.model(pixel_values=x.to(next(self.model.parameters()).dtype), output_hidden_states=True)
        tokens = out.hidden_states[-1]
        return F.layer_norm(tokens.float(), tokens.shape[-1:])


def load_dinov2(name: str, *, local_files_only: bool = False) -> nn.Module:
    """Load a DINOv2 backbone from a local directory or a hub id, with actionable errors."""
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError(
            "transformers",
            "dino",
            "the DINOv2 image encoder",
            alternative="use the built-in encoder (image_encoder.kind=vit)",
        ) from None
    try:
        model = transformers.AutoModel.from_pretrained(name, local_files_only=local_files_only)
    except (OSError, ValueError) as err:
        raise UserError(
            f"could not load the DINOv2 weights '{name}' ({str(err).splitlines()[0]}). Pass a local "
            "directory that holds them (image_encoder.pretrained=/path/to/dinov2), download them once where "
            "the hub is reachable, or use the built-in encoder that trains with the model: image_encoder.kind=vit"
        ) from None
    model_type = getattr(model.config, "model_type", "")
    if not str(model_type).startswith("dinov2"):
        raise UserError(f"'{name}' holds a '{model_type}' model, not DINOv2 (image_encoder.pretrained)")
    return model


def build_image_encoder(cfg: ImageEncoderConfig) -> ImageEncoder:
    if cfg.kind == "dinov2":
        return DinoV2Encoder(cfg)
    return ViTEncoder(cfg)
