"""`slat_flow`: train the structured-latent flow on encoded SLat latents (stage 2, part 2).

Data: `data.latents` is a folder written by `voxforge encode` for a `slat_vae` run
(`voxforge.data.latents`: per-asset voxel coordinates and latents, plus their per-channel
statistics); condition images come from the prepared dataset recorded there (or `data.prepared`):
a random condition view per item, seeded by (seed, epoch, index), prepared as the data
toolkit's `condition_image`. The first `data.eval_assets` ids in sorted order never train
(`voxforge.data.splits`, the split every stage shares).

Loss: rectified flow matching (`voxforge.flow` path and timestep density) on the latents
normalised by the stored statistics; one t per asset, broadcast to its voxels; the squared
error averages over all voxels of the batch (TRELLIS). Condition dropout (`flow.p_uncond`)
zeroes the dropped assets' image tokens, the null condition guidance samples with.

The model keeps the latent statistics as buffers, and `slat.json` in the run folder records
the VAE run, so a checkpoint alone is enough for the image→3D pipeline.

Evaluation (`on_sample` / `on_train_end`, EMA weights), through the inference pipeline
(`voxforge.pipelines.image_to_3d.SLatPipeline`): for each held-out asset, latents
sampled from one of its condition images on its true structure with the recipe's sampler;
`latent_mse` against its encoded latents (normalised space), and — decoded by the VAE and
rendered from `eval_views` of its feature views — PSNR and SSIM against the ground truth.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from voxforge.config.core import option
from voxforge.data.dataset import ConditionImageDataset, collate_sparse
from voxforge.data.latents import LATENTS_DIR, read_latent, read_latents_manifest
from voxforge.data.splits import heldout_split
from voxforge.data.views import SLatDataConfig, SLatViewDataset, collate_views
from voxforge.errors import ConfigError
from voxforge.flow import (
    FlowConfig,
    SamplerConfig,
    drop_conditions,
    interpolate,
    sample_timesteps,
    velocity_target,
)
from voxforge.models.conditioning import frozen_image_encoder
from voxforge.models.image_encoders import ImageEncoderConfig
from voxforge.models.slat_flow import SLatFlowConfig, SLatFlowModel
from voxforge.models.slat_vae import SLatVAEConfig
from voxforge.pipelines.image_to_3d import SLatPipeline
from voxforge.render.losses import RenderLossConfig, composite, render_losses
from voxforge.runs import SLAT_INFO, Run, load_slat_vae, write_info
from voxforge.sparse.tensor import SparseTensor
from voxforge.stages import Recipe
from voxforge.stages.base import EpochAware, Stage
from voxforge.stages.slat_vae import save_comparison

__all__ = ["SLatFlowDataConfig", "SLatFlowStage", "SLatLatentDataset", "collate_latents"]


@dataclass
class SLatFlowDataConfig:
    latents: str = option("", help="folder written by `voxforge encode` for a slat_vae run")
    prepared: str = option("", help="prepared dataset for condition images (default: the one encoded)")
    eval_assets: int = option(4, ge=0, help="held-out assets (first ids in sorted order, as every stage)")
    eval_views: int = option(4, ge=1, help="feature views rendered per held-out asset for PSNR/SSIM")
    eval_limit: int = option(8, ge=1, help="held-out assets scored by the sample/final hooks (at most)")


def _manifest(cfg: SLatFlowDataConfig) -> dict[str, Any]:
    if not cfg.latents:
        raise ConfigError(
            "key 'data.latents': set it to a folder written by `voxforge encode` for a slat_vae run"
        )
    return read_latents_manifest(cfg.latents, "slat")


class SLatLatentDataset(EpochAware, torch.utils.data.Dataset):
    """Items: id, coords [N, 3], feats [N, C] (normalised latents), cond [3, S, S]."""

    def __init__(
        self, cfg: SLatFlowDataConfig, ids: list[str], cond_size: int, seed: int, mean: Tensor, std: Tensor
    ):
        manifest = _manifest(cfg)
        self.folder = Path(cfg.latents) / LATENTS_DIR
        self.ids, self.mean, self.std = list(ids), mean, std
        prepared = cfg.prepared or manifest["prepared"]
        self.conds = ConditionImageDataset(prepared, cond_size=cond_size, ids=self.ids, seed=seed)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.conds.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        stored = read_latent(self.folder / f"{self.ids[index]}.npz")
        feats = (torch.from_numpy(stored.latent) - self.mean) / self.std
        return {
            "id": self.ids[index],
            "coords": torch.from_numpy(stored.coords),
            "feats": feats,
            **self.conds[index],
        }


def collate_latents(items: list[dict[str, Any]]) -> dict[str, Any]:
    return collate_sparse(items)


class SLatFlowStage(Stage):
    name = "slat_flow"
    sections = {
        "model": SLatFlowConfig,
        "image_encoder": ImageEncoderConfig,
        "data": SLatFlowDataConfig,
        "flow": FlowConfig,
        "sampler": SamplerConfig,
    }

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        self.manifest = _manifest(recipe.data)
        cfg = recipe.model
        for key, value in (("latent_channels", cfg.in_channels), ("resolution", cfg.resolution)):
            if self.manifest[key] != value:
                name = "in_channels" if key == "latent_channels" else key
                raise ConfigError(
                    f"key 'model.{name}': {value}, but the latents in {recipe.data.latents} have {key} "
                    f"{self.manifest[key]}"
                )
        self.mean = torch.tensor(self.manifest["mean"], dtype=torch.float32)
        self.std = torch.tensor(self.manifest["std"], dtype=torch.float32).clamp(min=1e-6)
        self.frozen = frozen_image_encoder(recipe.image_encoder)
        if self.frozen is not None:
            self.frozen.to(device)

    def split(self) -> tuple[list[str], list[str]]:
        folder = Path(self.recipe.data.latents) / LATENTS_DIR
        return heldout_split(
            [i for i in self.manifest["ids"] if (folder / f"{i}.npz").is_file()],
            self.recipe.data.eval_assets,
            where=self.recipe.data.latents,
            items="encoded assets",
            remedy="encode more assets or lower it",
        )

    def build_model(self) -> nn.Module:
        model = SLatFlowModel(
            self.recipe.model,
            self.recipe.image_encoder,
            context_dim=self.frozen.out_dim if self.frozen else None,
        )
        model.set_latent_stats(self.mean, self.std)
        info = {
            "vae_run": self.manifest["vae_run"],
            "latents": str(Path(self.recipe.data.latents).resolve()),
            "prepared": str(Path(self.recipe.data.prepared or self.manifest["prepared"]).resolve()),
            "extractor": self.manifest.get("extractor"),
        }
        write_info(self.run_dir, SLAT_INFO, info)  # every rank writes the same content
        return model

    def _dataset(self, ids: list[str]) -> SLatLatentDataset:
        return SLatLatentDataset(
            self.recipe.data,
            ids,
            self.recipe.image_encoder.image_size,
            self.recipe.train.seed,
            self.mean,
            self.std,
        )

    def build_dataset(self) -> torch.utils.data.Dataset:
        return self._dataset(self.split()[0])

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_latents(items)

    def batch_size_of(self, batch: dict[str, Any]) -> int:
        return len(batch["ids"])

    def sparse(self, batch: dict[str, Any]) -> SparseTensor:
        r = self.recipe.model.resolution
        return SparseTensor(
            batch["coords"], batch["feats"], spatial_shape=(r, r, r), batch_size=len(batch["ids"])
        )

    def _condition(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        if self.frozen is None:
            return {"images": batch["cond"]}
        with torch.no_grad():
            return {"context": self.frozen(batch["cond"]).float()}

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        flow = self.recipe.flow
        x0 = self.sparse(batch)
        batch_size = x0.batch_size
        t = sample_timesteps(batch_size, flow, device=x0.device)  # [B]
        noise = torch.randn_like(x0.feats)
        x_t = interpolate(x0.feats, noise, t[x0.batch_index], flow.sigma_min)
        target = velocity_target(x0.feats, noise, flow.sigma_min)
        _, drop = drop_conditions(t, flow.p_uncond)
        pred = model(x0.replace(x_t), t, drop=drop, **self._condition(batch))
        loss = (pred.feats.float() - target.float()).pow(2).mean()
        return loss, {"mean_t": float(t.mean()), "voxels": float(x0.num_points) / batch_size}

    # --- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: SLatFlowModel, out_dir: Path | None = None) -> dict[str, float]:
        _, eval_ids = self.split()
        if not eval_ids:
            return {}
        device = next(model.parameters()).device
        dataset = self._dataset(eval_ids[: self.recipe.data.eval_limit])
        vae, vae_run = None, None
        if Path(self.manifest["vae_run"]).is_dir():
            vae_run = Run.open(self.manifest["vae_run"], "slat_vae", "the SLat VAE")
            vae, _ = load_slat_vae(vae_run, device)
        pipeline = SLatPipeline(
            model, vae, frozen_encoder=self.frozen, sigma_min=self.recipe.flow.sigma_min, device=device
        )
        sums = {"latent_mse": 0.0}
        panels = []
        for index in range(len(dataset)):
            item = dataset[index]
            tokens = pipeline.image_tokens(item["cond"][None])[None]  # [1, 1, T, C]
            latents = pipeline.sample_latents(
                [item["coords"].numpy()],
                tokens,
                seed=self.recipe.train.seed + index,
                sampler=self.recipe.sampler,
            )
            normalised = model.normalize(latents.feats).cpu()
            r = self.recipe.model.resolution
            order = torch.argsort(
                (item["coords"][:, 0] * r + item["coords"][:, 1]) * r + item["coords"][:, 2]
            )
            truth = item["feats"][order]  # the sampler's rows are sorted by voxel
            sums["latent_mse"] += float((normalised - truth).pow(2).mean()) / len(dataset)
            if vae_run is not None:
                scores, renders = self._render_scores(pipeline, latents, item["id"], vae_run, dataset)
                for key, value in scores.items():
                    sums[key] = sums.get(key, 0.0) + value / len(dataset)
                if len(panels) < 3:
                    panels.append(renders)
        if out_dir is not None and panels:
            save_comparison(Path(out_dir) / "generated_views.png", panels)
        return sums

    def _render_scores(
        self,
        pipeline: SLatPipeline,
        latents: SparseTensor,
        asset: str,
        vae_run: Run,
        dataset: SLatLatentDataset,
    ) -> tuple[dict[str, float], tuple[Tensor, Tensor]]:
        vae_data = vae_run.section("data", SLatDataConfig)
        data_cfg = dataclasses.replace(vae_data, eval_views=self.recipe.data.eval_views)
        views = SLatViewDataset(
            dataset.conds.data,
            [asset],
            data_cfg,
            vae_run.section("model", SLatVAEConfig).resolution,
            self.recipe.train.seed,
            split="all_views",
        )
        batch = collate_views([views[0]])
        device = latents.device
        batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        gaussians = pipeline.decode(latents)
        white = torch.ones(*batch["images"].shape[:2], 3, device=device)
        _, metrics, renders = render_losses(
            gaussians, batch, white, vae_run.section("loss", RenderLossConfig)
        )
        truth = composite(batch["images"][0].float(), white[0]).cpu()
        return {"psnr": metrics["psnr"], "ssim": metrics["ssim"]}, (truth, renders[0].cpu())

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        return self.evaluate_once(model, step)

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float]:
        scores = self.evaluate_once(model, step)
        return {f"eval_{k}": v for k, v in scores.items()}
