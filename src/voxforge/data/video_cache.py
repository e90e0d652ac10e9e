"""Latent cache of a prepared video folder, in bounded safetensors shards.

What `voxforge encode --model VIDEO_AE --data PREPARED --out CACHE` writes for the video family
and `VideoClipDataset(latents=CACHE)` (recipe key `data.latents` of video_flow) reads, so the
denoiser trains without decoding clips and running the frozen autoencoder on every step.
Layout (the shard and identity rules are `voxforge.data.latent_shards`'):

    CACHE/cache.json                        the index (below), rewritten atomically
    CACHE/shards/latents-00000.safetensors  per clip `<id>.latent` [C, t, h, w]: exactly what
                                            `VideoAutoencoder.encode` gives the stage, the
                                            normalised posterior mean

The index holds the prepared folder, the storage dtype, the autoencoder (folder, sha256 of its
files, kind, latent channels, compression) and one entry per clip id: its bucket, the identity
of the stored clip it was encoded from (the manifest's sha and prepare settings) and its part
(shard, the autoencoder's sha256, shape).

The posterior mean, not a draw: the stage trains on the mean (a resumed step sees the same
latents), so the cache holds what training would compute, and a cached run matches an
uncached one step by step. Resume as for the image cache: a re-run keeps every latent written by
the same autoencoder from the same stored clip in the same bucket, encodes the rest, and
deletes shards nothing points at; a killed run loses at most the shard it was filling. A
prepared folder's clips are fixed frames (`voxforge data videos` picks them), so there is no
augmentation to cache. Captions are encoded at each step (the builtin text encoder costs
little beside the autoencoder; the cache does not hold text).

The model stays out of this module (a primitive): the caller passes the function that encodes
a batch of clips (`voxforge.pipelines.video.cache_video_data` loads it).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from voxforge.data.image_manifest import write_atomic
from voxforge.data.latent_shards import (
    CACHE_INDEX,
    ShardReader,
    ShardWriter,
    delete_unused_shards,
    open_shards,
    read_index,
    source_key,
    storage_dtype,
)
from voxforge.data.videos import VideoClipDataset
from voxforge.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["CACHE_FORMAT", "VideoLatentCache", "encode_video_cache", "read_video_cache_index"]

CACHE_FORMAT = "voxforge.video_cache"
CACHE_VERSION = 1


def read_video_cache_index(folder: str | Path) -> dict[str, Any]:
    """CACHE/cache.json, checked to be a video latent cache."""
    return read_index(folder, CACHE_FORMAT, "a video latent cache")


def encode_video_cache(
    prepared: str | Path,
    out: str | Path,
    *,
    encode_clips: Callable[[Tensor], Tensor],
    autoencoder: dict[str, Any],
    batch_size: int = 8,
    shard_bytes: int = 256 << 20,
    dtype: str = "float32",
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Cache the latents of every clip of `prepared` in `out` (module docstring).

    encode_clips: clips [B, 3, T, H, W] in [-1, 1] of one bucket -> latents [B, C, t, h, w].
    autoencoder: its identity for the index: `sha256` (of its files), `path`, `kind`,
        `latent_channels`, `compression` [t, h, w], and `files` (the hash memo).
    Returns {encoded, kept, total, shards, seconds}.
    """
    store = storage_dtype(dtype)
    out = Path(out)
    shards = open_shards(out)
    data = VideoClipDataset(prepared)
    index_path = out / CACHE_INDEX
    previous = read_video_cache_index(out) if index_path.is_file() else None
    if previous is not None and previous.get("dtype") != dtype:
        log(f"{out}: cached as {previous.get('dtype')}; encoding everything again as {dtype}")
        previous = None
    ae_sha = autoencoder["sha256"]
    if previous is not None and previous["autoencoder"]["sha256"] != ae_sha:
        log(
            f"{out}: written by another autoencoder ({previous['autoencoder']['path']}); every clip is encoded again"
        )
    old = (previous or {}).get("entries", {})
    index: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "data": str(Path(prepared).resolve()),
        "dtype": dtype,
        "autoencoder": dict(autoencoder),
        "entries": {},
    }
    entries: dict[str, dict[str, Any]] = index["entries"]
    pending: list[int] = []
    buckets = data.buckets()
    for position, record in enumerate(data.records):
        clip_id, bucket, source = record["id"], buckets[position].name, source_key(record)
        before = old.get(clip_id) or {}
        entry: dict[str, Any] = {"bucket": bucket, "source": source}
        latent = before.get("latent")
        if (
            latent
            and latent["encoder"] == ae_sha
            and before.get("source") == source
            and before.get("bucket") == bucket
        ):
            entry["latent"] = latent
        else:
            pending.append(position)
        entries[clip_id] = entry

    def commit() -> None:
        for clip_id, fields in writer.flush():
            entries[clip_id]["latent"] = fields
        write_atomic(index_path, json.dumps(index, indent=1) + "\n")

    started = time.perf_counter()
    writer = ShardWriter(shards, "latents", shard_bytes, CACHE_FORMAT)
    by_bucket: dict[str, list[int]] = {}
    for position in pending:
        by_bucket.setdefault(buckets[position].name, []).append(position)
    done = 0
    for _, positions in sorted(by_bucket.items()):
        for first in range(0, len(positions), batch_size):
            chunk = positions[first : first + batch_size]
            clips = torch.stack([data[p]["video"] for p in chunk])
            latents = encode_clips(clips).float().cpu()
            for row, position in enumerate(chunk):
                part = {"encoder": ae_sha, "shape": list(latents[row].shape)}
                writer.add(data.records[position]["id"], {"latent": latents[row].to(store)}, part)
                if writer.full():  # a shard holds at most max_bytes plus one clip
                    commit()
            done += len(chunk)
            log(f"latents {done}/{len(pending)}")
    commit()
    used = {e["latent"]["shard"] for e in entries.values() if "latent" in e}
    delete_unused_shards(shards, used)
    return {
        "encoded": len(pending),
        "kept": len(entries) - len(pending),
        "total": len(entries),
        "shards": len(used),
        "seconds": time.perf_counter() - started,
    }


class VideoLatentCache(ShardReader):
    """Reads a cache folder: per clip id its latent (shards opened on first use, not pickled:
    `latent_shards.ShardReader`)."""

    def __init__(self, folder: str | Path):
        super().__init__(folder, read_video_cache_index(folder))

    @property
    def autoencoder(self) -> dict[str, Any]:
        return self.index["autoencoder"]

    def check(self, records: Sequence[dict[str, Any]], buckets: Sequence[str]) -> None:
        """Every manifest record has a latent of its bucket, encoded from the clip stored now
        (`UserError` naming the first that does not)."""
        missing = [r["id"] for r in records if "latent" not in self.entries.get(r["id"], {})]
        if missing:
            raise UserError(
                f"{self.folder}: {len(missing)} of {len(records)} clips have no cached latent (first: {missing[0]}); "
                "run `voxforge encode` for this folder again"
            )
        for record, bucket in zip(records, buckets):
            entry = self.entries[record["id"]]
            if entry["bucket"] != bucket or entry["source"] != source_key(record):
                raise UserError(
                    f"{self.folder}: clip {record['id']} was cached from another stored clip "
                    f"(bucket {entry['bucket']}, now {bucket}: prepared again?); run `voxforge encode` again"
                )

    def latent(self, clip_id: str) -> Tensor:
        """[C, t, h, w] float32: the clip's normalised latent."""
        part = self.entries.get(clip_id, {}).get("latent")
        if part is None:
            raise UserError(
                f"{self.folder}: clip {clip_id} has no cached latent; run `voxforge encode` again"
            )
        return self.tensor(part["shard"], f"{clip_id}.latent").float()
