"""Prepared assets' rendered views, one view per item: the real images of an image GAN.

The GET3D family learns from 2D views only: an item is one RGBA view of one asset with its
camera, resized to `image_size` (premultiplied first, so the background does not bleed into
the edges; the intrinsics are scaled with it). Items cover every (asset, view) pair of the
ids given, in sorted order, so the dataset is a pure function of the index (resume and
workers see the same data). `cameras()` returns every camera, the pool a generator samples
its fake views' cameras from.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from voxforge.data.dataset import PreparedDataset
from voxforge.data.image_io import read_image
from voxforge.errors import UserError
from voxforge.render.cameras import Cameras

__all__ = ["ViewImageDataset", "resize_rgba"]


def resize_rgba(rgba: np.ndarray, size: int) -> np.ndarray:  # [H, W, 4] uint8 → [S, S, 4] float in [0, 1]
    """Straight-alpha RGBA resized with premultiplied box filtering."""
    arr = rgba.astype(np.float32) / 255.0
    if arr.shape[:2] == (size, size):
        return arr
    arr[..., :3] *= arr[..., 3:]
    channels = [
        np.asarray(Image.fromarray(arr[..., c]).resize((size, size), Image.Resampling.BOX)) for c in range(4)
    ]
    out = np.stack(channels, -1)
    out[..., :3] /= np.maximum(out[..., 3:], 1e-6)
    return np.clip(out, 0.0, 1.0)


class ViewImageDataset(torch.utils.data.Dataset):
    """Items: {"image": [S, S, 4] straight-alpha RGBA float, "viewmat": [4, 4], "K": [3, 3]}."""

    def __init__(self, data: PreparedDataset, ids: list[str], image_size: int):
        self.data, self.ids, self.image_size = data, sorted(ids), image_size
        self.items: list[tuple[str, int]] = []
        for asset_id in self.ids:
            files, cams = self._views(asset_id)
            self.items.extend((asset_id, i) for i in range(len(files)))
        if not self.items:
            raise UserError(f"{data.root}: the assets {self.ids[:3]}... have no rendered views")

    def __len__(self) -> int:
        return len(self.items)

    @functools.lru_cache(maxsize=256)  # noqa: B019 - per-dataset cache of small camera files
    def _views(self, asset_id: str) -> tuple[list[Path], Cameras]:
        directory = self.data.asset_dir(asset_id) / "views"
        source = directory / "cameras.json"
        if not source.is_file():
            raise UserError(f"{directory} has no cameras.json (run `voxforge data prepare` with views)")
        files = sorted((p for p in directory.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
        cams = Cameras.from_json(source.read_text(), source=str(source))
        if len(files) != len(cams):
            raise UserError(f"{directory}: {len(files)} images but {len(cams)} cameras")
        return files, cams

    def _scaled_K(self, cams: Cameras) -> np.ndarray:  # [V, 3, 3]
        scale = np.diag([self.image_size / cams.width, self.image_size / cams.height, 1.0])
        return (scale @ cams.K).astype(np.float32)

    def cameras(self) -> tuple[Tensor, Tensor]:  # viewmats [N, 4, 4], Ks [N, 3, 3] at image_size
        viewmats, Ks = [], []
        for asset_id in self.ids:
            _, cams = self._views(asset_id)
            viewmats.append(np.asarray(cams.world_to_cam, np.float32))
            Ks.append(self._scaled_K(cams))
        return torch.from_numpy(np.concatenate(viewmats)), torch.from_numpy(np.concatenate(Ks))

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        asset_id, view = self.items[index]
        files, cams = self._views(asset_id)
        image = resize_rgba(read_image(files[view], what="view").rgba, self.image_size)
        return {
            "image": torch.from_numpy(image).float(),
            "viewmat": torch.from_numpy(np.asarray(cams.world_to_cam[view], np.float32)),
            "K": torch.from_numpy(self._scaled_K(cams)[view]),
        }
