"""Structured-latent (SLat) VAE: per-voxel features → C latents per voxel → 3D Gaussians.

TRELLIS's second-stage autoencoder, on the sparse structure of an asset (its occupied
voxels at resolution R):

- **Encoder.** The voxel features of the data toolkit (projected RGB or DINOv2 features,
  `[N, C_in]`) go through a linear layer, get a fixed sin-cos embedding of their voxel
  coordinates (absolute positions: attention alone is permutation invariant), then a stack
  of sparse transformer blocks with windowed self-attention — windows of `window_size³`
  voxels, shifted by half a window in every other block (Swin), so the cost is O(N·w³)
  instead of O(N²) and information still crosses window borders. A fp32 LayerNorm and a
  linear layer give the posterior mean and log-variance of `latent_channels` (8) per voxel.
- **Gaussian decoder.** The same kind of stack maps latents to K Gaussians per voxel. The
  raw outputs are activated in fp32 (autocast off) with bounded, voxel-relative ranges —
  TRELLIS's parametrisation, which is what keeps rendering losses well conditioned:
  - position: voxel centre + `tanh(raw + atanh(o_k)) · extent/2 · voxel`, so each Gaussian
    stays within `extent` voxels around its own voxel (1.5: a half-voxel overlap with the
    neighbours). `o_k` are K fixed low-discrepancy points (Halton bases 2, 3, 5) that spread
    the Gaussians of a voxel at initialisation instead of stacking them on the centre;
  - scale: `voxel · (scale_min + (scale_max − scale_min) · sigmoid(raw + b))` with `b` set so
    an untrained decoder emits `scale_init` voxels; bounded on both sides, so no Gaussian can
    cover the whole image or collapse to a point (whose projection is ill-conditioned);
  - rotation: raw quaternion + identity (normalised by the renderer); opacity: logit
    `raw + logit(opacity_init)`; colour: degree-0 SH coefficients (rgb = 0.5 + C0·sh).
  The output layer starts at zero, so an untrained decoder renders soft grey blobs on the
  structure — a sane first image for the rendering losses.
- **Posterior.** Diagonal Gaussian; KL to N(0, I) is averaged over voxels and channels.
  `encode(..., sample=False)` returns the mean — what the encode step stores for the flow.

Models are single-device and precision-agnostic (the engine applies autocast); norms,
the Gaussian activations and everything after them run in fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from voxforge.config.core import ConfigValueError, option
from voxforge.nn.embeddings import sincos_position_embedding
from voxforge.nn.norms import LayerNorm32
from voxforge.representations.gaussians import Gaussians
from voxforge.sparse.attention import SparseTransformerBlock
from voxforge.sparse.tensor import SparseTensor

__all__ = [
    "GAUSSIAN_PARAMS",
    "GaussianHeadConfig",
    "SLatGaussianDecoder",
    "SLatEncoder",
    "SLatVAE",
    "SLatVAEConfig",
    "SLatVAEOutput",
    "SparseTransformerStack",
    "halton_points",
    "position_embedding",
    "voxel_centers",
]

#: raw channels per Gaussian: offset 3, scale 3, rotation 4, opacity 1, colour 3
GAUSSIAN_PARAMS = 14


@dataclass
class GaussianHeadConfig:
    gaussians_per_voxel: int = option(32, ge=1, help="K Gaussians decoded per voxel (TRELLIS: 32)")
    offset_extent: float = option(
        1.5, gt=0.0, help="Gaussian centres stay within this many voxels around theirs"
    )
    scale_init: float = option(0.5, gt=0.0, help="scale of an untrained decoder's Gaussians, in voxels")
    scale_min: float = option(0.01, gt=0.0, help="smallest scale, in voxels")
    scale_max: float = option(2.0, gt=0.0, help="largest scale, in voxels")
    opacity_init: float = option(0.1, gt=0.0, lt=1.0, help="opacity of an untrained decoder's Gaussians")

    def __post_init__(self):
        if self.scale_init >= self.scale_max:
            raise ConfigValueError(
                "scale_init", f"must be below scale_max ({self.scale_max}), got {self.scale_init}"
            )


@dataclass
class SLatVAEConfig:
    resolution: int = option(64, ge=2, help="voxel grid resolution R of the structure")
    in_channels: int | None = option(
        None, ge=1, help="per-voxel feature channels (None: read from the dataset)"
    )
    latent_channels: int = option(8, ge=1, help="latent channels per voxel")
    width: int = option(768, ge=8, help="transformer width")
    encoder_blocks: int = option(12, ge=1)
    decoder_blocks: int = option(12, ge=1)
    heads: int = option(12, ge=1)
    mlp_ratio: float = option(4.0, gt=0.0)
    attn_mode: Literal["swin", "full"] = option("swin", help="shifted-window or full per-asset attention")
    window_size: int = option(8, ge=1, help="swin: window side in voxels")
    qk_norm: bool = option(False, help="RMSNorm on queries and keys")
    attention_backend: Literal["auto", "torch", "flash_attn"] = option("auto")
    grad_checkpoint: bool = option(False, help="recompute transformer blocks in backward (saves memory)")
    pos_embedding: Literal["cos_sin", "sin_cos"] = option(
        "cos_sin", help="channel order of each axis' sinusoid (sin_cos: TRELLIS's AbsolutePositionEmbedder)"
    )
    norm_affine: bool = option(True, help="gain and bias on the blocks' LayerNorms (TRELLIS: false)")
    out_norm_affine: bool = option(True, help="gain and bias on the final LayerNorm (TRELLIS: false)")
    out_norm_eps: float = option(1e-6, gt=0.0, help="epsilon of the final LayerNorm (TRELLIS: 1e-5)")
    head: GaussianHeadConfig = option(default_factory=GaussianHeadConfig)

    def __post_init__(self):
        if self.width % self.heads:
            raise ConfigValueError("heads", f"width {self.width} is not divisible by {self.heads} heads")


def halton_points(count: int, bases: tuple[int, ...] = (2, 3, 5)) -> Tensor:  # [count, len(bases)] in (0, 1)
    """The first `count` points of the Halton sequence (index 1 onwards: no point at 0)."""
    out = torch.zeros(count, len(bases), dtype=torch.float64)
    for axis, base in enumerate(bases):
        for i in range(count):
            n, f, value = i + 1, 1.0, 0.0
            while n > 0:
                f /= base
                value += f * (n % base)
                n //= base
            out[i, axis] = value
    return out.float()


def voxel_centers(coords: Tensor, resolution: int) -> Tensor:  # [N, 3] int (i, j, k) -> [N, 3] world
    """Centres of voxels in the DESIGN.md grid over [-0.5, 0.5]³."""
    return (coords.float() + 0.5) / resolution - 0.5


def position_embedding(
    coords: Tensor,  # [N, 3] voxel coordinates
    dim: int,
    order: Literal["cos_sin", "sin_cos"] = "cos_sin",
) -> Tensor:  # [N, dim] fp32
    """Fixed sin-cos embedding of voxel coordinates, per axis in either channel order.

    Each axis gets 2·(dim // 3 // 2) channels (zeros pad the rest), the same frequencies
    either way (1 down to 1/10000); "cos_sin" is `voxforge.nn.sincos_position_embedding`,
    "sin_cos" puts the sines first as TRELLIS's `AbsolutePositionEmbedder` does. The two
    differ by a fixed channel permutation, but the embedding is added to the hidden state,
    so a checkpoint trained with one order cannot be re-used with the other.
    """
    emb = sincos_position_embedding(coords.float(), dim)
    if order == "cos_sin":
        return emb
    axes = coords.shape[-1]
    half = dim // axes // 2
    body = emb[:, : 2 * half * axes].unflatten(-1, (axes, 2, half)).flip(-2).flatten(-3)
    return torch.cat([body, emb[:, 2 * half * axes :]], dim=-1)


class SparseTransformerStack(nn.Module):
    """Linear in → + sin-cos voxel positions → sparse transformer blocks → fp32 norm → linear out.

    The shared backbone of the SLat encoder and decoders (TRELLIS's `SparseTransformerBase`
    plus the final norm and output layer of the encoder / Gaussian decoder). It reads only
    the backbone fields of `cfg` (width, heads, mlp_ratio, attn_mode, window_size, qk_norm,
    attention_backend, grad_checkpoint, pos_embedding, norm_affine, out_norm_*), so other
    decoders (e.g. the mesh decoder) build it from an `SLatVAEConfig` too. Block i of a
    "swin" stack shifts its windows by `window_size // 2` when i is odd, as TRELLIS's.

    `out_channels=None` builds the trunk only (no final norm, no output layer): `forward`
    then returns the blocks' `[N, width]` output, which is what TRELLIS's mesh decoder
    feeds to its up-sampling convolutions.

    Parameters: `input`, `blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`,
    `out_norm`, `output` (TRELLIS: `input_layer`, `blocks.{i}.{attn.to_qkv, attn.to_out,
    mlp.mlp.0, mlp.mlp.2}`, `out_layer`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None,
        cfg: SLatVAEConfig,
        blocks: int,
    ):
        super().__init__()
        self.width, self.grad_checkpoint = cfg.width, cfg.grad_checkpoint
        self.pos_embedding = cfg.pos_embedding
        self.input = nn.Linear(in_channels, cfg.width)
        self.blocks = nn.ModuleList(
            SparseTransformerBlock(
                cfg.width,
                cfg.heads,
                mlp_ratio=cfg.mlp_ratio,
                attn_mode=cfg.attn_mode,
                window_size=cfg.window_size,
                shift_window=(cfg.window_size // 2) * (i % 2) if cfg.attn_mode == "swin" else 0,
                qk_norm=cfg.qk_norm,
                norm_affine=cfg.norm_affine,
                backend=cfg.attention_backend,
            )
            for i in range(blocks)
        )
        if out_channels is None:
            self.out_norm = self.output = None
        else:
            self.out_norm = LayerNorm32(
                cfg.width, eps=cfg.out_norm_eps, elementwise_affine=cfg.out_norm_affine
            )
            self.output = nn.Linear(cfg.width, out_channels)

    def forward(self, x: SparseTensor) -> SparseTensor:  # [N, in] -> [N, out] (trunk: [N, width])
        h = self.input(x.feats)
        h = h + position_embedding(x.coords[:, 1:], self.width, self.pos_embedding).to(h.dtype)
        hs = x.replace(h)
        for block in self.blocks:
            if self.grad_checkpoint and torch.is_grad_enabled():
                feats = checkpoint(
                    lambda f, b=block, s=hs: b(s.replace(f)).feats, hs.feats, use_reentrant=False
                )
                hs = hs.replace(feats)
            else:
                hs = block(hs)
        if self.output is None:
            return hs
        return hs.replace(self.output(self.out_norm(hs.feats)))


class SLatEncoder(nn.Module):
    """Voxel features `[N, C_in]` → posterior mean and log-variance `[N, latent]` each."""

    def __init__(self, cfg: SLatVAEConfig, in_channels: int):
        super().__init__()
        self.latent_channels = cfg.latent_channels
        self.stack = SparseTransformerStack(in_channels, 2 * cfg.latent_channels, cfg, cfg.encoder_blocks)

    def forward(self, x: SparseTensor) -> tuple[SparseTensor, SparseTensor]:
        out = self.stack(x).feats.float()
        mean, logvar = out.chunk(2, dim=-1)
        return x.replace(mean), x.replace(logvar.clamp(-30.0, 20.0))


class SLatGaussianDecoder(nn.Module):
    """Latents `[N, latent]` on voxels → K Gaussians per voxel (see the module docstring)."""

    def __init__(self, cfg: SLatVAEConfig):
        super().__init__()
        head = cfg.head
        self.resolution, self.head = cfg.resolution, head
        k = head.gaussians_per_voxel
        self.stack = SparseTransformerStack(cfg.latent_channels, k * GAUSSIAN_PARAMS, cfg, cfg.decoder_blocks)
        nn.init.zeros_(self.stack.output.weight)
        nn.init.zeros_(self.stack.output.bias)
        # spread the K Gaussians of a voxel over 70 % of the offset range at initialisation
        init = (halton_points(k) * 2 - 1) * 0.7 if k > 1 else torch.zeros(1, 3)
        self.register_buffer("offset_bias", torch.atanh(init), persistent=False)  # [K, 3]
        fraction = (head.scale_init - head.scale_min) / (head.scale_max - head.scale_min)
        self.scale_bias = math.log(fraction / (1 - fraction))  # logit
        self.opacity_bias = math.log(head.opacity_init / (1 - head.opacity_init))

    def gaussian_params(self, x: SparseTensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(voxel centres [N, 3], raw outputs split per parameter, each [N, K, ·] in fp32)."""
        raw = self.stack(x).feats.float().unflatten(-1, (self.head.gaussians_per_voxel, GAUSSIAN_PARAMS))
        offset, scale, rot, opacity, color = raw.split([3, 3, 4, 1, 3], dim=-1)
        centers = voxel_centers(x.coords[:, 1:], self.resolution)
        return centers, {
            "offset": offset,
            "scale": scale,
            "rotation": rot,
            "opacity": opacity,
            "color": color,
        }

    def forward(self, x: SparseTensor) -> list[Gaussians]:  # one set of N_b * K Gaussians per sample
        if x.num_points and int(x.coords[:, 1:].max()) >= self.resolution:
            raise ValueError(f"voxel coordinates exceed the decoder's resolution {self.resolution}")
        centers, raw = self.gaussian_params(x)
        with torch.autocast(x.device.type, enabled=False):
            head, voxel = self.head, 1.0 / self.resolution
            means = centers[:, None] + torch.tanh(raw["offset"] + self.offset_bias) * (
                0.5 * head.offset_extent * voxel
            )
            span = head.scale_max - head.scale_min
            log_scales = torch.log(
                voxel * (head.scale_min + span * torch.sigmoid(raw["scale"] + self.scale_bias))
            )
            identity = raw["rotation"].new_tensor([1.0, 0.0, 0.0, 0.0])
            quats = raw["rotation"] + identity
            opacity = raw["opacity"][..., 0] + self.opacity_bias
            color = raw["color"]
        out = []
        for rows in x.layout:
            out.append(
                Gaussians(
                    means=means[rows].reshape(-1, 3),
                    log_scales=log_scales[rows].reshape(-1, 3),
                    quats=quats[rows].reshape(-1, 4),
                    opacity_logits=opacity[rows].reshape(-1),
                    sh_dc=color[rows].reshape(-1, 3),
                )
            )
        return out


@dataclass
class SLatVAEOutput:
    gaussians: list[Gaussians]  # per sample
    mean: SparseTensor  # [N, latent]
    logvar: SparseTensor  # [N, latent]
    kl: Tensor  # scalar: KL to N(0, I), mean over voxels and channels


class SLatVAE(nn.Module):
    """Encoder + Gaussian decoder; `forward` is the training pass (sample, decode, KL)."""

    def __init__(self, cfg: SLatVAEConfig, in_channels: int | None = None):
        super().__init__()
        in_channels = in_channels or cfg.in_channels
        if in_channels is None:
            raise ValueError("SLatVAE needs in_channels (the per-voxel feature channels)")
        self.cfg, self.in_channels = cfg, in_channels
        self.encoder = SLatEncoder(cfg, in_channels)
        self.decoder = SLatGaussianDecoder(cfg)

    def _check(self, x: SparseTensor) -> None:
        if x.num_channels != self.in_channels:
            raise ValueError(
                f"the SLat VAE was built for {self.in_channels} feature channels, the voxels carry {x.num_channels}"
            )

    def encode(
        self, x: SparseTensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> SparseTensor:
        """Latents `[N, latent]` (fp32): the posterior mean, or a sample of it."""
        self._check(x)
        mean, logvar = self.encoder(x)
        if not sample:
            return mean
        noise = torch.randn(mean.feats.shape, generator=generator, device=mean.device)
        return mean.replace(mean.feats + torch.exp(0.5 * logvar.feats) * noise)

    def decode(self, z: SparseTensor) -> list[Gaussians]:
        return self.decoder(z)

    def forward(self, x: SparseTensor, *, sample_posterior: bool = True) -> SLatVAEOutput:
        self._check(x)
        mean, logvar = self.encoder(x)
        z = mean.feats
        if sample_posterior:
            z = z + torch.exp(0.5 * logvar.feats) * torch.randn_like(z)
        kl = 0.5 * (mean.feats.pow(2) + logvar.feats.exp() - 1.0 - logvar.feats).mean()
        return SLatVAEOutput(self.decoder(mean.replace(z)), mean, logvar, kl)
