"""Latent and text-embedding cache of a prepared image folder, in bounded safetensors shards.

What `voxforge encode --model AE --data PREPARED --out CACHE` writes for the image family and
`ImageCaptionDataset(latents=CACHE)` (recipe key `data.latents`) reads, so an image flow
trains without running its frozen autoencoder and text encoder on every step. Layout:

    CACHE/cache.json                       the index (below), rewritten atomically
    CACHE/shards/latents-00000.safetensors per image `<id>.latent` [C, h, w] (the autoencoder's
                                           raw output, before `scaling_factor`), `<id>.mask`
                                           [1, h, w] (the mask region averaged down to the latent
                                           grid, 0..1; only for images with a mask) and, with
                                           flips, `<id>.latent_flip` / `<id>.mask_flip`
    CACHE/shards/text-00000.safetensors    per image `<id>.text` [n, D] and `<id>.text_mask` [n]
                                           (the caption's embedding cut after its last unmasked
                                           token), and `<id>.text_flip` / `<id>.text_flip_mask`
                                           when a flip swaps left and right in its caption
    CACHE/text_encoder/                    the builtin text encoder the embeddings came from

The index holds the prepared folder, the resolution, the storage dtype, the autoencoder
(folder, sha256 of its files, latent channels, compression, scaling factor), the text encoder
(its config, folder, sha256 of its files, width, max_length) and one entry per image id:
its bucket, the identity of the stored image it was encoded from (the manifest's sha and
params), and per part (`latent`, `text`) the shard, the sha256 of the encoder that wrote it,
and what the part holds (flips, mask, caption hash, token counts).

Why shards, not one file per image: a Sana-scale folder has hundreds of thousands of images;
a few hundred MB per file keeps the file count small and each file is read by memory map
(`safetensors.safe_open`), one tensor at a time. Latents and text sit in separate shard series
so that changing one encoder leaves the other's shards valid.

Resume. Shards are immutable: each is written under a temporary name, fsynced and renamed,
then the index is rewritten (atomically) to point at it, so a killed run loses at most the
shard it was filling. A re-run keeps every part written by the same encoder (same sha256) from
the same stored image, caption and settings and encodes the rest; a changed encoder re-encodes
its parts (said in the log); shards no entry points at any more are deleted. File hashes are
memoised by (size, mtime) in the index, so a multi-GB text encoder is hashed once.

Flips. With `flip` the mirrored image's latent (and mask, and the left/right-swapped caption's
embedding) are cached too, so `data.augment.flip` still works on cached latents: the dataset
draws the same flip from the same (seed, index, epoch) generator as on images. Random crops
and rotations cannot be cached (each draw is a new image); the dataset refuses them with
cached latents.

The models themselves stay out of this module (a primitive): the caller passes functions that
encode a batch of images and of captions (`voxforge.pipelines.image_cache` loads them).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from voxforge.data.image_dataset import ImageCaptionDataset, swap_left_right
from voxforge.data.image_manifest import write_atomic
from voxforge.data.latent_shards import (
    CACHE_INDEX,
    SHARDS_DIR,
    ShardReader,
    ShardWriter,
    delete_unused_shards,
    files_digest,
    open_shards,
    read_index,
    source_key,
    storage_dtype,
)
from voxforge.errors import UserError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "CACHE_INDEX",
    "SHARDS_DIR",
    "TEXT_ENCODER_DIR",
    "ImageLatentCache",
    "encode_image_cache",
    "files_digest",
    "read_cache_index",
]

TEXT_ENCODER_DIR = "text_encoder"
CACHE_FORMAT = "voxforge.image_cache"
CACHE_VERSION = 1


# ----------------------------------------------------------------------------------------------
# identities


def _caption_key(caption: str) -> str:
    return hashlib.sha256(caption.encode()).hexdigest()[:16]


def read_cache_index(folder: str | Path) -> dict[str, Any]:
    """CACHE/cache.json, checked to be an image cache."""
    return read_index(folder, CACHE_FORMAT, "an image latent cache")


# ----------------------------------------------------------------------------------------------
# writing


def _trim(embeds: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Cut a caption's [L, D] embedding and [L] mask after the last unmasked token (the rest is
    padding the denoiser's attention mask ignores); at least one token is kept."""
    kept = int(mask.nonzero().max()) + 1 if bool(mask.any()) else 1
    return embeds[:kept], mask[:kept].to(torch.uint8)


def encode_image_cache(
    prepared: str | Path,
    out: str | Path,
    *,
    encode_images: Callable[[Tensor], Tensor],
    autoencoder: dict[str, Any],
    encode_text: Callable[[list[str]], tuple[Tensor, Tensor]] | None = None,
    text_encoder: dict[str, Any] | None = None,
    resolution: int | None = None,
    flip: bool = False,
    batch_size: int = 8,
    shard_bytes: int = 256 << 20,
    dtype: str = "float32",
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Cache the latents (and caption embeddings) of a prepared folder in `out` (module docstring).

    encode_images: images [B, 3, H, W] in [-1, 1] of one bucket -> raw latents [B, C, h, w].
    autoencoder: its identity for the index: `sha256` (of its files), `path`, `latent_channels`,
        `compression`, `scaling_factor`, and `files` (the hash memo).
    encode_text, text_encoder: captions -> (embeds [B, L, D], mask [B, L]), and the encoder's
        identity (`sha256`, `files`, `config`, `folder`, `dim`, `max_length`); None keeps the
        text parts already cached (dropping those whose caption changed).
    Returns {latents: {encoded, kept}, text: {encoded, kept}, total, shards, seconds}.
    """
    store = storage_dtype(dtype)
    if (encode_text is None) != (text_encoder is None):
        raise ValueError("encode_text and text_encoder come together")
    out = Path(out)
    shards = open_shards(out)
    data = ImageCaptionDataset(prepared, resolution)
    index_path = out / CACHE_INDEX
    previous = read_cache_index(out) if index_path.is_file() else None
    settings = {"resolution": data.resolution, "dtype": dtype}
    if previous is not None and any(previous.get(k) != v for k, v in settings.items()):
        log(f"{out}: cached at another resolution or dtype ({previous.get('resolution')} px, "
            f"{previous.get('dtype')}); encoding everything again")  # fmt: skip
        previous = None
    old = (previous or {}).get("entries", {})
    ae_sha = autoencoder["sha256"]
    if previous is not None and previous["autoencoder"]["sha256"] != ae_sha:
        log(
            f"{out}: written by another autoencoder ({previous['autoencoder']['path']}); every latent is encoded again"
        )
    te_sha = text_encoder["sha256"] if text_encoder else None
    if text_encoder and previous is not None and (previous.get("text_encoder") or {}).get("sha256") != te_sha:
        if previous.get("text_encoder"):
            log(f"{out}: written by another text encoder; every caption is encoded again")
    index: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "data": str(Path(prepared).resolve()),
        **settings,
        "flip": bool(flip),
        "autoencoder": {k: v for k, v in autoencoder.items()},
        "text_encoder": text_encoder if text_encoder else (previous or {}).get("text_encoder"),
        "entries": {},
    }
    entries: dict[str, dict[str, Any]] = index["entries"]
    pending_latents: list[int] = []
    pending_text: list[int] = []
    for position, record in enumerate(data.records):
        image_id, bucket = record["id"], list(data.buckets()[position])
        source, caption = source_key(record), record.get("caption", "")
        before = old.get(image_id) or {}
        entry: dict[str, Any] = {"bucket": bucket, "source": source}
        latent = before.get("latent")
        if (
            latent and latent["encoder"] == ae_sha and before.get("source") == source
            and before.get("bucket") == bucket and (latent["flip"] or not flip)
        ):  # fmt: skip
            entry["latent"] = latent
        else:
            pending_latents.append(position)
        text = before.get("text")
        wanted = text_encoder is not None
        if text and text["caption"] == _caption_key(caption) and (text["flip"] or not flip):
            if not wanted or text["encoder"] == te_sha:
                entry["text"] = text
            else:
                pending_text.append(position)
        elif wanted:
            pending_text.append(position)
        entries[image_id] = entry

    def save_index() -> None:
        index["flip"] = all(e.get("latent", {}).get("flip", False) for e in entries.values())
        write_atomic(index_path, json.dumps(index, indent=1) + "\n")

    started = time.perf_counter()
    latent_writer = ShardWriter(shards, "latents", shard_bytes, CACHE_FORMAT)
    text_writer = ShardWriter(shards, "text", shard_bytes, CACHE_FORMAT)

    def commit(writer: ShardWriter, part: str) -> None:
        for image_id, fields in writer.flush():
            entries[image_id][part] = fields
        save_index()

    by_bucket: dict[tuple[int, int], list[int]] = {}
    for position in pending_latents:
        by_bucket.setdefault(tuple(data.buckets()[position]), []).append(position)
    done = 0
    for _, positions in sorted(by_bucket.items()):
        for first in range(0, len(positions), batch_size):
            chunk = positions[first : first + batch_size]
            items = [data[p] for p in chunk]
            images = torch.stack([item["image"] for item in items])
            regions = [data.region(p) for p in chunk]
            variants = [(images, False)] + ([(images.flip(-1), True)] if flip else [])
            encoded = {name: encode_images(batch).float().cpu() for batch, name in variants}
            for row, position in enumerate(chunk):
                record = data.records[position]
                latent = encoded[False][row]
                tensors = {"latent": latent.to(store)}
                if flip:
                    tensors["latent_flip"] = encoded[True][row].to(store)
                if regions[row] is not None:
                    small = F.adaptive_avg_pool2d(regions[row][None].float(), latent.shape[-2:])[0]
                    tensors["mask"] = small.to(store)
                    if flip:
                        small_flip = F.adaptive_avg_pool2d(
                            regions[row].flip(-1)[None].float(), latent.shape[-2:]
                        )[0]
                        tensors["mask_flip"] = small_flip.to(store)
                part = {
                    "encoder": ae_sha,
                    "shape": list(latent.shape),
                    "flip": bool(flip),
                    "mask": regions[row] is not None,
                }
                latent_writer.add(record["id"], tensors, part)
                if latent_writer.full():  # a shard holds at most max_bytes plus one image
                    commit(latent_writer, "latent")
            done += len(chunk)
            log(f"latents {done}/{len(pending_latents)}")
    commit(latent_writer, "latent")

    for first in range(0, len(pending_text), batch_size):
        chunk = pending_text[first : first + batch_size]
        records = [data.records[p] for p in chunk]
        captions = [r.get("caption", "") for r in records]
        swapped = [swap_left_right(c) for c in captions]
        embeds, masks = encode_text(captions)
        flipped = {}
        if flip:
            which = [i for i, (c, s) in enumerate(zip(captions, swapped)) if s != c]
            if which:
                flip_embeds, flip_masks = encode_text([swapped[i] for i in which])
                flipped = {i: (flip_embeds[n], flip_masks[n]) for n, i in enumerate(which)}
        for row, record in enumerate(records):
            text, text_mask = _trim(embeds[row].float().cpu(), masks[row].cpu())
            tensors = {"text": text.to(store), "text_mask": text_mask}
            if row in flipped:
                text_flip, flip_mask = _trim(flipped[row][0].float().cpu(), flipped[row][1].cpu())
                tensors |= {"text_flip": text_flip.to(store), "text_flip_mask": flip_mask}
            part = {
                "encoder": te_sha,
                "caption": _caption_key(captions[row]),
                "flip": bool(flip),
                "swapped": row in flipped,
            }
            text_writer.add(record["id"], tensors, part)
            if text_writer.full():
                commit(text_writer, "text")
        log(f"captions {min(first + batch_size, len(pending_text))}/{len(pending_text)}")
    commit(text_writer, "text")

    used = {part["shard"] for e in entries.values() for part in (e.get("latent"), e.get("text")) if part}
    delete_unused_shards(shards, used)
    return {
        "latents": {"encoded": len(pending_latents), "kept": len(entries) - len(pending_latents)},
        "text": {
            "encoded": len(pending_text),
            "kept": sum(1 for e in entries.values() if "text" in e) - len(pending_text),
        },
        "total": len(entries),
        "shards": len(used),
        "flip": index["flip"],
        "seconds": time.perf_counter() - started,
    }


# ----------------------------------------------------------------------------------------------
# reading


class ImageLatentCache(ShardReader):
    """Reads a cache folder: per image id its latent, mask region and caption embedding
    (shards opened on first use, not pickled: `latent_shards.ShardReader`)."""

    def __init__(self, folder: str | Path):
        super().__init__(folder, read_cache_index(folder))

    @property
    def text_encoder(self) -> dict[str, Any] | None:
        return self.index.get("text_encoder")

    def has_text(self, ids: Sequence[str]) -> bool:
        return all("text" in self.entries.get(i, {}) for i in ids)

    def _part(self, image_id: str, part: str) -> dict[str, Any]:
        found = self.entries.get(image_id, {}).get(part)
        if found is None:
            raise UserError(f"{self.folder}: image {image_id} has no cached {part}; encode again")
        return found

    def latent(self, image_id: str, flip: bool = False) -> Tensor:
        """[C, h, w] float32, the autoencoder's raw latent (of the mirrored image when `flip`)."""
        part = self._part(image_id, "latent")
        return self.tensor(part["shard"], f"{image_id}.latent{'_flip' if flip else ''}").float()

    def region(self, image_id: str, flip: bool = False) -> Tensor | None:
        """[1, h, w] in [0, 1]: the image's mask region at latent size, or None without a mask."""
        part = self._part(image_id, "latent")
        if not part["mask"]:
            return None
        return self.tensor(part["shard"], f"{image_id}.mask{'_flip' if flip else ''}").float()

    def text(self, image_id: str, flip: bool = False) -> tuple[Tensor, Tensor]:
        """(embeds [L, D] float32, mask [L] bool) of the caption (left/right swapped when `flip`
        changed it), padded with zeros and False to the encoder's max_length."""
        part = self._part(image_id, "text")
        name = f"{image_id}.text_flip" if flip and part.get("swapped") else f"{image_id}.text"
        embeds = self.tensor(part["shard"], name).float()
        mask = self.tensor(part["shard"], f"{name}_mask").bool()
        length = int(self.text_encoder["max_length"])
        padded = torch.zeros(length, embeds.shape[-1])
        padded[: len(embeds)] = embeds
        full = torch.zeros(length, dtype=torch.bool)
        full[: len(mask)] = mask
        return padded, full


def _check_all_cached(cache: ImageLatentCache, ids: Sequence[str]) -> None:
    missing = [i for i in ids if "latent" not in cache.entries.get(i, {})]
    if missing:
        raise UserError(
            f"{cache.folder}: {len(missing)} of {len(ids)} images have no cached latent (first: {missing[0]}); "
            "run `voxforge encode` for this folder again"
        )


def check_cache(cache: ImageLatentCache, ids: Sequence[str], buckets: Sequence[tuple[int, int]]) -> None:
    """Every id has a latent of its bucket (`UserError` naming the first that does not)."""
    _check_all_cached(cache, ids)
    for image_id, bucket in zip(ids, buckets):
        if tuple(cache.entries[image_id]["bucket"]) != tuple(bucket):
            raise UserError(
                f"{cache.folder}: image {image_id} was cached in bucket {cache.entries[image_id]['bucket']}, "
                f"the dataset has it in {list(bucket)} (another resolution?); encode at this resolution"
            )
