"""Structured-latent flow: a sparse DiT that denoises per-voxel latents (stage 2, part 2).

TRELLIS's SLat flow transformer, on the voxels of a given structure (the training asset's,
or at inference the structure stage 1 generated):

- **Patchify by sparse down-sampling.** At full resolution (64³, tens of thousands of
  voxels) attention is too expensive, so the latents go through sparse convolutional
  residual blocks and a 2× sparse down-sampling per level of `io_channels` (mean-pooling
  children into parents, `voxforge.sparse.sparse_downsample`). The transformer then runs on
  the coarse voxels (32³: ~4–8× fewer tokens) with full per-asset attention.
- **Un-patchify with skips.** Each level is undone by `sparse_upsample`, which restores
  exactly the fine voxels in their original row order from the bookkeeping the
  down-sampling left, so a U-Net skip is a plain feature concatenation.
- **Conditioning.** The timestep embedding modulates every residual block (scale/shift
  after its second norm, as TRELLIS) and every DiT block (adaLN-zero); the DiT blocks
  cross-attend to image tokens. Positions: fixed sin-cos embeddings of the coarse voxel
  coordinates (`ape`), 3-D rotary embeddings (`rope`), or both.
- **Outputs start at zero** (the last convolution of every residual block and the output
  layer), so an untrained model predicts zero velocity and deep stacks start as identities.

TRELLIS's released `SLatFlowModel` is this network with options set
(`voxforge.trellis.flows` derives them from a checkpoint's args):
- `skip_wiring: block`: TRELLIS concatenates a skip into *every* output block — the output of
  the matching input block in reverse order, the first one (at the coarse level, before its
  up-sampling) taking the down-sampling block's output — where voxforge's `level` wiring
  concatenates one skip per level after the up-sampling.
- `resample_first: true`: its residual blocks resample their input before the first norm
  (voxforge: norm → SiLU → resample; the same for nearest up-sampling, not for pooling).
- `downsample_pool: mean_incl_zero`: its down-sampling averages children with a
  zero-initialised `scatter_reduce(..., "mean")`, which counts the zero as one more child
  (sum / (n + 1)); same coarse voxels and order, (b, i, j, k) ascending.
- `ape_order: sin_cos`, `cross_qk_norm: false`, `qk_norm_kind: l2` as for the structure flow,
  and `out_norm_affine: false`, `out_norm_eps: 1e-5` (a plain `F.layer_norm` before the
  output layer).
TRELLIS's `num_io_res_blocks` counts the down-sampling block, voxforge's `io_res_blocks`
does not (TRELLIS 2 = voxforge 1).

`SLatFlowModel` is what the stage trains and the pipeline samples: the denoiser, the jointly
trained image encoder when there is one (a frozen DINOv2 stays outside; its tokens arrive
through `context=`), and the per-channel statistics of the latents it was trained on
(persistent buffers, so a checkpoint alone can map its samples back to the VAE's latent
space). Classifier-free guidance uses all-zero image tokens as the null condition, exactly
as the structure flow does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from voxforge.config.core import ConfigValueError, option
from voxforge.models.conditioning import ImageConditionedFlow
from voxforge.models.image_encoders import ImageEncoderConfig
from voxforge.nn.embeddings import TimestepEmbedder, sincos_position_embedding
from voxforge.nn.norms import LayerNorm32
from voxforge.nn.rope import RotaryEmbedding
from voxforge.nn.transformer import DiTBlock
from voxforge.sparse.conv import SparseConv3d
from voxforge.sparse.sampling import sparse_downsample, sparse_upsample
from voxforge.sparse.tensor import SparseTensor

__all__ = ["SLatFlowConfig", "SLatFlowModel", "SLatFlowTransformer", "SparseResBlock"]


@dataclass
class SLatFlowConfig:
    resolution: int = option(64, ge=2, help="voxel grid resolution R of the structure")
    in_channels: int = option(8, ge=1, help="latent channels per voxel (the SLat VAE's latent_channels)")
    io_channels: list[int] = option(
        default_factory=lambda: [128],
        ge=1,
        help="width of each full-resolution level; each level downsamples 2x",
    )
    io_res_blocks: int = option(2, ge=0, help="residual blocks per level before the down-sampling")
    width: int = option(1024, ge=8, help="transformer width at the coarse resolution")
    depth: int = option(24, ge=1)
    heads: int = option(16, ge=1)
    mlp_ratio: float = option(4.0, gt=0.0)
    qk_norm: bool = option(True)
    pos_embed: Literal["ape", "rope", "both"] = option("ape")
    skip_wiring: Literal["level", "block"] = option(
        "level", help="level: one skip per level after up-sampling; block: one per output block (TRELLIS)"
    )
    resample_first: bool = option(False, help="residual blocks resample before their first norm (TRELLIS)")
    downsample_pool: Literal["mean", "mean_incl_zero"] = option(
        "mean", help="mean_incl_zero: sum / (children + 1), TRELLIS's pooling"
    )
    ape_order: Literal["cos_sin", "sin_cos"] = option(
        "cos_sin", help="per-axis halves of the ape sinusoid (TRELLIS: sin_cos)"
    )
    cross_qk_norm: bool | None = option(
        None, help="qk-norm in the cross-attention too (default: as qk_norm; TRELLIS: false)"
    )
    qk_norm_kind: Literal["rms", "l2"] = option("rms", help="rms: x/sqrt(mean x^2 + eps); l2: TRELLIS's")
    out_norm_affine: bool = option(True, help="gain and bias in the last LayerNorm (TRELLIS: false)")
    out_norm_eps: float = option(1e-6, gt=0.0, help="eps of the last LayerNorm (TRELLIS: 1e-5)")
    attention_backend: Literal["auto", "torch", "flash_attn"] = option("auto")
    conv_backend: Literal["auto", "torch", "spconv"] = option("auto")
    grad_checkpoint: bool = option(False, help="recompute blocks in backward (saves memory)")

    def __post_init__(self):
        if self.width % self.heads:
            raise ConfigValueError("heads", f"width {self.width} is not divisible by {self.heads} heads")
        if not self.io_channels:
            raise ConfigValueError("io_channels", "needs at least one level (the 2x patchify)")
        if self.resolution % (2 ** len(self.io_channels)):
            raise ConfigValueError(
                "resolution",
                f"{self.resolution} is not divisible by 2^{len(self.io_channels)} (one 2x level each)",
            )
        if self.pos_embed != "ape" and (self.width // self.heads) // 2 // 3 == 0:
            raise ConfigValueError(
                "pos_embed", f"head size {self.width // self.heads} is too small for 3-D rope"
            )

    @property
    def coarse_resolution(self) -> int:
        return self.resolution // 2 ** len(self.io_channels)


class SparseResBlock(nn.Module):
    """norm → SiLU → [resample] → conv → norm·(1+scale)+shift → SiLU → conv (zero init), + skip.

    `resample_first`: [resample] → norm → SiLU → conv ... (TRELLIS's order); `pool` is the
    down-sampling's pooling (`voxforge.sparse.sparse_downsample`).
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        *,
        resample: Literal["down", "up"] | None = None,
        resample_first: bool = False,
        pool: str = "mean",
        conv_backend: str = "auto",
    ):
        super().__init__()
        out_channels = out_channels or channels
        self.resample, self.resample_first, self.pool = resample, resample_first, pool
        self.norm1 = LayerNorm32(channels, eps=1e-6)
        self.conv1 = SparseConv3d(channels, out_channels, 3, backend=conv_backend)
        self.norm2 = LayerNorm32(out_channels, elementwise_affine=False, eps=1e-6)
        self.conv2 = SparseConv3d(out_channels, out_channels, 3, backend=conv_backend)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
        self.skip = nn.Linear(channels, out_channels) if out_channels != channels else nn.Identity()

    def _resample(self, x: SparseTensor) -> SparseTensor:
        if self.resample == "down":
            return sparse_downsample(x, 2, self.pool)
        if self.resample == "up":
            return sparse_upsample(x, 2)
        return x

    def forward(self, x: SparseTensor, emb: Tensor) -> SparseTensor:  # emb: [B, emb_channels]
        if self.resample_first:
            x = self._resample(x)
            h = x.replace(F.silu(self.norm1(x.feats)))
        else:
            h = x.replace(F.silu(self.norm1(x.feats)))
            h, x = self._resample(h), self._resample(x)
        h = self.conv1(h)
        scale, shift = self.emb(emb)[h.batch_index].chunk(2, dim=-1)
        h = h.replace(F.silu(self.norm2(h.feats) * (1 + scale) + shift))
        h = self.conv2(h)
        return h.replace(h.feats + self.skip(x.feats))


class SLatFlowTransformer(nn.Module):
    """Velocity v(x_t, t, image tokens) on sparse voxels; see the module docstring."""

    def __init__(self, cfg: SLatFlowConfig, context_dim: int):
        super().__init__()
        self.cfg = cfg
        self.t_embedder = TimestepEmbedder(cfg.width)
        self.input_layer = nn.Linear(cfg.in_channels, cfg.io_channels[0])
        widths = [*cfg.io_channels, cfg.width]
        per_block = cfg.skip_wiring == "block"

        def res(cin: int, cout: int | None = None, resample: str | None = None) -> SparseResBlock:
            return SparseResBlock(
                cin,
                cfg.width,
                cout,
                resample=resample,
                resample_first=cfg.resample_first,
                pool=cfg.downsample_pool,
                conv_backend=cfg.conv_backend,
            )

        self.down_res = nn.ModuleList()
        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        self.up_res = nn.ModuleList()
        for level, channels in enumerate(cfg.io_channels):
            coarse = widths[level + 1]
            self.down_res.append(nn.ModuleList(res(channels) for _ in range(cfg.io_res_blocks)))
            self.down.append(res(channels, coarse, "down"))
            self.up.append(res(2 * coarse if per_block else coarse, channels, "up"))
            if per_block:  # every output block takes a skip
                blocks = [res(2 * channels, channels) for _ in range(cfg.io_res_blocks)]
            else:  # one skip, into the first block after the up-sampling
                blocks = [res(2 * channels, channels)]
                blocks += [res(channels) for _ in range(cfg.io_res_blocks - 1)]
            self.up_res.append(nn.ModuleList(blocks))
        self.rope = RotaryEmbedding(cfg.width // cfg.heads) if cfg.pos_embed != "ape" else None
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
        self.out_norm = LayerNorm32(
            cfg.io_channels[0], elementwise_affine=cfg.out_norm_affine, eps=cfg.out_norm_eps
        )
        self.out_layer = nn.Linear(cfg.io_channels[0], cfg.in_channels)
        nn.init.zeros_(self.out_layer.weight)
        nn.init.zeros_(self.out_layer.bias)

    def _run(self, module: nn.Module, *args):  # activation checkpointing for sparse blocks
        if not (self.cfg.grad_checkpoint and torch.is_grad_enabled()):
            return module(*args)
        x, rest = args[0], args[1:]
        feats = checkpoint(lambda f: module(x.replace(f), *rest).feats, x.feats, use_reentrant=False)
        if isinstance(module, SparseResBlock) and module.resample is not None:
            return module._resample(x).replace(feats)  # new voxels: recompute their (cached) layout
        return x.replace(feats)

    def forward(
        self,
        x: SparseTensor,  # [N, C] noisy latents x_t on the structure's voxels
        t: Tensor,  # [B] flow time in [0, 1]
        context: Tensor,  # [B, T, Cc] condition tokens (zeros = unconditional)
    ) -> SparseTensor:  # [N, C] predicted velocity, same voxels and row order
        cfg = self.cfg
        if x.num_channels != cfg.in_channels:
            raise ValueError(f"expected {cfg.in_channels} latent channels, got {x.num_channels}")
        if x.num_points and int(x.coords[:, 1:].max()) >= cfg.resolution:
            raise ValueError(f"voxel coordinates exceed the model's resolution {cfg.resolution}")
        if t.shape != (x.batch_size,) or context.shape[0] != x.batch_size:
            raise ValueError(
                f"t {tuple(t.shape)} and context {tuple(context.shape)} must have one entry per sample ({x.batch_size})"
            )
        emb = self.t_embedder(t)  # [B, width]
        h = x.replace(self.input_layer(x.feats))
        skips: list[list[SparseTensor]] = []  # per level: the outputs of its input blocks, in order
        for level in range(len(cfg.io_channels)):
            outputs = []
            for block in self.down_res[level]:
                h = self._run(block, h, emb)
                outputs.append(h)
            if cfg.skip_wiring == "level" and not outputs:
                outputs.append(h)
            h = self._run(self.down[level], h, emb)
            outputs.append(h)
            skips.append(outputs)
        # positions depend on the coarse voxels only: memoised on their cache, which the
        # down-sampling memo keeps across calls on the same voxels (every sampling step)
        coords = h.coords[:, 1:].float()
        if cfg.pos_embed in ("ape", "both"):
            pos = h._cached(
                ("slat_flow_ape", cfg.width, cfg.ape_order),
                lambda: sincos_position_embedding(coords, cfg.width, order=cfg.ape_order),
            )
            h = h.replace(h.feats + pos.to(h.feats.dtype))
        rope = (
            h._cached(("slat_flow_rope", cfg.width // cfg.heads), lambda: self.rope(coords))
            if self.rope is not None
            else None
        )
        context = context.to(h.feats.dtype)
        layout = h.varlen
        for block in self.blocks:
            if cfg.grad_checkpoint and torch.is_grad_enabled():
                feats = checkpoint(
                    block, h.feats, emb, context, rope=rope, layout=layout, use_reentrant=False
                )
            else:
                feats = block(h.feats, emb, context, rope=rope, layout=layout)
            h = h.replace(feats)
        for level in reversed(range(len(cfg.io_channels))):
            outputs = skips[level]
            if cfg.skip_wiring == "block":  # each output block takes the matching input block's output
                h = self._run(self.up[level], _cat(h, outputs[-1]), emb)
                for j, block in enumerate(self.up_res[level]):
                    h = self._run(block, _cat(h, outputs[-2 - j]), emb)
            else:  # the last full-resolution output joins after the up-sampling
                h = self._run(self.up[level], h, emb)
                h = _cat(h, outputs[-2])
                for block in self.up_res[level]:
                    h = self._run(block, h, emb)
        return h.replace(self.out_layer(self.out_norm(h.feats)))


def _cat(h: SparseTensor, skip: SparseTensor) -> SparseTensor:  # [N, C1] + [N, C2] -> [N, C1 + C2]
    """Channel concatenation of two tensors on the same voxels (skip's rows and cache)."""
    return skip.replace(torch.cat([h.feats, skip.feats.to(h.feats.dtype)], dim=-1))


class SLatFlowModel(ImageConditionedFlow):
    """The trained module: denoiser, jointly trained image encoder (if any), latent statistics.

    `forward(x: SparseTensor [N, C], t [B], images= | context=, drop=) -> SparseTensor [N, C]`
    (`voxforge.models.conditioning.ImageConditionedFlow`).
    """

    def __init__(self, cfg: SLatFlowConfig, encoder_cfg: ImageEncoderConfig, context_dim: int | None = None):
        super().__init__(encoder_cfg, context_dim)
        self.cfg = cfg
        self.denoiser = SLatFlowTransformer(cfg, self.context_dim)
        # statistics of the training latents: the flow works on (z - mean) / std
        self.register_buffer("latent_mean", torch.zeros(cfg.in_channels))
        self.register_buffer("latent_std", torch.ones(cfg.in_channels))

    def set_latent_stats(self, mean: Tensor, std: Tensor) -> None:
        self.latent_mean.copy_(mean.to(self.latent_mean))
        self.latent_std.copy_(std.to(self.latent_std).clamp(min=1e-6))

    def normalize(self, latents: Tensor) -> Tensor:  # [N, C] VAE latents -> flow space
        return (latents - self.latent_mean) / self.latent_std

    def denormalize(self, x: Tensor) -> Tensor:  # [N, C] flow space -> VAE latents
        return x * self.latent_std + self.latent_mean
