"""Reading a prepared folder: `PreparedDataset` and the torch datasets the stages train on.

`PreparedDataset(root)` is the Python face of OUT (see docs/data.md for the layout): it merges
the manifests of all ranks, lists `records()`, and loads each asset's outputs by id. It never
writes.

Torch datasets (all map-style, all take a `PreparedDataset` or a path, and list only assets
whose needed steps are done):
- `OccupancyDataset`: dense occupancy grids `[1, R, R, R]` float (stage 1, SS-VAE);
- `SparseFeatureDataset`: voxel coordinates `[N, 3]` and features `[N, C]` (stage 2, SLat-VAE),
  with `collate_sparse` packing a batch as `coords [sum N, 4]` (batch, i, j, k) + `feats`;
- any of them with `cond_size=S` adds `cond`, a random condition view prepared as TRELLIS
  does it: cropped to the alpha bounding box enlarged 1.2x (square, centred), resized to S,
  premultiplied onto black, `[3, S, S]` float in [0, 1]; the view is drawn from a generator
  seeded by (seed, epoch, index), so an epoch is reproducible whatever the worker count;
- `ConditionImageDataset`: only the condition images.
`VoxelBalancedBatchSampler` is a drop-in for `voxforge.train.data.ResumableBatchSampler` that
splits each global batch across ranks so every rank gets a similar total voxel count (longest
processing time first), which keeps ranks in step when asset sizes differ a lot.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.data.gltf import load_glb
from voxforge.data.image_io import read_image
from voxforge.data.manifest import ManifestView, manifest_files
from voxforge.errors import UserError
from voxforge.render.cameras import Cameras
from voxforge.representations.mesh import TexturedMesh


@dataclass
class AssetRecord:
    id: str | None
    source: str
    status: str  # done | failed | pending | duplicate
    error: str | None = None
    reason: str | None = None
    failed_step: str | None = None
    duplicate_of: str | None = None
    label: str | None = None
    steps: dict[str, str] = field(default_factory=dict)  # step -> done | failed


@dataclass
class ViewSet:
    images: np.ndarray  # [V, H, W, 4] uint8 RGBA, straight alpha, sRGB
    cameras: Any  # voxforge.render.cameras.Cameras
    depth: np.ndarray | None = None  # [V, H, W] float32 camera z (feature views only)


class PreparedDataset:
    """A folder written by `voxforge data prepare`, read-only."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not manifest_files(self.root):
            raise UserError(
                f"{self.root} has no manifest*.sqlite; run `voxforge data prepare SRC {self.root}`"
            )
        self.manifest = ManifestView(self.root)

    # -- listing ------------------------------------------------------------------
    def records(self) -> list[AssetRecord]:
        """One record per source file (archives excluded, their members included)."""
        records = []
        for source, row in self.manifest.sources.items():
            if source.lower().endswith(".zip") and not row["reason"]:
                expand = self.manifest.steps.get(row["id"], {}).get("expand")
                if expand and expand["status"] == "failed":  # members of a good archive are listed instead
                    records.append(
                        AssetRecord(row["id"], source, "failed", expand["error"], expand["reason"], "expand")
                    )
                continue
            if row["reason"]:
                records.append(
                    AssetRecord(row["id"], source, "failed", row["error"], row["reason"], "discover")
                )
                continue
            if row["duplicate_of"]:
                records.append(AssetRecord(row["id"], source, "duplicate", duplicate_of=row["duplicate_of"]))
                continue
            steps = self.manifest.steps.get(row["id"], {})
            record = AssetRecord(
                row["id"], source, "pending", steps={k: v["status"] for k, v in steps.items()}
            )
            failed = [(k, v) for k, v in steps.items() if v["status"] == "failed"]
            if failed:
                step, info = failed[0]
                record.status, record.failed_step, record.reason, record.error = (
                    "failed",
                    step,
                    info["reason"],
                    info["error"],
                )
            elif steps.get("ingest", {}).get("status") == "done":
                record.status = "done"
            record.label = steps.get("ingest", {}).get("stats", {}).get("label")
            records.append(record)
        return records

    def ids(self, require: Sequence[str] = ("ingest",)) -> list[str]:
        """Sorted ids of unique assets whose steps in `require` are all done."""
        done = []
        for record in self.records():
            if record.status == "duplicate" or record.id is None:
                continue
            if all(record.steps.get(step) == "done" for step in require):
                done.append(record.id)
        return sorted(set(done))

    def asset_dir(self, asset_id: str) -> Path:
        path = self.root / "assets" / asset_id
        if not path.is_dir():
            raise UserError(f"asset {asset_id!r} has no folder under {self.root / 'assets'}")
        return path

    def _one_resolution(self, prefix: str, asset_id: str) -> int:
        found = sorted(
            int(p.stem.rsplit("_", 1)[1]) for p in self.asset_dir(asset_id).glob(f"{prefix}_*.npz")
        )
        if len(found) != 1:
            raise UserError(f"asset {asset_id} has {prefix} at resolutions {found}; pass resolution=")
        return found[0]

    # -- per-asset outputs ------------------------------------------------------------
    def textured_mesh(self, asset_id: str) -> TexturedMesh:
        return load_glb(self.asset_dir(asset_id) / "mesh.glb")

    def normalized_mesh(self, asset_id: str) -> Any:
        """The normalized mesh as a `trimesh.Trimesh` (texture colours sampled at vertices)."""
        return self.textured_mesh(asset_id).to_trimesh()

    def voxels(self, asset_id: str, resolution: int | None = None) -> np.ndarray:
        """Occupied voxels [N, 3] int64 (DESIGN.md grid)."""
        resolution = resolution or self._one_resolution("voxels", asset_id)
        path = self.asset_dir(asset_id) / f"voxels_{resolution}.npz"
        if not path.is_file():
            raise UserError(f"asset {asset_id} has no voxels at resolution {resolution} ({path})")
        with np.load(path) as data:
            return data["coords"].astype(np.int64)

    def views(self, asset_id: str) -> ViewSet:
        """Feature views: images, depth and cameras."""
        return _load_viewset(self.asset_dir(asset_id) / "views")

    def cond_views(self, asset_id: str) -> ViewSet:
        """Condition views (random FoV): images and cameras."""
        return _load_viewset(self.asset_dir(asset_id) / "cond")

    def features(
        self, asset_id: str, extractor: str = "rgb", resolution: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(coords [N, 3] int64, features [N, C] float32) of one extractor."""
        resolution = resolution or self._one_resolution(f"features_{extractor}", asset_id)
        path = self.asset_dir(asset_id) / f"features_{extractor}_{resolution}.npz"
        if not path.is_file():
            raise UserError(
                f"asset {asset_id} has no {extractor} features at resolution {resolution} ({path})"
            )
        with np.load(path) as data:
            return data["coords"].astype(np.int64), data["features"].astype(np.float32)

    def labels(self) -> dict[str, str]:
        """Class label per asset id, for datasets made by `voxforge data synth`."""
        return {r.id: r.label for r in self.records() if r.label is not None and r.status != "duplicate"}


def _load_viewset(directory: Path) -> ViewSet:

    if not (directory / "cameras.json").is_file():
        raise UserError(f"{directory} has no cameras.json (step not run or failed)")
    pngs = sorted(directory.glob("[0-9]*.png"), key=lambda p: int(p.stem))  # numeric: past 999 views
    images = np.stack([read_image(p, what="view").rgba for p in pngs])
    depth = None
    if (directory / "depth.npz").is_file():
        with np.load(directory / "depth.npz") as data:
            depth = data["depth"].astype(np.float32)
    return ViewSet(
        images=images, cameras=Cameras.from_json((directory / "cameras.json").read_text()), depth=depth
    )


# ------------------------------------------------------------------------------------------
# condition images


def condition_image(rgba: np.ndarray, size: int, margin: float = 1.2) -> np.ndarray:
    """rgba [H, W, 4] uint8 -> [3, size, size] float32: alpha-box crop x margin, premultiplied.

    The square crop is centred on the alpha bounding box with side `margin x` its longer
    side; parts outside the image are black. Premultiplying before resizing keeps the
    background colour out of the edge pixels.
    """
    from PIL import Image

    alpha = rgba[..., 3]
    rows, cols = np.nonzero(alpha > 0)
    height, width = alpha.shape
    if len(rows) == 0:
        box = (0.0, 0.0, float(width), float(height))
    else:
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        centre_x, centre_y = (left + right) / 2.0, (top + bottom) / 2.0
        half = max(right - left, bottom - top) * margin / 2.0
        box = (centre_x - half, centre_y - half, centre_x + half, centre_y + half)
    premultiplied = rgba.astype(np.float32)
    premultiplied = premultiplied[..., :3] * (premultiplied[..., 3:] / 255.0)
    image = Image.fromarray(np.round(premultiplied).astype(np.uint8), "RGB")
    # resize with a box argument samples only the crop; outside the image PIL reads black
    padded_box = tuple(int(round(v)) for v in box)
    crop = image.crop(padded_box).resize((size, size), Image.Resampling.BICUBIC)
    return (np.asarray(crop, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()


class _Base:
    """Shared: id selection, epoch-seeded randomness, optional condition image."""

    required: tuple[str, ...] = ("ingest",)

    def __init__(
        self,
        data: PreparedDataset | str | Path,
        *,
        ids: Sequence[str] | None = None,
        cond_size: int | None = None,
        seed: int = 0,
    ):
        self.data = data if isinstance(data, PreparedDataset) else PreparedDataset(data)
        required = self.required + (("cond",) if cond_size else ())
        available = self.data.ids(require=required)
        if ids is not None:
            missing = sorted(set(ids) - set(available))
            if missing:
                raise UserError(f"assets {missing[:5]} lack the steps {list(required)} in {self.data.root}")
            available = list(ids)
        if not available:
            raise UserError(f"{self.data.root} has no asset with the steps {list(required)} done")
        self.ids = list(available)
        self.cond_size, self.seed, self.epoch = cond_size, seed, 0
        self._cond_counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _cond(self, index: int) -> Any:
        import torch

        asset_dir = self.data.asset_dir(self.ids[index]) / "cond"
        pngs = sorted(asset_dir.glob("[0-9]*.png"))
        if not pngs:
            raise UserError(f"{asset_dir} has no condition views")
        choice = pngs[int(self._rng(index).integers(len(pngs)))]
        rgba = read_image(choice, what="condition view").rgba
        return torch.from_numpy(condition_image(rgba, self.cond_size))

    def _item(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {"id": self.ids[index]}
        if self.cond_size:
            item["cond"] = self._cond(index)
        return item


class OccupancyDataset(_Base):
    """Dense occupancy `occupancy: [1, R, R, R]` float32 (1 = occupied voxel)."""

    def __init__(self, data: PreparedDataset | str | Path, resolution: int = 64, **kwargs: Any):
        self.required = (f"voxels_{resolution}",)
        self.resolution = resolution
        super().__init__(data, **kwargs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        coords = self.data.voxels(self.ids[index], self.resolution)
        grid = torch.zeros((1, self.resolution, self.resolution, self.resolution))
        index_tensor = torch.from_numpy(coords)
        grid[0, index_tensor[:, 0], index_tensor[:, 1], index_tensor[:, 2]] = 1.0
        return {**self._item(index), "occupancy": grid}


class SparseFeatureDataset(_Base):
    """`coords: [N, 3]` int64 and `feats: [N, C]` float32 of one feature extractor."""

    def __init__(
        self, data: PreparedDataset | str | Path, extractor: str = "rgb", resolution: int = 64, **kwargs: Any
    ):
        self.required = (f"features_{extractor}_{resolution}",)
        self.extractor, self.resolution = extractor, resolution
        super().__init__(data, **kwargs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        coords, feats = self.data.features(self.ids[index], self.extractor, self.resolution)
        return {**self._item(index), "coords": torch.from_numpy(coords), "feats": torch.from_numpy(feats)}

    def voxel_counts(self) -> list[int]:
        """Voxels per item (from the manifest, no file reads), for `VoxelBalancedBatchSampler`."""
        step = f"features_{self.extractor}_{self.resolution}"
        return [int(self.data.manifest.steps[i][step]["stats"].get("voxels", 1)) for i in self.ids]


class ConditionImageDataset(_Base):
    """Only `cond: [3, S, S]` (and `id`): a random condition view per item."""

    def __init__(self, data: PreparedDataset | str | Path, cond_size: int = 518, **kwargs: Any):
        super().__init__(data, cond_size=cond_size, **kwargs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(index)


def collate_sparse(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pack sparse items: coords [sum N, 4] int32 (batch, i, j, k), feats [sum N, C]."""
    import torch

    coords = torch.cat(
        [
            torch.cat([torch.full((len(it["coords"]), 1), b, dtype=torch.int32), it["coords"].int()], dim=1)
            for b, it in enumerate(items)
        ]
    )
    batch: dict[str, Any] = {
        "ids": [it["id"] for it in items],
        "coords": coords,
        "feats": torch.cat([it["feats"] for it in items]),
    }
    if "cond" in items[0]:
        batch["cond"] = torch.stack([it["cond"] for it in items])
    return batch


class VoxelBalancedBatchSampler:
    """Like `ResumableBatchSampler`, but each rank's share of a global batch has a balanced load.

    The permutation depends on (seed, epoch) only; global batch b is `perm[b*G:(b+1)*G]`
    (G = batch_size x world_size); its items are dealt to ranks heaviest first, each to the
    rank with the least voxels so far that still has room. Every rank gets `batch_size` items.
    """

    def __init__(
        self,
        voxel_counts: Sequence[int],
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        epoch: int = 0,
        start_batch: int = 0,
    ):
        self.counts = np.asarray(voxel_counts, dtype=np.int64)
        global_batch = batch_size * world_size
        if len(self.counts) < global_batch:
            raise UserError(
                f"the dataset has {len(self.counts)} samples, fewer than one global batch "
                f"({batch_size} x {world_size} processes); lower the batch size"
            )
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle, self.epoch, self.start_batch = seed, shuffle, epoch, start_batch
        self.batches_per_epoch = len(self.counts) // global_batch

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def split(self, chunk: np.ndarray) -> list[list[int]]:
        """Deal one global batch (indices) to the ranks; returns one list per rank."""
        order = sorted(chunk.tolist(), key=lambda i: (-int(self.counts[i]), i))
        shares: list[list[int]] = [[] for _ in range(self.world_size)]
        loads = [0] * self.world_size
        for item in order:
            open_ranks = [r for r in range(self.world_size) if len(shares[r]) < self.batch_size]
            target = min(open_ranks, key=lambda r: (loads[r], r))
            shares[target].append(item)
            loads[target] += int(self.counts[item])
        return shares

    def __iter__(self) -> Iterator[list[int]]:
        import torch

        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            perm = torch.randperm(len(self.counts), generator=generator).numpy()
        else:
            perm = np.arange(len(self.counts))
        global_batch = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches_per_epoch):
            yield self.split(perm[b * global_batch : (b + 1) * global_batch])[self.rank]


def read_labels(folder: str | Path) -> dict[str, Any]:
    """labels.json written by `voxforge data synth` (file name -> class)."""
    path = Path(folder) / "labels.json"
    if not path.is_file():
        raise UserError(f"{path} not found (made by `voxforge data synth`)")
    return json.loads(path.read_text())
