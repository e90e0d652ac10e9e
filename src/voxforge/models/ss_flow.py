"""Structure flow transformer: a dense DiT over the sparse-structure latent grid (stage 1).

The latent of the structure VAE is a small dense grid `[B, C, r, r, r]` (TRELLIS: C=8,
r=16, so 4096 tokens). The transformer folds optional p×p×p patches into tokens, adds
positions, and runs `DiTBlock`s (adaLN-zero timestep modulation, qk RMSNorm, self-attention
over the grid, cross-attention to image tokens, MLP), then maps back to the velocity of the
rectified flow in the latent's shape.

Positions: `ape` adds fixed sin-cos embeddings of the 3-D token coordinates (TRELLIS's
choice for this stage); `rope` rotates queries and keys by the coordinates instead (no
absolute information enters the residual stream); `both` does both. Either works for a
fixed grid; rope is the one that carries over to the sparse stage-2 tokens.

`pooled_cond` (off in the TRELLIS recipe, which conditions through cross-attention only)
adds an MLP of the mean condition token to the timestep embedding that drives every
block's adaLN modulation, as SD3 does with its pooled text embedding. A global summary
reaching every block directly is what lets a small model trained for minutes on a CPU pick
up the image (class, proportions) before cross-attention has learnt where to look.

TRELLIS's released `SparseStructureFlowModel` is this network with four options set
(`voxforge.trellis.flows` sets them from a checkpoint's args): `ape_order: sin_cos` (its
position embedding puts each axis's sines first), `cross_qk_norm: false` (qk-norm on the
self-attention only), `qk_norm_kind: l2` (its qk-norm normalises the L2 norm) and
`final_modulation: false` with `final_norm_eps: 1e-5` (its last layer is a plain
`F.layer_norm` and a linear map, without voxforge's adaLN shift/scale before it). Block
layout, adaLN chunk order, timestep sinusoid (cos first, t·1000) and patch order already
agree, so those weights load by renaming alone.

`StructureFlowModel` is what the stage trains: the denoiser plus, when the image encoder
trains jointly (the built-in ViT), that encoder, so both sit behind one forward call (as
DDP requires). Frozen encoders (DINOv2) stay outside, and their tokens arrive through
`context=`. Classifier-free guidance uses an all-zero token sequence as the "no image"
condition (as TRELLIS does): `forward(..., drop=mask)` zeroes the tokens of the dropped
samples during training, and samplers call it with zeros for the unconditional branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from voxforge.config.core import ConfigValueError, option
from voxforge.models.conditioning import ImageConditionedFlow
from voxforge.models.image_encoders import ImageEncoderConfig
from voxforge.nn.embeddings import TimestepEmbedder, sincos_position_embedding
from voxforge.nn.norms import LayerNorm32
from voxforge.nn.rope import RotaryEmbedding, grid_coords
from voxforge.nn.shuffle import pixel_shuffle_3d, pixel_unshuffle_3d
from voxforge.nn.transformer import DiTBlock, modulate

__all__ = ["SSFlowConfig", "SSFlowTransformer", "StructureFlowModel"]


@dataclass
class SSFlowConfig:
    resolution: int = option(16, ge=1, help="side r of the latent grid (the VAE's latent_resolution)")
    in_channels: int = option(8, ge=1, help="latent channels C (the VAE's latent_channels)")
    patch_size: int = option(1, ge=1, help="p×p×p latent voxels per token")
    width: int = option(1024, ge=8)
    depth: int = option(24, ge=1)
    heads: int = option(16, ge=1)
    mlp_ratio: float = option(4.0, gt=0.0)
    qk_norm: bool = option(True, help="RMSNorm on queries and keys per head")
    pos_embed: Literal["ape", "rope", "both"] = option("ape", help="absolute sin-cos, 3-D rotary, or both")
    rope_theta: float = option(10000.0, gt=0.0)
    pooled_cond: bool = option(
        False, help="also add the mean condition token (through an MLP) to the timestep embedding"
    )
    ape_order: Literal["cos_sin", "sin_cos"] = option(
        "cos_sin", help="per-axis halves of the ape sinusoid (TRELLIS: sin_cos)"
    )
    cross_qk_norm: bool | None = option(
        None, help="qk-norm in the cross-attention too (default: as qk_norm; TRELLIS: false)"
    )
    qk_norm_kind: Literal["rms", "l2"] = option("rms", help="rms: x/sqrt(mean x^2 + eps); l2: TRELLIS's")
    final_modulation: bool = option(
        True, help="adaLN shift/scale before the output layer (TRELLIS: false, a plain LayerNorm)"
    )
    final_norm_eps: float = option(1e-6, gt=0.0, help="eps of the last LayerNorm (TRELLIS: 1e-5)")
    attention_backend: Literal["auto", "torch", "flash_attn"] = option("auto")
    grad_checkpoint: bool = option(False, help="recompute blocks in backward (saves memory)")

    def __post_init__(self):
        if self.resolution % self.patch_size:
            raise ConfigValueError(
                "patch_size", f"{self.patch_size} does not divide resolution {self.resolution}"
            )
        if self.width % self.heads:
            raise ConfigValueError("heads", f"width {self.width} is not divisible by {self.heads} heads")
        if self.pos_embed != "ape" and (self.width // self.heads) // 2 // 3 == 0:
            raise ConfigValueError(
                "pos_embed", f"head size {self.width // self.heads} is too small for 3-D rope"
            )

    @property
    def tokens(self) -> int:
        return (self.resolution // self.patch_size) ** 3


class SSFlowTransformer(nn.Module):
    """Velocity v(x_t, t, image tokens) on the dense latent grid."""

    def __init__(self, cfg: SSFlowConfig, context_dim: int):
        super().__init__()
        self.cfg = cfg
        token_dim = cfg.in_channels * cfg.patch_size**3
        grid = cfg.resolution // cfg.patch_size
        self.t_embedder = TimestepEmbedder(cfg.width)
        if cfg.pooled_cond:
            self.pooled_embedder = nn.Sequential(
                nn.Linear(context_dim, cfg.width), nn.SiLU(), nn.Linear(cfg.width, cfg.width)
            )
        else:
            self.pooled_embedder = None
        self.input_layer = nn.Linear(token_dim, cfg.width)
        coords = grid_coords(grid).float()  # [L, 3]
        self.register_buffer("coords", coords, persistent=False)
        if cfg.pos_embed in ("ape", "both"):
            pos = sincos_position_embedding(coords, cfg.width, order=cfg.ape_order)[None]  # [1, L, width]
            self.register_buffer("pos", pos, persistent=False)
        else:
            self.pos = None
        self.rope = (
            RotaryEmbedding(cfg.width // cfg.heads, theta=cfg.rope_theta) if cfg.pos_embed != "ape" else None
        )
        self.blocks = nn.ModuleList(
            DiTBlock(
                cfg.width,
                cfg.heads,
                context_dim=context_dim,
                mlp_ratio=cfg.mlp_ratio,
                qk_norm=cfg.qk_norm,
                cross_qk_norm=cfg.cross_qk_norm,
                qk_norm_kind=cfg.qk_norm_kind,
                backend=cfg.attention_backend,
            )
            for _ in range(cfg.depth)
        )
        self.final_norm = LayerNorm32(cfg.width, elementwise_affine=False, eps=cfg.final_norm_eps)
        if cfg.final_modulation:
            self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))
            nn.init.zeros_(self.final_modulation[1].weight)
            nn.init.zeros_(self.final_modulation[1].bias)
        else:
            self.final_modulation = None
        self.out_layer = nn.Linear(cfg.width, token_dim)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    def forward(
        self,
        x: Tensor,  # [B, C, r, r, r] noisy latent x_t
        t: Tensor,  # [B] flow time in [0, 1]
        context: Tensor,  # [B, T, Cc] condition tokens (zeros = unconditional)
    ) -> Tensor:  # [B, C, r, r, r] predicted velocity
        cfg = self.cfg
        if x.shape[1:] != (cfg.in_channels, cfg.resolution, cfg.resolution, cfg.resolution):
            raise ValueError(
                f"expected latents [B, {cfg.in_channels}, {cfg.resolution}, {cfg.resolution}, {cfg.resolution}], "
                f"got {tuple(x.shape)}"
            )
        p = cfg.patch_size
        h = pixel_unshuffle_3d(x, p) if p > 1 else x
        h = self.input_layer(h.flatten(2).transpose(1, 2))  # [B, L, width]
        if self.pos is not None:
            h = h + self.pos.to(h.dtype)
        rope = self.rope(self.coords) if self.rope is not None else None
        cond = self.t_embedder(t)  # [B, width]
        if self.pooled_embedder is not None:
            cond = cond + self.pooled_embedder(context.mean(dim=1).to(cond.dtype))
        context = context.to(h.dtype)
        for block in self.blocks:
            if cfg.grad_checkpoint and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(block, h, cond, context, rope=rope, use_reentrant=False)
            else:
                h = block(h, cond, context, rope=rope)
        h = self.final_norm(h)
        if self.final_modulation is not None:
            shift, scale = self.final_modulation(cond)[:, None].chunk(2, dim=-1)
            h = modulate(h, shift, scale)
        h = self.out_layer(h)  # [B, L, C p^3]
        grid = cfg.resolution // p
        h = h.transpose(1, 2).reshape(x.shape[0], -1, grid, grid, grid)
        return pixel_shuffle_3d(h, p) if p > 1 else h


class StructureFlowModel(ImageConditionedFlow):
    """The trained module: denoiser plus the jointly trained image encoder (if any).

    `forward(x [B, C, r, r, r], t [B], images= | context=, drop=) -> [B, C, r, r, r]`
    (`voxforge.models.conditioning.ImageConditionedFlow`).
    """

    def __init__(self, cfg: SSFlowConfig, encoder_cfg: ImageEncoderConfig, context_dim: int | None = None):
        super().__init__(encoder_cfg, context_dim)
        self.cfg = cfg
        self.denoiser = SSFlowTransformer(cfg, self.context_dim)
