"""Captioned video datasets: `voxforge data videos SRC [SRC2 ...] OUT` and the dataset that reads it.

Ingest (docs/video.md, "Data"). Each SRC is a folder, a `.zip` or a `.tar`/`.tar.gz`
(checked before anything is extracted, into OUT/archives/<sha>/: `voxforge.data.archive`,
shared with the image family, as is the reading of sources and captions: `captioned_sources`).
Videos (mp4, mov, m4v, webm, mkv, gif) are probed and decoded with PyAV (`video_io`: sizes and
frame counts checked before decoding); images in the same sources are one-frame videos.
Captions follow the image family: a `.txt` beside the file, or `metadata.jsonl` /
`metadata.csv` with `file_name` and `text` (the metadata wins, with `caption_conflict`; none
is an empty caption with `missing_caption`); the other scalar columns of a metadata row are
kept as the item's `extra` (the synthetic set's labels). Every file is handled on its own: an
unreadable, truncated or empty one is a failed line of OUT/manifest.jsonl with a reason, and
the job goes on.

Each clip goes to a (resolution, frames, aspect) bucket of the bucket table (`video_buckets`,
Open-Sora's bucket config) and is stored decoded at that bucket's size: OUT/clips/<id>.npy,
uint8 [T, H, W, 3] (T frames chosen by `frame_sampling`, each resized to cover the bucket and
centre-cropped). A .npy is read back with one `np.load` (memory-mapped), which is what a
training loop wants from a few hundred KB to a few MB per clip.

Resume. An item's id is the first 16 hex digits of the sha256 of its bytes (the same bytes
twice are one clip and a `duplicate` line). A re-run re-hashes only files whose size or
modification time changed, recomputes each clip's bucket from its recorded probe (the draws
are seeded by the clip's id), and skips a clip whose stored file exists and whose bucket and
settings (`params`) are unchanged: editing batch sizes or captions reprocesses nothing, a
probability that moves a clip to another bucket reprocesses that clip only. Records are
appended as they finish; at the end the manifest (one line per source file) and dataset.json
are rewritten atomically. That job is the image family's too (`captioned_prepare`); this
module says what differs: which previous records stand, the clip task and its record.

Dataset. `VideoClipDataset` returns {"video": [3, T, H, W] in [-1, 1], "caption", "id",
"fps", "bucket"}; `video_batch_sampler` batches it one bucket at a time at each bucket's batch
size (`VideoBucketSampler`: seeded, resumable, split by rank).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from voxforge.config.core import ConfigValueError, option
from voxforge.data.archive import expand_media_archive
from voxforge.data.captioned_prepare import prepare_captioned
from voxforge.data.captioned_sources import SourceItem, read_source
from voxforge.data.image_manifest import read_manifest
from voxforge.data.video_buckets import (
    DEFAULT_BUCKETS,
    VideoBucket,
    VideoBucketSampler,
    aspect_tables,
    assign_bucket,
    bucket_config_json,
    bucket_rng,
    parse_bucket_config,
)
from voxforge.data.video_io import (
    FRAME_SAMPLING,
    Probe,
    VideoLimits,
    cover_crop,
    frame_indices,
    read_clip,
    read_image_frame,
)
from voxforge.errors import UserError
from voxforge.representations.mesh import AssetError

__all__ = [
    "VIDEO_EXTENSIONS",
    "VideoPrepareConfig",
    "VideoDataConfig",
    "VideoClipDataset",
    "collate_videos",
    "prepare_videos",
    "read_manifest",
    "video_batch_sampler",
]

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mov", ".webm", ".mkv", ".gif"}
STILL_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS | STILL_EXTENSIONS
ARCHIVE_MEMBERS = MEDIA_EXTENSIONS | {".txt", ".jsonl", ".csv"}
MANIFEST = "manifest.jsonl"  # the name `image_manifest.read_manifest` reads
DATASET_INFO = "dataset.json"
CLIPS = "clips"
FORMAT_VERSION = 1
#: warnings found while reading the sources (re-made on every run; the others come with the clip)
DISCOVERY_WARNINGS = {"missing_caption", "caption_conflict"}
WARNING_REASONS = {
    "missing_caption": "no caption (.txt or metadata): empty caption",
    "caption_conflict": "a .txt and the metadata disagree: the metadata's caption is used",
    "upscaled": "smaller than its bucket: upscaled",
    "rotated": "rotation metadata applied",
}
FAILURE_REASONS = {
    "empty_file", "too_large", "not_a_video", "corrupt_video", "truncated_video", "empty_video",
    "no_video_stream", "video_too_large", "too_many_frames", "not_an_image", "corrupt_image", "no_bucket",
    "duplicate", "path_outside_source", "unreadable", "bad_archive", "zip_bomb", "worker_error",
    "worker_crashed", "timeout",
}  # fmt: skip


@dataclass
class VideoPrepareConfig:
    """Settings of `voxforge data videos` (what a clip's stored frames depend on is in `params`)."""

    buckets: dict[str, dict[str, Any]] = option(
        default_factory=lambda: copy.deepcopy(DEFAULT_BUCKETS),
        help='bucket table: {"256px": {frames: [probability, batch size]}} (video_buckets)',
    )
    multiple: int = option(16, ge=1, help="bucket sides are multiples of this (the autoencoder's stride)")
    max_aspect: float = option(2.0, ge=1.0, le=8.0, help="widest aspect bucket (and its inverse)")
    approx: float = option(0.8, gt=0.0, le=1.0, help="a clip reaches resolution N when W·H >= approx·N²")
    frame_sampling: str = option("centre", choices=FRAME_SAMPLING, help="which T frames of a longer clip")
    seed: int = option(0, help="seed of the bucket draws")
    background: tuple[int, ...] = option((255, 255, 255), help="RGB that transparent image pixels become")
    workers: int = option(-1, ge=-1, help="worker processes (-1: auto, 0: in this process)")
    time_limit: float | None = option(600.0, gt=0, help="seconds per file in a worker (None: unlimited)")
    retry_failed: bool = option(False, help="process failed files again")
    progress: bool = option(True, help="show a progress bar")
    limits: VideoLimits = field(default_factory=VideoLimits)

    def __post_init__(self) -> None:
        try:
            self.table = parse_bucket_config(self.buckets, "buckets")
        except ValueError as err:
            raise ConfigValueError("buckets", str(err)) from None
        if len(self.background) != 3 or not all(0 <= v <= 255 for v in self.background):
            raise ConfigValueError("background", f"expected three values 0-255, got {list(self.background)}")
        self.aspects = aspect_tables(self.table, self.multiple, self.max_aspect)

    def params(self) -> dict[str, Any]:
        """The settings a clip's stored frames depend on besides its bucket (a change reprocesses it)."""
        return {
            "version": FORMAT_VERSION,
            "frame_sampling": self.frame_sampling,
            "background": list(self.background),
            "max_frame_pixels": self.limits.max_frame_pixels,
            "max_frames": self.limits.max_frames,
            "max_bytes": self.limits.max_file_bytes,
        }

    def bucket_of(self, clip_id: str, frames: int, width: int, height: int) -> VideoBucket | None:
        rng = bucket_rng(self.seed, clip_id)
        return assign_bucket(self.table, self.aspects, frames, width, height, rng, self.approx)


# ----------------------------------------------------------------------------------------------
# one file (runs in a worker process)


def process_clip(task: dict[str, Any]) -> dict[str, Any]:
    """Probe, bucket, decode and store one file; returns the record fields (raises AssetError)."""
    settings = task["settings"]
    config = VideoPrepareConfig(
        buckets=settings["buckets"], multiple=settings["multiple"], max_aspect=settings["max_aspect"],
        approx=settings["approx"], frame_sampling=settings["frame_sampling"], seed=settings["seed"],
        background=tuple(settings["background"]), limits=VideoLimits(**settings["limits"]),
    )  # fmt: skip
    name, path, out, clip_id = task["name"], Path(task["path"]), Path(task["out"]), task["id"]
    found: dict[str, Any] = {}

    def choose(probe: Probe) -> tuple[list[int], tuple[int, int]] | None:
        bucket = config.bucket_of(clip_id, probe.frames, probe.width, probe.height)
        found["bucket"] = bucket
        if bucket is None:
            return None
        return frame_indices(probe.frames, bucket.frames, config.frame_sampling), (
            bucket.width,
            bucket.height,
        )

    if task["kind"] == "image":
        probe, rgb = read_image_frame(path, name, config.limits, config.background)
        plan = choose(probe)
        clip = None if plan is None else cover_crop(rgb, (probe.width, probe.height), plan[1])[None]
    else:
        probe, clip = read_clip(path, name, config.limits, choose)
    fields: dict[str, Any] = {"probe": probe.record(), "warnings": [], "warning_reasons": []}
    bucket = found.get("bucket")
    if bucket is None or clip is None:
        table = ", ".join(f"{r}: {sorted(f)}" for r, f in config.table.items())
        return {
            **fields, "status": "failed", "reason": "no_bucket",
            "error": f"{name} ({probe.frames} frames of {probe.width}x{probe.height}) fits no bucket of "
            f"the table ({table}) or fell past its lowest resolution",
        }  # fmt: skip
    if probe.width < bucket.width or probe.height < bucket.height:
        fields["warnings"].append(
            f"{name} is {probe.width}x{probe.height}, smaller than its bucket {bucket.width}x{bucket.height}: upscaled"
        )
        fields["warning_reasons"].append("upscaled")
    if probe.rotation:
        fields["warnings"].append(f"{name}: rotated {probe.rotation} degrees (its rotation metadata)")
        fields["warning_reasons"].append("rotated")
    indices = frame_indices(probe.frames, bucket.frames, config.frame_sampling)
    target = out / CLIPS / f"{clip_id}.npy"
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as handle:
        np.save(handle, np.ascontiguousarray(clip, dtype=np.uint8))
    os.replace(partial, target)
    step = (indices[-1] - indices[0]) / (len(indices) - 1) if len(indices) > 1 else 1.0
    return {
        **fields, "status": "done", "bucket": bucket.record(), "frame_indices": indices,
        "fps": probe.fps / step if probe.fps else None,
    }  # fmt: skip


def clip_task(task: dict[str, Any], send: Any) -> None:
    """Worker entry (`voxforge.data.workers.run_tasks`): one file -> ("result", fields)."""
    try:
        send(("result", process_clip(task)))
    except AssetError as err:
        send(("result", {"status": "failed", "reason": err.reason, "error": str(err)}))


# ----------------------------------------------------------------------------------------------
# sources and captions


@dataclass
class _Item(SourceItem):
    @property
    def kind(self) -> str:
        return "image" if PurePosixPath(self.file_name).suffix.lower() in STILL_EXTENSIONS else "video"


def discover(index: int, display: str, root: Path, out: Path) -> tuple[list[_Item], list[dict], list[str]]:
    """Media files of one source (a folder, or an expanded archive at `root`): items, failures, notes."""
    source = read_source(index, display, root, out, MEDIA_EXTENSIONS, _failed, outside="the source")
    items = []
    for relative in sorted(source.files):
        if PurePosixPath(relative).suffix.lower() not in MEDIA_EXTENSIONS:
            continue
        item = _Item(index, display, relative, source.files[relative])
        row = source.rows.get(relative)
        text = item.read_caption(source.files, row)
        if row is not None:
            item.keep_labels(row, ("file_name", "text", "caption"))
        item.set_caption(text)
        items.append(item)
    return items, source.failures, source.notes


def _failed(index: int, source: str, file_name: str, reason: str, error: str, sha: str | None = None) -> dict:
    return {
        "id": sha[:16] if sha else None, "source": source, "source_index": index, "file_name": file_name,
        "status": "failed", "reason": reason, "error": error, "warnings": [], "warning_reasons": [],
        "probe": None, "bucket": None, "caption": "",
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# the prepare job


def _still_valid(before: dict[str, Any], item: _Item, config: VideoPrepareConfig, out: Path) -> bool:
    """Whether a previous record of the same bytes and settings stands as it is."""
    probe = before.get("probe")
    if before.get("status") == "done":
        if not probe or not (out / CLIPS / f"{item.id}.npy").is_file() or not before.get("bucket"):
            return False
        now = config.bucket_of(item.id, probe["frames"], probe["width"], probe["height"])
        return now == VideoBucket.of(before["bucket"])
    if before.get("reason") == "no_bucket" and probe:  # still without a bucket?
        return config.bucket_of(item.id, probe["frames"], probe["width"], probe["height"]) is None
    return not config.retry_failed


def prepare_videos(
    sources: Sequence[str | Path], out: str | Path, config: VideoPrepareConfig | None = None
) -> dict[str, Any]:
    """Prepare (or finish preparing) the sources into OUT; returns the summary (dataset.json + counts)."""
    config = config or VideoPrepareConfig()
    return prepare_captioned(sources, Path(out), _VideoFamily(config), config)


class _VideoFamily:
    """The video family's part of the shared prepare job (`captioned_prepare.CaptionedFamily`)."""

    desc, unit, parallel_from = "videos", "file", 32
    discovery_reasons = DISCOVERY_WARNINGS

    def __init__(self, config: VideoPrepareConfig):
        self.config = config
        self.worker = clip_task
        self.params = config.params()
        self.settings = {
            "buckets": bucket_config_json(config.table), "multiple": config.multiple,
            "max_aspect": config.max_aspect, "approx": config.approx, "frame_sampling": config.frame_sampling,
            "seed": config.seed, "background": list(config.background), "limits": asdict(config.limits),
        }  # fmt: skip

    def check(self, sources: Sequence[str | Path]) -> None:
        """Every source will do: the video family has no per-source settings."""

    def expand(self, archive: Path, root: Path) -> None:
        expand_media_archive(archive, root, self.config.limits.archive(), ARCHIVE_MEMBERS)

    def discover(
        self, index: int, src: Path, root: Path, out: Path
    ) -> tuple[list[_Item], list[dict], list[str]]:
        return discover(index, str(src), root, out)

    failed = staticmethod(_failed)

    def identify(self, item: _Item) -> None:
        """A clip depends on its bytes alone."""

    def stands(self, item: _Item, before: dict[str, Any], out: Path) -> bool:
        return before.get("params") == self.params and _still_valid(before, item, self.config, out)

    def task(self, key: str, item: _Item, out: Path) -> dict[str, Any]:
        return {
            "key": key, "id": item.id, "kind": item.kind, "name": f"{item.source}/{item.file_name}",
            "path": str(item.path), "out": str(out), "settings": self.settings,
        }  # fmt: skip

    def record(self, item: _Item, fields: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": item.id, "source": item.source, "source_index": item.source_index, "file_name": item.file_name,
            "kind": item.kind, "status": fields["status"], "reason": fields.get("reason"), "error": fields.get("error"),
            "warnings": item.warnings + fields.get("warnings", []),
            "warning_reasons": item.warning_reasons + fields.get("warning_reasons", []),
            "probe": fields.get("probe"), "bucket": fields.get("bucket"), "frame_indices": fields.get("frame_indices"),
            "fps": fields.get("fps"), "caption": item.caption, "extra": item.extra,
            "sha": item.sha, "bytes": item.stat[0], "mtime": item.stat[1], "params": self.params,
        }  # fmt: skip

    def finish(self, records: list[dict[str, Any]]) -> None:
        """Nothing to add: a clip's record is complete when its task reports."""

    def summarize(
        self, records: list[dict[str, Any]], sources: Sequence[Any], notes: list[str]
    ) -> dict[str, Any]:
        return summarize(records, self.config, sources, notes)


def summarize(
    records: list[dict[str, Any]], config: VideoPrepareConfig, sources: Sequence[Any], notes: list[str]
) -> dict[str, Any]:
    """The content of dataset.json: the bucket table, counts per source, bucket, failure and warning."""
    done = [r for r in records if r["status"] == "done"]
    failures: dict[str, int] = {}
    warned: dict[str, int] = {}
    buckets: dict[str, int] = {}
    for record in records:
        if record["status"] == "failed":
            failures[record["reason"]] = failures.get(record["reason"], 0) + 1
        for code in sorted(set(record.get("warning_reasons") or [])):
            warned[code] = warned.get(code, 0) + 1
    for record in done:
        name = VideoBucket.of(record["bucket"]).name
        buckets[name] = buckets.get(name, 0) + 1
    return {
        "format": "voxforge.videos", "version": FORMAT_VERSION, "buckets": bucket_config_json(config.table),
        "aspects": {k: [list(b) for b in v] for k, v in config.aspects.items()}, "multiple": config.multiple,
        "max_aspect": config.max_aspect, "approx": config.approx, "frame_sampling": config.frame_sampling,
        "seed": config.seed, "count": len(done), "failed": len(records) - len(done),
        "videos": sum(1 for r in done if r.get("kind") == "video"),
        "images": sum(1 for r in done if r.get("kind") == "image"),
        "sources": [
            {"path": str(s), "done": sum(1 for r in done if r["source_index"] == i),
             "failed": sum(1 for r in records if r["source_index"] == i and r["status"] == "failed")}
            for i, s in enumerate(sources)
        ],
        "bucket_counts": dict(sorted(buckets.items())), "failures": failures, "warnings": warned, "notes": notes,
    }  # fmt: skip


# ----------------------------------------------------------------------------------------------
# the dataset


@dataclass
class VideoDataConfig:
    """The `data` section of a video stage: a folder written by `voxforge data videos`."""

    path: str = option("", help="folder written by `voxforge data videos` (manifest.jsonl, clips/)")
    batch_sizes: dict[str, int] = option(
        default_factory=dict,
        help='per-rank batch size per "<resolution>/<frames>" (e.g. {"256px/33": 4}); others as prepared',
    )


class VideoClipDataset:
    """Items {"video": [3, T, H, W] in [-1, 1], "caption", "id", "fps", "bucket"} of a prepared folder.

    `buckets()` is every item's `VideoBucket`, `batch_sizes()` the per-rank batch size of each
    (the prepared table's, or `batch_sizes` {"<resolution>/<frames>": n} over it). With
    `latents` (a cache of `voxforge encode`, `voxforge.data.video_cache`) items carry the clip's
    cached "latent" [C, t, h, w] instead of "video", and no clip is read.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        ids: Sequence[str] | None = None,
        batch_sizes: Mapping[str, int] | None = None,
        latents: str | Path | None = None,
    ):
        self.root = Path(path)
        info_path = self.root / DATASET_INFO
        if not info_path.is_file():
            raise UserError(
                f"{self.root} has no {DATASET_INFO}; run `voxforge data videos SRC {self.root}` first"
            )
        try:
            self.info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise UserError(f"{info_path} is not valid JSON ({err})") from None
        if self.info.get("format") != "voxforge.videos":
            raise UserError(f"{info_path} was not written by `voxforge data videos`")
        self.table = parse_bucket_config(self.info["buckets"], str(info_path))
        records = [
            r
            for r in read_manifest(self.root)
            if r.get("status") == "done" and (self.root / CLIPS / f"{r['id']}.npy").is_file()
        ]
        if ids is not None:
            wanted = set(ids)
            records = [r for r in records if r["id"] in wanted]
        if not records:
            raise UserError(f"{self.root} holds no usable clips (see {self.root / MANIFEST})")
        self.records = records
        self._buckets = [VideoBucket.of(r["bucket"]) for r in records]
        overrides = dict(batch_sizes or {})
        known = {f"{r}/{t}" for r, frames in self.table.items() for t in frames}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UserError(f"batch_sizes: {unknown} are not buckets of {info_path} (it has {sorted(known)})")
        if any(int(v) < 1 for v in overrides.values()):
            raise UserError(f"batch_sizes: every batch size must be >= 1, got {overrides}")
        self._sizes = {
            b: int(overrides.get(f"{b.resolution}/{b.frames}", self.table[b.resolution][b.frames][1]))
            for b in set(self._buckets)
        }
        self.epoch = 0
        self.cache = None
        if latents:
            # voxforge.data.video_cache imports torch and this module: imported here
            from voxforge.data.video_cache import VideoLatentCache

            self.cache = VideoLatentCache(latents)
            self.cache.check(records, [b.name for b in self._buckets])

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:  # the engine calls it (`voxforge.stages.base.EpochAware`)
        self.epoch = int(epoch)

    def buckets(self) -> list[VideoBucket]:
        return list(self._buckets)

    def batch_sizes(self) -> dict[VideoBucket, int]:
        return dict(self._sizes)

    def captions(self) -> list[str]:
        return [r.get("caption", "") for r in self.records]

    def frames(self, index: int) -> np.ndarray:
        """The stored clip, uint8 [T, H, W, 3] (memory-mapped)."""
        return np.load(
            self.root / CLIPS / f"{self.records[index]['id']}.npy", mmap_mode="r", allow_pickle=False
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        record = self.records[index]
        if self.cache is not None:
            content = {"latent": self.cache.latent(record["id"])}
        else:
            clip = torch.from_numpy(np.array(self.frames(index)))  # [T, H, W, 3] uint8
            content = {"video": clip.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)}  # [3, T, H, W]
        return {
            **content,
            "caption": record.get("caption", ""),
            "id": record["id"],
            "fps": float(record.get("fps") or 0.0),
            "bucket": self._buckets[index].name,
        }

    @classmethod
    def from_config(
        cls, cfg: VideoDataConfig, *, ids: Sequence[str] | None = None, latents: str | None = None
    ) -> VideoClipDataset:
        if not cfg.path:
            raise UserError("data.path is empty: name a folder written by `voxforge data videos`")
        return cls(cfg.path, ids=ids, batch_sizes=cfg.batch_sizes, latents=latents)


def collate_videos(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack same-bucket items: video [B, 3, T, H, W] (or cached latent [B, C, t, h, w]), fps [B],
    caption, id and bucket lists."""
    import torch

    key = "latent" if "latent" in items[0] else "video"
    sizes = {tuple(item[key].shape) for item in items}
    if len(sizes) > 1:
        raise ValueError(f"a batch mixes clip sizes {sorted(sizes)}; batch with video_batch_sampler")
    return {
        key: torch.stack([item[key] for item in items]),
        "fps": torch.tensor([item["fps"] for item in items], dtype=torch.float32),
        "caption": [item["caption"] for item in items],
        "id": [item["id"] for item in items],
        "bucket": [item["bucket"] for item in items],
    }


def video_batch_sampler(
    dataset: VideoClipDataset, batch_size: int | None = None, **position: Any
) -> VideoBucketSampler:
    """A `VideoBucketSampler` at each bucket's batch size (or `batch_size` for all of them).

    `position`: rank, world_size, seed, epoch, start_batch, shuffle (the `Stage.batch_sampler`
    hook passes the first five).
    """
    sizes = dataset.batch_sizes()
    if batch_size is not None:
        sizes = {bucket: int(batch_size) for bucket in sizes}
    return VideoBucketSampler(dataset.buckets(), sizes, **position)
