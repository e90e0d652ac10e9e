"""`voxforge encode` for a SLat VAE run: prepared voxel features → per-voxel latents on disk.

Layout of OUT (the same shape as the structure latents of `pipelines.structure`, so the two
encode steps read alike):

    OUT/latents/<id>.npz   coords [N, 3] uint16 (the structure's voxels), latent [N, C] float32
    OUT/latents.json       kind "slat", the VAE run, checkpoint step and EMA flag, prepared
                           folder, resolution, extractor, latent channels, per-channel mean/std
                           over all voxels of all assets, ids

The stored latent is the posterior mean (TRELLIS encodes the mean for the flow too). Each
file is written under a temporary name and renamed, so a killed run leaves only complete
files; a re-run encodes only the assets whose file is missing, unless the VAE checkpoint
changed, in which case every asset is encoded again. Assets are encoded one at a time: a
sparse asset's cost depends on its voxel count, not on a batch shape, and one at a time
keeps the peak memory that of the largest asset.

`load_slat_vae(run)` rebuilds a trained VAE from its run folder (shared with the image→3D
pipeline); the feature width comes from the checkpoint when the recipe left it to the data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxforge.errors import UserError

__all__ = ["LATENTS_MANIFEST", "encode_slat_dataset", "load_run_recipe", "load_slat_vae", "read_slat_latent"]

LATENTS_MANIFEST = "latents.json"


def load_run_recipe(run: str | Path, stage: str, what: str) -> Any:
    from voxforge.config.recipe import load_recipe

    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise UserError(
            f"{run}: not a training run ({path} not found); pass the --out folder of `voxforge train`"
        )
    recipe = load_recipe(path)
    if recipe.stage != stage:
        raise UserError(f"{run}: {what} must be a '{stage}' run, this one trained '{recipe.stage}'")
    return recipe


def load_slat_vae(
    run: str | Path, device: torch.device | str = "cpu", ema: bool = True
) -> tuple[Any, Any, Any]:
    """(SLatVAE in eval mode with the newest checkpoint's EMA weights, its recipe, checkpoint info)."""
    from safetensors import safe_open

    from voxforge.models.slat_vae import SLatVAE
    from voxforge.train.checkpoint import latest_checkpoint, load_model_weights

    recipe = load_run_recipe(run, "slat_vae", "the SLat VAE")
    in_channels = recipe.model.in_channels
    if in_channels is None:
        ckpt = latest_checkpoint(run)
        if ckpt is None:
            raise UserError(f"{run}: no committed checkpoint found (has this run trained yet?)")
        with safe_open(str(ckpt.weights["model"]), framework="pt") as handle:
            in_channels = int(handle.get_slice("encoder.stack.input.weight").get_shape()[1])
    vae = SLatVAE(recipe.model, in_channels)
    info = load_model_weights(vae, run, ema=ema)
    return vae.to(device).eval(), recipe, info


def read_slat_latent(path: str | Path) -> tuple[np.ndarray, np.ndarray]:  # coords [N, 3] int64, latent [N, C]
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["coords"].astype(np.int64), data["latent"].astype(np.float32)
    except (OSError, KeyError, ValueError) as err:
        raise UserError(
            f"{path}: unreadable latent file ({err}); delete it and run `voxforge encode` again"
        ) from None


def read_slat_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / LATENTS_MANIFEST
    if not path.is_file():
        raise UserError(
            f"{folder}: no {LATENTS_MANIFEST}; write the latents with `voxforge encode --out {folder}`"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("kind") != "slat":
        raise UserError(f"{path}: these are not SLat latents (encode a slat_vae run for the SLat flow)")
    return manifest


@torch.no_grad()
def encode_slat_dataset(
    vae_run: str | Path,
    prepared: str | Path,
    out: str | Path,
    *,
    device: torch.device | str = "cpu",
    ema: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Encode every prepared asset with features at the VAE's resolution (module docstring)."""
    from voxforge.data import PreparedDataset
    from voxforge.data.steps import save_npz_atomic, write_bytes_atomic
    from voxforge.sparse.tensor import SparseTensor

    device = torch.device(device)
    vae, recipe, info = load_slat_vae(vae_run, device, ema=ema)
    resolution, extractor = recipe.model.resolution, recipe.data.extractor
    data = PreparedDataset(prepared)
    step = f"features_{extractor}_{resolution}"
    ids = data.ids(require=(step,))
    if not ids:
        raise UserError(
            f"{prepared}: no asset has {extractor} features at resolution {resolution} (the VAE's); run "
            f"`voxforge data prepare ... --resolution {resolution} --features {extractor}`"
        )
    out = Path(out)
    folder = out / "latents"
    folder.mkdir(parents=True, exist_ok=True)
    source = {
        "kind": "slat",
        "vae_run": str(Path(vae_run).resolve()),
        "checkpoint_step": info.step,
        "ema": bool(ema),
    }
    manifest_path = out / LATENTS_MANIFEST
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if {k: previous.get(k) for k in source} != source:
            log(f"{out}: written by another VAE checkpoint (or not SLat latents); encoding every asset again")
            for stale in folder.glob("*.npz"):
                stale.unlink()
    pending = [i for i in ids if not (folder / f"{i}.npz").is_file()]
    start = time.perf_counter()
    for n, asset in enumerate(pending, 1):
        coords, feats = data.features(asset, extractor, resolution)
        batch = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), torch.from_numpy(coords)], 1)
        x = SparseTensor(
            batch.to(device), torch.from_numpy(feats).to(device), spatial_shape=(resolution,) * 3
        )
        latent = vae.encode(x).feats.float().cpu().numpy()
        save_npz_atomic(folder / f"{asset}.npz", coords=coords.astype(np.uint16), latent=latent)
        if n % 10 == 0 or n == len(pending):
            log(f"encoded {n}/{len(pending)}")
    channels = recipe.model.latent_channels
    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    for asset in ids:
        _, latent = read_slat_latent(folder / f"{asset}.npz")
        flat = latent.astype(np.float64)
        total += flat.sum(0)
        total_sq += (flat**2).sum(0)
        count += len(flat)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 1e-12))
    manifest = {
        **source,
        "prepared": str(Path(prepared).resolve()),
        "resolution": resolution,
        "extractor": extractor,
        "latent_channels": channels,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "ids": ids,
    }
    write_bytes_atomic(manifest_path, json.dumps(manifest, indent=1).encode())
    return {
        "encoded": len(pending),
        "kept": len(ids) - len(pending),
        "total": len(ids),
        "seconds": time.perf_counter() - start,
    }
