"""`image_ae`: trains the image family's DC-AE (`diffusers.AutoencoderDC`) on prepared images.

Recipe sections: `model` (`ImageAEConfig`: a tiny config trained from scratch, or
`pretrained: FOLDER` to fine-tune a released DC-AE), `data` (`ImageAEDataConfig`: the data
toolkit's `ImageDataConfig` for the folder `voxforge data images` wrote, plus the held-out
count) and `loss` (`AELossConfig`). Items come from `voxforge.data.images.ImageCaptionDataset`.

Loss: L1 + L2 on pixels in [-1, 1], computed in fp32, plus LPIPS when `loss.lpips_weight > 0`
and `loss.lpips_path` names local VGG-LPIPS weights (`voxforge.eval.lpips`). No KL term: DC-AE
is a plain deterministic autoencoder; the flow stage rescales its latents instead.

Held-out images: the first `data.eval_images` sorted ids (`voxforge.data.splits`), never trained
on; the evaluation hooks report their reconstruction PSNR and write a PNG of originals above
reconstructions. At the end of training the run writes `RUN/export/autoencoder/`
(`save_pretrained`, with `scaling_factor` set to 1 / std of the latents of up to
`data.scale_images` training images, as Sana's DC-AE records it) and `RUN/autoencoder.json`
(scale, compression, latent channels, resolution). `image_flow` reads that folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from voxforge.config.core import option
from voxforge.data.images import ImageCaptionDataset, ImageDataConfig, bucket_batch_sampler, collate_images
from voxforge.data.splits import heldout_split
from voxforge.errors import ConfigError, UserError
from voxforge.eval.image_metrics import psnr
from voxforge.eval.lpips import load_lpips
from voxforge.models.image import ImageAEConfig, build_autoencoder
from voxforge.runs import write_info
from voxforge.stages import Recipe
from voxforge.stages.base import Stage

__all__ = [
    "AE_INFO",
    "AELossConfig",
    "ImageAEStage",
    "ImageAEDataConfig",
    "ImageData",
]

#: written at the end of an image_ae run: scale, compression, latent channels
AE_INFO = "autoencoder.json"
EXPORT_AE = Path("export") / "autoencoder"


@dataclass
class ImageAEDataConfig(ImageDataConfig):
    """The data toolkit's `ImageDataConfig` (path, resolution, augment, ...) plus the split."""

    eval_images: int = option(8, ge=0, help="held-out images (first ids in sorted order)")
    scale_images: int = option(64, ge=1, help="training images whose latent std sets the latent scale")


@dataclass
class AELossConfig:
    l1: float = option(1.0, ge=0.0, help="weight of the pixel L1 loss")
    l2: float = option(1.0, ge=0.0, help="weight of the pixel L2 loss")
    lpips_weight: float = option(0.0, ge=0.0, help="weight of LPIPS (needs lpips_path)")
    lpips_path: str = option("", help="local VGG-LPIPS weights (voxforge.eval.lpips.load_lpips)")


class ImageData:
    """The prepared images of a `data` section (an `ImageDataConfig` with `eval_images`),
    split by the shared held-out rule: the first `eval_images` sorted ids never train."""

    def __init__(self, cfg: Any, seed: int):
        if not cfg.path:
            raise ConfigError("key 'data.path': set it to a folder written by `voxforge data images`")
        self.cfg, self.seed = cfg, seed
        self.all = ImageCaptionDataset(cfg.path, cfg.resolution, None, mask_weight=cfg.mask_weight)
        self.ids = [record["id"] for record in self.all.records]
        if len(self.ids) <= cfg.eval_images:
            raise UserError(
                f"{cfg.path}: {len(self.ids)} usable images, all held out for evaluation "
                f"(data.eval_images={cfg.eval_images}); add images or lower it"
            )
        self.train_ids, self.eval_ids = heldout_split(
            self.ids, cfg.eval_images, where=cfg.path, items="images", remedy="add images or lower it"
        )

    def train(self) -> ImageCaptionDataset:
        return ImageCaptionDataset.from_config(self.cfg, seed=self.seed, ids=self.train_ids)

    def batch_sampler(self, dataset: ImageCaptionDataset, batch_size: int, **position: int) -> Any:
        """Batches of one aspect-ratio bucket each, drawn by the sources' mixing weights when
        `data.weighted` (the data toolkit's `BucketBatchSampler`; resumable, split by rank)."""
        return bucket_batch_sampler(dataset, batch_size, weighted=self.cfg.weighted, **position)

    def batches(self, ids: list[str], size: int = 8) -> list[dict[str, Any]]:
        """The images of `ids` (no augmentation) as batches of at most `size`, one bucket each."""
        if not ids:
            return []
        cfg = self.cfg
        data = ImageCaptionDataset(cfg.path, cfg.resolution, None, mask_weight=cfg.mask_weight, ids=ids)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, bucket in enumerate(data.buckets()):
            groups.setdefault(tuple(bucket), []).append(index)
        return [
            collate_images([data[i] for i in indices[start : start + size]])
            for _, indices in sorted(groups.items())
            for start in range(0, len(indices), size)
        ]

    def heldout(self) -> list[dict[str, Any]]:
        """The held-out images as batches (no augmentation); empty without any."""
        return self.batches(self.eval_ids)

    def first(self, count: int) -> list[dict[str, Any]]:
        """The first `count` training images as batches (no augmentation)."""
        return self.batches(self.train_ids[:count])


def image_grid(rows: list[Tensor], path: Path) -> None:
    """Save rows of images [N, 3, H, W] in [-1, 1] as one PNG."""
    grid = torch.cat([torch.cat(list(row), dim=2) for row in rows], dim=1)  # [3, rows*H, N*W]
    array = ((grid.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(np.ascontiguousarray(array)).save(path)


class ImageAEStage(Stage):
    name = "image_ae"
    sections = {"model": ImageAEConfig, "data": ImageAEDataConfig, "loss": AELossConfig}

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        self.data_cfg: ImageAEDataConfig = recipe.data
        self.loss_cfg: AELossConfig = recipe.loss
        self._data: ImageData | None = None
        self._lpips: nn.Module | None = None

    def data(self) -> ImageData:
        if getattr(self.data_cfg, "latents", None):
            raise ConfigError("key 'data.latents': the autoencoder trains on images; leave it unset here")
        if self._data is None:
            self._data = ImageData(self.data_cfg, self.recipe.train.seed)
        return self._data

    # --- building --------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        return build_autoencoder(self.recipe.model)

    def build_dataset(self) -> torch.utils.data.Dataset:
        return self.data().train()

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_images(items)

    def batch_sampler(self, dataset: Any, batch_size: int, **position: int) -> Any:
        return self.data().batch_sampler(dataset, batch_size, **position)

    # --- training --------------------------------------------------------------------
    def lpips(self) -> nn.Module | None:
        cfg = self.loss_cfg
        if cfg.lpips_weight <= 0:
            return None
        if not cfg.lpips_path:
            raise ConfigError("key 'loss.lpips_path': set it to local LPIPS weights, or loss.lpips_weight=0")
        if self._lpips is None:
            self._lpips = load_lpips(cfg.lpips_path).to(self.device).eval().requires_grad_(False)
        return self._lpips

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        images = batch["image"]
        recon = model(images, return_dict=False)[0]
        cfg = self.loss_cfg
        with torch.autocast(images.device.type, enabled=False):
            diff = recon.float() - images.float()
            l1, l2 = diff.abs().mean(), diff.pow(2).mean()
            loss = cfg.l1 * l1 + cfg.l2 * l2
            metrics = {
                "l1": float(l1.detach()),
                "psnr": float(10 * torch.log10(4.0 / l2.detach().clamp_min(1e-10))),
            }
            lpips = self.lpips()
            if lpips is not None:
                perceptual = lpips(recon.float(), images.float()).mean()
                loss = loss + cfg.lpips_weight * perceptual
                metrics["lpips"] = float(perceptual.detach())
        return loss, metrics

    # --- evaluation ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, out_dir: Path) -> dict[str, Any] | None:
        batches = self.data().heldout()
        if not batches:
            return None
        to_unit = lambda x: ((x.float() + 1) / 2).permute(0, 2, 3, 1)  # noqa: E731  [B, H, W, 3] in [0, 1]
        scores = []
        for index, batch in enumerate(batches):
            images = batch["image"].to(self.device)
            recon = model(images, return_dict=False)[0].clamp(-1, 1)
            scores.append(psnr(to_unit(recon), to_unit(images), max_db=100.0))
            if index == 0:
                image_grid([images, recon], out_dir / "reconstructions.png")
        scores = torch.cat(scores)
        return {"psnr": float(scores.mean()), "images": int(scores.numel())}

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float] | None:
        result = self.evaluate_once(model, step)
        return None if result is None else {"psnr": result["psnr"]}

    @torch.no_grad()
    def latent_scale(self, model: nn.Module) -> float:
        """1 / std of the latents of up to `data.scale_images` training images."""
        batches = self.data().first(self.data_cfg.scale_images)
        latents = torch.cat(
            [model.encode(b["image"].to(self.device)).latent.float().flatten() for b in batches]
        )
        return float(1.0 / latents.std().clamp_min(1e-6))

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float] | None:
        scale = self.latent_scale(model)
        model.register_to_config(scaling_factor=scale)
        model.save_pretrained(str(self.run_dir / EXPORT_AE))
        info = {
            "autoencoder": str((self.run_dir / EXPORT_AE).resolve()),
            "scaling_factor": scale,
            "latent_channels": int(model.config.latent_channels),
            "compression": int(model.spatial_compression_ratio),
            "resolution": self.data_cfg.resolution,
            "data": str(Path(self.data_cfg.path).resolve()),
        }
        write_info(self.run_dir, AE_INFO, info)
        result = self.evaluate_once(model, step)
        final = {"latent_scale": scale}
        if result is not None:
            (self.run_dir / "eval_reconstruction.json").write_text(json.dumps(result, indent=1))
            final["eval_psnr"] = result["psnr"]
        return final
