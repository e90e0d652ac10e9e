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
- this module: the prepare job (`prepare_images`, `ImagePrepareConfig`) and its summary.

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

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from voxforge.config.core import ConfigValueError, option
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
from voxforge.data.image_manifest import DATASET_INFO, FORMAT_VERSION, MANIFEST, read_manifest, write_atomic
from voxforge.data.image_sources import (
    IMAGE_EXTENSIONS,
    METADATA_FILES,
    _archive_kind,
    _failed,
    _Item,
    _sha256,
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
from voxforge.data.safety import Limits, is_within
from voxforge.errors import UserError
from voxforge.representations.mesh import AssetError

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
    from voxforge.data.workers import default_workers, run_tasks

    config = config or ImagePrepareConfig()
    out = Path(out)
    if not sources:
        raise UserError("give at least one source folder or archive")
    weights = list(config.weights) or [1.0] * len(sources)
    if len(weights) != len(sources):
        raise UserError(
            f"--weights has {len(weights)} values for {len(sources)} sources; give one per source"
        )
    for src in map(Path, sources):
        if not src.exists():
            raise UserError(f"source {src} does not exist")
        if not src.is_dir() and _archive_kind(src) is None:
            raise UserError(f"source {src} is neither a folder nor a .zip / .tar / .tar.gz archive")
        if src.is_dir() and (src.resolve() == out.resolve() or is_within(src, out)):
            raise UserError(f"the source folder {src} must not be (or lie inside) the output folder {out}")
    out.mkdir(parents=True, exist_ok=True)
    params = config.params()
    table = config.table()
    settings = {**params, "table": [list(b) for b in table], "limits": asdict(config.limits)}
    previous = {(r.get("source"), r.get("file_name")): r for r in read_manifest(out)}
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    items: list[_Item] = []
    for index, src in enumerate(map(Path, sources)):
        display = str(src)
        root = src
        if not src.is_dir():
            sha = _sha256(src)
            root = out / "archives" / sha[:16]
            try:
                expand_image_archive(src, root, config.limits)
            except AssetError as err:
                records.append(_failed(index, display, src.name, err.reason, str(err), sha))
                continue
        found, failures, source_notes = discover(index, src, display, root, out)
        items += found
        records += failures
        notes += [f"{display}: {n}" for n in source_notes]

    # hash (cached by size and mtime), dedupe, plan
    owners: dict[str, _Item] = {}
    tasks: list[dict[str, Any]] = []
    planned: dict[str, _Item] = {}
    kept: dict[str, dict[str, Any]] = {}  # key -> previous record reused as it is
    for item in items:
        key = f"{item.source_index}:{item.file_name}"
        before = previous.get((item.source, item.file_name))
        try:
            info = item.path.stat()
            item.mask_sha = _sha256(item.mask) if item.mask is not None else None
            if before and before.get("bytes") == info.st_size and before.get("mtime") == info.st_mtime:
                item.sha = before.get("sha")
            item.sha = item.sha or _sha256(item.path)
        except OSError as err:
            records.append(_failed(item.source_index, item.source, item.file_name, "unreadable", str(err)))
            continue
        item.id = item.sha[:16]
        item.stat = (info.st_size, info.st_mtime)
        if item.id in owners:
            first = owners[item.id]
            records.append(
                _failed(item.source_index, item.source, item.file_name, "duplicate",
                        f"{item.file_name} has the same content as {first.source}/{first.file_name}", item.sha)
            )  # fmt: skip
            continue
        owners[item.id] = item
        item_params = {**params, "mask": item.mask_sha}
        item.params = item_params
        if before and before.get("sha") == item.sha and before.get("params") == item_params:
            done = before.get("status") == "done" and (out / "images" / f"{item.id}.png").is_file()
            if done or (before.get("status") == "failed" and not config.retry_failed):
                kept[key] = before
                planned[key] = item
                continue
        planned[key] = item
        tasks.append(
            {
                "key": key, "id": item.id, "name": f"{item.source}/{item.file_name}", "path": str(item.path),
                "mask": str(item.mask) if item.mask else None, "mask_name": item.mask_name,
                "out": str(out), "settings": settings,
            }
        )  # fmt: skip

    results: dict[str, dict[str, Any]] = {}
    log_file = open(out / MANIFEST, "a", encoding="utf-8")  # noqa: SIM115 - closed below

    def record_of(key: str, fields: dict[str, Any]) -> dict[str, Any]:
        item = planned[key]
        record = {
            "id": item.id, "source": item.source, "source_index": item.source_index,
            "file_name": item.file_name, "status": fields["status"], "reason": fields.get("reason"),
            "error": fields.get("error"),
            "warnings": item.log.messages + fields.get("warnings", []),
            "warning_reasons": item.log.reasons + fields.get("warning_reasons", []),
            "width": fields.get("width"), "height": fields.get("height"), "bucket": fields.get("bucket"),
            "mask": fields.get("mask", False), "caption": item.caption, "weight": 0.0, "extra": item.extra,
            "sha": item.sha, "bytes": item.stat[0], "mtime": item.stat[1], "params": item.params,
        }  # fmt: skip
        return record

    progress = None
    if config.progress and tasks:
        from tqdm import tqdm

        progress = tqdm(total=len(tasks), desc="images", unit="image", file=sys.stderr, dynamic_ncols=True)

    def on_message(key: str, message: Any) -> None:
        results[key] = record_of(key, message[1])
        log_file.write(json.dumps(results[key]) + "\n")
        log_file.flush()

    def on_failure(key: str, reason: str, detail: str) -> None:
        on_message(key, ("result", {"status": "failed", "reason": reason, "error": detail}))

    def on_finished(key: str) -> None:
        if progress is not None:
            progress.update(1)

    workers = config.workers
    if workers < 0:
        workers = 0 if len(tasks) < 64 else default_workers()
    began = time.perf_counter()
    try:
        run_tasks(
            tasks, image_task, workers=workers, time_limit=config.time_limit if workers else None,
            on_message=on_message, on_failure=on_failure, on_finished=on_finished, threads=1 if workers else None,
        )  # fmt: skip
    finally:
        log_file.close()
        if progress is not None:
            progress.close()
    for key, item in planned.items():
        if key in results:
            records.append(results[key])
        else:  # unchanged: the previous record with today's caption, labels and source name
            before = dict(kept[key])
            pairs = zip(before.get("warnings", []), before.get("warning_reasons", []))
            found = [(m, c) for m, c in pairs if c not in DISCOVERY_WARNINGS]  # made by processing
            before["warnings"] = item.log.messages + [m for m, _ in found]
            before["warning_reasons"] = item.log.reasons + [c for _, c in found]
            before.update(
                caption=item.caption, extra=item.extra, source=item.source, source_index=item.source_index
            )
            records.append(before)
    counts = [0] * len(sources)
    for record in records:
        if record["status"] == "done":
            counts[record["source_index"]] += 1
    for record in records:
        index = record["source_index"]
        record["weight"] = weights[index] / counts[index] if record["status"] == "done" else 0.0
    records.sort(key=lambda r: (r["source_index"], r["file_name"]))
    write_atomic(out / MANIFEST, "".join(json.dumps(r) + "\n" for r in records))
    info = summarize(records, config, sources, weights, notes)
    write_atomic(out / DATASET_INFO, json.dumps(info, indent=1) + "\n")
    info["this_run"] = {
        "processed": len(results),
        "skipped": len(kept),
        "seconds": time.perf_counter() - began,
    }
    return info


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
