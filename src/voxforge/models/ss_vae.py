"""Sparse-structure VAE: dense occupancy grid R³ ↔ latent grid (R/f)³ × C (stage 1).

Shapes follow TRELLIS's structure autoencoder: a 3-D conv encoder with residual blocks at
each level and a stride-2 convolution between levels, a few "middle" blocks at the coarsest
level, and a Gaussian posterior (mean, log-variance) with C channels per latent voxel. The
decoder mirrors it, upsampling with a convolution to 8× the channels followed by a 3-D pixel
shuffle (no checkerboard artefacts of transposed convolutions). `channels` lists the width
of each level, finest first; the downsampling factor is patch_size · 2^(len(channels) - 1),
so the TRELLIS scale is `channels=[32, 128, 512]` (64³ → 16³ × 8).

`patch_size` > 1 folds p×p×p blocks of the binary grid into channels before the first
convolution (and unfolds the logits after the last one). It is lossless, and it is what
makes the tiny CPU recipe affordable: a 3×3×3 convolution over a 32³ grid with few
channels runs at a few GFLOP/s on CPU, while the same work on 16³ × 8 channels runs at
matmul speed. The tiny recipe is therefore `patch_size=2, channels=[32, 64]`
(32³ → 16³ → 8³ × 8).

TRELLIS's released checkpoints (`voxforge.trellis.vaes`) are this network with
`downsample="conv2"`; its pixel shuffle uses the same channel order as `nn.shuffle.pixel_shuffle_3d`
(channel c·8 + 4a + 2b + d goes to sub-voxel (a, b, d) of channel c), and its
ChannelLayerNorm32 is `ChannelLayerNorm3d` (eps 1e-5, affine).

Norms are computed in fp32. The default "layer" norm normalises each voxel's channel vector
(no statistics across space or batch, so results do not depend on what else is in the
batch); "group" is GroupNorm. The second convolution of each residual block starts at zero
so every block is the identity at initialisation.

Occupancy is a thin surface shell (the DESIGN voxel grid marks voxels that touch a
triangle), about 5–10 % of the grid: plain BCE alone drifts to "all empty". The loss is
`bce_weight · BCE + dice_weight · (1 − soft Dice) + kl_weight · KL`; the Dice term is
insensitive to the class imbalance. `occupancy_metrics` (IoU, precision, recall) is the
yardstick used by the stage, the demo and the benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.config.core import ConfigValueError, option
from voxforge.nn.norms import GroupNorm32, LayerNorm32
from voxforge.nn.shuffle import pixel_shuffle_3d, pixel_unshuffle_3d

__all__ = [
    "ChannelLayerNorm3d",
    "SSVAE",
    "SSVAEConfig",
    "SSVAEDecoder",
    "SSVAEEncoder",
    "occupancy_metrics",
    "ss_vae_loss",
]


@dataclass
class SSVAEConfig:
    resolution: int = option(
        64, ge=8, help="occupancy grid resolution R (divisible by the downsampling factor)"
    )
    patch_size: int = option(1, ge=1, help="lossless space-to-depth of the input before the first conv")
    latent_channels: int = option(8, ge=1, help="channels C of the latent grid")
    channels: list[int] = option(
        default_factory=lambda: [32, 128, 512],
        ge=1,
        help="width per level, finest first; factor 2^(levels-1)",
    )
    num_res_blocks: int = option(2, ge=0, help="residual blocks per level")
    num_res_blocks_middle: int = option(2, ge=0, help="residual blocks at the latent resolution")
    norm: Literal["layer", "group"] = option("layer", help="per-voxel channel LayerNorm or GroupNorm (fp32)")
    downsample: Literal["conv3", "conv2"] = option(
        "conv3",
        help="encoder down-sampling: 3x3x3 stride-2 conv (padded) or 2x2x2 stride-2 conv (TRELLIS)",
    )
    kl_weight: float = option(1e-3, ge=0.0)
    bce_weight: float = option(1.0, ge=0.0)
    dice_weight: float = option(1.0, ge=0.0)
    pos_weight: float = option(1.0, gt=0.0, help="BCE weight of occupied voxels (class imbalance)")
    grad_checkpoint: bool = option(False, help="recompute residual blocks in backward (saves memory)")
    prior_init: bool = option(
        True,
        help="start the output bias at the logit of the training data's mean occupancy (set by the stage)",
    )

    def __post_init__(self):
        if len(self.channels) < 1:
            raise ConfigValueError("channels", "needs at least one level")
        if self.resolution % self.factor:
            raise ConfigValueError(
                "resolution", f"{self.resolution} is not divisible by the downsampling factor {self.factor}"
            )
        if self.bce_weight == 0 and self.dice_weight == 0:
            raise ConfigValueError("dice_weight", "bce_weight and dice_weight cannot both be 0")

    @property
    def factor(self) -> int:
        return self.patch_size * 2 ** (len(self.channels) - 1)

    @property
    def latent_resolution(self) -> int:
        return self.resolution // self.factor


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return GroupNorm32(math.gcd(32, channels), channels)
    return ChannelLayerNorm3d(channels)


class ChannelLayerNorm3d(LayerNorm32):
    """LayerNorm over the channels of each voxel of a [B, C, D, H, W] grid (fp32)."""

    def forward(self, x: Tensor) -> Tensor:  # [B, C, D, H, W]
        return super().forward(x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)


class ResBlock3d(nn.Module):
    def __init__(self, channels: int, out_channels: int | None = None, norm: str = "layer"):
        super().__init__()
        out_channels = out_channels or channels
        self.norm1, self.norm2 = _norm(norm, channels), _norm(norm, out_channels)
        self.conv1 = nn.Conv3d(channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv3d(channels, out_channels, 1) if out_channels != channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # [B, C, D, H, W] -> [B, C_out, D, H, W]
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Upsample3d(nn.Module):
    """Conv to 8x the output channels, then a 3-D pixel shuffle (x2 per axis)."""

    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, out_channels * 8, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_shuffle_3d(self.conv(x), 2)


def _downsample(kind: str, channels: int, out_channels: int) -> nn.Conv3d:
    """Stride-2 convolution halving each axis.

    "conv3" (voxforge's default) sees a 3x3x3 neighbourhood (padding 1), so neighbouring
    output voxels share inputs; "conv2" is TRELLIS's 2x2x2 kernel over disjoint blocks — a
    learned space-to-depth, what its released encoders were trained with.
    """
    if kind == "conv2":
        return nn.Conv3d(channels, out_channels, 2, stride=2)
    return nn.Conv3d(channels, out_channels, 3, stride=2, padding=1)


def _run_blocks(blocks: nn.ModuleList, x: Tensor, checkpoint: bool) -> Tensor:
    for block in blocks:
        if checkpoint and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        else:
            x = block(x)
    return x


class SSVAEEncoder(nn.Module):
    """Occupancy [B, 1, R, R, R] -> posterior mean and log-variance [B, C, R/f, R/f, R/f]."""

    def __init__(self, cfg: SSVAEConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.conv_in = nn.Conv3d(cfg.patch_size**3, ch[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for i, width in enumerate(ch):
            self.blocks.extend(ResBlock3d(width, norm=cfg.norm) for _ in range(cfg.num_res_blocks))
            if i + 1 < len(ch):
                self.blocks.append(_downsample(cfg.downsample, width, ch[i + 1]))
        self.blocks.extend(ResBlock3d(ch[-1], norm=cfg.norm) for _ in range(cfg.num_res_blocks_middle))
        self.norm_out = _norm(cfg.norm, ch[-1])
        self.conv_out = nn.Conv3d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, occupancy: Tensor) -> tuple[Tensor, Tensor]:  # [B, 1, R, R, R]
        if self.cfg.patch_size > 1:
            occupancy = pixel_unshuffle_3d(occupancy, self.cfg.patch_size)
        h = _run_blocks(self.blocks, self.conv_in(occupancy), self.cfg.grad_checkpoint)
        mean, logvar = self.conv_out(F.silu(self.norm_out(h))).float().chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class SSVAEDecoder(nn.Module):
    """Latent [B, C, R/f, R/f, R/f] -> occupancy logits [B, 1, R, R, R]."""

    def __init__(self, cfg: SSVAEConfig):
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        self.conv_in = nn.Conv3d(cfg.latent_channels, ch[-1], 3, padding=1)
        self.blocks = nn.ModuleList(
            ResBlock3d(ch[-1], norm=cfg.norm) for _ in range(cfg.num_res_blocks_middle)
        )
        for i in range(len(ch) - 1, -1, -1):
            self.blocks.extend(ResBlock3d(ch[i], norm=cfg.norm) for _ in range(cfg.num_res_blocks))
            if i > 0:
                self.blocks.append(Upsample3d(ch[i], ch[i - 1]))
        self.norm_out = _norm(cfg.norm, ch[0])
        self.conv_out = nn.Conv3d(ch[0], cfg.patch_size**3, 3, padding=1)

    def forward(self, latent: Tensor) -> Tensor:  # [B, C, r, r, r] -> [B, 1, R, R, R]
        h = _run_blocks(self.blocks, self.conv_in(latent), self.cfg.grad_checkpoint)
        logits = self.conv_out(F.silu(self.norm_out(h)))
        return pixel_shuffle_3d(logits, self.cfg.patch_size) if self.cfg.patch_size > 1 else logits

    @torch.no_grad()
    def init_output_prior(self, occupancy_rate: float) -> None:
        """Start every output logit near log(p / (1 - p)) for the data's occupancy rate p.

        With a zero bias the untrained decoder predicts p = 0.5 everywhere, and a short run
        spends its first hundred steps unlearning that (a shell occupies 5-10 % of the grid).
        Starting at the prior, the loss begins where "predict the average" ends, so even a
        few dozen steps decode shapes rather than noise, on every CPU and seed.
        """
        rate = min(max(float(occupancy_rate), 1e-4), 0.5)
        self.conv_out.bias.fill_(math.log(rate / (1 - rate)))


class SSVAE(nn.Module):
    """Encoder + decoder; `forward` samples the posterior and returns logits, mean, logvar."""

    def __init__(self, cfg: SSVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = SSVAEEncoder(cfg)
        self.decoder = SSVAEDecoder(cfg)

    def encode(self, occupancy: Tensor, sample: bool = False) -> Tensor:  # [B,1,R,R,R] -> [B,C,r,r,r]
        mean, logvar = self.encoder(occupancy)
        if not sample:
            return mean
        return mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)

    def decode(self, latent: Tensor) -> Tensor:  # [B, C, r, r, r] -> logits [B, 1, R, R, R]
        return self.decoder(latent)

    def forward(self, occupancy: Tensor, sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        mean, logvar = self.encoder(occupancy)
        latent = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar) if sample else mean
        return self.decoder(latent), mean, logvar


def ss_vae_loss(
    logits: Tensor,  # [B, 1, R, R, R]
    target: Tensor,  # [B, 1, R, R, R] in {0, 1}
    mean: Tensor,  # [B, C, r, r, r]
    logvar: Tensor,  # [B, C, r, r, r]
    cfg: SSVAEConfig,
) -> tuple[Tensor, dict[str, float]]:
    """Weighted BCE + soft Dice + KL (in fp32); returns the loss and its parts."""
    logits, target = logits.float(), target.float()
    pos_weight = torch.tensor(cfg.pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
    prob = torch.sigmoid(logits).flatten(1)
    flat = target.flatten(1)
    dice = 1 - ((2 * (prob * flat).sum(1) + 1) / (prob.sum(1) + flat.sum(1) + 1)).mean()
    kl = 0.5 * (mean.float().square() + logvar.float().exp() - 1 - logvar.float()).mean()
    loss = cfg.bce_weight * bce + cfg.dice_weight * dice + cfg.kl_weight * kl
    parts = {"bce": float(bce.detach()), "dice": float(dice.detach()), "kl": float(kl.detach())}
    return loss, parts


@torch.no_grad()
def occupancy_metrics(pred: Tensor, target: Tensor) -> dict[str, Tensor]:  # bool [B, ...] each
    """Per-sample IoU, precision and recall of predicted vs. true occupancy ([B] each).

    Empty-vs-empty counts as a perfect match; precision of an empty prediction is 1.
    """
    pred, target = pred.flatten(1).bool(), target.flatten(1).bool()
    inter = (pred & target).sum(1).float()
    union = (pred | target).sum(1).float()
    npred, ntrue = pred.sum(1).float(), target.sum(1).float()
    one = torch.ones_like(inter)
    return {
        "iou": torch.where(union > 0, inter / union.clamp(min=1), one),
        "precision": torch.where(npred > 0, inter / npred.clamp(min=1), one),
        "recall": torch.where(ntrue > 0, inter / ntrue.clamp(min=1), one),
    }
