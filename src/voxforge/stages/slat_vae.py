"""`slat_vae`: train the structured-latent VAE with rendering losses (stage 2, part 1).

Data: a folder written by `voxforge data prepare` with `features_<extractor>_<R>` done
(`data.path`). An item is one asset's voxels and features plus `views_per_item` of its feature
views (RGBA and cameras), drawn from a generator seeded by (seed, epoch, index) and resized to
`image_size` (the intrinsics are scaled with them): `voxforge.data.views.SLatViewDataset`,
whose `SLatDataConfig` is this stage's `data:` section.

Held out, two ways: the first `data.eval_assets` ids in sorted order never train (the same
split every stage uses, `voxforge.data.splits`, so the demo evaluates generation on assets
no model saw), and every `holdout_every`-th view of the training assets is never trained on.
PSNR and SSIM are reported on both (`views_*`: new views of seen assets; `assets_*`: unseen
assets, where the VAE has to generalise).

Loss (per asset, averaged over the batch; `voxforge.render.losses`, whose `RenderLossConfig`
is this stage's `loss:` section): the decoded Gaussians are rendered from the
item's cameras with `render_gaussians` — which runs in fp32 with autocast off whatever
`train.precision` is — and compared with the ground truth composited over the same
background: `l1_weight · L1 + ssim_weight · (1 − SSIM) + lpips_weight · LPIPS +
kl_weight · KL`. LPIPS runs only when `loss.lpips_weights` names a local weights file (it is
never downloaded; see `voxforge.eval.lpips`). The image losses are computed in fp32 too,
so the only low-precision parts of a bf16 step are the transformer blocks.

`background: random` draws one colour per view from the global RNG (the engine checkpoints
it): an opaque Gaussian over the wrong background is penalised whatever the colour, so the
decoder learns alpha as well as colour. Evaluation always uses white.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from voxforge.data.dataset import PreparedDataset
from voxforge.data.splits import heldout_split, open_prepared
from voxforge.data.views import SLatDataConfig, SLatViewDataset, collate_views
from voxforge.eval.lpips import load_lpips
from voxforge.models.slat_vae import SLatVAE, SLatVAEConfig
from voxforge.render.losses import RenderLossConfig, composite, render_losses
from voxforge.sparse.tensor import SparseTensor
from voxforge.stages import Recipe
from voxforge.stages.base import Stage

__all__ = ["SLatVAEStage", "feature_split", "save_comparison"]

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def feature_split(cfg: SLatDataConfig, resolution: int) -> tuple[PreparedDataset, list[str], list[str]]:
    """(prepared data, training ids, held-out ids) — the held-out assets of every stage."""
    data = open_prepared(cfg.path)
    step = f"features_{cfg.extractor}_{resolution}"
    train_ids, eval_ids = heldout_split(
        data.ids(require=(step,)),
        cfg.eval_assets,
        where=str(data.root),
        items=f"assets with {step}",
        remedy=f"prepare more assets (with --features {cfg.extractor} --resolution {resolution}) or lower "
        "data.eval_assets",
    )
    return data, train_ids, eval_ids


class SLatVAEStage(Stage):
    name = "slat_vae"
    sections = {"model": SLatVAEConfig, "data": SLatDataConfig, "loss": RenderLossConfig}

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        self._lpips: nn.Module | None = None
        if recipe.loss.lpips_weights is not None and recipe.loss.lpips_weight > 0:
            self._lpips = load_lpips(recipe.loss.lpips_weights).to(device)

    def build_model(self) -> nn.Module:
        cfg = self.recipe.model
        in_channels = cfg.in_channels
        if in_channels is None:
            data, train_ids, _ = feature_split(self.recipe.data, cfg.resolution)
            in_channels = int(
                data.features(train_ids[0], self.recipe.data.extractor, cfg.resolution)[1].shape[1]
            )
        return SLatVAE(cfg, in_channels)

    def build_dataset(self) -> torch.utils.data.Dataset:
        data, train_ids, _ = feature_split(self.recipe.data, self.recipe.model.resolution)
        return SLatViewDataset(
            data,
            train_ids,
            self.recipe.data,
            self.recipe.model.resolution,
            self.recipe.train.seed,
            split="train",
        )

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_views(items)

    def batch_size_of(self, batch: dict[str, Any]) -> int:
        return len(batch["ids"])

    def sparse_input(self, batch: dict[str, Any]) -> SparseTensor:
        r = self.recipe.model.resolution
        return SparseTensor(
            batch["coords"], batch["feats"], spatial_shape=(r, r, r), batch_size=len(batch["ids"])
        )

    def _backgrounds(self, batch: dict[str, Any], mode: str) -> Tensor:
        images = batch["images"]
        shape = (*images.shape[:2], 3)
        if mode == "random":
            return torch.rand(shape, device=images.device)
        return torch.tensor(BACKGROUNDS[mode], device=images.device).expand(shape)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        out = model(self.sparse_input(batch))
        image_loss, metrics, _ = render_losses(
            out.gaussians,
            batch,
            self._backgrounds(batch, self.recipe.data.background),
            self.recipe.loss,
            self._lpips,
        )
        loss = image_loss + self.recipe.loss.kl_weight * out.kl.float()
        metrics["kl"] = float(out.kl.detach())
        return loss, metrics

    # --- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, out_dir: Path | None = None) -> dict[str, float]:
        """PSNR / SSIM (posterior mean, white background) on the held-out views of training
        assets (`views_*`) and on views of the held-out assets (`assets_*`)."""
        cfg, resolution = self.recipe.data, self.recipe.model.resolution
        data, train_ids, eval_ids = feature_split(cfg, resolution)
        device = next(model.parameters()).device
        scores: dict[str, float] = {}
        panels = []
        groups = [
            ("views", train_ids[: cfg.eval_limit], "heldout_views"),
            ("assets", eval_ids[: cfg.eval_limit], "all_views"),
        ]
        for prefix, ids, split in groups:
            if not ids or (split == "heldout_views" and not cfg.holdout_every):
                continue
            dataset = SLatViewDataset(data, ids, cfg, resolution, self.recipe.train.seed, split=split)
            if split == "heldout_views" and not dataset.view_indices(ids[0])[1]:
                continue  # fewer views than holdout_every: nothing held out
            sums = {"psnr": 0.0, "ssim": 0.0}
            for index in range(len(dataset)):
                batch = collate_views([dataset[index]])
                batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}
                gaussians = model.decode(model.encode(self.sparse_input(batch)))
                white = self._backgrounds(batch, "white")
                _, metrics, renders = render_losses(gaussians, batch, white, self.recipe.loss)
                for key in sums:
                    sums[key] += metrics[key] / len(dataset)
                if len(panels) < 3:
                    panels.append((composite(batch["images"][0].float(), white[0]).cpu(), renders[0].cpu()))
            scores.update({f"{prefix}_{k}": v for k, v in sums.items()})
        if out_dir is not None and panels:
            save_comparison(Path(out_dir) / "heldout_views.png", panels)
        return scores

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        return self.evaluate_once(model, step)

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float]:
        scores = self.evaluate_once(model, step)
        return {f"eval_{k}": v for k, v in scores.items()}


def save_comparison(path: Path, panels: list[tuple[Tensor, Tensor]]) -> None:
    """Rows of (ground truth views | rendered views), [V, S, S, 3] each, as one PNG."""
    rows = []
    for truth, render in panels:
        rows.append(
            np.concatenate(
                [np.concatenate(list(truth.numpy()), 1), np.concatenate(list(render.numpy()), 1)], 0
            )
        )
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=1.0) for r in rows]
    image = (np.clip(np.concatenate(rows, 0), 0, 1) * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
