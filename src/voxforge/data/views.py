"""Prepared assets as rendering-loss batches: voxel features plus a few of their views.

The data of the slat_vae stage (`SLatDataConfig` is its `data:` section), and of everything
that scores Gaussians against an asset's feature views: the SLat flow's evaluation and the
image-to-3D evaluation render the same views through the same dataset.

Views are drawn per item from a generator seeded by (seed, epoch, index) and resized to
`image_size` (premultiplied first so the background does not bleed into the edges; the
intrinsics are scaled with them). Every `holdout_every`-th view of an asset is held out:
`split="train"` draws `views_per_item` from the others, `heldout_views` and `all_views` take
`eval_views` evenly spaced views from the held-out ones or from all of them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from voxforge.config.core import ConfigValueError, option
from voxforge.data.dataset import PreparedDataset, SparseFeatureDataset, collate_sparse
from voxforge.data.image_io import read_image
from voxforge.errors import UserError
from voxforge.render.cameras import Cameras

__all__ = ["SLatDataConfig", "SLatViewDataset", "collate_views", "view_files"]


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


def view_files(directory: Path) -> list[Path]:
    files = [p for p in directory.glob("*.png") if p.stem.isdigit()]
    return sorted(files, key=lambda p: int(p.stem))


class SLatViewDataset(torch.utils.data.Dataset):
    """Voxels + features + a few views (RGBA float [V, S, S, 4], viewmats [V, 4, 4], Ks [V, 3, 3])."""

    epoch: int = 0  # set by the engine (`set_epoch`); per-item randomness derives from it

    def __init__(
        self,
        data: PreparedDataset,
        ids: list[str],
        cfg: SLatDataConfig,
        resolution: int,
        seed: int,
        *,
        split: str,
    ):
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
    def _cameras(self, asset_id: str) -> tuple[list[Path], Cameras]:
        directory = self.features.data.asset_dir(asset_id) / "views"
        files = view_files(directory)
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
        files, cams = self._cameras(asset_id)
        size = self.cfg.image_size
        images = []
        for i in indices:
            rgba = Image.fromarray(read_image(files[i], what="view").rgba)
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
    batch = collate_sparse(items)
    for key in ("images", "viewmats", "Ks"):
        batch[key] = torch.stack([it[key] for it in items])
    return batch
