"""`voxforge encode`: a trained VAE run + a prepared dataset → latents for the next flow.

One encoder per VAE, both on `voxforge.data.latents.encode_latents` (the layout, the
resume rule and the manifest are described there), each taking
`(vae_run, prepared, out, *, device, ema, log, **options)` and returning the loop's summary:

- `encode_ss_latents` (stage 1, an ss_vae run): the posterior mean `[C, r, r, r]` of every
  asset with voxels at the VAE's resolution, in batches of `batch_size` grids.
- `encode_slat_latents` (stage 2, a slat_vae run): the posterior mean `[N, C]` on each
  asset's voxels (stored with their `coords`), from the features the VAE trained on.
  Assets are encoded one at a time: a sparse asset's cost depends on its voxel count, not on
  a batch shape, and one at a time keeps the peak memory that of the largest asset.

TRELLIS encodes the mean for the flow too. The VAE's checkpoint step and EMA flag are the
latents' source: a re-run with another checkpoint encodes every asset again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxforge.data.dataset import OccupancyDataset, PreparedDataset
from voxforge.data.latents import encode_latents
from voxforge.data.views import SLatDataConfig
from voxforge.errors import UserError
from voxforge.runs import Run, load_slat_vae, load_ss_vae
from voxforge.sparse.tensor import SparseTensor

__all__ = ["encode_slat_latents", "encode_ss_latents"]


def _source(kind: str, vae_run: str | Path, step: int, ema: bool) -> dict[str, Any]:
    return {"kind": kind, "vae_run": str(Path(vae_run).resolve()), "checkpoint_step": step, "ema": bool(ema)}


def encode_ss_latents(
    vae_run: str | Path,
    prepared: str | Path,
    out: str | Path,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    ema: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Write `out/latents/<id>.npz` (key `latent`, [C, r, r, r] float32) and `out/latents.json`."""
    device = torch.device(device)
    vae, ckpt = load_ss_vae(vae_run, device, ema=ema)
    cfg = vae.cfg
    data = PreparedDataset(prepared)
    ids = data.ids(require=(f"voxels_{cfg.resolution}",))
    if not ids:
        raise UserError(
            f"{prepared}: no asset has voxels at resolution {cfg.resolution} (the VAE's); run "
            f"`voxforge data prepare ... --resolution {cfg.resolution}`"
        )
    grids = OccupancyDataset(data, resolution=cfg.resolution, ids=ids)
    position = {asset: i for i, asset in enumerate(ids)}

    @torch.no_grad()
    def encode(chunk: list[str]) -> list[dict[str, np.ndarray]]:
        batch = torch.stack([grids[position[asset]]["occupancy"] for asset in chunk]).to(device)
        return [{"latent": latent} for latent in vae.encode(batch).float().cpu().numpy()]

    return encode_latents(
        out,
        ids,
        encode,
        source=_source("ss", vae_run, ckpt.step, ema),
        fields={
            "prepared": str(Path(prepared).resolve()),
            "resolution": cfg.resolution,
            "latent_resolution": cfg.latent_resolution,
            "latent_channels": cfg.latent_channels,
        },
        channels_first=True,
        batch_size=batch_size,
        log_every=batch_size,
        log=log,
    )


def encode_slat_latents(
    vae_run: str | Path,
    prepared: str | Path,
    out: str | Path,
    *,
    device: torch.device | str = "cpu",
    ema: bool = True,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Write `out/latents/<id>.npz` (`coords` [N, 3] uint16, `latent` [N, C] float32) and
    `out/latents.json` for every asset with features at the VAE's resolution."""
    device = torch.device(device)
    run = Run.open(vae_run, "slat_vae", "the SLat VAE")
    vae, ckpt = load_slat_vae(run, device, ema=ema)
    resolution, extractor = vae.cfg.resolution, run.section("data", SLatDataConfig).extractor
    data = PreparedDataset(prepared)
    ids = data.ids(require=(f"features_{extractor}_{resolution}",))
    if not ids:
        raise UserError(
            f"{prepared}: no asset has {extractor} features at resolution {resolution} (the VAE's); run "
            f"`voxforge data prepare ... --resolution {resolution} --features {extractor}`"
        )

    @torch.no_grad()
    def encode(chunk: list[str]) -> list[dict[str, np.ndarray]]:
        (asset,) = chunk
        coords, feats = data.features(asset, extractor, resolution)
        batch = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), torch.from_numpy(coords)], 1)
        x = SparseTensor(
            batch.to(device), torch.from_numpy(feats).to(device), spatial_shape=(resolution,) * 3
        )
        latent = vae.encode(x).feats.float().cpu().numpy()
        return [{"coords": coords.astype(np.uint16), "latent": latent}]

    return encode_latents(
        out,
        ids,
        encode,
        source=_source("slat", vae_run, ckpt.step, ema),
        fields={
            "prepared": str(Path(prepared).resolve()),
            "resolution": resolution,
            "extractor": extractor,
            "latent_channels": vae.cfg.latent_channels,
        },
        channels_first=False,
        log_every=10,
        log=log,
    )
