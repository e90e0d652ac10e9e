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

**TRELLIS's released checkpoints** (`voxforge.trellis.vaes`) are these networks with a few
options: `pos_embedding="sin_cos"` (TRELLIS puts each axis' sines before its cosines),
`norm_affine=False` and `out_norm_affine=False, out_norm_eps=1e-5` (its block norms have
no parameters and its final norm is a plain `F.layer_norm`), and for the decoder
`head.parametrisation="trellis"`: the raw outputs laid out attribute by attribute
(K·3 offsets, K·3 colours, K·3 scales, K·4 rotations, K opacities), per-attribute output
multipliers (`output_lr`), offsets started at Hammersley points (the checkpoint's
`offset_perturbation`), and unbounded scales `sqrt(softplus(raw + b)² + filter_3d²)` with
`b` set so a zero output gives `scaling_bias` (world units), the "3-D filter" keeping
every Gaussian at least `filter_3d` wide.

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
    "TRELLIS_ATTRIBUTES",
    "halton_points",
    "hammersley_points",
    "position_embedding",
    "trellis_offset_perturbation",
    "voxel_centers",
]

#: raw channels per Gaussian: offset 3, scale 3, rotation 4, opacity 1, colour 3
GAUSSIAN_PARAMS = 14
#: the trellis parametrisation's raw channels: attribute-major, each `[K, width]` (TRELLIS order)
TRELLIS_ATTRIBUTES = {"offset": 3, "color": 3, "scale": 3, "rotation": 4, "opacity": 1}


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
    parametrisation: Literal["voxforge", "trellis"] = option(
        "voxforge",
        help="how raw outputs become Gaussians: voxforge's bounded ranges, or TRELLIS's "
        "(attribute-major layout, softplus/exp scales with a 3-D filter; see the module docstring)",
    )
    perturb_offset: bool = option(
        True, help="trellis: start the K offsets of a voxel at Hammersley points (offset_perturbation)"
    )
    scale_activation: Literal["softplus", "exp"] = option("softplus", help="trellis: scale activation")
    scaling_bias: float = option(
        0.004, gt=0.0, help="trellis: scale of a zero raw output, in world units (TRELLIS's scaling_bias)"
    )
    filter_3d: float = option(
        0.0009, ge=0.0, help="trellis: 3-D filter, scales are sqrt(s² + filter_3d²) (3d_filter_kernel_size)"
    )
    output_lr: dict[str, float] = option(
        default_factory=dict,
        help="trellis: multiplier of each raw output (offset, color, scale, rotation, opacity; "
        "TRELLIS's representation_config.lr), 1 when absent",
    )

    def __post_init__(self):
        if self.scale_init >= self.scale_max:
            raise ConfigValueError(
                "scale_init", f"must be below scale_max ({self.scale_max}), got {self.scale_init}"
            )
        unknown = sorted(set(self.output_lr) - set(TRELLIS_ATTRIBUTES))
        if unknown:
            raise ConfigValueError(
                "output_lr", f"unknown attributes {unknown} (expected some of {list(TRELLIS_ATTRIBUTES)})"
            )
        if self.parametrisation == "trellis" and self.perturb_offset and self.offset_extent <= 1.0:
            raise ConfigValueError(
                "offset_extent",
                f"must exceed 1 with perturb_offset (atanh of ±1/extent), got {self.offset_extent}",
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


def _radical_inverse(base: int, n: int) -> float:
    """The digits of n in `base`, mirrored behind the radix point (van der Corput)."""
    f, value = 1.0, 0.0
    while n > 0:
        f /= base
        value += f * (n % base)
        n //= base
    return value


def halton_points(count: int, bases: tuple[int, ...] = (2, 3, 5)) -> Tensor:  # [count, len(bases)] in (0, 1)
    """The first `count` points of the Halton sequence (index 1 onwards: no point at 0)."""
    points = [[_radical_inverse(base, i + 1) for base in bases] for i in range(count)]
    return torch.tensor(points, dtype=torch.float64).reshape(count, len(bases)).float()


def hammersley_points(count: int) -> Tensor:  # [count, 3] in [0, 1)
    """The 3-D Hammersley set of `count` points: (i / count, radical inverses of i in bases 2, 3).

    Index 0 is included (the point at the origin), as in TRELLIS's `hammersley_sequence`.
    """
    points = [[i / count, _radical_inverse(2, i), _radical_inverse(3, i)] for i in range(count)]
    return torch.tensor(points, dtype=torch.float64).reshape(count, 3).float()


def trellis_offset_perturbation(count: int, extent: float) -> Tensor:  # [count, 3]
    """TRELLIS's `offset_perturbation`: atanh of Hammersley points in [-1, 1)³ over `extent`.

    Added to the raw offsets before the tanh, it spreads the K Gaussians of a voxel over
    the voxel (±1/extent of the offset range) when the raw outputs are zero.
    """
    return torch.atanh((hammersley_points(count) * 2 - 1) / extent)


def voxel_centers(coords: Tensor, resolution: int) -> Tensor:  # [N, 3] int (i, j, k) -> [N, 3] world
    """Centres of voxels in the DESIGN.md grid over [-0.5, 0.5]³."""
    return (coords.float() + 0.5) / resolution - 0.5


def position_embedding(
    coords: Tensor,  # [N, 3] voxel coordinates
    dim: int,
    order: Literal["cos_sin", "sin_cos"] = "cos_sin",
) -> Tensor:  # [N, dim] fp32
    """Fixed sin-cos embedding of voxel coordinates (`voxforge.nn.sincos_position_embedding`).

    "sin_cos" puts each axis' sines first, as TRELLIS's `AbsolutePositionEmbedder` does. The
    two orders differ by a fixed channel permutation, but the embedding is added to the
    hidden state, so a checkpoint trained with one cannot be re-used with the other.
    """
    return sincos_position_embedding(coords.float(), dim, order=order)


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
    """Latents `[N, latent]` on voxels → K Gaussians per voxel (see the module docstring).

    `head.parametrisation` chooses how the K·14 raw outputs of a voxel become Gaussians.
    "voxforge" reads them Gaussian-major (`[K, 14]`: offset, scale, rotation, opacity,
    colour) with bounded scales. "trellis" reads them attribute-major as TRELLIS's
    `SLatGaussianDecoder` (`[K·3 offset | K·3 colour | K·3 scale | K·4 rotation | K opacity]`),
    multiplies each by its `output_lr`, and activates as TRELLIS's `Gaussian`:
    centre + tanh(offset + offset_perturbation) · extent/2 voxels,
    scale = sqrt(act(raw + act⁻¹(scaling_bias))² + filter_3d²), rotation = raw + identity,
    opacity logit = raw + logit(opacity_init). Either way the result is a voxforge `Gaussians`
    (log-scales and opacity logits of the activated values), so `.ply` export and the
    renderers treat decoded TRELLIS Gaussians like any other. The trellis parametrisation has
    one persistent buffer, `offset_perturbation [K, 3]`, which TRELLIS stores in its checkpoints.
    """

    def __init__(self, cfg: SLatVAEConfig):
        super().__init__()
        head = cfg.head
        self.resolution, self.head = cfg.resolution, head
        k = head.gaussians_per_voxel
        self.stack = SparseTransformerStack(cfg.latent_channels, k * GAUSSIAN_PARAMS, cfg, cfg.decoder_blocks)
        nn.init.zeros_(self.stack.output.weight)
        nn.init.zeros_(self.stack.output.bias)
        self.opacity_bias = math.log(head.opacity_init / (1 - head.opacity_init))
        if head.parametrisation == "trellis":
            self.register_buffer("offset_perturbation", trellis_offset_perturbation(k, head.offset_extent))
            b = head.scaling_bias  # inverse of the scale activation at b
            self.scale_bias = (
                b + math.log(-math.expm1(-b)) if head.scale_activation == "softplus" else math.log(b)
            )
            return
        # spread the K Gaussians of a voxel over 70 % of the offset range at initialisation
        init = (halton_points(k) * 2 - 1) * 0.7 if k > 1 else torch.zeros(1, 3)
        self.register_buffer("offset_bias", torch.atanh(init), persistent=False)  # [K, 3]
        fraction = (head.scale_init - head.scale_min) / (head.scale_max - head.scale_min)
        self.scale_bias = math.log(fraction / (1 - fraction))  # logit

    def gaussian_params(self, x: SparseTensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(voxel centres [N, 3], raw outputs split per parameter, each [N, K, ·] in fp32)."""
        feats = self.stack(x).feats.float()
        k = self.head.gaussians_per_voxel
        if self.head.parametrisation == "trellis":
            parts = feats.split([k * width for width in TRELLIS_ATTRIBUTES.values()], dim=-1)
            raw = {name: part.unflatten(-1, (k, -1)) for name, part in zip(TRELLIS_ATTRIBUTES, parts)}
        else:
            offset, scale, rot, opacity, color = feats.unflatten(-1, (k, GAUSSIAN_PARAMS)).split(
                [3, 3, 4, 1, 3], dim=-1
            )
            raw = {"offset": offset, "scale": scale, "rotation": rot, "opacity": opacity, "color": color}
        return voxel_centers(x.coords[:, 1:], self.resolution), raw

    def _activate(self, centers: Tensor, raw: dict[str, Tensor]) -> tuple[Tensor, ...]:  # each [N, K, ·]
        head, voxel = self.head, 1.0 / self.resolution
        if head.parametrisation == "trellis":
            raw = {name: value * head.output_lr.get(name, 1.0) for name, value in raw.items()}
            offset = raw["offset"] + self.offset_perturbation if head.perturb_offset else raw["offset"]
            act = torch.nn.functional.softplus if head.scale_activation == "softplus" else torch.exp
            scales = torch.sqrt(act(raw["scale"] + self.scale_bias).square() + head.filter_3d**2)
            log_scales = torch.log(scales)
        else:
            offset = raw["offset"] + self.offset_bias
            span = head.scale_max - head.scale_min
            log_scales = torch.log(
                voxel * (head.scale_min + span * torch.sigmoid(raw["scale"] + self.scale_bias))
            )
        means = centers[:, None] + torch.tanh(offset) * (0.5 * head.offset_extent * voxel)
        quats = raw["rotation"] + raw["rotation"].new_tensor([1.0, 0.0, 0.0, 0.0])
        opacity = raw["opacity"][..., 0] + self.opacity_bias
        return means, log_scales, quats, opacity, raw["color"]

    def forward(self, x: SparseTensor) -> list[Gaussians]:  # one set of N_b * K Gaussians per sample
        if x.num_points and int(x.coords[:, 1:].max()) >= self.resolution:
            raise ValueError(f"voxel coordinates exceed the decoder's resolution {self.resolution}")
        centers, raw = self.gaussian_params(x)
        with torch.autocast(x.device.type, enabled=False):
            means, log_scales, quats, opacity, color = self._activate(centers, raw)
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
