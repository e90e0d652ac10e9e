"""Text / image → video inference of the video family (Open-Sora's row): prompts → latents → frames.

`VideoPipeline` holds a `models.video_dit.VideoDiT` denoiser, a `models.video_ae.VideoAutoencoder`
(normalised latents) and a text encoder of the image family (`encode(prompts) -> (embeds
[B, L, C], mask [B, L])`). `generate` runs: text → (embeds, mask) for the prompts and the
negative texts in one call → noise per clip from `flow.make_noise` (a CPU generator seeded
`seed + i`: a seed gives the same clip on every device) → the flow ODE over the latent clip
(`flow.sample`: Euler or Heun; `flow.dpm.sample_dpm`: DPM-Solver++ 2M) with classifier-free
guidance batched (cond and uncond in one forward of batch 2B) → the autoencoder's decoder →
uint8 frames.

Conventions, the ones the `video_flow` stage trains with:

- time: t = 1 noise, t = 0 data (`flow.path`); the denoiser takes t in [0, 1] (its timestep
  embedder scales it). The time grid is `flow.time_grid(steps, shift)` with the shift of the
  clip's size: `resolution_shift(time_shift, shift_reference, tokens)` = time_shift ×
  sqrt(tokens / shift_reference) (Open-Sora's and SD3's rule: a clip with more tokens —
  more pixels or more frames — keeps its coarse structure to higher noise, so its times
  are shifted toward t = 1); shift_reference 0 keeps `time_shift` for every size.
- frames: the autoencoder takes 1 + k·tc frames (tc its temporal compression) and gives
  1 + k latent frames; `check_frames` refuses any other count with the valid ones named.
- image → video: the first frame is encoded as a one-frame clip, and its latent is given as
  `cond_latent` / `cond_mask` on latent frame 0 in both branches of guidance (the text is
  what guidance steers). The loss never trained the velocity there, so the sampler is handed
  the known one: on the conditioning frame v = velocity_target(latent, noise), which keeps
  x_t on the straight path from that clip's noise to the given latent at every step (exact
  for Euler, Heun and DPM-Solver alike); at t = 0 that frame is the given latent.
- pixels: the decoder's [-1, 1] → clamp((x + 1) / 2, 0, 1) → round(255 x).

What it shares with the image family (device placement, prompt encoding and the guidance
conditions, seeded noise, the sampler dispatch, pixels, the run-or-export choice) lives in
`pipelines.text_flow`; frames, time shifts and the first-frame condition stay here.

Loading: `from_run(run_dir)` reads a video_flow run (its newest checkpoint, EMA weights by
default, and `RUN/video.json`); `from_export(folder)` reads what the run exported
(`RUN/export/`: denoiser.safetensors, video_dit.json, video.json, text_encoder/);
`from_model(path)` tells the two apart. The autoencoder is the one the run recorded (a
video_ae run or a diffusers folder), read by `voxforge.runs.load_video_autoencoder`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from voxforge import runs
from voxforge.config.core import from_dict
from voxforge.errors import UserError
from voxforge.flow.path import velocity_target
from voxforge.flow.samplers import StepCallback
from voxforge.models import video_ae
from voxforge.models.image import TextEncoderConfig, build_text_encoder
from voxforge.models.video_dit import VideoDiT, VideoDiTConfig
from voxforge.pipelines import text_flow

__all__ = [
    "DENOISER_FILE",
    "DENOISER_INFO",
    "SAMPLERS",
    "VIDEO_INFO",
    "VideoPipeline",
    "cache_video_data",
    "denoiser_config",
    "load_autoencoder",
    "load_video_models",
    "resolution_shift",
]

SAMPLERS = text_flow.SAMPLERS
#: written by the video_flow stage: autoencoder, flow settings, text encoder, denoiser, defaults
VIDEO_INFO = "video.json"
#: in RUN/export/: the denoiser's weights and its config (+ the text encoder's width)
DENOISER_FILE = "denoiser.safetensors"
DENOISER_INFO = "video_dit.json"


def resolution_shift(time_shift: float, shift_reference: int, tokens: int) -> float:
    """The time shift of a clip of `tokens` denoiser tokens: time_shift x sqrt(tokens /
    shift_reference); `shift_reference` 0 keeps `time_shift` at every size."""
    if shift_reference <= 0:
        return float(time_shift)
    return float(time_shift) * math.sqrt(tokens / shift_reference)


def denoiser_config(cfg: VideoDiTConfig, in_channels: int) -> VideoDiTConfig:
    """A plain `VideoDiTConfig` with the fields of `cfg` (a subclass carrying training keys
    too) and the autoencoder's latent channels."""
    values = {f.name: getattr(cfg, f.name) for f in fields(VideoDiTConfig)}
    values["in_channels"] = int(in_channels)
    return VideoDiTConfig(**values)


def load_autoencoder(path: str | Path) -> video_ae.VideoAutoencoder:
    """The frozen video autoencoder of a video_ae run or a diffusers folder (`runs.load_video_autoencoder`)."""
    return runs.load_video_autoencoder(path).requires_grad_(False).eval()


def _text_encoder(info: dict[str, Any], where: Path, folder: Path | None) -> nn.Module:
    cfg = from_dict(TextEncoderConfig, info["text_encoder"], source=str(where), prefix="text_encoder")
    if cfg.kind == "builtin" and folder is None:
        raise UserError(f"{where}: the run's builtin text encoder is missing (its text_encoder/ folder)")
    return build_text_encoder(cfg, folder=folder if cfg.kind == "builtin" else None)


def load_video_models(
    run: str | Path | runs.Run, device: torch.device | str = "cpu", *, ema: bool = True
) -> tuple[VideoDiT, video_ae.VideoAutoencoder, nn.Module, dict[str, Any]]:
    """(denoiser, autoencoder, text encoder, the run's `VIDEO_INFO` record) of a video_flow
    run, in eval mode on `device`: the newest checkpoint's weights (EMA when the run has it
    and `ema`)."""
    run = runs.Run.open(run, "video_flow", "the video model")
    info = run.read_info(VIDEO_INFO)
    cfg = from_dict(VideoDiTConfig, info["denoiser"], source=str(run.path / VIDEO_INFO), prefix="denoiser")
    denoiser = VideoDiT(cfg, context_dim=int(info["context_dim"]))
    run.load_weights(denoiser, ema=ema)
    folder = info.get("text_encoder_folder") or None
    text = _text_encoder(info, run.path / VIDEO_INFO, Path(folder) if folder else None)
    autoencoder = load_autoencoder(info["autoencoder"])
    return denoiser.to(device).eval(), autoencoder.to(device), text.to(device), info


def cache_video_data(
    prepared: str | Path,
    out: str | Path,
    *,
    autoencoder: str | Path,
    batch_size: int = 8,
    shard_mb: float = 256.0,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Encode the clips of `prepared` into the latent cache `out` with a video autoencoder (a
    video_ae run or a diffusers folder); the summary of `data.video_cache.encode_video_cache`."""
    from voxforge.data.latent_shards import CACHE_INDEX, check_sizes, files_digest
    from voxforge.data.video_cache import encode_video_cache, read_video_cache_index

    check_sizes(batch_size, shard_mb)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = read_video_cache_index(out) if (out / CACHE_INDEX).is_file() else {}
    folder = runs.video_autoencoder_folder(autoencoder).resolve()
    device = torch.device(device)
    ae = load_autoencoder(folder).to(device)
    sha, files = files_digest([folder], (previous.get("autoencoder") or {}).get("files"))
    identity = {
        "path": str(folder),
        "sha256": sha,
        "kind": ae.kind,
        "latent_channels": int(ae.latent_channels),
        "compression": [
            int(ae.temporal_compression),
            int(ae.spatial_compression),
            int(ae.spatial_compression),
        ],
        "files": files,
    }

    @torch.no_grad()
    def encode_clips(clips: Tensor) -> Tensor:  # [B, 3, T, H, W] in [-1, 1] -> [B, C, t, h, w]
        return ae.encode(clips.to(device))

    return encode_video_cache(
        prepared,
        out,
        encode_clips=encode_clips,
        autoencoder=identity,
        batch_size=batch_size,
        shard_bytes=int(shard_mb * (1 << 20)),
        dtype=dtype,
        log=log,
    )


class VideoPipeline(text_flow.TextFlowPipeline):
    """Denoiser + autoencoder + text encoder: prompts (and a first frame) → clips."""

    MODEL_FOLDERS = "a video_flow run or its export/ folder"
    NEITHER_FOLDER = f"a video_flow run ({runs.CONFIG_FILE}) nor its export folder ({DENOISER_INFO})"

    def __init__(
        self,
        denoiser: VideoDiT,
        autoencoder: video_ae.VideoAutoencoder,
        text_encoder: text_flow.TextEncoderLike,
        *,
        time_shift: float = 1.0,
        shift_reference: int = 0,
        sigma_min: float = 0.0,
        size: tuple[int, int] | None = None,  # default (W, H)
        frames: int | None = None,  # default frame count
        fps: float = 8.0,
        device: torch.device | str | None = None,
    ):
        if time_shift <= 0:
            raise UserError(f"time_shift must be > 0, got {time_shift}")
        self.denoiser = self._place(denoiser, autoencoder, text_encoder, device)
        if self.denoiser.cfg.in_channels != autoencoder.latent_channels:
            raise UserError(
                f"the denoiser takes {self.denoiser.cfg.in_channels} latent channels, the autoencoder gives "
                f"{autoencoder.latent_channels}: they were not trained together"
            )
        self.time_shift, self.shift_reference = float(time_shift), int(shift_reference)
        self.sigma_min = float(sigma_min)
        #: frame sides must be multiples of this: the autoencoder's downsampling x the patch size
        self.factor = autoencoder.spatial_compression * self.denoiser.cfg.patch_size
        self.size = tuple(size) if size is not None else (8 * self.factor, 8 * self.factor)
        self.frames = (
            int(frames) if frames is not None else autoencoder.frames_for(1 + self.denoiser.cfg.patch_t)
        )
        self.fps = float(fps)

    # ---------------------------------------------------------------- loading

    @classmethod
    def _from_info(cls, denoiser, autoencoder, text, info: dict[str, Any], device) -> VideoPipeline:
        return cls(
            denoiser,
            autoencoder,
            text,
            time_shift=info["time_shift"],
            shift_reference=info.get("shift_reference", 0),
            sigma_min=info.get("sigma_min", 0.0),
            size=tuple(info["size"]) if info.get("size") else None,
            frames=info.get("frames"),
            fps=info.get("fps") or 8.0,
            device=device,
        )

    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, device: torch.device | str = "cpu", ema: bool = True
    ) -> VideoPipeline:
        denoiser, autoencoder, text, info = load_video_models(run_dir, device, ema=ema)
        return cls._from_info(denoiser, autoencoder, text, info, device)

    @classmethod
    def from_export(cls, folder: str | Path, *, device: torch.device | str = "cpu") -> VideoPipeline:
        """A run's `export/` folder (denoiser.safetensors, video_dit.json, video.json, text_encoder/)."""
        folder = Path(folder)
        missing = [n for n in (DENOISER_FILE, DENOISER_INFO, VIDEO_INFO) if not (folder / n).is_file()]
        if missing:
            raise UserError(f"{folder}: not a video_flow export (missing {', '.join(missing)})")
        meta = text_flow.read_json(folder / DENOISER_INFO)
        cfg = from_dict(VideoDiTConfig, meta["config"], source=str(folder / DENOISER_INFO), prefix="config")
        denoiser = VideoDiT(cfg, context_dim=int(meta["context_dim"]))
        denoiser.load_state_dict(load_file(str(folder / DENOISER_FILE)))
        info = text_flow.read_json(folder / VIDEO_INFO)
        text_folder = folder / "text_encoder"
        text = _text_encoder(info, folder / VIDEO_INFO, text_folder if text_folder.is_dir() else None)
        autoencoder = load_autoencoder(info["autoencoder"])
        return cls._from_info(denoiser, autoencoder, text, info, device)

    @classmethod
    def _load_other(cls, path: Path, *, device: torch.device | str) -> VideoPipeline | None:
        """`from_model`'s other layout: a run's export folder (video_dit.json)."""
        return cls.from_export(path, device=device) if (path / DENOISER_INFO).is_file() else None

    # ---------------------------------------------------------------- shapes

    def check_frames(self, frames: int | None) -> int:
        """The frame count, checked: 1 + k·tc frames whose latent frames fit the patch."""
        frames = self.frames if frames is None else int(frames)
        tc, pt = self.autoencoder.temporal_compression, self.denoiser.cfg.patch_t
        kind = self.autoencoder.kind
        if frames < 1 or (frames - 1) % tc:
            valid = ", ".join(str(1 + k * tc) for k in range(4))
            raise UserError(f"frames {frames}: the {kind} autoencoder takes 1 + k*{tc} frames ({valid}, ...)")
        latent_frames = 1 + (frames - 1) // tc
        if latent_frames % pt:
            raise UserError(
                f"frames {frames}: {latent_frames} latent frames are not a multiple of the denoiser's "
                f"patch_t={pt}"
            )
        return frames

    def check_size(self, size: Sequence[int] | None) -> tuple[int, int]:
        """(W, H), checked against the autoencoder's downsampling times the patch size."""
        reason = (
            f"the autoencoder's {self.autoencoder.spatial_compression}x downsampling times the "
            f"denoiser's patch size {self.denoiser.cfg.patch_size}"
        )
        return self._check_size(size, self.size, what="size", reason=reason)

    def latent_shape(self, frames: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
        width, height = size
        return self.autoencoder.latent_shape(frames, height, width)

    def shift_for(self, frames: int, size: tuple[int, int]) -> float:
        """The time shift of a clip of this size (`resolution_shift` over its tokens)."""
        _, t, h, w = self.latent_shape(frames, size)
        return resolution_shift(self.time_shift, self.shift_reference, self.denoiser.cfg.tokens(t, h, w))

    # ---------------------------------------------------------------- conditions

    @torch.no_grad()
    def encode_image(self, image: Tensor) -> Tensor:
        """First frames [B, 3, H, W] in [-1, 1] -> their normalised latents [B, C, 1, h, w]."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise UserError(f"first frame: expected [B, 3, H, W] in [-1, 1], got {tuple(image.shape)}")
        return self.autoencoder.encode(image[:, :, None].to(self.device, torch.float32)).float()

    def velocity(self, x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:  # [N, C, T, H, W] fp32
        v = self.denoiser(
            x,
            t,
            cond["embeds"],
            context_mask=cond["mask"],
            cond_latent=cond.get("latent"),
            cond_mask=cond.get("latent_mask"),
        ).float()
        if "known" in cond:  # the conditioning frames move on their straight path (module docstring)
            v = torch.where(cond["latent_mask"].bool(), cond["known"], v)
        return v

    # ---------------------------------------------------------------- sampling

    @torch.no_grad()
    def sample_latents(
        self,
        prompts: str | list[str],
        negative: str | list[str] | None = None,
        *,
        steps: int = 30,
        cfg: float = 5.0,
        seed: int = 0,
        size: Sequence[int] | None = None,  # (W, H)
        frames: int | None = None,
        sampler: str = "euler",
        image: Tensor | None = None,  # [B or 1, 3, H, W] in [-1, 1]: first frames (image → video)
        time_shift: float | None = None,  # None: the clip size's (`shift_for`)
        callback: StepCallback | None = None,
    ) -> Tensor:  # [B, C, t, h, w] normalised latents at t = 0
        prompts = text_flow.check_sampling(prompts, sampler=sampler, steps=steps, cfg=cfg)
        frames, size = self.check_frames(frames), self.check_size(size)
        batch = len(prompts)
        cond, uncond = self.text_conditions(prompts, negative, cfg)
        shape = self.latent_shape(frames, size)
        noise = self.seeded_noise(shape, batch, seed)
        if image is not None:
            if not self.denoiser.cfg.image_condition:
                raise UserError(
                    "this model was trained without image conditioning (model.image_condition: false)"
                )
            width, height = size
            if tuple(image.shape[-2:]) != (height, width):
                raise UserError(
                    f"first frame of {image.shape[-1]}x{image.shape[-2]}, the clip is {width}x{height}"
                )
            first = self.encode_image(image)  # [B or 1, C, 1, h, w]
            latent = torch.zeros_like(noise)
            latent[:, :, :1] = first.expand(batch, -1, -1, -1, -1)
            latent_mask = torch.zeros(batch, 1, *shape[1:], device=self.device)
            latent_mask[:, :, :1] = 1.0
            known = velocity_target(latent, noise, self.sigma_min)
            extra = {"latent": latent, "latent_mask": latent_mask, "known": known}
            cond.update(extra)
            if uncond is not None:
                uncond.update(extra)
        shift = self.shift_for(frames, size) if time_shift is None else float(time_shift)
        x = self.run_sampler(
            self.velocity,
            noise,
            cond,
            uncond,
            sampler=sampler,
            steps=steps,
            cfg=cfg,
            time_shift=shift,
            callback=callback,
        )
        if image is not None:
            x = torch.where(cond["latent_mask"].bool(), cond["latent"], x)
        return x

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:  # [B, C, t, h, w] -> [B, 3, T, H, W] float in [0, 1]
        video = self.autoencoder.decode(latents.float()).float()
        return (video * 0.5 + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def generate(
        self,
        prompts: str | list[str],
        negative: str | list[str] | None = None,
        *,
        steps: int = 30,
        cfg: float = 5.0,
        seed: int = 0,
        size: Sequence[int] | None = None,
        frames: int | None = None,
        sampler: str = "euler",
        image: Tensor | None = None,
        time_shift: float | None = None,
        output: Literal["uint8", "float", "latent"] = "uint8",
        callback: StepCallback | None = None,
    ) -> np.ndarray | Tensor:  # uint8 [B, T, H, W, 3]; "float": [B, T, H, W, 3] in [0, 1]; "latent"
        """Clips for `prompts` (`negative`: the unconditional text, default empty)."""
        self.check_output(output)
        x = self.sample_latents(
            prompts,
            negative,
            steps=steps,
            cfg=cfg,
            seed=seed,
            size=size,
            frames=frames,
            sampler=sampler,
            image=image,
            time_shift=time_shift,
            callback=callback,
        )
        return self.output(x, output)  # uint8 / float: [B, T, H, W, 3]
