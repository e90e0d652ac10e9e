"""Captioned image datasets: `voxforge data images SRC [SRC2 ...] OUT` and the dataset that reads it.

The public entry points of the image data toolkit are importable from here; the parts live
in their own modules, by responsibility:

- `image_sources`: folders, zip / tar archives (checked before extraction, into
  OUT/archives/<sha>/, never next to the user's files), captions, masks, metadata labels;
- `image_validate`: one image validated, repaired, bucketed and stored (the worker task);
  failure and warning reason codes;
- `image_buckets`: the bucket table, `fit_to_bucket`, `BucketBatchSampler`;
- `image_manifest`: OUT/manifest.jsonl and OUT/dataset.json, `read_manifest`;
- `image_dataset`: `ImageCaptionDataset`, `ImageDataConfig`, augmentations, `collate_images`;
- this module: the image family's part of the prepare job (`prepare_images`,
  `ImagePrepareConfig`: what is kept on a re-run, the worker task, the mixing weights) and
  its summary; the job itself (`captioned_prepare`) is shared with the video family.

Every image file is validated on its own, and a file that fails is recorded in
OUT/manifest.jsonl with a reason while the job goes on (see docs/image.md, "Data").

Resume. An item's id is the first 16 hex digits of the sha256 of its bytes (duplicates are
recorded, not processed twice). A re-run reads the manifest back, re-hashes only files whose
size or modification time changed, and skips an item whose image exists and whose settings
(`params`) are unchanged; captions, weights and labels are refreshed without reprocessing.
Records are appended to the manifest as they finish (a killed run loses nothing finished) and
the file is rewritten, one line per source file, at the end.

Mixing. `weights` gives each source its share of the draws: an item's `weight` is its source's
weight divided by the number of done items in that source, so the weights of one source sum
to the source's weight whatever its size. `bucket_batch_sampler` draws by these weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voxforge.config.core import ConfigValueError, option
from voxforge.data.captioned_prepare import prepare_captioned
from voxforge.data.image_buckets import (
    BucketBatchSampler,
    bucket_batch_sampler,
    bucket_table,
    fit_to_bucket,
    nearest_bucket,
)
from voxforge.data.image_dataset import (
    ImageAugmentConfig,
    ImageCaptionDataset,
    ImageDataConfig,
    collate_images,
    swap_left_right,
)
from voxforge.data.image_manifest import DATASET_INFO, FORMAT_VERSION, MANIFEST, read_manifest
from voxforge.data.image_sources import (
    IMAGE_EXTENSIONS,
    METADATA_FILES,
    _failed,
    _Item,
    discover,
    expand_image_archive,
)
from voxforge.data.image_validate import (
    DISCOVERY_WARNINGS,
    FAILURE_REASONS,
    WARNING_REASONS,
    decode_rgb,
    image_task,
    process_image,
)
from voxforge.data.ingest import sha256_file
from voxforge.data.safety import Limits
from voxforge.errors import UserError

__all__ = [
    "DATASET_INFO",
    "DISCOVERY_WARNINGS",
    "FAILURE_REASONS",
    "FORMAT_VERSION",
    "IMAGE_EXTENSIONS",
    "MANIFEST",
    "METADATA_FILES",
    "WARNING_REASONS",
    "BucketBatchSampler",
    "ImageAugmentConfig",
    "ImageCaptionDataset",
    "ImageDataConfig",
    "ImagePrepareConfig",
    "bucket_batch_sampler",
    "bucket_table",
    "collate_images",
    "decode_rgb",
    "discover",
    "expand_image_archive",
    "fit_to_bucket",
    "nearest_bucket",
    "prepare_images",
    "process_image",
    "read_manifest",
    "summarize",
    "swap_left_right",
]


@dataclass
class ImagePrepareConfig:
    """Settings of `voxforge data images` (what an item's output depends on is in `params`)."""

    resolution: int = option(512, ge=16, le=8192, help="target side: buckets have about resolution² pixels")
    multiple: int = option(32, ge=1, help="bucket sides are multiples of this (the autoencoder's stride)")
    max_aspect: float = option(2.0, ge=1.0, le=8.0, help="widest bucket aspect ratio (and its inverse)")
    buckets: str = option("aspect", choices=("aspect", "square"), help="aspect buckets or one square")
    weights: tuple[float, ...] = option((), help="mixing weight per source (default 1 each)")
    min_size: int = option(0, ge=0, help="images whose shorter side is under this fail (too_small)")
    small: str = option("warn", choices=("warn", "fail"), help="an image smaller than its bucket")
    background: tuple[int, ...] = option((255, 255, 255), help="RGB that transparent pixels become")
    workers: int = option(-1, ge=-1, help="worker processes (-1: auto, 0: in this process)")
    time_limit: float | None = option(120.0, gt=0, help="seconds per image in a worker (None: unlimited)")
    retry_failed: bool = option(False, help="process failed items again")
    progress: bool = option(True, help="show a progress bar")
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if len(self.background) != 3 or not all(0 <= v <= 255 for v in self.background):
            raise ConfigValueError("background", f"expected three values 0-255, got {list(self.background)}")
        if any(w < 0 for w in self.weights) or (self.weights and sum(self.weights) <= 0):
            raise ConfigValueError("weights", f"weights must be >= 0 and not all 0, got {list(self.weights)}")
        if self.multiple > self.resolution:
            raise ConfigValueError(
                "multiple", f"{self.multiple} is larger than the resolution {self.resolution}"
            )

    def table(self) -> list[tuple[int, int]]:
        return bucket_table(
            self.resolution, self.multiple, self.max_aspect if self.buckets == "aspect" else 1.0
        )

    def params(self) -> dict[str, Any]:
        """The settings an item's stored image depends on (a change reprocesses it)."""
        return {
            "version": FORMAT_VERSION,
            "resolution": self.resolution,
            "multiple": self.multiple,
            "max_aspect": self.max_aspect if self.buckets == "aspect" else 1.0,
            "min_size": self.min_size,
            "small": self.small,
            "background": list(self.background),
            "max_pixels": self.limits.max_texture_pixels,
            "max_bytes": self.limits.max_file_bytes,
        }


def prepare_images(
    sources: Sequence[str | Path], out: str | Path, config: ImagePrepareConfig | None = None
) -> dict[str, Any]:
    """Prepare (or finish preparing) the sources into OUT; returns the summary (dataset.json + counts)."""
    config = config or ImagePrepareConfig()
    return prepare_captioned(sources, Path(out), _ImageFamily(config, len(sources)), config)


class _ImageFamily:
    """The image family's part of the shared prepare job (`captioned_prepare.CaptionedFamily`)."""

    desc, unit, parallel_from = "images", "image", 64
    discovery_reasons = DISCOVERY_WARNINGS

    def __init__(self, config: ImagePrepareConfig, count: int):
        self.config = config
        self.worker = image_task
        self.weights = list(config.weights) or [1.0] * count
        self.params = config.params()
        table = config.table()
        self.settings = {**self.params, "table": [list(b) for b in table], "limits": asdict(config.limits)}

    def check(self, sources: Sequence[str | Path]) -> None:
        if len(self.weights) != len(sources):
            raise UserError(
                f"--weights has {len(self.weights)} values for {len(sources)} sources; give one per source"
            )

    def expand(self, archive: Path, root: Path) -> None:
        expand_image_archive(archive, root, self.config.limits)

    def discover(
        self, index: int, src: Path, root: Path, out: Path
    ) -> tuple[list[_Item], list[dict], list[str]]:
        return discover(index, src, str(src), root, out)

    failed = staticmethod(_failed)

    def identify(self, item: _Item) -> None:
        item.mask_sha = sha256_file(item.mask) if item.mask is not None else None
        item.params = {**self.params, "mask": item.mask_sha}

    def stands(self, item: _Item, before: dict[str, Any], out: Path) -> bool:
        if before.get("params") != item.params:
            return False
        done = before.get("status") == "done" and (out / "images" / f"{item.id}.png").is_file()
        return done or (before.get("status") == "failed" and not self.config.retry_failed)

    def task(self, key: str, item: _Item, out: Path) -> dict[str, Any]:
        return {
            "key": key, "id": item.id, "name": f"{item.source}/{item.file_name}", "path": str(item.path),
            "mask": str(item.mask) if item.mask else None, "mask_name": item.mask_name,
            "out": str(out), "settings": self.settings,
        }  # fmt: skip

    def record(self, item: _Item, fields: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": item.id, "source": item.source, "source_index": item.source_index,
            "file_name": item.file_name, "status": fields["status"], "reason": fields.get("reason"),
            "error": fields.get("error"),
            "warnings": item.warnings + fields.get("warnings", []),
            "warning_reasons": item.warning_reasons + fields.get("warning_reasons", []),
            "width": fields.get("width"), "height": fields.get("height"), "bucket": fields.get("bucket"),
            "mask": fields.get("mask", False), "caption": item.caption, "weight": 0.0, "extra": item.extra,
            "sha": item.sha, "bytes": item.stat[0], "mtime": item.stat[1], "params": item.params,
        }  # fmt: skip

    def finish(self, records: list[dict[str, Any]]) -> None:
        """Each done record's mixing weight: its source's weight over the source's done count."""
        counts = [0] * len(self.weights)
        for record in records:
            if record["status"] == "done":
                counts[record["source_index"]] += 1
        for record in records:
            index = record["source_index"]
            record["weight"] = self.weights[index] / counts[index] if record["status"] == "done" else 0.0

    def summarize(
        self, records: list[dict[str, Any]], sources: Sequence[Any], notes: list[str]
    ) -> dict[str, Any]:
        return summarize(records, self.config, sources, self.weights, notes)


def summarize(
    records: list[dict[str, Any]],
    config: ImagePrepareConfig,
    sources: Sequence[Any],
    weights: list[float],
    notes: list[str],
) -> dict[str, Any]:
    """The content of dataset.json: the bucket table, counts per source, bucket, failure and warning."""
    done = [r for r in records if r["status"] == "done"]
    failures: dict[str, int] = {}
    warned: dict[str, int] = {}
    for record in records:
        if record["status"] == "failed":
            failures[record["reason"]] = failures.get(record["reason"], 0) + 1
        for code in sorted(set(record.get("warning_reasons") or [])):
            warned[code] = warned.get(code, 0) + 1
    buckets: dict[str, int] = {}
    for record in done:
        name = f"{record['bucket'][0]}x{record['bucket'][1]}"
        buckets[name] = buckets.get(name, 0) + 1
    return {
        "format": "voxforge.images", "version": FORMAT_VERSION, "resolution": config.resolution,
        "multiple": config.multiple, "max_aspect": config.max_aspect if config.buckets == "aspect" else 1.0,
        "buckets": [list(b) for b in config.table()], "count": len(done), "failed": len(records) - len(done),
        "masks": sum(1 for r in done if r.get("mask")),
        "sources": [
            {"path": str(s), "weight": w,
             "done": sum(1 for r in done if r["source_index"] == i),
             "failed": sum(1 for r in records if r["source_index"] == i and r["status"] == "failed")}
            for i, (s, w) in enumerate(zip(sources, weights))
        ],
        "bucket_counts": dict(sorted(buckets.items())), "failures": failures, "warnings": warned, "notes": notes,
    }  # fmt: skip
