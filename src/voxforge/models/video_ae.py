"""Video autoencoders behind one interface: `autoencoder.kind` names the diffusers class.

Open-Sora trained its first models on the HunyuanVideo VAE (4× in time, 8×8 in space, 16
channels) and then moved to a deep-compression video autoencoder (4×32×32, 128 channels),
cutting the tokens per clip by 16× and the training cost with them. voxforge offers the same
two points through diffusers' well-kept classes:

| kind | diffusers class | compression (t × h × w) | latent channels (released) |
| --- | --- | --- | --- |
| `hunyuan` | `AutoencoderKLHunyuanVideo` | 4 × 8 × 8 | 16 |
| `ltx` | `AutoencoderKLLTXVideo` | 8 × 32 × 32 | 128 |
| `conv` | voxforge's `CausalVideoAutoencoder` | 4 × 4 × 4 in its recipe (configurable) | (none released) |

`conv` is voxforge's own plain causal conv VAE (`models.causal_video_ae`, which says why): the
CPU recipes train it from scratch where the diffusers kinds' tiny configurations do not learn
the clips' shapes in minutes; it has no released weights.

Both take clips of `1 + k·tc` frames and give `1 + k` latent frames through causal temporal
convolutions (an image is a one-frame video, and the first latent frame stands for the first
frame in image → video). LTX-Video normalises per position, so its encoder is strictly
causal: the first latent frame depends on the first frame only; HunyuanVideo's GroupNorm
pools its statistics over all frames, so there the later frames move it slightly.

`VideoAutoencoder` wraps either: `encode(video) -> latents` and `decode(latents) -> video`
with video `[B, 3, T, H, W]` in [-1, 1] and latents normalised per channel (`latent_mean`,
`latent_std`: measured on the training clips after the autoencoder is trained, or read from a
released model's config), so a flow on them sees unit-variance targets whatever the kind.
`build_video_autoencoder(cfg)` makes a fresh one (small configs for CPU recipes) or loads real
weights from a local diffusers folder (`cfg.pretrained`, never from the network);
`load_video_autoencoder(folder)` reads what `save` wrote, or a released diffusers folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from voxforge.config.core import ConfigValueError, option
from voxforge.errors import MissingDependencyError, UserError

__all__ = [
    "KINDS",
    "VideoAEConfig",
    "VideoAutoencoder",
    "build_video_autoencoder",
    "load_video_autoencoder",
]

#: kind -> model class name (diffusers' own, or voxforge's `conv` for CPU-sized runs)
KINDS = {
    "hunyuan": "AutoencoderKLHunyuanVideo",
    "ltx": "AutoencoderKLLTXVideo",
    "conv": "CausalVideoAutoencoder",
}
STATS_FILE = "voxforge_video_ae.json"


@dataclass
class VideoAEConfig:
    kind: Literal["hunyuan", "ltx", "conv"] = option(
        "hunyuan",
        help="hunyuan: 4x8x8; ltx: 8x32x32 (deep compression); conv: voxforge's causal conv VAE for CPU runs",
    )
    pretrained: str = option(
        "", help="a local diffusers folder of that class (its config wins over the keys below)"
    )
    latent_channels: int = option(4, ge=1)
    block_out_channels: list[int] = field(default_factory=lambda: [8, 16, 16, 16])
    layers_per_block: int = option(1, ge=1)
    norm_num_groups: int = option(4, ge=1, help="hunyuan: GroupNorm groups (must divide every width)")
    patch_size: int = option(4, ge=1, help="ltx: pixels per side folded into channels before the encoder")
    spatial_compression: int = option(8, ge=1, help="hunyuan: 2^(levels - 1) at most; conv: 2^levels at most")
    temporal_compression: int = option(4, ge=1, help="hunyuan: 4 or 8; conv: 2^levels at most")
    gradient_checkpointing: bool = option(
        False, help="recompute the blocks' activations in the backward pass (diffusers' own checkpointing)"
    )

    def __post_init__(self):
        if len(self.block_out_channels) < 2:
            raise ConfigValueError("block_out_channels", "needs at least two levels")
        if self.kind == "hunyuan" and not self.pretrained:
            # HunyuanVideo downsamples in every level but the last, space first, then time
            levels = len(self.block_out_channels) - 1
            for key, ratio, allowed in (
                ("spatial_compression", self.spatial_compression, (1, 2, 4, 8, 16, 32)),
                ("temporal_compression", self.temporal_compression, (4, 8)),
            ):
                if ratio not in allowed:
                    raise ConfigValueError(key, f"{ratio} is not one of {list(allowed)}")
                if ratio.bit_length() - 1 > levels:
                    raise ConfigValueError(
                        key,
                        f"{ratio}x needs {ratio.bit_length() - 1} downsampling levels; "
                        f"{len(self.block_out_channels)} widths give {levels}",
                    )
        if self.kind == "conv" and self.gradient_checkpointing:
            raise ConfigValueError(
                "gradient_checkpointing",
                "the conv kind (for small runs) has no activation checkpointing; set it false",
            )
        if self.kind == "conv" and not self.pretrained:
            problem = conv_layout_problem(
                self.block_out_channels, self.spatial_compression, self.temporal_compression
            )
            if problem is not None:
                raise ConfigValueError(*problem)
        if self.kind == "hunyuan" and any(w % self.norm_num_groups for w in self.block_out_channels):
            raise ConfigValueError(
                "norm_num_groups",
                f"{self.norm_num_groups} does not divide every width of {self.block_out_channels}",
            )


def conv_strides(levels: int, spatial: int, temporal: int) -> list[tuple[int, int, int]]:
    """The `conv` kind's (t, h, w) stride per level: space halves in the first levels, time in the last."""
    ns, nt = spatial.bit_length() - 1, temporal.bit_length() - 1
    return [(2 if i >= levels - nt else 1, 2 if i < ns else 1, 2 if i < ns else 1) for i in range(levels)]


def conv_layout_problem(widths: list[int], spatial: int, temporal: int) -> tuple[str, str] | None:
    """(key, what is wrong) with a `conv` layout, or None. Its compressions must be powers of two
    reachable in len(widths) - 1 halvings, and each level's shortcut (time x space folded into
    channels, then averaged onto the next width) needs widths[i] x fold to be a multiple of widths[i + 1]."""
    levels = len(widths) - 1
    for key, ratio in (("spatial_compression", spatial), ("temporal_compression", temporal)):
        if ratio < 1 or ratio & (ratio - 1) or ratio.bit_length() - 1 > levels:
            return (
                key,
                f"{ratio} is not a power of two of at most {2**levels} ({len(widths)} widths give {levels} halvings)",
            )
    for i, (st, sh, sw) in enumerate(conv_strides(levels, spatial, temporal)):
        fold = st * sh * sw
        if (widths[i] * fold) % widths[i + 1]:
            return "block_out_channels", (
                f"widths {widths[i]} -> {widths[i + 1]} at level {i} (a {fold}x fold): "
                f"{widths[i]} x {fold} must be a multiple of {widths[i + 1]}"
            )
    return None


def _diffusers_class(name: str) -> Any:
    if name == KINDS["conv"]:
        from voxforge.models.causal_video_ae import CausalVideoAutoencoder

        return CausalVideoAutoencoder
    try:
        import diffusers
    except ImportError as exc:  # pragma: no cover - diffusers is in the video extra
        raise MissingDependencyError(
            "video autoencoders need diffusers: pip install 'voxforge[video]'"
        ) from exc
    return getattr(diffusers, name)


def _fresh(cfg: VideoAEConfig) -> nn.Module:
    cls = _diffusers_class(KINDS[cfg.kind])
    widths = tuple(cfg.block_out_channels)
    if cfg.kind == "conv":
        return cls(
            latent_channels=cfg.latent_channels,
            block_out_channels=widths,
            spatial_compression_ratio=cfg.spatial_compression,
            temporal_compression_ratio=cfg.temporal_compression,
        )
    if cfg.kind == "hunyuan":
        levels = len(widths)
        return cls(
            latent_channels=cfg.latent_channels,
            down_block_types=("HunyuanVideoDownBlock3D",) * levels,
            up_block_types=("HunyuanVideoUpBlock3D",) * levels,
            block_out_channels=widths,
            layers_per_block=cfg.layers_per_block,
            norm_num_groups=cfg.norm_num_groups,
            spatial_compression_ratio=cfg.spatial_compression,
            temporal_compression_ratio=cfg.temporal_compression,
            mid_block_add_attention=False,
        )
    levels = len(widths)
    return cls(
        latent_channels=cfg.latent_channels,
        block_out_channels=widths,
        decoder_block_out_channels=widths,
        down_block_types=("LTXVideoDownBlock3D",) * levels,
        layers_per_block=(cfg.layers_per_block,) * (levels + 1),
        decoder_layers_per_block=(cfg.layers_per_block,) * (levels + 1),
        spatio_temporal_scaling=(True,) * (levels - 1) + (False,),
        decoder_spatio_temporal_scaling=(True,) * (levels - 1) + (False,),
        decoder_inject_noise=(False,) * (levels + 1),
        downsample_type=("conv",) * levels,
        upsample_residual=(False,) * levels,
        upsample_factor=(1,) * levels,
        patch_size=cfg.patch_size,
        patch_size_t=1,
    )


class VideoAutoencoder(nn.Module):
    """A diffusers video VAE with per-channel latent normalisation."""

    def __init__(
        self, kind: str, model: nn.Module, latent_mean: Tensor | None = None, latent_std: Tensor | None = None
    ):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown video autoencoder kind {kind!r} (one of {', '.join(KINDS)})")
        self.kind = kind
        self.model = model
        channels = self.latent_channels
        self.register_buffer(
            "latent_mean", torch.zeros(channels) if latent_mean is None else latent_mean.float()
        )
        self.register_buffer("latent_std", torch.ones(channels) if latent_std is None else latent_std.float())

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.latent_channels)

    @property
    def temporal_compression(self) -> int:
        if self.kind == "hunyuan":
            return int(self.model.config.temporal_compression_ratio)
        return int(self.model.temporal_compression_ratio)

    @property
    def spatial_compression(self) -> int:
        if self.kind == "hunyuan":
            return int(self.model.config.spatial_compression_ratio)
        return int(self.model.spatial_compression_ratio)

    def check_frames(self, frames: int, height: int, width: int) -> None:
        tc, sc = self.temporal_compression, self.spatial_compression
        if (frames - 1) % tc:
            raise ValueError(
                f"{self.kind} autoencoder takes 1 + k*{tc} frames (1, {1 + tc}, {1 + 2 * tc}, ...), got {frames}"
            )
        if height % sc or width % sc:
            raise ValueError(f"{self.kind} autoencoder needs sides divisible by {sc}, got {height}x{width}")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, t, h, w) of a clip of `frames` frames at height × width."""
        self.check_frames(frames, height, width)
        tc, sc = self.temporal_compression, self.spatial_compression
        return (self.latent_channels, 1 + (frames - 1) // tc, height // sc, width // sc)

    def frames_for(self, latent_frames: int) -> int:
        return 1 + (latent_frames - 1) * self.temporal_compression

    def _norm(self, z: Tensor) -> Tensor:
        view = (1, -1, 1, 1, 1)
        return (z - self.latent_mean.view(view).to(z)) / self.latent_std.view(view).to(z)

    def posterior(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, logvar) of the raw (unnormalised) latent: [B, C, t, h, w] each."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"expected video [B, 3, T, H, W] in [-1, 1], got {tuple(video.shape)}")
        self.check_frames(*video.shape[2:])
        dist = self.model.encode(video).latent_dist
        return dist.mean, dist.logvar

    def encode(
        self, video: Tensor, *, sample: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] -> normalised latents [B, C, t, h, w]."""
        mean, logvar = self.posterior(video)
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + (0.5 * logvar).exp() * noise
        return self._norm(mean)

    def forward(self, video: Tensor, sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """Training pass: (reconstruction [B, 3, T, H, W], posterior mean, logvar).

        With `sample` the decoder sees mean + std * noise, the noise drawn from the global
        torch RNG (the training engine saves and restores it); without, the mean."""
        mean, logvar = self.posterior(video)
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if sample else mean
        return self.decode_raw(z), mean, logvar

    def decode_raw(self, z: Tensor) -> Tensor:
        return self.model.decode(z).sample

    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents [B, C, t, h, w] -> video [B, 3, T, H, W] (about [-1, 1])."""
        view = (1, -1, 1, 1, 1)
        z = latents * self.latent_std.view(view).to(latents) + self.latent_mean.view(view).to(latents)
        return self.decode_raw(z)

    @torch.no_grad()
    def calibrate(self, raw_latents: Tensor) -> None:
        """Set the per-channel mean and std from raw latents [N, C, ...] of training clips."""
        flat = raw_latents.transpose(0, 1).reshape(self.latent_channels, -1).float()
        self.latent_mean.copy_(flat.mean(dim=1))
        self.latent_std.copy_(flat.std(dim=1).clamp_min(1e-6))

    def save(self, folder: str | Path) -> Path:
        """A diffusers folder (`save_pretrained`) plus the latent statistics, loadable by `load_video_autoencoder`."""
        folder = Path(folder)
        self.model.save_pretrained(folder)
        stats = {
            "kind": self.kind,
            "latent_mean": self.latent_mean.tolist(),
            "latent_std": self.latent_std.tolist(),
        }
        tmp = folder / (STATS_FILE + ".tmp")
        tmp.write_text(json.dumps(stats, indent=2) + "\n")
        tmp.replace(folder / STATS_FILE)
        return folder


def _released_stats(kind: str, model: nn.Module) -> tuple[Tensor, Tensor]:
    """A released model's own normalisation: LTX's latents_mean/std buffers and scaling factor,
    HunyuanVideo's scaling factor (zero mean)."""
    scaling = float(getattr(model.config, "scaling_factor", 1.0) or 1.0)
    channels = int(model.config.latent_channels)
    if kind == "ltx" and hasattr(model, "latents_mean"):
        return (
            model.latents_mean.detach().float().clone(),
            model.latents_std.detach().float().clone() / scaling,
        )
    return torch.zeros(channels), torch.full((channels,), 1.0 / scaling)


def load_video_autoencoder(folder: str | Path, kind: str | None = None) -> VideoAutoencoder:
    """A folder `VideoAutoencoder.save` wrote, or a released diffusers folder of a known class."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"video autoencoder {folder}: no config.json (expected a diffusers model folder)")
    try:
        class_name = json.loads(config_file.read_text()).get("_class_name", "")
    except json.JSONDecodeError as exc:
        raise UserError(f"video autoencoder {config_file}: not JSON ({exc})") from exc
    found = {v: k for k, v in KINDS.items()}.get(class_name)
    if found is None:
        raise UserError(
            f"video autoencoder {folder}: class {class_name or '(none)'} is not one of {', '.join(KINDS.values())}"
        )
    if kind is not None and kind != found:
        raise UserError(
            f"video autoencoder {folder} is a {found} ({class_name}), but autoencoder.kind is {kind}"
        )
    try:
        model = _diffusers_class(class_name).from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"video autoencoder {folder}: cannot load ({exc})") from exc
    stats_file = folder / STATS_FILE
    if stats_file.is_file():
        stats = json.loads(stats_file.read_text())
        mean, std = torch.tensor(stats["latent_mean"]), torch.tensor(stats["latent_std"])
        if len(mean) != model.config.latent_channels or len(std) != model.config.latent_channels:
            raise UserError(
                f"{stats_file}: statistics for {len(mean)} channels, the model has "
                f"{model.config.latent_channels}"
            )
    else:
        mean, std = _released_stats(found, model)
    return VideoAutoencoder(found, model.eval(), mean, std)


def build_video_autoencoder(cfg: VideoAEConfig) -> VideoAutoencoder:
    """A fresh autoencoder of the configured size, or the released one in `cfg.pretrained`."""
    if cfg.pretrained:
        ae = load_video_autoencoder(cfg.pretrained, kind=cfg.kind)
    else:
        ae = VideoAutoencoder(cfg.kind, _fresh(cfg))
    if cfg.gradient_checkpointing:
        ae.model.enable_gradient_checkpointing()
    return ae
