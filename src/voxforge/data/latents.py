"""Latent datasets on disk: what `voxforge encode` writes and the flow stages read.

Layout of a latents folder OUT, the same for every VAE:

    OUT/latents/<id>.npz   `latent` float32 — [C, r, r, r] for dense latents (stage 1),
                           [N, C] for sparse ones, with `coords` [N, 3] uint16, the voxels
                           they sit on (stage 2)
    OUT/latents.json       `kind` (ss | slat), the VAE run, checkpoint step and EMA flag (the
                           *source*), the prepared folder, the VAE's sizes, per-channel
                           mean/std over every latent, ids

`encode_latents` is the one loop behind every encoder: it encodes the assets whose file is
missing (each file written under a temporary name and renamed, so a killed run leaves only
complete files), starts over when the manifest names another source (another checkpoint),
then recomputes the statistics over all files and writes the manifest. What a VAE does with
a batch of ids is the caller's `encode` function (`voxforge.pipelines.encode`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.data.steps import save_npz_atomic, write_bytes_atomic
from voxforge.errors import UserError

__all__ = [
    "LATENTS_DIR",
    "LATENTS_MANIFEST",
    "LatentFile",
    "encode_latents",
    "read_latent",
    "read_latents_manifest",
]

LATENTS_DIR = "latents"
LATENTS_MANIFEST = "latents.json"
_KINDS = {  # kind -> (what they are, where they come from)
    "ss": ("structure latents", "encode an ss_vae run for the structure flow"),
    "slat": ("SLat latents", "encode a slat_vae run for the SLat flow"),
}


@dataclass
class LatentFile:
    latent: np.ndarray  # float32: [C, r, r, r] dense, or [N, C] on voxels
    coords: np.ndarray | None = None  # [N, 3] int64 voxels of sparse latents


def read_latent(path: str | Path) -> LatentFile:
    try:
        with np.load(path, allow_pickle=False) as data:
            coords = data["coords"].astype(np.int64) if "coords" in data.files else None
            return LatentFile(data["latent"].astype(np.float32), coords)
    except (OSError, KeyError, ValueError) as err:
        raise UserError(
            f"{path}: unreadable latent file ({err}); delete it and run `voxforge encode` again"
        ) from None


def read_latents_manifest(folder: str | Path, kind: str) -> dict[str, Any]:
    """`latents.json` of a latents folder, checked to hold `kind` latents (manifests written
    before the field existed hold structure latents)."""
    path = Path(folder) / LATENTS_MANIFEST
    if not path.is_file():
        raise UserError(
            f"{folder}: no {LATENTS_MANIFEST}; write the latents with `voxforge encode --out {folder}`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("kind", "ss") != kind:
        what, remedy = _KINDS[kind]
        raise UserError(f"{path}: these are not {what} ({remedy})")
    return manifest


def encode_latents(
    out: str | Path,
    ids: Sequence[str],
    encode: Callable[[list[str]], Sequence[dict[str, np.ndarray]]],
    *,
    source: dict[str, Any],
    fields: dict[str, Any],
    channels_first: bool,
    batch_size: int = 1,
    log_every: int = 1,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Encode `ids` into `out` (module docstring); returns {encoded, kept, total, seconds}.

    encode: ids of one batch → one dict of arrays per id (`latent`, and `coords` for sparse
        latents), written as `latents/<id>.npz`.
    source: what produced the latents (`kind`, VAE run, checkpoint step, EMA); when the
        manifest found in `out` says otherwise, every asset is encoded again.
    fields: the rest of the manifest, in order (prepared folder, sizes, and
        `latent_channels`, which sizes the statistics).
    channels_first: latents are [C, ...] (dense) rather than [..., C] (sparse).
    """
    out = Path(out)
    folder = out / LATENTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = out / LATENTS_MANIFEST
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if {k: previous.get(k) for k in source} != source:
            what = _KINDS[source["kind"]][0] if source.get("kind") in _KINDS else "these latents"
            log(f"{out}: written by another VAE checkpoint (or not {what}); encoding every asset again")
            for stale in folder.glob("*.npz"):
                stale.unlink()
    pending = [i for i in ids if not (folder / f"{i}.npz").is_file()]
    start = time.perf_counter()
    for first in range(0, len(pending), batch_size):
        chunk = pending[first : first + batch_size]
        for asset, arrays in zip(chunk, encode(chunk), strict=True):
            save_npz_atomic(folder / f"{asset}.npz", **arrays)
        done = first + len(chunk)
        if done % log_every == 0 or done == len(pending):
            log(f"encoded {done}/{len(pending)}")
    channels = fields["latent_channels"]
    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    for asset in ids:
        latent = read_latent(folder / f"{asset}.npz").latent
        if channels_first:  # [C, ...]: statistics over everything but the first axis
            flat = latent.reshape(latent.shape[0], -1).astype(np.float64)
            total += flat.sum(1)
            total_sq += (flat**2).sum(1)
            count += flat.shape[1]
        else:  # [N, C]
            flat = latent.astype(np.float64)
            total += flat.sum(0)
            total_sq += (flat**2).sum(0)
            count += len(flat)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 1e-12))
    manifest = {**source, **fields, "mean": mean.tolist(), "std": std.tolist(), "ids": list(ids)}
    write_bytes_atomic(manifest_path, json.dumps(manifest, indent=1).encode())
    return {
        "encoded": len(pending),
        "kept": len(ids) - len(pending),
        "total": len(ids),
        "seconds": time.perf_counter() - start,
    }
