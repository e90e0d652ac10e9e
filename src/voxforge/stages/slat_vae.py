"""`slat_vae`: train the structured-latent VAE with rendering losses (stage 2, part 1).

Data: a folder written by `voxforge data prepare` with `features_<extractor>_<R>` done
(`data.path`). An item is one asset's voxels and features plus `views_per_item` of its feature
views (RGBA and cameras), drawn from a generator seeded by (seed, epoch, index) and resized to
`image_size` (the intrinsics are scaled with them).

Held out, two ways: the first `data.eval_assets` ids in sorted order never train (the same
split every stage uses, `stages.ss_vae.split_ids`, so the demo evaluates generation on assets
no model saw), and every `holdout_every`-th view of the training assets is never trained on.
PSNR and SSIM are reported on both (`views_*`: new views of seen assets; `assets_*`: unseen
assets, where the VAE has to generalise).

Loss (per asset, averaged over the batch): the decoded Gaussians are rendered from the
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

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from voxforge.config.core import ConfigValueError, option
from voxforge.errors import ConfigError, UserError
from voxforge.models.slat_vae import SLatVAE, SLatVAEConfig
from voxforge.stages.base import EpochAware, Stage

__all__ = ["SLatDataConfig", "SLatLossConfig", "SLatVAEStage", "SLatViewDataset", "collate_views"]

BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


@dataclass
class SLatDataConfig:
    path: str = option(
        "", help="folder written by `voxforge data prepare` (with features at model.resolution)"
    )
    extractor: str = option("rgb", help="voxel features: rgb or dinov2 (features_<extractor>_<R>.npz)")
    views_per_item: int = option(4, ge=1, help="views rendered per asset per step")
    image_size: int = option(128, ge=8, help="side of the compared images (views are resized)")
    holdout_every: int = option(10, ge=0, help="every n-th view is held out for evaluation (0: none)")
    background: Literal["random", "white", "black"] = option("random")
    eval_assets: int = option(4, ge=0, help="held-out assets (first ids in sorted order, as every stage)")
    eval_views: int = option(4, ge=1, help="views scored per evaluated asset")
    eval_limit: int = option(8, ge=1, help="held-out assets scored by the sample/final hooks (at most)")

    def __post_init__(self):
        if self.holdout_every == 1:
            raise ConfigValueError("holdout_every", "1 would hold out every view; use 0 (none) or >= 2")


@dataclass
class SLatLossConfig:
    l1_weight: float = option(1.0, ge=0.0)
    ssim_weight: float = option(0.2, ge=0.0)
    lpips_weight: float = option(0.2, ge=0.0, help="used only when lpips_weights is set")
    lpips_weights: Path | None = option(None, help="local LPIPS (VGG) weights file; never downloaded")
    kl_weight: float = option(1e-6, ge=0.0)
    raster_backend: Literal["auto", "torch", "gsplat"] = option("auto")


def _view_files(directory: Path) -> list[Path]:
    files = [p for p in directory.glob("*.png") if p.stem.isdigit()]
    return sorted(files, key=lambda p: int(p.stem))


class SLatViewDataset(EpochAware, torch.utils.data.Dataset):
    """Voxels + features + a few views (RGBA float [V, S, S, 4], viewmats [V, 4, 4], Ks [V, 3, 3])."""

    def __init__(
        self, data: Any, ids: list[str], cfg: SLatDataConfig, resolution: int, seed: int, *, split: str
    ):
        from voxforge.data.dataset import SparseFeatureDataset

        if split not in ("train", "heldout_views", "all_views"):
            raise ValueError(f"unknown split '{split}'")
        self.cfg, self.split, self.resolution = cfg, split, resolution
        self.features = SparseFeatureDataset(data, cfg.extractor, resolution, ids=ids, seed=seed)
        self.ids = self.features.ids

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.features.set_epoch(epoch)

    @functools.lru_cache(maxsize=64)  # noqa: B019 - per-dataset cache of small camera files
    def _cameras(self, asset_id: str) -> tuple[list[Path], Any]:
        from voxforge.render.cameras import Cameras

        directory = self.features.data.asset_dir(asset_id) / "views"
        files = _view_files(directory)
        cams = Cameras.from_json(
            (directory / "cameras.json").read_text(), source=str(directory / "cameras.json")
        )
        if len(files) != len(cams):
            raise UserError(f"{directory}: {len(files)} images but {len(cams)} cameras")
        return files, cams

    def view_indices(self, asset_id: str) -> tuple[list[int], list[int]]:
        """(training views, held-out views) of one asset."""
        count = len(self._cameras(asset_id)[0])
        every = self.cfg.holdout_every
        held = [i for i in range(count) if every and i % every == every - 1]
        train = [i for i in range(count) if not (every and i % every == every - 1)]
        return train, held

    def load_views(self, asset_id: str, indices: list[int]) -> dict[str, Tensor]:
        from PIL import Image

        files, cams = self._cameras(asset_id)
        size = self.cfg.image_size
        images = []
        for i in indices:
            with Image.open(files[i]) as im:
                rgba = im.convert("RGBA")
                if rgba.size != (size, size):
                    # premultiply before resizing so the background does not bleed into edges
                    arr = np.asarray(rgba, dtype=np.float32) / 255.0
                    arr[..., :3] *= arr[..., 3:]
                    channels = [
                        np.asarray(Image.fromarray(arr[..., c]).resize((size, size), Image.Resampling.BOX))
                        for c in range(4)
                    ]
                    arr = np.stack(channels, -1)
                    arr[..., :3] /= np.maximum(arr[..., 3:], 1e-6)
                else:
                    arr = np.asarray(rgba, dtype=np.float32) / 255.0
            images.append(np.clip(arr, 0.0, 1.0))
        scale = np.diag([size / cams.width, size / cams.height, 1.0]).astype(np.float32)
        return {
            "images": torch.from_numpy(np.stack(images)).float(),
            "viewmats": torch.from_numpy(cams.world_to_cam[indices]).float(),
            "Ks": torch.from_numpy(scale @ cams.K[indices]).float(),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.features[index]
        train, held = self.view_indices(item["id"])
        pool = {"train": train, "heldout_views": held, "all_views": train + held}[self.split]
        if not pool:
            raise UserError(
                f"asset {item['id']} has no views for {self.split} (holdout_every={self.cfg.holdout_every})"
            )
        count = self.cfg.views_per_item if self.split == "train" else self.cfg.eval_views
        rng = np.random.default_rng([self.features.seed, self.epoch, index, 7])
        if self.split == "train":
            chosen = rng.choice(len(pool), size=count, replace=len(pool) < count).tolist()
        else:
            chosen = np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int).tolist()
        return {**item, **self.load_views(item["id"], [pool[c] for c in chosen])}


def collate_views(items: list[dict[str, Any]]) -> dict[str, Any]:
    from voxforge.data.dataset import collate_sparse

    batch = collate_sparse(items)
    for key in ("images", "viewmats", "Ks"):
        batch[key] = torch.stack([it[key] for it in items])
    return batch


def prepared(path: str, key: str = "data.path") -> Any:
    from voxforge.data import PreparedDataset

    if not path:
        raise ConfigError(f"key '{key}': set it to a folder written by `voxforge data prepare`")
    return PreparedDataset(path)


def feature_split(cfg: SLatDataConfig, resolution: int) -> tuple[Any, list[str], list[str]]:
    """(prepared data, training ids, held-out ids) — the held-out assets of every stage."""
    from voxforge.stages.ss_vae import split_ids

    data = prepared(cfg.path)
    step = f"features_{cfg.extractor}_{resolution}"
    ids = data.ids(require=(step,))
    train_ids, eval_ids = split_ids(ids, cfg.eval_assets)
    if not train_ids:
        raise UserError(
            f"{data.root}: {len(ids)} assets with {step}, all held out for evaluation "
            f"(data.eval_assets={cfg.eval_assets}); prepare more assets (with --features {cfg.extractor} "
            f"--resolution {resolution}) or lower data.eval_assets"
        )
    return data, train_ids, eval_ids


def composite(images: Tensor, background: Tensor) -> Tensor:  # [..., H, W, 4], [..., 3] -> [..., H, W, 3]
    alpha = images[..., 3:]
    return images[..., :3] * alpha + background[..., None, None, :] * (1 - alpha)


def render_losses(
    gaussians: list,  # list[Gaussians], one per asset
    batch: dict[str, Tensor],
    backgrounds: Tensor,  # [B, V, 3]
    loss_cfg: SLatLossConfig,
    lpips: nn.Module | None = None,
) -> tuple[Tensor, dict[str, float], list[Tensor]]:
    """Rendering losses of a batch in fp32; returns (weighted image loss, metrics, renders)."""
    from voxforge.eval.image_metrics import psnr, ssim
    from voxforge.render.gaussians import render_gaussians

    size = batch["images"].shape[-2]
    total = backgrounds.new_zeros(())
    sums = {"l1": 0.0, "ssim": 0.0, "psnr": 0.0, "lpips": 0.0}
    renders = []
    with torch.autocast(backgrounds.device.type, enabled=False):
        for b, g in enumerate(gaussians):
            out = render_gaussians(
                g,
                batch["viewmats"][b],
                batch["Ks"][b],
                size,
                size,
                backgrounds[b],
                backend=loss_cfg.raster_backend,
            )
            pred = out["rgb"]  # [V, S, S, 3]
            target = composite(batch["images"][b].float(), backgrounds[b])
            l1 = (pred - target).abs().mean()
            structural = ssim(pred, target).mean()
            loss = loss_cfg.l1_weight * l1 + loss_cfg.ssim_weight * (1 - structural)
            if lpips is not None and loss_cfg.lpips_weight > 0:
                perceptual = lpips(pred, target).mean()
                loss = loss + loss_cfg.lpips_weight * perceptual
                sums["lpips"] += float(perceptual.detach())
            total = total + loss
            sums["l1"] += float(l1.detach())
            sums["ssim"] += float(structural.detach())
            sums["psnr"] += float(psnr(pred.detach(), target, max_db=60.0).mean())
            renders.append(pred.detach())
    n = max(len(gaussians), 1)
    metrics = {k: v / n for k, v in sums.items() if k != "lpips" or lpips is not None}
    return total / n, metrics, renders


class SLatVAEStage(Stage):
    name = "slat_vae"
    sections = {"model": SLatVAEConfig, "data": SLatDataConfig, "loss": SLatLossConfig}

    def __init__(self, recipe: Any, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        self._lpips: nn.Module | None = None
        if recipe.loss.lpips_weights is not None and recipe.loss.lpips_weight > 0:
            from voxforge.eval.lpips import load_lpips

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

    def collate(self, items: list[Any]) -> Any:
        return collate_views(items)

    def batch_size_of(self, batch: Any) -> int:
        return len(batch["ids"])

    def sparse_input(self, batch: dict[str, Any]):  # -> SparseTensor
        from voxforge.sparse.tensor import SparseTensor

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
    from PIL import Image

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
