"""Image conditioning of the flow models: the conditioned-flow module, several views per
object, and the guidance settings the 3D family samples with.

- `ImageConditionedFlow`: a denoiser plus the image encoder trained with it (`kind: vit`),
  or the token width of a frozen encoder held outside (DINOv2, whose tokens the caller
  computes under `no_grad`). `forward(x, t, images=... | context=..., drop=...)` encodes the
  images when given, replaces the tokens of the `drop`ped samples by zeros (classifier-free
  guidance dropout; zeros are also the null condition guidance samples with) and calls the
  denoiser. The structure flow and the SLat flow are its two subclasses; they differ only in
  their denoiser and what it runs on (a dense latent grid, a sparse tensor).
- `MultiViewCondition`: condition tokens of B objects with K views each, and how a sampler
  combines them, as TRELLIS offers: `stochastic` conditions each model evaluation on the
  next view in turn (one view per step with Euler), `multidiffusion` averages the
  conditional velocities of all views at every evaluation.
- `default_structure_sampler` / `default_slat_sampler`: TRELLIS's sampler settings per stage
  (`voxforge.models.sampler_presets`), with overrides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from voxforge.errors import UserError
from voxforge.flow import SamplerConfig
from voxforge.models.image_encoders import ImageEncoder, ImageEncoderConfig, build_image_encoder
from voxforge.models.sampler_presets import SLAT_SAMPLER, STRUCTURE_SAMPLER
from voxforge.sparse.tensor import SparseTensor

__all__ = [
    "ImageConditionedFlow",
    "MultiImageMode",
    "MultiViewCondition",
    "check_multi_image_mode",
    "default_slat_sampler",
    "default_structure_sampler",
    "frozen_image_encoder",
]

MultiImageMode = Literal["stochastic", "multidiffusion"]


def default_structure_sampler(**overrides: Any) -> SamplerConfig:
    """TRELLIS's structure-flow sampler (25 Euler steps, guidance 7.5 on t in [0.5, 1], shift 3)."""
    return SamplerConfig(**{**STRUCTURE_SAMPLER, **overrides})


def default_slat_sampler(**overrides: Any) -> SamplerConfig:
    """TRELLIS's SLat-flow sampler (as the structure's, with guidance 3)."""
    return SamplerConfig(**{**SLAT_SAMPLER, **overrides})


def frozen_image_encoder(cfg: ImageEncoderConfig) -> ImageEncoder | None:
    """The encoder held outside the flow model (DINOv2: its tokens are computed under
    `no_grad`), or None for `kind: vit`, which the flow model trains as its own part."""
    return build_image_encoder(cfg) if cfg.kind != "vit" else None


def check_multi_image_mode(mode: str) -> None:
    if mode not in get_args(MultiImageMode):
        raise UserError(f"multi-image mode '{mode}': expected stochastic or multidiffusion")


class MultiViewCondition:
    """Condition tokens of B objects with K views each, and the rule that combines the views."""

    def __init__(self, tokens: Tensor, mode: MultiImageMode = "stochastic"):  # tokens [B, K, T, C]
        self.tokens, self.mode, self.calls = tokens, mode, 0

    @classmethod
    def null(cls, batch: int, token_shape: tuple[int, ...], device: torch.device | str) -> MultiViewCondition:
        """All-zero tokens [B, 1, T, C]: the unconditional input, as in training."""
        return cls(torch.zeros(batch, 1, *token_shape, device=device))

    def velocity(
        self,
        call: Callable[[Tensor], Tensor],
        batched: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """The velocity under this condition, from `call(context [B, T, C])`.

        `batched(context [B·K, T, C])` evaluates all views in one forward pass (its output is
        split back into [B, K, ...] and averaged); without it `multidiffusion` calls once
        per view.
        """
        tokens = self.tokens
        batch, views = tokens.shape[:2]
        if views == 1:
            return call(tokens[:, 0])
        if self.mode == "multidiffusion":
            if batched is not None:
                return batched(tokens.flatten(0, 1)).unflatten(0, (batch, views)).mean(1)
            return torch.stack([call(tokens[:, i]) for i in range(views)]).mean(0)
        index = self.calls % views
        self.calls += 1
        return call(tokens[:, index])


class ImageConditionedFlow(nn.Module):
    """Base of the trained flow modules: image encoder (or frozen tokens) + `denoiser`."""

    denoiser: nn.Module

    def __init__(self, encoder_cfg: ImageEncoderConfig, context_dim: int | None = None):
        super().__init__()
        self.encoder_cfg = encoder_cfg
        if encoder_cfg.kind == "vit":
            self.image_encoder: ImageEncoder | None = build_image_encoder(encoder_cfg)
            context_dim = self.image_encoder.out_dim
        else:
            self.image_encoder = None
            if context_dim is None:
                raise ValueError("a frozen image encoder's token width (context_dim) is needed")
        self.context_dim = context_dim

    def encode_images(self, images: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> [B, T, Cc]
        if self.image_encoder is None:
            raise ValueError("this model conditions on a frozen encoder's tokens: pass context=")
        return self.image_encoder(images)

    def forward(
        self,
        x: Tensor | SparseTensor,  # a latent grid [B, C, r, r, r] or sparse latents [N, C]
        t: Tensor,  # [B]
        *,
        images: Tensor | None = None,  # [B, 3, H, W] for the joint encoder
        context: Tensor | None = None,  # [B, T, Cc] precomputed tokens
        drop: Tensor | None = None,  # [B] bool: replace these samples' tokens by zeros (CFG)
    ) -> Tensor | SparseTensor:  # the denoiser's output, shaped like x
        if (images is None) == (context is None):
            raise ValueError("pass exactly one of images= or context=")
        if images is not None:
            context = self.encode_images(images)
        if drop is not None:
            context = torch.where(drop[:, None, None], torch.zeros_like(context), context)
        return self.denoiser(x, t, context)
