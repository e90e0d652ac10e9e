"""`ss_vae`: trains the sparse-structure VAE on the occupancy grids of a prepared dataset.

Recipe sections: `model` (`SSVAEConfig`), `data` (`SSVAEDataConfig`). The dataset is the
data toolkit's `OccupancyDataset` at `model.resolution`, so `voxforge data prepare` must have
run with the same `--resolution`.

Held-out assets: the first `data.eval_assets` ids in sorted order never train
(`voxforge.data.splits`, the split every stage and command derives the same way): the
structure flow holds out the same assets, and the demo evaluates generation on them.

Augmentation (`data.augment`): `yaw` applies one of the 8 grid symmetries that keep +Y up
(mirror x, mirror z, swap x and z), drawn from (seed, epoch, index) as the engine's resume
rules ask; `none` trains on the grids as they are. Prepared assets stand upright, so these
transforms stay inside the data distribution while multiplying the shapes seen. `cube`
draws from all 48 symmetries of the grid (axis permutations and mirrors): the autoencoder
is local, and seeing surfaces in every orientation is what carries a VAE trained on a few
upright shapes over to meshes in arbitrary poses.

Evaluation (`on_sample`, `on_train_end`): mean IoU, precision and recall of the decoded
posterior mean on the held-out assets (threshold: logit 0), plus a preview PNG of ground
truth (top row) and reconstruction (bottom row).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from voxforge.config.core import option
from voxforge.data.dataset import OccupancyDataset, PreparedDataset
from voxforge.data.splits import heldout_split, open_prepared
from voxforge.models.ss_vae import SSVAE, SSVAEConfig, occupancy_metrics, ss_vae_loss
from voxforge.representations.voxels import grid_to_coords, render_preview
from voxforge.runs import OCCUPANCY_INFO, write_info
from voxforge.stages import Recipe
from voxforge.stages.base import EpochAware, Stage

__all__ = [
    "OccupancyAugment",
    "SSVAEDataConfig",
    "SSVAEStage",
    "cube_symmetry",
    "evaluate_reconstruction",
    "yaw_symmetry",
]


@dataclass
class SSVAEDataConfig:
    path: str = option("", help="folder written by `voxforge data prepare` (with voxels at model.resolution)")
    eval_assets: int = option(8, ge=0, help="held-out assets (first ids in sorted order) for evaluation")
    augment: Literal["none", "yaw", "cube"] = option(
        "yaw", help="yaw: the 8 grid symmetries that keep +Y up; cube: all 48 symmetries of the cube"
    )
    eval_batch_size: int = option(8, ge=1)


def yaw_symmetry(grid: Tensor, code: int) -> Tensor:  # [..., X, Y, Z], code in [0, 8)
    """Apply symmetry `code` (bit 0: mirror x, bit 1: mirror z, bit 2: swap x and z)."""
    dims = grid.ndim
    x, z = dims - 3, dims - 1
    if code & 1:
        grid = grid.flip(x)
    if code & 2:
        grid = grid.flip(z)
    if code & 4:
        grid = grid.transpose(x, z)
    return grid


_PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def cube_symmetry(grid: Tensor, code: int) -> Tensor:  # [..., X, Y, Z], code in [0, 48)
    """Symmetry `code` of the cube: axis permutation code // 8, then mirrors by the bits of code % 8."""
    lead = grid.ndim - 3
    perm = _PERMUTATIONS[code // 8]
    grid = grid.permute(*range(lead), *(lead + a for a in perm))
    flips = [lead + axis for axis in range(3) if (code % 8) >> axis & 1]
    return grid.flip(flips) if flips else grid


class OccupancyAugment(EpochAware, torch.utils.data.Dataset):
    """Wraps an `OccupancyDataset`: items {"occupancy": [1, R, R, R]}, optionally augmented."""

    def __init__(self, base: OccupancyDataset, augment: str, seed: int):
        self.base, self.augment, self.seed = base, augment, seed

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        occupancy = self.base[index]["occupancy"]
        if self.augment != "none":
            rng = np.random.default_rng([self.seed, self.epoch, index, 11])
            if self.augment == "yaw":
                occupancy = yaw_symmetry(occupancy, int(rng.integers(8)))
            else:
                occupancy = cube_symmetry(occupancy, int(rng.integers(48)))
            occupancy = occupancy.contiguous()
        return {"occupancy": occupancy}


@torch.no_grad()
def evaluate_reconstruction(
    vae: SSVAE, dataset: OccupancyDataset | list, device: torch.device, batch_size: int = 8
) -> tuple[dict[str, float], list[tuple[np.ndarray, np.ndarray]]]:
    """Mean IoU / precision / recall over an `OccupancyDataset`; also (true, predicted) grids."""
    vae.eval()
    scores: dict[str, list[Tensor]] = {"iou": [], "precision": [], "recall": []}
    pairs = []
    for start in range(0, len(dataset), batch_size):
        batch = torch.stack(
            [dataset[i]["occupancy"] for i in range(start, min(len(dataset), start + batch_size))]
        )
        batch = batch.to(device)
        pred = vae.decode(vae.encode(batch)) > 0
        for key, value in occupancy_metrics(pred, batch > 0.5).items():
            scores[key].append(value.cpu())
        pairs.extend((t[0].cpu().numpy() > 0.5, p[0].cpu().numpy()) for t, p in zip(batch, pred))
    return {k: float(torch.cat(v).mean()) for k, v in scores.items() if v}, pairs


class SSVAEStage(Stage):
    name = "ss_vae"
    sections = {"model": SSVAEConfig, "data": SSVAEDataConfig}

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        self.model_cfg: SSVAEConfig = recipe.model
        self.data_cfg: SSVAEDataConfig = recipe.data
        self._eval_set: OccupancyDataset | list | None = None

    def _split(self) -> tuple[PreparedDataset, list[str], list[str]]:
        data = open_prepared(self.data_cfg.path)
        step = f"voxels_{self.model_cfg.resolution}"
        ids = data.ids(require=(step,))
        train_ids, eval_ids = heldout_split(
            ids,
            self.data_cfg.eval_assets,
            where=str(data.root),
            items=f"assets with {step}",
            remedy="prepare more assets or lower it",
        )
        return data, train_ids, eval_ids

    def build_model(self) -> nn.Module:
        model = SSVAE(self.model_cfg)
        rate = self.occupancy_rate()
        write_info(self.run_dir, OCCUPANCY_INFO, {"rate": rate})  # the decoder's top-k fallback reads it
        if self.model_cfg.prior_init:
            model.decoder.init_output_prior(rate)
        return model

    def occupancy_rate(self, limit: int = 64) -> float:
        """Mean occupied fraction of the grid over (up to `limit`) training assets."""
        data, train_ids, _ = self._split()
        base = OccupancyDataset(data, resolution=self.model_cfg.resolution, ids=train_ids[:limit])
        return float(torch.stack([base[i]["occupancy"].float().mean() for i in range(len(base))]).mean())

    def build_dataset(self) -> torch.utils.data.Dataset:
        data, train_ids, _ = self._split()
        base = OccupancyDataset(data, resolution=self.model_cfg.resolution, ids=train_ids)
        return OccupancyAugment(base, self.data_cfg.augment, self.recipe.train.seed)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        occupancy = batch["occupancy"]
        logits, mean, logvar = model(occupancy)
        loss, parts = ss_vae_loss(logits, occupancy, mean, logvar, self.model_cfg)
        parts["iou"] = float(occupancy_metrics(logits.detach() > 0, occupancy > 0.5)["iou"].mean())
        return loss, parts

    def eval_dataset(self) -> OccupancyDataset | list:
        if self._eval_set is None:
            data, _, eval_ids = self._split()
            self._eval_set = (
                OccupancyDataset(data, resolution=self.model_cfg.resolution, ids=eval_ids) if eval_ids else []
            )
        return self._eval_set

    def evaluate(self, model: nn.Module, out_dir: Path) -> dict[str, float] | None:
        """Held-out IoU / precision / recall, and `reconstructions.png` in `out_dir`."""
        dataset = self.eval_dataset()
        if not len(dataset):
            return None
        metrics, pairs = evaluate_reconstruction(model, dataset, self.device, self.data_cfg.eval_batch_size)
        write_comparison(out_dir / "reconstructions.png", pairs[:6], self.model_cfg.resolution)
        return metrics

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float] | None:
        return self.evaluate_once(model, step)

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float] | None:
        metrics = self.evaluate_once(model, step)
        return None if metrics is None else {f"eval_{k}": v for k, v in metrics.items()}


def write_comparison(
    path: Path, pairs: list[tuple[np.ndarray, np.ndarray]], resolution: int, size: int = 128
) -> None:
    """Ground truth (top row) above the prediction (bottom row) for each pair of grids."""
    if not pairs:
        return
    top = [render_preview(grid_to_coords(t), resolution, size=size) for t, _ in pairs]
    bottom = [render_preview(grid_to_coords(p), resolution, size=size) for _, p in pairs]
    image = np.concatenate([np.concatenate(top, axis=1), np.concatenate(bottom, axis=1)], axis=0)
    Image.fromarray(image).save(path)
