"""`video_flow`: text / image → video rectified flow on a video autoencoder's latents (Open-Sora's recipe).

Recipe sections: `model` (`VideoFlowModelConfig`: the `models.video_dit.VideoDiT` keys, plus
`init_from` and `reinit`), `text_encoder` (the image family's `TextEncoderConfig`), `flow`
(`VideoFlowConfig`: the shared `FlowConfig` plus `p_image_cond` and `shift_reference`),
`sampler` (`VideoSamplerConfig`, for the previews) and `data` (`VideoFlowDataConfig`: a folder
of `voxforge data videos` plus the autoencoder and the held-out split). Everything else is the
engine's: gradient accumulation, clipping, EMA, precision, the optimizer, checkpoints, resume,
`train.parallel`.

What a step does, Open-Sora's choices as keys:
- batches: one (resolution, frames, aspect) bucket at a time, at that bucket's batch size
  (the bucket table's, or `data.batch_sizes`), through `data.videos.video_batch_sampler` on
  the engine's `Stage.batch_sampler` hook; `train.batch_size` is not used by this stage.
  One set of weights takes every bucket: the denoiser's positions are 3-D rotary.
- latents: the frozen autoencoder (`data.autoencoder`) encodes the clip on the fly to its
  normalised latents (posterior mean: no draw, so a resumed step sees the same latents), or
  with `data.latents` they are read from a cache `voxforge encode` wrote with the same
  autoencoder (`data.video_cache`; refused at start when its autoencoder's files differ).
- text: the image family's text encoders (a builtin word-level one built from the captions at
  the first start and saved in `RUN/text_encoder/`, or a local transformers model); caption
  dropout `flow.p_uncond` replaces a caption by the empty caption's embedding and mask.
- image → video: a share `flow.p_image_cond` of the batch gets its first latent frame as
  `cond_latent` / `cond_mask` (the other samples get zeros), and the squared error is
  averaged over the frames not given only. One-latent-frame clips (images) are never
  conditioned (nothing would be left to learn).
- timesteps: logit-normal (`flow.logit_mean`, `flow.logit_std`) through the shift of the
  batch's size: `pipelines.video.resolution_shift` = `flow.time_shift` ×
  sqrt(tokens / `flow.shift_reference`), so longer and larger clips see noisier times (0: one
  shift for all). The previews and `voxforge generate video` sample with the same shift.

All randomness of a step (caption dropout, the image-conditioning draw, t, the noise) comes
from the global torch RNG, which the engine checkpoints; the sampler's bucket order is a
function of (seed, epoch, batches consumed) and EMA is the engine's: a killed and resumed
run logs the same loss at every step as an uninterrupted one.

Autoencoder swap (`model.init_from: RUN`): the new run builds its denoiser for its own
autoencoder (`model.in_channels: 0` takes its latent channels) and loads the base run's EMA
weights through `nn.state.transfer_state` with `model.reinit` (`changed`: every tensor whose
shape still fits is kept, the rest — the patch embedding in and the projection out —
keeps its fresh initialisation; `all`: nothing is kept; `none`: the weights must fit
exactly). `RUN/transfer.json` and `RUN/transfer.md` say what happened to each tensor.
Without `data.autoencoder` the base's is used; a builtin text encoder is the base's.

Records: `RUN/video.json` (`pipelines.video.VIDEO_INFO`: the autoencoder, the denoiser's
resolved config, flow and text settings, default size / frames / fps for sampling);
`RUN/export/` at the end (denoiser.safetensors with the final EMA weights, video_dit.json,
video.json, text_encoder/); `RUN/eval_heldout.json` (held-out flow loss with and without
captions, at fixed noise and times).
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from voxforge.config.core import from_dict, option, to_dict
from voxforge.data.latent_shards import require_same_encoder
from voxforge.data.splits import split_ids
from voxforge.data.videos import VideoClipDataset, VideoDataConfig, collate_videos, video_batch_sampler
from voxforge.errors import ConfigError, UserError
from voxforge.export.video import write_gif
from voxforge.flow import FlowConfig
from voxforge.flow.guidance import drop_conditions
from voxforge.flow.path import interpolate, velocity_target
from voxforge.flow.timesteps import sample_timesteps
from voxforge.models.image import TextEncoder, TextEncoderConfig, build_text_encoder
from voxforge.models.video_ae import VideoAutoencoder
from voxforge.models.video_dit import VideoDiT, VideoDiTConfig
from voxforge.models.video_memory import predict_step_memory
from voxforge.nn.state import transfer_state, transfer_table
from voxforge.pipelines.video import (
    DENOISER_FILE,
    DENOISER_INFO,
    VIDEO_INFO,
    VideoPipeline,
    denoiser_config,
    load_autoencoder,
    resolution_shift,
)
from voxforge.runs import Run, video_autoencoder_folder, write_info
from voxforge.stages import Recipe
from voxforge.stages.base import Stage

__all__ = [
    "VideoFlowConfig",
    "VideoFlowDataConfig",
    "VideoFlowModelConfig",
    "VideoFlowStage",
    "VideoSamplerConfig",
]

TEXT_ENCODER_DIR = "text_encoder"
EXPORT = Path("export")
TRANSFER_JSON = "transfer.json"
TRANSFER_MD = "transfer.md"


@dataclass
class VideoFlowModelConfig(VideoDiTConfig):
    """The denoiser's keys (`VideoDiTConfig`) plus where its weights start."""

    in_channels: int = option(0, ge=0, help="latent channels C; 0: the autoencoder's (swap in one key)")
    init_from: str = option("", help="a video_flow run whose EMA weights this run starts from")
    reinit: Literal["changed", "all", "none"] = option(
        "changed",
        help="init_from: changed: keep every tensor that fits; all: re-initialise everything; none: must fit",
    )


@dataclass
class VideoFlowConfig(FlowConfig):
    """The shared flow keys plus image → video conditioning and the size-dependent shift."""

    p_image_cond: float = option(
        0.0,
        ge=0.0,
        le=1.0,
        help="share of the batch trained with the first latent frame given (image → video)",
    )
    shift_reference: int = option(
        0, ge=0, help="tokens at which time_shift applies; the shift grows as sqrt(tokens / this) (0: fixed)"
    )


@dataclass
class VideoSamplerConfig:
    """How the previews sample (what `voxforge generate video` defaults to as well)."""

    method: Literal["euler", "heun", "dpm"] = option("euler")
    steps: int = option(20, ge=1)
    cfg_scale: float = option(5.0, ge=0.0, help="classifier-free guidance scale (1: off, 0: unconditional)")


@dataclass
class VideoFlowDataConfig(VideoDataConfig):
    """The video toolkit's `VideoDataConfig` (path, batch_sizes) plus the autoencoder and the split."""

    autoencoder: str = option(
        "", help="a video_ae run or a diffusers video autoencoder folder (default: model.init_from's)"
    )
    latents: str = option(
        "",
        help="a latent cache of data.path (`voxforge encode --model AE --data PATH --out CACHE`): "
        "training reads the clips' latents from it instead of running the autoencoder",
    )
    eval_clips: int = option(4, ge=0, help="held-out clips (first ids in sorted order)")
    eval_seed: int = option(0, ge=0, help="seed of the held-out loss's noise and of the previews")
    eval_samples: int = option(2, ge=0, help="held-out captions sampled into samples.gif (0: none)")
    memory_limit_gb: float = option(
        0.0,
        ge=0.0,
        help="refuse at start a bucket whose step is predicted (models.video_memory) above this (0: no check)",
    )


class VideoData:
    """The prepared clips of a `data` section split by the shared rule (first sorted ids held out)."""

    def __init__(self, cfg: VideoFlowDataConfig):
        if not cfg.path:
            raise ConfigError("key 'data.path': set it to a folder written by `voxforge data videos`")
        self.cfg = cfg
        self.all = VideoClipDataset.from_config(cfg)
        ids = [record["id"] for record in self.all.records]
        self.train_ids, self.eval_ids = split_ids(ids, cfg.eval_clips)
        if not self.train_ids:
            raise UserError(
                f"{cfg.path}: {len(ids)} usable clips, all held out for evaluation "
                f"(data.eval_clips={cfg.eval_clips}); add clips or lower it"
            )

    def train(self) -> VideoClipDataset:
        """The training clips (their cached latents with `data.latents`)."""
        return VideoClipDataset.from_config(self.cfg, ids=self.train_ids, latents=self.cfg.latents or None)

    def heldout(self, size: int = 4) -> list[dict[str, Any]]:
        """The held-out clips as batches of at most `size`, one bucket each (sorted)."""
        if not self.eval_ids:
            return []
        data = VideoClipDataset.from_config(self.cfg, ids=self.eval_ids)
        groups: dict[str, list[int]] = {}
        for index, bucket in enumerate(data.buckets()):
            groups.setdefault(bucket.name, []).append(index)
        return [
            collate_videos([data[i] for i in indices[start : start + size]])
            for _, indices in sorted(groups.items())
            for start in range(0, len(indices), size)
        ]


def _tile(rows: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Rows of clips uint8 [N, T, H, W, 3] -> one clip [T, rows*H + gaps, N*W + gaps, 3] (white gaps)."""
    n, frames, height, width, _ = rows[0].shape
    out = np.full(
        (frames, len(rows) * height + (len(rows) - 1) * gap, n * width + (n - 1) * gap, 3), 255, np.uint8
    )
    for r, row in enumerate(rows):
        for c, clip in enumerate(row):
            y, x = r * (height + gap), c * (width + gap)
            out[:, y : y + height, x : x + width] = clip
    return out


class VideoFlowStage(Stage):
    name = "video_flow"
    sections = {
        "model": VideoFlowModelConfig,
        "text_encoder": TextEncoderConfig,
        "flow": VideoFlowConfig,
        "sampler": VideoSamplerConfig,
        "data": VideoFlowDataConfig,
    }

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        self.model_cfg: VideoFlowModelConfig = recipe.model
        self.data_cfg: VideoFlowDataConfig = recipe.data
        self.flow_cfg: VideoFlowConfig = recipe.flow
        self._data: VideoData | None = None
        self._autoencoder: VideoAutoencoder | None = None
        self._text: TextEncoder | None = None
        self._text_folder = ""
        self._null: tuple[Tensor, Tensor] | None = None
        self._info: dict[str, Any] | None = None
        if self.flow_cfg.p_image_cond > 0 and not self.model_cfg.image_condition:
            raise ConfigError(
                f"key 'flow.p_image_cond': {self.flow_cfg.p_image_cond}, but model.image_condition is false "
                "(the denoiser has no conditioning channels); set one of them"
            )

    # --- data, frozen parts, the run record -------------------------------------------
    def data(self) -> VideoData:
        if self._data is None:
            self._data = VideoData(self.data_cfg)
        return self._data

    def base_run(self) -> Run | None:
        if not self.model_cfg.init_from:
            return None
        return Run.open(self.model_cfg.init_from, "video_flow", "model.init_from")

    def autoencoder_source(self) -> str:
        source = self.data_cfg.autoencoder
        base = self.base_run()
        if not source and base is not None:
            source = base.read_info(VIDEO_INFO)["autoencoder"]
        if not source:
            raise ConfigError(
                "key 'data.autoencoder': set it to a video_ae run or a diffusers video autoencoder folder"
            )
        return str(Path(source).resolve())

    def autoencoder(self) -> VideoAutoencoder:
        if self._autoencoder is None:
            self._autoencoder = load_autoencoder(self.autoencoder_source()).to(self.device)
        return self._autoencoder

    def text_encoder(self) -> TextEncoder:
        if self._text is None:
            cfg: TextEncoderConfig = self.recipe.text_encoder
            own = self.run_dir / TEXT_ENCODER_DIR
            if cfg.kind == "builtin":
                base = self.base_run()
                if not (own / "text_encoder.json").is_file():
                    inherited = base.read_info(VIDEO_INFO).get("text_encoder_folder") if base else ""
                    if inherited:  # the base's vocabulary and weights, copied so the run stands alone
                        shutil.copytree(inherited, own, dirs_exist_ok=True)
                    else:
                        build_text_encoder(cfg, captions=self.data().all.captions()).save(own)
                encoder = build_text_encoder(cfg, folder=own)
                self._text_folder = str(own.resolve())
            else:
                encoder = build_text_encoder(cfg)
            self._text = encoder.to(self.device)
        return self._text

    def null_condition(self) -> tuple[Tensor, Tensor]:  # ([L, C], [L]) of the empty caption
        if self._null is None:
            embeds, mask = self.text_encoder().encode([""])
            self._null = (embeds[0], mask[0])
        return self._null

    def check_buckets(self, ae: VideoAutoencoder) -> None:
        """Every training bucket must be a clip the autoencoder and the patch take."""
        tc, factor = ae.temporal_compression, ae.spatial_compression * self.model_cfg.patch_size
        for bucket in sorted(set(self.data().all.buckets())):
            if (bucket.frames - 1) % tc:
                raise ConfigError(
                    f"{self.data_cfg.path}: bucket {bucket.name} has {bucket.frames} frames; the {ae.kind} "
                    f"autoencoder takes 1 + k*{tc} ({', '.join(str(1 + k * tc) for k in range(4))}, ...): "
                    "prepare the clips with such frame counts in the bucket table"
                )
            if bucket.width % factor or bucket.height % factor:
                raise ConfigError(
                    f"{self.data_cfg.path}: bucket {bucket.name} is {bucket.width}x{bucket.height}; sides must be "
                    f"multiples of {factor} (the autoencoder's {ae.spatial_compression}x times model.patch_size)"
                )
            latent_frames = 1 + (bucket.frames - 1) // tc
            if latent_frames % self.model_cfg.patch_t:
                raise ConfigError(
                    f"key 'model.patch_t': {self.model_cfg.patch_t} does not divide the {latent_frames} latent "
                    f"frames of bucket {bucket.name}"
                )

    def info(self) -> dict[str, Any]:
        if self._info is None:
            ae = self.autoencoder()
            text = self.text_encoder()
            channels = ae.latent_channels
            if self.model_cfg.in_channels not in (0, channels):
                raise ConfigError(
                    f"key 'model.in_channels': {self.model_cfg.in_channels}, but the autoencoder's latents have "
                    f"{channels} channels; set it to {channels} or 0 (the autoencoder's)"
                )
            self.check_buckets(ae)
            data = self.data()
            train = set(data.train_ids)
            records = [r for r in data.all.records if r["id"] in train]
            common = Counter(b for r, b in zip(data.all.records, data.all.buckets()) if r["id"] in train)
            bucket = common.most_common(1)[0][0]
            rates = [float(r["fps"]) for r in records if r.get("fps")]
            self._info = {
                "autoencoder": self.autoencoder_source(),
                "autoencoder_kind": ae.kind,
                "latent_channels": channels,
                "temporal_compression": ae.temporal_compression,
                "spatial_compression": ae.spatial_compression,
                "denoiser": to_dict(denoiser_config(self.model_cfg, channels)),
                "context_dim": int(text.dim),
                "text_encoder": to_dict(self.recipe.text_encoder),
                "text_encoder_folder": self._text_folder,
                "time_shift": self.flow_cfg.time_shift,
                "shift_reference": self.flow_cfg.shift_reference,
                "sigma_min": self.flow_cfg.sigma_min,
                "p_image_cond": self.flow_cfg.p_image_cond,
                "size": [bucket.width, bucket.height],
                "frames": bucket.frames,
                "fps": statistics.median(rates) if rates else 8.0,
                "base": str(Path(self.model_cfg.init_from).resolve()) if self.model_cfg.init_from else "",
                "reinit": self.model_cfg.reinit if self.model_cfg.init_from else "",
                "data": str(Path(self.data_cfg.path).resolve()),
            }
        return self._info

    # --- building ----------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        info = self.info()
        write_info(self.run_dir, VIDEO_INFO, info)
        cfg = from_dict(VideoDiTConfig, info["denoiser"], source=str(self.run_dir / VIDEO_INFO))
        model = VideoDiT(cfg, context_dim=info["context_dim"])
        base = self.base_run()
        if base is not None:
            self.transfer(model, base)
        return model

    def transfer(self, model: VideoDiT, base: Run) -> None:
        """Load the base run's EMA weights into `model` by `model.reinit`; write the table."""
        base_info = base.read_info(VIDEO_INFO)
        base_cfg = from_dict(VideoDiTConfig, base_info["denoiser"], source=str(base.path / VIDEO_INFO))
        with torch.random.fork_rng(devices=[]):  # building the base leaves the run's RNG alone
            previous = VideoDiT(base_cfg, context_dim=int(base_info["context_dim"]))
        ckpt = base.load_weights(previous, ema=True)
        try:
            rows = transfer_state(model, previous.state_dict(), reinit=self.model_cfg.reinit)
        except ValueError as err:
            raise UserError(
                f"{base.path} (model.init_from): {err}\nset model.reinit=changed to keep what fits"
            ) from None
        counts = Counter(r.action for r in rows)
        record = {
            "base": str(base.path.resolve()),
            "base_step": ckpt.step,
            "base_autoencoder": base_info["autoencoder"],
            "autoencoder": self.info()["autoencoder"],
            "reinit": self.model_cfg.reinit,
            "counts": {a: counts.get(a, 0) for a in ("kept", "reinitialised", "new", "dropped")},
            "tensors": [r.to_dict() for r in rows],
        }
        write_info(self.run_dir, TRANSFER_JSON, record)
        header = (
            f"# Weights carried over from {record['base']} (step {ckpt.step})\n\n"
            f"reinit: {record['reinit']}; autoencoder {record['base_autoencoder']} -> {record['autoencoder']}\n\n"
        )
        (self.run_dir / TRANSFER_MD).write_text(header + transfer_table(rows))

    def check_memory(self, dataset: VideoClipDataset) -> None:
        """`data.memory_limit_gb`: every bucket's step must be predicted to fit (models.video_memory)."""
        limit = self.data_cfg.memory_limit_gb
        if not limit:
            return
        info, ae = self.info(), self.autoencoder()
        cfg = from_dict(VideoDiTConfig, info["denoiser"], source="model")
        with torch.device("meta"):
            params = sum(p.numel() for p in VideoDiT(cfg, context_dim=info["context_dim"]).parameters())

        def predicted(bucket: Any, batch: int) -> float:
            _, t, h, w = ae.latent_shape(bucket.frames, bucket.height, bucket.width)
            return predict_step_memory(
                params=params, width=cfg.width, depth=cfg.depth, heads=cfg.heads, batch=batch,
                tokens=cfg.tokens(t, h, w), grad_checkpoint=cfg.grad_checkpoint,
                ema_copies=len(self.recipe.train.ema_rates), fused_attention=True,
            ).gib  # fmt: skip

        for bucket, batch in sorted(dataset.batch_sizes().items(), key=lambda item: item[0].name):
            need = predicted(bucket, batch)
            if need > limit:
                fits = max((b for b in range(1, batch) if predicted(bucket, b) <= limit), default=0)
                hint = f"data.batch_sizes={{'{bucket.resolution}/{bucket.frames}': {fits}}}" if fits else (
                    "model.grad_checkpoint=true or fewer frames / pixels in this bucket"
                )  # fmt: skip
                raise UserError(
                    f"{self.data_cfg.path}: bucket {bucket.name} at batch {batch} is predicted to need "
                    f"{need:.2f} GiB per step (models.video_memory), over data.memory_limit_gb={limit:g}; "
                    f"set {hint}"
                )

    def build_dataset(self) -> torch.utils.data.Dataset:
        self.info()  # checks the buckets against the autoencoder before anything trains
        dataset = self.data().train()
        if dataset.cache is not None:  # data.latents: written by this run's autoencoder?
            source = self.autoencoder_source()
            fix = f"voxforge encode --model {source} --data {self.data_cfg.path} --out {dataset.cache.folder}"
            require_same_encoder(
                dataset.cache.folder, dataset.cache.autoencoder, video_autoencoder_folder(source), fix
            )
        self.check_memory(dataset)
        return dataset

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_videos(items)

    def batch_sampler(self, dataset: Any, batch_size: int, **position: int) -> Any:
        return video_batch_sampler(dataset, None, **position)  # each bucket's own batch size

    # --- training ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """(normalised latents [B, C, T, H, W], text embeds [B, L, C'], text mask [B, L]); the
        latents from the cache when the batch carries them (`data.latents`)."""
        if "latent" in batch:
            latents = batch["latent"].to(self.device).float().contiguous()
        else:
            latents = self.autoencoder().encode(batch["video"].to(self.device)).float().contiguous()
        embeds, mask = self.text_encoder().encode(list(batch["caption"]))
        return latents, embeds.to(latents.device), mask.to(latents.device)

    def shift_of(self, latents: Tensor) -> float:
        _, _, t, h, w = latents.shape
        tokens = self.model_cfg.tokens(t, h, w)
        return resolution_shift(self.flow_cfg.time_shift, self.flow_cfg.shift_reference, tokens)

    def first_frame_condition(self, latents: Tensor, chosen: Tensor) -> tuple[Tensor, Tensor]:
        """(cond_latent [B, C, T, H, W], cond_mask [B, 1, T, H, W]): latent frame 0 of the chosen samples."""
        mask = latents.new_zeros(latents.shape[0], 1, *latents.shape[2:])
        if latents.shape[2] > 1:
            mask[chosen, :, 0] = 1.0
        return latents * mask, mask

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        latents, embeds, mask = self.encode(batch)
        null_embeds, null_mask = self.null_condition()
        cond, dropped = drop_conditions(
            {"embeds": embeds, "mask": mask},
            self.flow_cfg.p_uncond,
            {"embeds": null_embeds, "mask": null_mask},
        )
        size = latents.shape[0]
        extra: dict[str, Tensor] = {}
        given = latents.new_zeros(size, 1, *latents.shape[2:])
        if self.model_cfg.image_condition:
            chosen = torch.zeros(size, dtype=torch.bool, device=latents.device)
            if self.flow_cfg.p_image_cond > 0:
                chosen = torch.rand(size, device=latents.device) < self.flow_cfg.p_image_cond
            cond_latent, given = self.first_frame_condition(latents, chosen)
            extra = {"cond_latent": cond_latent, "cond_mask": given}
        shift = self.shift_of(latents)
        t = sample_timesteps(size, replace(self.flow_cfg, time_shift=shift), device=latents.device)
        noise = torch.randn_like(latents)
        x_t = interpolate(latents, noise, t, self.flow_cfg.sigma_min)
        target = velocity_target(latents, noise, self.flow_cfg.sigma_min)
        pred = model(x_t, t, cond["embeds"], context_mask=cond["mask"], **extra)
        error = (pred.float() - target.float()).pow(2)  # fp32 whatever the autocast
        weight = 1.0 - given  # [B, 1, T, H, W]: the frames not given
        loss = (error * weight).sum() / (weight.sum() * latents.shape[1]).clamp_min(1.0)
        metrics = {
            "mean_t": float(t.mean()),
            "dropped": float(dropped.float().mean()),
            "image_cond": float((given.flatten(1).amax(1) > 0).float().mean()),
            "time_shift": shift,
        }
        return loss, metrics

    # --- evaluation and export -----------------------------------------------------------
    @torch.no_grad()
    def heldout_loss(self, model: nn.Module) -> dict[str, float] | None:
        """Flow loss on the held-out clips at fixed noise and times, with their captions and with
        the empty caption: the gap says how much the captions are used."""
        batches = self.data().heldout()
        if not batches:
            return None
        generator = torch.Generator().manual_seed(self.data_cfg.eval_seed)
        count = sum(len(b["id"]) for b in batches)
        grid = (torch.arange(count) + 0.5) / count  # one fixed time per held-out clip
        null_embeds, null_mask = self.null_condition()
        sums = {"heldout_loss": 0.0, "heldout_loss_uncond": 0.0}
        seen = 0
        for batch in batches:
            latents, embeds, mask = self.encode(batch)
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
            t = grid[seen : seen + latents.shape[0]].to(latents.device)
            seen += latents.shape[0]
            x_t = interpolate(latents, noise, t, self.flow_cfg.sigma_min)
            target = velocity_target(latents, noise, self.flow_cfg.sigma_min)
            for name, (e, m) in {
                "heldout_loss": (embeds, mask),
                "heldout_loss_uncond": (null_embeds.expand_as(embeds), null_mask.expand_as(mask)),
            }.items():
                pred = model(x_t, t, e, context_mask=m)
                sums[name] += float((pred.float() - target).pow(2).flatten(1).mean(1).sum())
        return {name: total / count for name, total in sums.items()}

    def pipeline(self, model: nn.Module) -> VideoPipeline:
        """The sampling pipeline over `model` and this run's frozen parts (what
        `voxforge generate video` runs on the finished run)."""
        info = self.info()
        return VideoPipeline(
            model,
            self.autoencoder(),
            self.text_encoder(),
            time_shift=info["time_shift"],
            shift_reference=info["shift_reference"],
            sigma_min=info["sigma_min"],
            size=tuple(info["size"]),
            frames=info["frames"],
            fps=info["fps"],
            device=self.device,
        )

    @torch.no_grad()
    def samples(self, model: nn.Module, out_dir: Path) -> None:
        """`out_dir/samples.gif`: for up to `data.eval_samples` held-out captions (of the first
        held-out bucket, at its size and frames), a row sampled with guidance
        (`sampler.cfg_scale`) above a row without the caption (cfg 0), same noise;
        `samples.json` lists the captions."""
        batches = self.data().heldout(size=max(1, self.data_cfg.eval_samples))
        if not batches or not self.data_cfg.eval_samples:
            return
        batch = batches[0]
        prompts = list(batch["caption"])[: self.data_cfg.eval_samples]
        _, _, frames, height, width = batch["video"].shape
        sampler = self.recipe.sampler
        pipe = self.pipeline(model)
        rows = [
            pipe.generate(
                prompts,
                steps=sampler.steps,
                cfg=cfg,
                seed=self.data_cfg.eval_seed,
                size=(width, height),
                frames=frames,
                sampler=sampler.method,
            )
            for cfg in (sampler.cfg_scale, 0.0)
        ]
        write_gif(_tile(rows), out_dir / "samples.gif", fps=max(1, round(self.info()["fps"])))
        (out_dir / "samples.json").write_text(
            json.dumps({"prompts": prompts, "rows": ["cfg", "uncond"], "frames": frames}, indent=1)
        )

    def evaluate(self, model: nn.Module, out_dir: Path) -> dict[str, float] | None:
        result = self.heldout_loss(model)
        self.samples(model, out_dir)
        return result

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float] | None:
        return self.evaluate_once(model, step)

    def export(self, model: nn.Module) -> Path:
        """RUN/export/: the denoiser's weights and config, the run record, the text encoder."""
        out = self.run_dir / EXPORT
        out.mkdir(parents=True, exist_ok=True)
        info = self.info()
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / DENOISER_FILE))
        meta = {"config": info["denoiser"], "context_dim": info["context_dim"]}
        (out / DENOISER_INFO).write_text(json.dumps(meta, indent=1))
        if info["text_encoder_folder"]:
            shutil.copytree(info["text_encoder_folder"], out / TEXT_ENCODER_DIR, dirs_exist_ok=True)
        write_info(out, VIDEO_INFO, {**info, "text_encoder_folder": ""})
        return out

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float] | None:
        exported = self.export(model)
        write_info(self.run_dir, VIDEO_INFO, {**self.info(), "export": str(exported.resolve())})
        result = self.evaluate_once(model, step)
        if result is None:
            return None
        (self.run_dir / "eval_heldout.json").write_text(json.dumps(result, indent=1))
        return {f"eval_{k}": v for k, v in result.items()}
