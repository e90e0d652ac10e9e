"""The video denoiser: a DiT on latent patches with 3-D rotary positions (time, height, width).

Open-Sora's design at any size: a video autoencoder's latent `[B, C, T, H, W]` is cut into
`pt × ph × pw` patches, one token each; rotary embeddings over the tokens' integer
(t, y, x) coordinates tell the attention where each token is, so one set of weights takes any
frame count and aspect ratio (a bucket's clips share a shape, buckets differ); DiT blocks
(`nn.transformer.DiTBlock`: adaLN-zero on the flow time, self-attention over all tokens of the
clip, cross-attention to the text tokens, MLP) predict the rectified-flow velocity.

Image → video is conditioning by the first frame's latent, as Open-Sora 2 does it: the
input gets `C + 1` more channels — the clean latent of the conditioning frame(s) where it is
known (zeros elsewhere) and a mask that is 1 there. Training drops the condition (zeros) for
a share of the batch, so one model does text → video (no condition), image → video (first
frame) and, with longer masks, video continuation.

The layers whose shapes depend on the autoencoder are only the patch embedding in
(`x_embedder`, `C·pt·ph·pw` wide, plus the condition channels) and the projection out
(`out_layer`); everything else carries over when the autoencoder is swapped
(`voxforge.nn.state`-style matching keeps the tensors that still fit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from voxforge.config.core import ConfigValueError, option
from voxforge.nn.embeddings import TimestepEmbedder
from voxforge.nn.norms import LayerNorm32
from voxforge.nn.rope import RotaryEmbedding
from voxforge.nn.transformer import DiTBlock, modulate

__all__ = ["VideoDiT", "VideoDiTConfig", "patchify", "unpatchify", "video_coords"]


@dataclass
class VideoDiTConfig:
    in_channels: int = option(16, ge=1, help="latent channels C (the autoencoder's)")
    patch_t: int = option(1, ge=1, help="latent frames per token")
    patch_size: int = option(2, ge=1, help="latent pixels per token side")
    width: int = option(256, ge=8)
    depth: int = option(4, ge=1)
    heads: int = option(4, ge=1)
    mlp_ratio: float = option(4.0, gt=0.0)
    qk_norm: bool = option(True, help="RMSNorm on queries and keys per head")
    rope_theta: float = option(10000.0, gt=0.0)
    image_condition: bool = option(
        True,
        help="C + 1 extra input channels: the conditioning frames' latent and their mask (image → video)",
    )
    attention_backend: Literal["auto", "torch", "flash_attn"] = option("auto")
    grad_checkpoint: bool = option(False, help="recompute blocks in backward (activation checkpointing)")

    def __post_init__(self):
        if self.width % self.heads:
            raise ConfigValueError("heads", f"width {self.width} is not divisible by {self.heads} heads")
        if (self.width // self.heads) // 2 // 3 == 0:
            raise ConfigValueError("heads", f"head size {self.width // self.heads} is too small for 3-D rope")

    @property
    def token_dim(self) -> int:
        return self.in_channels * self.patch_t * self.patch_size**2

    def tokens(self, frames: int, height: int, width: int) -> int:
        """Tokens of a latent clip [C, frames, height, width]."""
        return (frames // self.patch_t) * (height // self.patch_size) * (width // self.patch_size)


def patchify(x: Tensor, pt: int, p: int) -> Tensor:  # [B, C, T, H, W] -> [B, L, C*pt*p*p]
    b, c, t, h, w = x.shape
    x = x.reshape(b, c, t // pt, pt, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, (t // pt) * (h // p) * (w // p), c * pt * p * p)


def unpatchify(x: Tensor, shape: tuple[int, int, int, int], pt: int, p: int) -> Tensor:
    """[B, L, C*pt*p*p] -> [B, C, T, H, W] for shape (C, T, H, W)."""
    c, t, h, w = shape
    b = x.shape[0]
    x = x.reshape(b, t // pt, h // p, w // p, c, pt, p, p)
    return x.permute(0, 4, 1, 5, 2, 6, 3, 7).reshape(b, c, t, h, w)


def video_coords(t: int, h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Integer (t, y, x) of every token in patchify's order: [t*h*w, 3]."""
    grids = torch.meshgrid(
        torch.arange(t, device=device),
        torch.arange(h, device=device),
        torch.arange(w, device=device),
        indexing="ij",
    )
    return torch.stack(grids, dim=-1).reshape(-1, 3).float()


class VideoDiT(nn.Module):
    """Velocity v(x_t, t, text tokens[, first-frame latent]) for latent clips of any shape."""

    def __init__(self, cfg: VideoDiTConfig, context_dim: int):
        super().__init__()
        self.cfg = cfg
        extra = (cfg.in_channels + 1) * cfg.patch_t * cfg.patch_size**2 if cfg.image_condition else 0
        self.t_embedder = TimestepEmbedder(cfg.width)
        self.x_embedder = nn.Linear(cfg.token_dim + extra, cfg.width)
        self.rope = RotaryEmbedding(cfg.width // cfg.heads, axes=3, theta=cfg.rope_theta)
        self.blocks = nn.ModuleList(
            DiTBlock(
                cfg.width,
                cfg.heads,
                context_dim=context_dim,
                mlp_ratio=cfg.mlp_ratio,
                qk_norm=cfg.qk_norm,
                backend=cfg.attention_backend,
            )
            for _ in range(cfg.depth)
        )
        self.final_norm = LayerNorm32(cfg.width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.width, 2 * cfg.width))
        self.out_layer = nn.Linear(cfg.width, cfg.token_dim)
        for layer in (self.final_modulation[1], self.out_layer):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def check_shape(self, x: Tensor) -> None:
        cfg = self.cfg
        if x.ndim != 5 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"expected latents [B, {cfg.in_channels}, T, H, W], got {tuple(x.shape)}")
        t, h, w = x.shape[2:]
        if t % cfg.patch_t or h % cfg.patch_size or w % cfg.patch_size:
            raise ValueError(
                f"latent clip {t}x{h}x{w} (frames x height x width) is not divisible by the patch "
                f"{cfg.patch_t}x{cfg.patch_size}x{cfg.patch_size}"
            )

    def forward(
        self,
        x: Tensor,  # [B, C, T, H, W] noisy latent x_t
        t: Tensor,  # [B] flow time in [0, 1]
        context: Tensor,  # [B, L, Cc] text tokens
        *,
        context_mask: Tensor | None = None,  # [B, L] bool, True = a real token
        cond_latent: Tensor | None = None,  # [B, C, T, H, W] clean latent where known (zeros elsewhere)
        cond_mask: Tensor | None = None,  # [B, 1, T, H, W] 1 where cond_latent is known
    ) -> Tensor:  # [B, C, T, H, W] predicted velocity
        cfg = self.cfg
        self.check_shape(x)
        pt, p = cfg.patch_t, cfg.patch_size
        tokens = patchify(x, pt, p)
        if cfg.image_condition:
            if cond_latent is None:
                cond_latent = torch.zeros_like(x)
                cond_mask = x.new_zeros(x.shape[0], 1, *x.shape[2:])
            elif cond_mask is None:
                raise ValueError("cond_latent needs its cond_mask")
            cond = torch.cat([cond_latent.to(x.dtype), cond_mask.to(x.dtype)], dim=1)
            tokens = torch.cat([tokens, patchify(cond, pt, p)], dim=-1)
        elif cond_latent is not None:
            raise ValueError("this model has no image conditioning (model.image_condition: false)")
        h = self.x_embedder(tokens)
        grid = (x.shape[2] // pt, x.shape[3] // p, x.shape[4] // p)
        rope = self.rope(video_coords(*grid, device=x.device))
        emb = self.t_embedder(t)
        context = context.to(h.dtype)
        for block in self.blocks:
            if cfg.grad_checkpoint and torch.is_grad_enabled():
                h = torch.utils.checkpoint.checkpoint(
                    block, h, emb, context, rope=rope, context_mask=context_mask, use_reentrant=False
                )
            else:
                h = block(h, emb, context, rope=rope, context_mask=context_mask)
        shift, scale = self.final_modulation(emb)[:, None].chunk(2, dim=-1)
        h = self.out_layer(modulate(self.final_norm(h), shift, scale))
        return unpatchify(h, (cfg.in_channels, *x.shape[2:]), pt, p)
