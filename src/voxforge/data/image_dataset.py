"""The dataset of a prepared image folder: `ImageCaptionDataset`, its config and augmentations.

`ImageCaptionDataset` returns {"image": [3, H, W] in [-1, 1], "caption", "mask": [1, H, W]
loss weights (ones without a mask), "id"}; augmentations (`random_crop`, `flip`,
`rotate_deg`) are one affine warp applied to image and mask alike, drawn from a generator
seeded by (seed, index, epoch) so workers and resumed runs see the same data.

With `latents=` (a cache folder written by `voxforge encode`, `voxforge.data.image_cache`)
items carry the cached `latent` [C, h, w] in place of the image, their `mask` weights at the
latent grid (the cached region, `mask_weight` inside it), and, when the cache holds the
captions' embeddings and `text` is on, `text_embeds` [L, D] and `text_mask` [L]. A flip is
drawn exactly as on images and picks the cached mirrored latent; crops and rotations are
refused (they make a new image on every draw).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voxforge.config.core import option
from voxforge.data.image_buckets import bucket_table, fit_to_bucket, nearest_bucket
from voxforge.data.image_manifest import DATASET_INFO, MANIFEST, read_manifest
from voxforge.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "ImageAugmentConfig",
    "ImageCaptionDataset",
    "ImageDataConfig",
    "collate_images",
    "swap_left_right",
]


@dataclass
class ImageAugmentConfig:
    """Augmentations, one affine warp per item (image and mask alike), seeded by (seed, index, epoch)."""

    random_crop: float = option(
        0.0, ge=0.0, lt=1.0, help="zoom in by up to this fraction of each side at a random position"
    )
    flip: bool = option(False, help="mirror left-right half of the time")
    flip_captions: bool = option(True, help="on a flip, swap the words left and right in the caption")
    rotate_deg: float = option(
        0.0, ge=0.0, le=30.0, help="rotate by up to this many degrees (zoomed to fill)"
    )

    @property
    def active(self) -> bool:
        return self.random_crop > 0 or self.flip or self.rotate_deg > 0


@dataclass
class ImageDataConfig:
    """The `data` section of an image stage: a folder written by `voxforge data images`."""

    path: str = option("", help="folder written by `voxforge data images` (manifest.jsonl, images/)")
    resolution: int | None = option(
        None, ge=16, help="train at this resolution (None: as prepared; buckets are rescaled)"
    )
    mask_weight: float = option(2.0, ge=0.0, help="loss weight inside a mask's regions (1: masks ignored)")
    weighted: bool = option(True, help="draw items by their sources' mixing weights")
    latents: str | None = option(
        None, help="a latent cache of these images (`voxforge encode --model AE --data PATH --out CACHE`)"
    )
    text_cache: bool = option(
        True, help="with data.latents: use the cache's caption embeddings when it has them"
    )
    augment: ImageAugmentConfig = field(default_factory=ImageAugmentConfig)


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(caption: str) -> str:
    """The caption of a mirrored image: left <-> right (case kept)."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        return other.capitalize() if word[0].isupper() else other

    return _LEFT_RIGHT.sub(swap, caption)


def _affine(
    rng: np.random.Generator, cfg: ImageAugmentConfig, width: int, height: int
) -> tuple[np.ndarray | None, bool]:
    """theta [2, 3] for `affine_grid` (None: identity) and whether the item is flipped."""
    flip = bool(cfg.flip and rng.random() < 0.5)
    angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)) if cfg.rotate_deg > 0 else 0.0
    zoom = 1.0 / (1.0 - rng.uniform(0.0, cfg.random_crop)) if cfg.random_crop > 0 else 1.0
    if angle == 0.0 and zoom == 1.0:
        return None, flip
    cos, sin = math.cos(angle), math.sin(angle)
    cover = cos + max(width / height, height / width) * abs(sin)  # zoom that hides rotated corners
    scale = 1.0 / (cover * zoom)  # output -> input, in units of the half size
    room = max(0.0, 1.0 - 1.0 / zoom)
    shift = rng.uniform(-room, room, size=2)
    # a rotation in pixels, written in normalized coordinates: D^-1 R D with D = diag(W, H) / 2
    theta = np.array(
        [
            [cos * scale, -sin * scale * height / width, shift[0]],
            [sin * scale * width / height, cos * scale, shift[1]],
        ]
    )
    return theta, flip


class ImageCaptionDataset:
    """Items {"image": [3, H, W] in [-1, 1], "caption", "mask": [1, H, W], "id"} of a prepared folder.

    `resolution` (None: as prepared) maps each stored bucket to the nearest-aspect bucket of
    the table at that resolution, so one folder prepared at the highest resolution serves every
    stage of a progressive recipe. `mask`: the per-pixel loss weight, `mask_weight` inside a
    mask's regions and 1 elsewhere (all ones without a mask). `weights()` are the mixing
    weights of the manifest, `buckets()` the (W, H) of every item (for `bucket_batch_sampler`).
    """

    def __init__(
        self,
        path: str | Path,
        resolution: int | None = None,
        augment: ImageAugmentConfig | None = None,
        *,
        mask_weight: float = 2.0,
        seed: int = 0,
        ids: Sequence[str] | None = None,
        latents: str | Path | None = None,
        text: bool = True,
    ):
        self.root = Path(path)
        info_path = self.root / DATASET_INFO
        if not info_path.is_file():
            raise UserError(
                f"{self.root} has no {DATASET_INFO}; run `voxforge data images SRC {self.root}` first"
            )
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise UserError(f"{info_path} is not valid JSON ({err})") from None
        records = [
            r
            for r in read_manifest(self.root)
            if r.get("status") == "done" and (self.root / "images" / f"{r['id']}.png").is_file()
        ]
        if ids is not None:
            wanted = set(ids)
            records = [r for r in records if r["id"] in wanted]
        if not records:
            raise UserError(f"{self.root} holds no usable images (see {self.root / MANIFEST})")
        self.records = records
        self.augment = augment or ImageAugmentConfig()
        self.mask_weight, self.seed, self.epoch = float(mask_weight), int(seed), 0
        self.resolution = int(resolution or self.info["resolution"])
        if resolution is None or int(resolution) == int(self.info["resolution"]):
            self.table = [tuple(b) for b in self.info["buckets"]]
            self._bucket = [tuple(r["bucket"]) for r in records]
        else:
            multiple = min(int(self.info.get("multiple", 32)), self.resolution)
            self.table = bucket_table(self.resolution, multiple, float(self.info.get("max_aspect", 2.0)))
            self._bucket = [nearest_bucket(*r["bucket"], self.table) for r in records]
        self.cache = None
        self.text = False
        if latents is not None:
            self._open_cache(Path(latents), text)

    def _open_cache(self, folder: Path, text: bool) -> None:
        # voxforge.data.image_cache imports torch and safetensors: imported here, not at the top,
        # so `voxforge data images` (which imports this module) starts without them
        from voxforge.data.image_cache import ImageLatentCache, check_cache

        cache = ImageLatentCache(folder)
        if self.augment.random_crop > 0 or self.augment.rotate_deg > 0:
            raise UserError(
                f"{folder}: cached latents cannot be cropped or rotated (each draw is a new image); set "
                "data.augment.random_crop=0 and data.augment.rotate_deg=0, or train on the images "
                "(data.latents: null)"
            )
        if self.augment.flip and not cache.index.get("flip"):
            raise UserError(
                f"{folder}: data.augment.flip is on but the cache holds no mirrored latents; encode with "
                "`voxforge encode ... --flip` or set data.augment.flip=false"
            )
        if int(cache.index["resolution"]) != self.resolution:
            raise UserError(
                f"{folder}: cached at {cache.index['resolution']} px, the dataset is at {self.resolution} px "
                f"(data.resolution); encode with `--resolution {self.resolution}`"
            )
        ids = [r["id"] for r in self.records]
        check_cache(cache, ids, self._bucket)
        if text:
            with_text = sum(1 for i in ids if "text" in cache.entries[i])
            if 0 < with_text < len(ids):
                raise UserError(
                    f"{folder}: {len(ids) - with_text} of {len(ids)} images have no cached caption embedding "
                    "(captions changed?); encode again with --text-encoder, or set data.text_cache=false"
                )
            self.text = with_text == len(ids)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:  # the engine calls it (`voxforge.stages.base.EpochAware`)
        self.epoch = int(epoch)

    def buckets(self) -> list[tuple[int, int]]:
        return list(self._bucket)

    def weights(self) -> list[float]:
        return [float(r.get("weight", 1.0)) for r in self.records]

    def captions(self) -> list[str]:
        return [r.get("caption", "") for r in self.records]

    def _load(self, path: Path, mode: str, bucket: tuple[int, int]) -> Any:
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert(mode)
        if image.size != bucket:
            image = fit_to_bucket(
                image, bucket, Image.Resampling.BICUBIC if mode == "RGB" else Image.Resampling.BILINEAR
            )
        return np.asarray(image, dtype=np.float32) / 255.0

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        record, bucket = self.records[index], self._bucket[index]
        if self.cache is not None:
            return self._cached_item(index)
        image = torch.from_numpy(self._load(self.root / "images" / f"{record['id']}.png", "RGB", bucket))
        image = image.permute(2, 0, 1)  # [3, H, W] in [0, 1]
        region = self._region(record, bucket)
        caption = record.get("caption", "")
        if self.augment.active:
            rng = np.random.default_rng([self.seed, index, self.epoch])
            theta, flip = _affine(rng, self.augment, bucket[0], bucket[1])
            if theta is not None:
                stack = image if region is None else torch.cat([image, region])
                grid = torch.nn.functional.affine_grid(
                    torch.tensor(theta, dtype=torch.float32)[None], [1, stack.shape[0], bucket[1], bucket[0]],
                    align_corners=False,
                )  # fmt: skip
                stack = torch.nn.functional.grid_sample(
                    stack[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False
                )[0]
                image, region = (stack, None) if region is None else (stack[:3], stack[3:])
            if flip:
                image = image.flip(-1)
                region = None if region is None else region.flip(-1)
                if self.augment.flip_captions:
                    caption = swap_left_right(caption)
        weight = self._weight(region, bucket)
        return {
            "image": (image * 2.0 - 1.0).clamp(-1.0, 1.0),
            "caption": caption,
            "mask": weight,
            "id": record["id"],
        }

    def region(self, index: int) -> Tensor | None:
        """Item `index`'s mask at its bucket, [1, H, W] in [0, 1] (no augmentation), or None."""
        return self._region(self.records[index], self._bucket[index])

    def _region(self, record: dict[str, Any], bucket: tuple[int, int]) -> Tensor | None:
        """The item's mask, [1, H, W] in [0, 1], or None."""
        import torch

        mask_file = self.root / "masks" / f"{record['id']}.png"
        if record.get("mask") and mask_file.is_file():
            return torch.from_numpy(self._load(mask_file, "L", bucket))[None]
        return None

    def _weight(self, region: Tensor | None, size: tuple[int, int]) -> Tensor:
        """Per-pixel loss weights [1, H, W] for size (W, H): mask_weight inside the region, 1 elsewhere."""
        import torch

        if region is None:
            return torch.ones(1, size[1], size[0])
        return 1.0 + (self.mask_weight - 1.0) * region.clamp(0.0, 1.0)

    def _cached_item(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        flip = False
        if self.augment.flip:  # the draw of the image path (`_affine` with only flip active)
            bucket = self._bucket[index]
            _, flip = _affine(np.random.default_rng([self.seed, index, self.epoch]), self.augment, *bucket)
        latent = self.cache.latent(record["id"], flip)
        caption = record.get("caption", "")
        swap = flip and self.augment.flip_captions
        item = {
            "latent": latent,
            "caption": swap_left_right(caption) if swap else caption,
            "mask": self._weight(self.cache.region(record["id"], flip), (latent.shape[-1], latent.shape[-2])),
            "id": record["id"],
        }
        if self.text:
            item["text_embeds"], item["text_mask"] = self.cache.text(record["id"], swap)
        return item

    @classmethod
    def from_config(
        cls, cfg: ImageDataConfig, *, seed: int = 0, ids: Sequence[str] | None = None
    ) -> ImageCaptionDataset:
        if not cfg.path:
            raise UserError("data.path is empty: name a folder written by `voxforge data images`")
        return cls(
            cfg.path,
            cfg.resolution,
            cfg.augment,
            mask_weight=cfg.mask_weight,
            seed=seed,
            ids=ids,
            latents=cfg.latents or None,
            text=cfg.text_cache,
        )


def collate_images(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-bucket items: image [B, 3, H, W], mask [B, 1, H, W], caption and id lists."""
    import torch

    key = "image" if "image" in items[0] else "latent"
    sizes = {tuple(item[key].shape) for item in items}
    if len(sizes) > 1:
        raise ValueError(f"a batch mixes {key} sizes {sorted(sizes)}; batch with bucket_batch_sampler")
    batch = {
        key: torch.stack([item[key] for item in items]),
        "mask": torch.stack([item["mask"] for item in items]),
        "caption": [item["caption"] for item in items],
        "id": [item["id"] for item in items],
    }
    if "text_embeds" in items[0]:  # cached caption embeddings: [B, L, D], [B, L]
        batch["text_embeds"] = torch.stack([item["text_embeds"] for item in items])
        batch["text_mask"] = torch.stack([item["text_mask"] for item in items])
    return batch
