"""`autoencoder.kind: conv`: a plain causal 3-D convolutional video VAE for CPU-sized runs.

Why voxforge writes this one. The CPU recipes train their autoencoder from scratch in a couple
of minutes. At those budgets the tiny configurations of diffusers' `AutoencoderKLHunyuanVideo`
and `AutoencoderKLLTXVideo` settle on one colour per clip: a HunyuanVideo of widths
[8, 16, 32, 32] reconstructs the built-in 32-px clips at 11-13 dB after 180-240 steps (L1 or L2),
and does not fit even 8 clips it sees every step (13.7 dB). This model — strided causal
convolutions, DC-AE-style parameter-free space-to-channel shortcuts around every level, no
norm layers — trained with plain L2 reconstructs the same held-out clips at 22 dB in 300 steps,
the shapes as blobs of their colour in their place (docs/benchmarks.md, "Why the video clips
do not follow their captions"). The diffusers kinds stay the ones that load released weights;
this one has none and exists for small runs and tests.

The model is a diffusers `ModelMixin` / `ConfigMixin`, so it saves and loads as a diffusers
folder (`save_pretrained` / `from_pretrained(local_files_only=True)`) and answers the calls
`models.video_ae.VideoAutoencoder` makes of the diffusers kinds: `encode(video).latent_dist`
(mean, logvar) and `decode(z).sample`.

Layout, for widths `[w0, w1, ..., wL]` (L levels):

- encoder: causal conv 3 → w0; per level SiLU → a stride-2 causal conv wi → wi+1, plus the
  shortcut (space and time folded into channels, then channel groups averaged to wi+1),
  halving height and width in the first log2(spatial) levels and time in the last
  log2(temporal) ones; SiLU → causal conv to 2 × latent channels (mean, logvar).
- decoder: the mirror — causal conv latent → wL; per level SiLU → nearest upsampling → causal
  conv, plus the shortcut (channels repeated, then unfolded into space and time); SiLU → causal
  conv w0 → 3.

Causal in time: every convolution pads only the past (the first frame repeated), a time
upsampling doubles every frame but the first (1 + k·tc frames ↔ 1 + k latent frames, as in
HunyuanVideo and LTX-Video), the time fold puts the first frame alone in its latent frame, and
no layer pools over frames, so the first latent frame depends on the first frame only (an
image encodes as a one-frame video).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.models.video_ae import conv_layout_problem, conv_strides
from voxforge.nn.shuffle import pixel_shuffle_3d, pixel_unshuffle_3d

try:  # diffusers is in the video extra; this module is only imported through video_ae
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
    from diffusers.models.modeling_outputs import AutoencoderKLOutput
    from diffusers.models.modeling_utils import ModelMixin
except ImportError as exc:  # pragma: no cover
    from voxforge.errors import MissingDependencyError

    raise MissingDependencyError("video autoencoders need diffusers: pip install 'voxforge[video]'") from exc

__all__ = ["CausalVideoAutoencoder", "depth_to_space", "space_to_depth"]


class CausalConv3d(nn.Conv3d):
    """A 3×3×3 convolution that pads space by replication and time with past frames only."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int, int] = (1, 1, 1)):
        super().__init__(cin, cout, 3, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (1, 1, 1, 1, 2, 0), mode="replicate"))


def space_to_depth(x: Tensor, stride: tuple[int, int, int]) -> Tensor:
    """[B, C, 1 + k·st, H, W] -> [B, C·st·sh·sw, 1 + k, H/sh, W/sw]: the first frame repeated in
    front (so it fills a latent frame alone), then `nn.shuffle.pixel_unshuffle_3d`."""
    st = stride[0]
    if st > 1:
        x = torch.cat([x[:, :, :1].expand(-1, -1, st - 1, -1, -1), x], dim=2)
    return pixel_unshuffle_3d(x, stride)


def depth_to_space(x: Tensor, stride: tuple[int, int, int]) -> Tensor:
    """The inverse of `space_to_depth`: [B, C·st·sh·sw, 1 + k, h, w] -> [B, C, 1 + k·st, h·sh, w·sw]
    (the st − 1 frames in front of the first are dropped)."""
    return pixel_shuffle_3d(x, stride)[:, :, stride[0] - 1 :]


class _Level(nn.Module):
    """SiLU → a strided (down) or upsampled (up) causal conv, plus a parameter-free
    shortcut that folds space and time into channels (down) or back (up) and averages or repeats
    channels to the new width, as DC-AE's residual autoencoding does: the shortcut carries the
    pixels through from the first step, and the convolution learns what it misses."""

    def __init__(self, cin: int, cout: int, stride: tuple[int, int, int], up: bool):
        super().__init__()
        self.act = nn.SiLU()
        self.conv = CausalConv3d(cin, cout, (1, 1, 1) if up else stride)
        self.stride, self.up, self.cin, self.cout = stride, up, cin, cout

    def _upsample(self, x: Tensor) -> Tensor:
        st, sh, sw = self.stride
        if sh > 1 or sw > 1:
            x = F.interpolate(x, scale_factor=(1, sh, sw), mode="nearest")
        if st > 1 and x.shape[2] > 1:  # every frame but the first is doubled in time
            x = torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(st, dim=2)], dim=2)
        return x

    def _shortcut(self, x: Tensor) -> Tensor:
        factor = self.stride[0] * self.stride[1] * self.stride[2]
        if self.up:
            x = x.repeat_interleave(self.cout * factor // self.cin, dim=1)
            return depth_to_space(x, self.stride)
        x = space_to_depth(x, self.stride)
        group = self.cin * factor // self.cout
        return x.view(x.shape[0], self.cout, group, *x.shape[2:]).mean(dim=2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(x)
        y = self.conv(self._upsample(y) if self.up else y)
        return y + self._shortcut(x)


class CausalVideoAutoencoder(ModelMixin, ConfigMixin):
    """The `conv` kind (module docstring): 1 + k·tc frames ↔ 1 + k latent frames, sides ÷ spatial."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 8,
        block_out_channels: tuple[int, ...] = (16, 32, 32, 32),
        spatial_compression_ratio: int = 4,
        temporal_compression_ratio: int = 4,
    ):
        super().__init__()
        widths = list(block_out_channels)
        problem = conv_layout_problem(widths, spatial_compression_ratio, temporal_compression_ratio)
        if problem is not None:
            raise ValueError(f"{problem[0]}: {problem[1]}")
        strides = conv_strides(len(widths) - 1, spatial_compression_ratio, temporal_compression_ratio)
        levels = len(strides)
        self.encoder = nn.Sequential(
            CausalConv3d(3, widths[0]),
            *[_Level(widths[i], widths[i + 1], strides[i], up=False) for i in range(levels)],
            nn.SiLU(),
            CausalConv3d(widths[-1], 2 * latent_channels),
        )
        self.decoder = nn.Sequential(
            CausalConv3d(latent_channels, widths[-1]),
            *[_Level(widths[i + 1], widths[i], strides[i], up=True) for i in reversed(range(levels))],
            nn.SiLU(),
            CausalConv3d(widths[0], 3),
        )

    @property
    def spatial_compression_ratio(self) -> int:
        return int(self.config.spatial_compression_ratio)

    @property
    def temporal_compression_ratio(self) -> int:
        return int(self.config.temporal_compression_ratio)

    def encode(self, video: Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Video [B, 3, 1 + k·tc, H, W] -> the posterior over [B, C, 1 + k, H/s, W/s]."""
        dist = DiagonalGaussianDistribution(self.encoder(video))
        return AutoencoderKLOutput(latent_dist=dist) if return_dict else (dist,)

    def decode(self, z: Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        out = self.decoder(z)
        return DecoderOutput(sample=out) if return_dict else (out,)
