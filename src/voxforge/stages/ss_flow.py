"""`ss_flow`: trains the image-conditioned structure flow on latents from `voxforge encode`.

Recipe sections: `model` (`SSFlowConfig`), `image_encoder` (`ImageEncoderConfig`), `flow`
(`FlowConfig`: path, logit-normal timesteps, `p_uncond`), `sampler` (`SamplerConfig`, used
by the evaluation hooks) and `data` (`SSFlowDataConfig`).

Data: each item is one asset's latent `[C, r, r, r]` (normalised per channel with the
statistics `voxforge encode` recorded, so the flow sees unit-scale targets) and a random
condition view of the same asset from the prepared dataset (the data toolkit's
`ConditionImageDataset`, drawn from (seed, epoch, index)). The first `data.eval_assets`
sorted ids are held out, the same rule as the VAE stage, so neither model trains on them.

Conditioning: with `image_encoder.kind: vit` the ViT is part of the trained model and runs
inside its forward (so DDP sees it); with `dinov2` the frozen encoder is built here, outside
the model, and its tokens are computed under `no_grad`. Classifier-free guidance dropout
replaces a sample's tokens by zeros with probability `flow.p_uncond`, drawn from the global
RNG that the engine checkpoints.

`RUN/structure.json` records what inference needs besides the weights: the VAE run whose
decoder turns latents into voxels, the latent statistics, and the prepared dataset. The
hooks sample structures for the held-out assets' condition views and score them against
the true voxels, next to unconditional samples from the same noise (see
`voxforge.pipelines.evaluate.evaluate_generation`): training evaluates through the same
pipeline that `voxforge generate structure` runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from voxforge.config.core import option
from voxforge.data.dataset import ConditionImageDataset
from voxforge.data.latents import LATENTS_DIR, read_latent, read_latents_manifest
from voxforge.data.splits import heldout_split
from voxforge.errors import ConfigError
from voxforge.flow import FlowConfig, SamplerConfig, flow_matching_loss
from voxforge.models.conditioning import frozen_image_encoder
from voxforge.models.image_encoders import ImageEncoder, ImageEncoderConfig
from voxforge.models.ss_flow import SSFlowConfig, StructureFlowModel
from voxforge.models.ss_vae import SSVAE
from voxforge.pipelines.evaluate import evaluate_generation
from voxforge.pipelines.structure import StructurePipeline
from voxforge.runs import STRUCTURE_INFO, load_ss_vae, write_info
from voxforge.stages import Recipe
from voxforge.stages.base import EpochAware, Stage

__all__ = ["LatentConditionDataset", "SSFlowDataConfig", "SSFlowStage"]


@dataclass
class SSFlowDataConfig:
    latents: str = option("", help="folder written by `voxforge encode` (latents.json + latents/)")
    prepared: str = option("", help="prepared dataset for condition views (default: the one encoded)")
    eval_assets: int = option(8, ge=0, help="held-out assets (first ids in sorted order), as in ss_vae")
    normalize: bool = option(True, help="scale latents to zero mean, unit std per channel")
    eval_seed: int = option(0, ge=0, help="seed of the evaluation noise and condition views")


class LatentConditionDataset(EpochAware, torch.utils.data.Dataset):
    """Items {"latent": [C, r, r, r] normalised, "cond": [3, S, S]}."""

    def __init__(self, folder: Path, ids: list[str], cond: ConditionImageDataset, mean: Tensor, std: Tensor):
        self.folder, self.ids, self.cond = folder, ids, cond
        self.mean, self.std = mean.view(-1, 1, 1, 1), std.view(-1, 1, 1, 1)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.cond.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        latent = torch.from_numpy(read_latent(self.folder / f"{self.ids[index]}.npz").latent)
        return {"latent": (latent - self.mean) / self.std, "cond": self.cond[index]["cond"]}


class SSFlowStage(Stage):
    name = "ss_flow"
    sections = {
        "model": SSFlowConfig,
        "image_encoder": ImageEncoderConfig,
        "flow": FlowConfig,
        "sampler": SamplerConfig,
        "data": SSFlowDataConfig,
    }

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        self.model_cfg: SSFlowConfig = recipe.model
        self.encoder_cfg: ImageEncoderConfig = recipe.image_encoder
        self.data_cfg: SSFlowDataConfig = recipe.data
        self._frozen: ImageEncoder | None = None
        self._info: dict[str, Any] | None = None
        self._vae: SSVAE | None = None

    # --- latents and their statistics ----------------------------------------------------
    def info(self) -> dict[str, Any]:
        """What `voxforge encode` recorded, checked against the model config."""
        if self._info is not None:
            return self._info
        if not self.data_cfg.latents:
            raise ConfigError("key 'data.latents': set it to the --out folder of `voxforge encode`")
        manifest = read_latents_manifest(self.data_cfg.latents, "ss")
        cfg = self.model_cfg
        if manifest["latent_resolution"] != cfg.resolution or manifest["latent_channels"] != cfg.in_channels:
            raise ConfigError(
                f"{self.data_cfg.latents}: latents are {manifest['latent_channels']} x "
                f"{manifest['latent_resolution']}³ but the recipe has model.in_channels={cfg.in_channels}, "
                f"model.resolution={cfg.resolution}; set them to match the VAE"
            )
        channels = manifest["latent_channels"]
        normalize = self.data_cfg.normalize
        self._info = {
            "vae_run": manifest["vae_run"],
            "latents": str(Path(self.data_cfg.latents).resolve()),
            "prepared": self.data_cfg.prepared or manifest["prepared"],
            "resolution": manifest["resolution"],
            "mean": manifest["mean"] if normalize else [0.0] * channels,
            "std": manifest["std"] if normalize else [1.0] * channels,
            "ids": manifest["ids"],
        }
        return self._info

    def _write_info(self) -> None:
        write_info(self.run_dir, STRUCTURE_INFO, {k: v for k, v in self.info().items() if k != "ids"})

    def frozen_encoder(self) -> ImageEncoder | None:
        if self._frozen is None and self.encoder_cfg.kind != "vit":
            self._frozen = frozen_image_encoder(self.encoder_cfg).to(self.device)
        return self._frozen

    # --- building --------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        self._write_info()
        frozen = self.frozen_encoder()
        return StructureFlowModel(
            self.model_cfg, self.encoder_cfg, context_dim=frozen.out_dim if frozen else None
        )

    def _split(self) -> tuple[list[str], list[str]]:
        return heldout_split(
            self.info()["ids"],
            self.data_cfg.eval_assets,
            where=self.data_cfg.latents,
            items="latents",
            remedy="encode more assets or lower it",
        )

    def build_dataset(self) -> torch.utils.data.Dataset:
        info = self.info()
        train_ids, _ = self._split()
        cond = ConditionImageDataset(
            info["prepared"],
            cond_size=self.encoder_cfg.image_size,
            ids=train_ids,
            seed=self.recipe.train.seed,
        )
        return LatentConditionDataset(
            Path(info["latents"]) / LATENTS_DIR,
            train_ids,
            cond,
            torch.tensor(info["mean"], dtype=torch.float32),
            torch.tensor(info["std"], dtype=torch.float32),
        )

    # --- training --------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        latents, images = batch["latent"], batch["cond"]
        drop = (torch.rand(latents.shape[0]) < self.recipe.flow.p_uncond).to(latents.device)
        frozen = self.frozen_encoder()
        if frozen is not None:
            with torch.no_grad():
                context = frozen(images)

            def model_fn(x: Tensor, t: Tensor, _: Any) -> Tensor:
                return model(x, t, context=context, drop=drop)
        else:

            def model_fn(x: Tensor, t: Tensor, _: Any) -> Tensor:
                return model(x, t, images=images, drop=drop)

        loss, metrics = flow_matching_loss(model_fn, latents, None, self.recipe.flow)
        metrics["dropped"] = float(drop.float().mean())
        return loss, metrics

    # --- evaluation ------------------------------------------------------------------------
    def pipeline(self, model: StructureFlowModel) -> StructurePipeline:
        info = self.info()
        if self._vae is None:
            self._vae, _ = load_ss_vae(info["vae_run"], self.device)
        return StructurePipeline(
            model,
            self._vae,
            latent_mean=info["mean"],
            latent_std=info["std"],
            frozen_encoder=self.frozen_encoder(),
            sigma_min=self.recipe.flow.sigma_min,
            device=self.device,
        )

    def evaluate(self, model: StructureFlowModel, out_dir: Path) -> dict[str, Any] | None:
        _, eval_ids = self._split()
        if not eval_ids:
            return None
        return evaluate_generation(
            self.pipeline(model),
            self.info()["prepared"],
            eval_ids,
            seed=self.data_cfg.eval_seed,
            sampler=self.recipe.sampler,
            out_dir=out_dir,
        )

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float] | None:
        result = self.evaluate_once(model, step)
        if result is None:
            return None
        return {k: result[k] for k in ("iou", "iou_uncond", "yaw_iou", "yaw_iou_uncond")}

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float] | None:
        result = self.evaluate_once(model, step)
        if result is None:
            return None
        (self.run_dir / "eval_generation.json").write_text(json.dumps(result, indent=1))
        return {f"eval_{k}": result[k] for k in ("iou", "iou_uncond", "yaw_iou", "yaw_iou_uncond")}
