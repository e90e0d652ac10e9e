"""`video_ae`: trains the video family's autoencoder (`models.video_ae.VideoAutoencoder`) on prepared clips.

Recipe sections: `model` (`VideoAEConfig`: `kind` hunyuan or ltx, a tiny config trained from
scratch, or `pretrained: FOLDER` to fine-tune a released diffusers folder), `data`
(`VideoAEDataConfig`: the video toolkit's `VideoDataConfig` for a folder `voxforge data videos`
wrote, plus the split) and `loss` (`VideoAELossConfig`). Items come from
`voxforge.data.videos.VideoClipDataset`, batched one (resolution, frames, aspect) bucket at a
time at each bucket's batch size (`video_batch_sampler`); images in the folder are one-frame
clips and train the same way (their latent is the first latent frame of a clip).

Frame counts. Both kinds take clips of 1 + k·tc frames (tc: the temporal compression) with
sides divisible by the spatial compression. Before anything trains, every bucket of the data is
checked and a misfit is refused naming the bucket and the nearest counts that fit; with
`data.crop_frames: true` a clip keeps instead its first 1 + k·tc frames (the largest count that
fits, the same for every clip of a bucket).

Loss (fp32, autocast off): `l1`·L1 + `l2`·L2 on pixels in [-1, 1] between the clip and the
decoding of a posterior sample (of the posterior mean with `sample_posterior: false`, which
the CPU recipes use: a few hundred steps fit it much faster), + `lpips_weight`·LPIPS per frame (`voxforge.eval.lpips`, local
VGG-LPIPS weights in `lpips_path`; off by default) + `kl`·KL(posterior ‖ N(0, I)) averaged over
latent elements. The KL weight is small (Open-Sora's and HunyuanVideo's VAEs train at 1e-6
against per-pixel reconstruction losses): it keeps the posterior a distribution and the latent
near unit scale without costing sharpness; the calibration below sets the exact scale.

Evaluation (at every `sample_every` and at the end, on the EMA weights when EMA is on): the
first `data.eval_clips` sorted clip ids never train; their reconstructions from the posterior
mean are scored per frame with `eval.image_metrics` PSNR and SSIM (`RUN/samples/step_*/
reconstructions.png`: originals above reconstructions, frame by frame, for a few clips).
Each evaluation also calibrates the latent statistics (per-channel mean and std of the
posterior means of up to `data.calibrate_clips` training clips: `VideoAutoencoder.calibrate`)
and exports `RUN/export/autoencoder/` (`VideoAutoencoder.save`: a diffusers folder plus the
statistics), so a run stopped early still leaves a usable autoencoder. The end of training
writes `RUN/eval_reconstruction.json` and `RUN/video_ae.json` (kind, compression, latent
channels, the export folder, the data). `voxforge.runs.load_video_autoencoder(RUN)` reads it
back; the video flow stage takes the run folder as `data.autoencoder`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from voxforge.config.core import option
from voxforge.data.splits import split_ids
from voxforge.data.video_buckets import VideoBucket
from voxforge.data.videos import VideoClipDataset, VideoDataConfig, collate_videos, video_batch_sampler
from voxforge.errors import ConfigError, UserError
from voxforge.eval.image_metrics import psnr, ssim
from voxforge.eval.lpips import load_lpips
from voxforge.models.video_ae import VideoAEConfig, VideoAutoencoder, build_video_autoencoder
from voxforge.runs import VIDEO_AE_EXPORT, write_info
from voxforge.stages import Recipe
from voxforge.stages.base import Stage

__all__ = [
    "EVAL_FILE",
    "VIDEO_AE_INFO",
    "VideoAEDataConfig",
    "VideoAELossConfig",
    "VideoAEStage",
    "fitting_frames",
    "kl_divergence",
]

#: written at the end of a video_ae run: kind, compression, latent channels, the export folder
VIDEO_AE_INFO = "video_ae.json"
EVAL_FILE = "eval_reconstruction.json"
GRID_FILE = "reconstructions.png"


@dataclass
class VideoAEDataConfig(VideoDataConfig):
    """The video toolkit's `VideoDataConfig` (path, batch_sizes) plus the split and the calibration."""

    eval_clips: int = option(8, ge=0, help="held-out clips (first ids in sorted order)")
    calibrate_clips: int = option(64, ge=1, help="training clips whose latents set the latent mean/std")
    crop_frames: bool = option(
        False, help="keep the first 1 + k*tc frames of a bucket whose frame count does not fit (else refuse)"
    )
    grid_clips: int = option(2, ge=0, help="held-out clips drawn in reconstructions.png (0: none)")


@dataclass
class VideoAELossConfig:
    l1: float = option(1.0, ge=0.0, help="weight of the pixel L1 loss")
    l2: float = option(0.0, ge=0.0, help="weight of the pixel L2 loss")
    lpips_weight: float = option(0.0, ge=0.0, help="weight of per-frame LPIPS (needs lpips_path)")
    lpips_path: str = option("", help="local VGG-LPIPS weights (voxforge.eval.lpips.load_lpips)")
    kl: float = option(1.0e-6, ge=0.0, help="weight of KL(posterior || N(0, I)), mean over latent elements")
    sample_posterior: bool = option(
        True, help="decode a posterior sample (a VAE); false: decode the mean (faster to fit, tiny recipes)"
    )


def fitting_frames(frames: int, temporal_compression: int) -> int:
    """The largest 1 + k·tc <= frames."""
    return 1 + (frames - 1) // temporal_compression * temporal_compression


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) ‖ N(0, I)), averaged over every element (fp32)."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


def _frames_of(video: Tensor) -> Tensor:
    """[B, 3, T, H, W] in [-1, 1] -> frames [B*T, H, W, 3] in [0, 1]."""
    return ((video.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 4, 1).flatten(0, 1)


def frame_grid(originals: Tensor, recons: Tensor, path: Path, gap: int = 2) -> None:
    """A PNG: for each clip, a row of its frames above a row of their reconstructions (white gaps)."""
    rows = [row for pair in zip(originals, recons) for row in pair]  # each [3, T, H, W]
    _, frames, height, width = rows[0].shape
    out = np.full(
        (len(rows) * height + (len(rows) - 1) * gap, frames * width + (frames - 1) * gap, 3), 255, np.uint8
    )
    for r, clip in enumerate(rows):
        pixels = ((clip.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()
        for t in range(frames):
            y, x = r * (height + gap), t * (width + gap)
            out[y : y + height, x : x + width] = pixels[t]
    Image.fromarray(out).save(path)


class VideoAEData:
    """The prepared clips of a `data` section split by the shared rule (first sorted ids held out)."""

    def __init__(self, cfg: VideoAEDataConfig):
        if not cfg.path:
            raise ConfigError("key 'data.path': set it to a folder written by `voxforge data videos`")
        self.cfg = cfg
        self.all = VideoClipDataset.from_config(cfg)
        ids = [record["id"] for record in self.all.records]
        self.train_ids, self.eval_ids = split_ids(ids, cfg.eval_clips)  # the same split as video_flow
        if not self.train_ids:
            raise UserError(
                f"{cfg.path}: {len(ids)} usable clips, all held out for evaluation "
                f"(data.eval_clips={cfg.eval_clips}); add clips or lower it"
            )

    def train(self) -> VideoClipDataset:
        return VideoClipDataset.from_config(self.cfg, ids=self.train_ids)

    def batches(self, ids: list[str], size: int = 4) -> list[dict[str, Any]]:
        """The clips of `ids` as batches of at most `size`, one bucket each (buckets sorted)."""
        if not ids:
            return []
        data = VideoClipDataset.from_config(self.cfg, ids=ids)
        groups: dict[str, list[int]] = {}
        for index, bucket in enumerate(data.buckets()):
            groups.setdefault(bucket.name, []).append(index)
        return [
            collate_videos([data[i] for i in indices[start : start + size]])
            for _, indices in sorted(groups.items())
            for start in range(0, len(indices), size)
        ]


class VideoAEStage(Stage):
    name = "video_ae"
    sections = {"model": VideoAEConfig, "data": VideoAEDataConfig, "loss": VideoAELossConfig}

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        self.model_cfg: VideoAEConfig = recipe.model
        self.data_cfg: VideoAEDataConfig = recipe.data
        self.loss_cfg: VideoAELossConfig = recipe.loss
        self._data: VideoAEData | None = None
        self._lpips: nn.Module | None = None
        self._compression: tuple[int, int] | None = None
        if self.loss_cfg.lpips_weight > 0 and not self.loss_cfg.lpips_path:
            raise ConfigError("key 'loss.lpips_path': set it to local LPIPS weights, or loss.lpips_weight=0")

    def data(self) -> VideoAEData:
        if self._data is None:
            self._data = VideoAEData(self.data_cfg)
        return self._data

    # --- building ----------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        ae = build_video_autoencoder(self.model_cfg)
        self._compression = (ae.temporal_compression, ae.spatial_compression)
        return ae.train()

    def compression(self) -> tuple[int, int]:
        """(temporal, spatial) compression of the configured autoencoder."""
        if self._compression is None:
            self.build_model()
        assert self._compression is not None
        return self._compression

    def check_buckets(self, buckets: list[VideoBucket]) -> None:
        """Refuse a bucket the autoencoder cannot take, naming it (frames only with data.crop_frames)."""
        tc, sc = self.compression()
        kind = self.model_cfg.kind
        for bucket in sorted(set(buckets)):
            if bucket.width % sc or bucket.height % sc:
                raise UserError(
                    f"{self.data_cfg.path}: bucket {bucket.name} is {bucket.width}x{bucket.height}, but the "
                    f"{kind} autoencoder needs sides divisible by {sc}; prepare the data with "
                    f"`voxforge data videos --multiple {sc}` (or a multiple of it)"
                )
            if (bucket.frames - 1) % tc and not self.data_cfg.crop_frames:
                low = fitting_frames(bucket.frames, tc)
                raise UserError(
                    f"{self.data_cfg.path}: bucket {bucket.name} has {bucket.frames} frames, but the {kind} "
                    f"autoencoder takes 1 + k*{tc} frames ({low} or {low + tc} here); use those counts in "
                    "the bucket table, or set data.crop_frames=true to keep the first "
                    f"{low} frames of each clip"
                )

    def build_dataset(self) -> torch.utils.data.Dataset:
        dataset = self.data().train()
        self.check_buckets(dataset.buckets())
        return dataset

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_videos(items)

    def batch_sampler(self, dataset: Any, batch_size: int, **position: int) -> Any:
        return video_batch_sampler(dataset, None, **position)  # each bucket's own batch size

    def clip(self, video: Tensor) -> Tensor:
        """The frames the autoencoder takes: the first 1 + k·tc (all of them when they fit)."""
        tc, _ = self.compression()
        return video[:, :, : fitting_frames(video.shape[2], tc)]

    # --- training ----------------------------------------------------------------------
    def lpips(self) -> nn.Module | None:
        cfg = self.loss_cfg
        if cfg.lpips_weight <= 0:
            return None
        if self._lpips is None:
            self._lpips = load_lpips(cfg.lpips_path).to(self.device).eval().requires_grad_(False)
        return self._lpips

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        video = self.clip(batch["video"])
        cfg = self.loss_cfg
        recon, mean, logvar = model(video, sample=cfg.sample_posterior)
        with torch.autocast(video.device.type, enabled=False):
            diff = recon.float() - video.float()
            l1, l2 = diff.abs().mean(), diff.pow(2).mean()
            kl = kl_divergence(mean, logvar)
            loss = cfg.l1 * l1 + cfg.l2 * l2 + cfg.kl * kl
            metrics = {
                "l1": float(l1.detach()),
                "kl": float(kl.detach()),
                "psnr": float(10 * torch.log10(4.0 / l2.detach().clamp_min(1e-10))),
            }
            lpips = self.lpips()
            if lpips is not None:
                # LPIPS takes frames [N, H, W, 3] in [0, 1]; the reconstruction keeps its gradient
                perceptual = lpips(_frames_of(recon), _frames_of(video)).mean()
                loss = loss + cfg.lpips_weight * perceptual
                metrics["lpips"] = float(perceptual.detach())
        return loss, metrics

    # --- evaluation and export -----------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, out_dir: Path) -> dict[str, Any] | None:
        """Per-frame PSNR/SSIM of the held-out clips' reconstructions (posterior mean)."""
        batches = self.data().batches(self.data().eval_ids)
        if not batches:
            return None
        psnrs, ssims, first, buckets = [], [], [], {}
        shown: list[tuple[Tensor, Tensor]] = []
        for batch in batches:
            video = self.clip(batch["video"].to(self.device))
            mean, _ = model.posterior(video)
            recon = model.decode_raw(mean).clamp(-1, 1)
            a, b = _frames_of(recon), _frames_of(video)
            frame_psnr = psnr(a, b, max_db=100.0).view(video.shape[0], -1)  # [B, T]
            frame_ssim = ssim(a, b).view(video.shape[0], -1)
            psnrs.append(frame_psnr.flatten())
            ssims.append(frame_ssim.flatten())
            first.append(frame_psnr[:, 0])
            name = batch["bucket"][0]
            entry = buckets.setdefault(name, {"clips": 0, "psnr": 0.0, "ssim": 0.0})
            entry["clips"] += video.shape[0]
            entry["psnr"] += float(frame_psnr.mean(1).sum())
            entry["ssim"] += float(frame_ssim.mean(1).sum())
            if len(shown) < self.data_cfg.grid_clips:
                shown.extend(zip(video[: self.data_cfg.grid_clips - len(shown)], recon))
        for entry in buckets.values():
            entry["psnr"] /= entry["clips"]
            entry["ssim"] /= entry["clips"]
        if shown:
            frame_grid([o for o, _ in shown], [r for _, r in shown], out_dir / GRID_FILE)
        all_psnr, all_ssim = torch.cat(psnrs), torch.cat(ssims)
        return {
            "psnr": float(all_psnr.mean()),
            "ssim": float(all_ssim.mean()),
            "first_frame_psnr": float(torch.cat(first).mean()),
            "clips": len(self.data().eval_ids),
            "frames": int(all_psnr.numel()),
            "buckets": buckets,
        }

    @torch.no_grad()
    def calibrate(self, model: VideoAutoencoder) -> None:
        """Latent mean/std from the posterior means of up to `data.calibrate_clips` training clips."""
        ids = self.data().train_ids[: self.data_cfg.calibrate_clips]
        raws = []
        for batch in self.data().batches(ids):
            mean, _ = model.posterior(self.clip(batch["video"].to(self.device)))
            raws.append(mean.float().transpose(0, 1).flatten(1))  # [C, B*t*h*w]: any clip size
        model.calibrate(torch.cat(raws, dim=1).transpose(0, 1).unsqueeze(-1))

    def export(self, model: VideoAutoencoder, step: int) -> dict[str, Any]:
        """Calibrate, write RUN/export/autoencoder/ and RUN/video_ae.json; returns the record."""
        self.calibrate(model)
        folder = model.save(self.run_dir / VIDEO_AE_EXPORT)
        tc, sc = self.compression()
        info = {
            "kind": model.kind,
            "autoencoder": str(folder.resolve()),
            "temporal_compression": tc,
            "spatial_compression": sc,
            "latent_channels": model.latent_channels,
            "latent_mean": model.latent_mean.tolist(),
            "latent_std": model.latent_std.tolist(),
            "step": step,
            "data": str(Path(self.data_cfg.path).resolve()),
        }
        write_info(self.run_dir, VIDEO_AE_INFO, info)
        return info

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float] | None:
        self.export(model, step)
        result = self.evaluate_once(model, step)
        return None if result is None else {"psnr": result["psnr"], "ssim": result["ssim"]}

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float] | None:
        info = self.export(model, step)
        result = self.evaluate_once(model, step)
        final = {"latent_std_mean": float(np.mean(info["latent_std"]))}
        if result is not None:
            result = {**result, "step": step, "kind": model.kind}
            (self.run_dir / EVAL_FILE).write_text(json.dumps(result, indent=1) + "\n")
            final.update(eval_psnr=result["psnr"], eval_ssim=result["ssim"])
        return {k: v for k, v in final.items() if math.isfinite(v)}
