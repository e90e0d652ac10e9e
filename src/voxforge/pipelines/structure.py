"""Stage-1 inference: condition image(s) → occupied voxels, and the `encode` step before it.

Pieces, each used by a thin command and by the demo:

- `load_condition_image`: an image file → the `[3, S, S]` condition tensor the flow trained
  on (the data toolkit's `condition_image`: alpha-box crop ×1.2, premultiplied on black).
  Images without alpha (or fully opaque) get their background removed when it is a plain
  colour: the border's median colour is the background if ≥ 90 % of the border lies within a
  tolerance of it, and the regions of near-background colour connected to the border become
  transparent (then the outline moves in by one pixel, dropping anti-aliased edge pixels). Otherwise the user is told to provide an RGBA image with a transparent
  background. Enclosed background-coloured regions (the hole of a ring seen head-on) stay
  opaque: telling them apart from a white object part needs a segmentation model.
- `encode_dataset`: `voxforge encode` for an SS-VAE run: the posterior mean of every prepared
  asset, one `latents/<id>.npz` each (written atomically; a re-run skips what exists unless
  the VAE checkpoint changed), then per-channel mean/std and `latents.json`.
- `StructurePipeline`: flow run (+ its VAE run) → sampled latents → decoded voxels. Several
  images of one object combine as TRELLIS offers: `stochastic` conditions each model
  evaluation on the next image in turn (one image per step with Euler), `multidiffusion`
  averages the conditional velocities of all images at every evaluation. Guidance uses
  all-zero tokens as the unconditional input, as in training.
- `evaluate_generation`: held-out assets' condition views → structures, IoU against the
  ground truth, for conditional and (same seeds) unconditional samples. Because synth and
  most real assets have an arbitrary yaw that no single view reveals, a yaw-aligned IoU
  (best over rotations about +Y in 15° steps and their mirror images) is reported next to
  the plain IoU.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import UserError

__all__ = [
    "MAX_IMAGE_PIXELS",
    "StructurePipeline",
    "default_sampler",
    "encode_dataset",
    "evaluate_generation",
    "load_condition_image",
    "remove_plain_background",
    "yaw_aligned_iou",
]

MAX_IMAGE_PIXELS = 64 * 1024 * 1024
MAX_IMAGE_BYTES = 256 * 1024 * 1024
LATENTS_MANIFEST = "latents.json"
STRUCTURE_INFO = "structure.json"


# ------------------------------------------------------------------------------------------
# condition images


def remove_plain_background(rgb: np.ndarray, tolerance: int = 24, name: str = "image") -> np.ndarray:
    """rgb [H, W, 3] uint8 -> alpha [H, W] uint8: 0 on the border-connected plain background."""
    from scipy import ndimage

    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)  # [P, 3]
    background = np.median(border, axis=0)
    near_border = np.abs(border - background).max(axis=1) <= tolerance
    if near_border.mean() < 0.9:
        raise UserError(
            f"{name}: the image has no transparency and its border is not one plain colour, so the object "
            "cannot be separated from the background; provide an RGBA PNG with a transparent background "
            "(any background-removal tool works), or a photo of the object on a plain backdrop"
        )
    near = np.abs(rgb.astype(np.int16) - background).max(axis=2) <= tolerance
    labels, _ = ndimage.label(near)
    touching = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    touching = touching[touching > 0]
    foreground = ~np.isin(labels, touching)
    if foreground.mean() < 1e-3:
        raise UserError(f"{name}: no object found in front of the plain background")
    # one pixel in from the outline: anti-aliased edge pixels are part background colour
    eroded = ndimage.binary_erosion(foreground)
    if eroded.sum() >= 0.5 * foreground.sum():
        foreground = eroded
    return np.where(foreground, 255, 0).astype(np.uint8)


def load_condition_image(path: str | Path, size: int, *, tolerance: int = 24) -> Tensor:  # -> [3, S, S]
    """Read an image file and prepare it exactly like the training condition views."""
    from PIL import Image, UnidentifiedImageError

    from voxforge.data.dataset import condition_image

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image file not found")
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise UserError(f"{path}: file larger than {MAX_IMAGE_BYTES >> 20} MiB")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise UserError(f"{path}: {width}x{height} pixels is over the limit of {MAX_IMAGE_PIXELS}")
            has_alpha = image.mode in ("RGBA", "LA", "PA") or (
                image.mode == "P" and "transparency" in image.info
            )
            rgba = np.asarray(image.convert("RGBA"))
    except (UnidentifiedImageError, OSError) as err:
        raise UserError(f"{path}: not a readable image ({err})") from None
    if not has_alpha or bool((rgba[..., 3] == 255).all()):
        rgba = rgba.copy()
        rgba[..., 3] = remove_plain_background(rgba[..., :3], tolerance, name=str(path))
    elif not (rgba[..., 3] > 0).any():
        raise UserError(f"{path}: the image is fully transparent")
    return torch.from_numpy(condition_image(rgba, size))


# ------------------------------------------------------------------------------------------
# encode: SS-VAE run + prepared dataset -> latents


def _load_run_recipe(run: str | Path, stage: str, what: str) -> Any:
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


def load_vae(run: str | Path, device: torch.device | str = "cpu", ema: bool = True) -> tuple[Any, Any]:
    """(SSVAE in eval mode with the newest checkpoint's EMA weights, checkpoint info)."""
    from voxforge.models.ss_vae import SSVAE
    from voxforge.train.checkpoint import load_model_weights

    recipe = _load_run_recipe(run, "ss_vae", "the structure VAE")
    vae = SSVAE(recipe.model)
    info = load_model_weights(vae, run, ema=ema)
    return vae.to(device).eval(), info


def encode_dataset(
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
    from voxforge.data import OccupancyDataset, PreparedDataset
    from voxforge.data.steps import save_npz_atomic, write_bytes_atomic

    device = torch.device(device)
    vae, info = load_vae(vae_run, device, ema=ema)
    cfg = vae.cfg
    data = PreparedDataset(prepared)
    ids = data.ids(require=(f"voxels_{cfg.resolution}",))
    if not ids:
        raise UserError(
            f"{prepared}: no asset has voxels at resolution {cfg.resolution} (the VAE's); run "
            f"`voxforge data prepare ... --resolution {cfg.resolution}`"
        )
    out = Path(out)
    folder = out / "latents"
    folder.mkdir(parents=True, exist_ok=True)
    source = {
        "kind": "ss",
        "vae_run": str(Path(vae_run).resolve()),
        "checkpoint_step": info.step,
        "ema": bool(ema),
    }
    manifest_path = out / LATENTS_MANIFEST
    if manifest_path.is_file():
        previous = json.loads(manifest_path.read_text())
        if {k: previous.get(k) for k in source} != source:
            log(
                f"{out}: written by another VAE checkpoint (or not structure latents); encoding every asset again"
            )
            for stale in folder.glob("*.npz"):
                stale.unlink()
    pending = [i for i in ids if not (folder / f"{i}.npz").is_file()]
    start = time.perf_counter()
    if pending:
        dataset = OccupancyDataset(data, resolution=cfg.resolution, ids=pending)
        with torch.no_grad():
            for first in range(0, len(pending), batch_size):
                chunk = list(range(first, min(len(pending), first + batch_size)))
                grids = torch.stack([dataset[i]["occupancy"] for i in chunk]).to(device)
                latents = vae.encode(grids).float().cpu().numpy()
                for i, latent in zip(chunk, latents):
                    target = folder / f"{pending[i]}.npz"
                    save_npz_atomic(target, latent=latent)
                log(f"encoded {min(len(pending), first + batch_size)}/{len(pending)}")
    # per-channel statistics over every latent (new and kept)
    total = np.zeros(cfg.latent_channels, np.float64)
    total_sq = np.zeros(cfg.latent_channels, np.float64)
    count = 0
    for asset in ids:
        latent = read_latent(folder / f"{asset}.npz")
        flat = latent.reshape(latent.shape[0], -1).astype(np.float64)
        total += flat.sum(1)
        total_sq += (flat**2).sum(1)
        count += flat.shape[1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    manifest = {
        **source,
        "prepared": str(Path(prepared).resolve()),
        "resolution": cfg.resolution,
        "latent_resolution": cfg.latent_resolution,
        "latent_channels": cfg.latent_channels,
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


def read_latent(path: Path) -> np.ndarray:  # [C, r, r, r] float32
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["latent"].astype(np.float32)
    except (OSError, KeyError, ValueError) as err:
        raise UserError(
            f"{path}: unreadable latent file ({err}); delete it and run `voxforge encode` again"
        ) from None


def read_latents_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / LATENTS_MANIFEST
    if not path.is_file():
        raise UserError(
            f"{folder}: no {LATENTS_MANIFEST}; write the latents with `voxforge encode --out {folder}`"
        )
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------
# sampling


def default_sampler(**overrides: Any) -> Any:
    """TRELLIS's sampler settings for this stage: 25 Euler steps, guidance 7.5 for t in [0.5, 1],
    time grid shifted by 3 (more steps at high noise, where the coarse structure forms)."""
    from voxforge.flow import SamplerConfig

    settings = {"steps": 25, "cfg_scale": 7.5, "guidance_interval": (0.5, 1.0), "time_shift": 3.0}
    settings.update(overrides)
    return SamplerConfig(**settings)


MultiImageMode = Literal["stochastic", "multidiffusion"]


class _Views:
    """Condition tokens of B objects with K views each, and the multi-view rule."""

    def __init__(self, tokens: Tensor, mode: str):  # tokens [B, K, T, C]
        self.tokens, self.mode, self.calls = tokens, mode, 0


class StructurePipeline:
    """Trained structure flow + VAE decoder: image tokens → latents → occupied voxels."""

    def __init__(
        self,
        flow: Any,  # StructureFlowModel
        vae: Any,  # SSVAE
        *,
        latent_mean: Sequence[float],
        latent_std: Sequence[float],
        frozen_encoder: Any = None,  # ImageEncoder held outside the flow model (DINOv2)
        sigma_min: float = 1e-5,
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        self.flow, self.vae = flow.to(self.device).eval(), vae.to(self.device).eval()
        self.frozen_encoder = frozen_encoder.to(self.device) if frozen_encoder is not None else None
        shape = (1, -1, 1, 1, 1)
        self.latent_mean = torch.tensor(latent_mean, dtype=torch.float32, device=self.device).view(shape)
        self.latent_std = torch.tensor(latent_std, dtype=torch.float32, device=self.device).view(shape)
        self.sigma_min = sigma_min
        self.image_size = self._encoder().image_size
        self.resolution = vae.cfg.resolution

    @classmethod
    def from_runs(
        cls,
        flow_run: str | Path,
        *,
        vae_run: str | Path | None = None,
        device: torch.device | str = "cpu",
        ema: bool = True,
    ) -> StructurePipeline:
        from voxforge.models.image_encoders import build_image_encoder
        from voxforge.models.ss_flow import StructureFlowModel
        from voxforge.train.checkpoint import load_model_weights

        recipe = _load_run_recipe(flow_run, "ss_flow", "--model")
        info_path = Path(flow_run) / STRUCTURE_INFO
        if not info_path.is_file():
            raise UserError(
                f"{flow_run}: {STRUCTURE_INFO} missing (written when the ss_flow stage starts training)"
            )
        info = json.loads(info_path.read_text())
        frozen = None
        if recipe.image_encoder.kind != "vit":
            frozen = build_image_encoder(recipe.image_encoder)
        flow = StructureFlowModel(
            recipe.model, recipe.image_encoder, context_dim=frozen.out_dim if frozen else None
        )
        load_model_weights(flow, flow_run, ema=ema)
        vae_run = vae_run or info["vae_run"]
        if not (Path(vae_run) / "config.yaml").is_file():
            raise UserError(f"structure VAE run {vae_run} not found; pass its folder with --vae")
        vae, _ = load_vae(vae_run, device, ema=ema)
        return cls(
            flow,
            vae,
            latent_mean=info["mean"],
            latent_std=info["std"],
            frozen_encoder=frozen,
            sigma_min=recipe.flow.sigma_min,
            device=device,
        )

    # --- pieces ------------------------------------------------------------------------------
    @torch.no_grad()
    def image_tokens(self, images: Tensor) -> Tensor:  # [N, 3, S, S] in [0, 1] -> [N, T, C]
        return self._encoder()(images.to(self.device)).float()

    def _encoder(self) -> Any:
        return self.frozen_encoder if self.frozen_encoder is not None else self.flow.image_encoder

    def _model_fn(self, x: Tensor, t: Tensor, views: _Views) -> Tensor:
        tokens = views.tokens  # [B, K, T, C]
        batch, k = tokens.shape[:2]
        if k == 1:
            return self.flow(x, t, context=tokens[:, 0])
        if views.mode == "multidiffusion":
            v = self.flow(x.repeat_interleave(k, 0), t.repeat_interleave(k, 0), context=tokens.flatten(0, 1))
            return v.unflatten(0, (batch, k)).mean(1)
        index = views.calls % k
        views.calls += 1
        return self.flow(x, t, context=tokens[:, index])

    @torch.no_grad()
    def sample_latents(
        self,
        tokens: Tensor | None,  # [B, K, T, C] condition tokens (K views per object), or None
        *,
        num: int = 1,  # objects when unconditional
        seed: int = 0,
        sampler: Any = None,  # voxforge.flow.SamplerConfig; None: default_sampler()
        mode: MultiImageMode = "stochastic",
    ) -> Tensor:  # [B, C, r, r, r] latents in the VAE's space
        from voxforge.flow import make_noise, sample_from_config

        sampler = sampler or default_sampler()
        if mode not in ("stochastic", "multidiffusion"):
            raise UserError(f"multi-image mode '{mode}': expected stochastic or multidiffusion")
        cfg = self.flow.cfg
        batch = tokens.shape[0] if tokens is not None else num
        noise = make_noise(
            (batch, cfg.in_channels, cfg.resolution, cfg.resolution, cfg.resolution), seed=seed
        )
        noise = noise.to(self.device)
        token_shape = tokens.shape if tokens is not None else (batch, 1, 1, self.flow.context_dim)
        null = _Views(torch.zeros(batch, 1, *token_shape[2:], device=self.device), mode)
        if tokens is None:
            cond, uncond = null, None
            sampler = replace(sampler, cfg_scale=1.0)
        else:
            cond, uncond = _Views(tokens.to(self.device), mode), null
        latents = sample_from_config(self._model_fn, noise, cond, uncond, sampler, sigma_min=self.sigma_min)
        return latents * self.latent_std + self.latent_mean

    @torch.no_grad()
    def decode(self, latents: Tensor) -> list[np.ndarray]:  # [B, C, r, r, r] -> B x coords [N, 3]
        occupancy = self.vae.decode(latents.to(self.device)) > 0  # [B, 1, R, R, R]
        return [np.argwhere(grid[0].cpu().numpy()).astype(np.int64) for grid in occupancy]

    # --- user-facing -------------------------------------------------------------------------
    def generate(
        self, images: Tensor, *, seed: int = 0, sampler: Any = None, mode: MultiImageMode = "stochastic"
    ) -> np.ndarray:  # images [K, 3, S, S]: K views of one object -> coords [N, 3]
        tokens = self.image_tokens(images)[None]  # [1, K, T, C]
        return self.decode(self.sample_latents(tokens, seed=seed, sampler=sampler, mode=mode))[0]

    def generate_each(self, images: Tensor, *, seed: int = 0, sampler: Any = None) -> list[np.ndarray]:
        """images [B, 3, S, S]: one object per image, sampled as one batch."""
        tokens = self.image_tokens(images)[:, None]  # [B, 1, T, C]
        return self.decode(self.sample_latents(tokens, seed=seed, sampler=sampler))

    def unconditional(self, num: int, *, seed: int = 0, sampler: Any = None) -> list[np.ndarray]:
        return self.decode(self.sample_latents(None, num=num, seed=seed, sampler=sampler))


# ------------------------------------------------------------------------------------------
# evaluation


def _iou(a: np.ndarray, b: np.ndarray) -> float:  # bool grids
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def yaw_aligned_iou(pred: np.ndarray, true: np.ndarray, resolution: int, step_degrees: float = 15.0) -> float:
    """Best IoU of `pred` (coords [N, 3]) rotated about the grid's +Y axis (and mirrored) vs `true`."""
    from voxforge.representations.voxels import coords_to_grid

    target = coords_to_grid(true, resolution)
    if len(pred) == 0:
        return _iou(np.zeros_like(target), target)
    centre = (resolution - 1) / 2.0
    points = pred.astype(np.float64) - centre
    best = 0.0
    for mirror in (1.0, -1.0):
        for k in range(int(round(360.0 / step_degrees))):
            angle = math.radians(k * step_degrees)
            c, s = math.cos(angle), math.sin(angle)
            x, y, z = points[:, 0] * mirror, points[:, 1], points[:, 2]
            turned = np.stack([c * x + s * z, y, -s * x + c * z], axis=1) + centre
            idx = np.rint(turned).astype(np.int64)
            idx = idx[((idx >= 0) & (idx < resolution)).all(axis=1)]
            grid = np.zeros_like(target)
            grid[idx[:, 0], idx[:, 1], idx[:, 2]] = True
            best = max(best, _iou(grid, target))
    return best


def evaluate_generation(
    pipeline: StructurePipeline,
    prepared: str | Path | Any,
    ids: Sequence[str],
    *,
    seed: int = 0,
    sampler: Any = None,
    batch_size: int = 16,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Conditional vs unconditional structures for held-out assets, scored against the truth."""
    from voxforge.data import ConditionImageDataset, PreparedDataset

    data = prepared if isinstance(prepared, PreparedDataset) else PreparedDataset(prepared)
    resolution = pipeline.resolution
    conds = ConditionImageDataset(data, cond_size=pipeline.image_size, ids=list(ids), seed=seed)
    truths = [data.voxels(i, resolution) for i in ids]
    cond_structs: list[np.ndarray] = []
    uncond_structs: list[np.ndarray] = []
    images = []
    for first in range(0, len(ids), batch_size):
        chunk = list(range(first, min(len(ids), first + batch_size)))
        batch = torch.stack([conds[i]["cond"] for i in chunk])
        images.extend(batch)
        cond_structs += pipeline.generate_each(batch, seed=seed + first, sampler=sampler)
        uncond_structs += pipeline.unconditional(len(chunk), seed=seed + first, sampler=sampler)
    from voxforge.representations.voxels import coords_to_grid

    per_asset = []
    for asset, truth, cond, uncond in zip(ids, truths, cond_structs, uncond_structs):
        grid = coords_to_grid(truth, resolution)
        per_asset.append(
            {
                "id": asset,
                "iou": _iou(coords_to_grid(cond, resolution), grid),
                "iou_uncond": _iou(coords_to_grid(uncond, resolution), grid),
                "yaw_iou": yaw_aligned_iou(cond, truth, resolution),
                "yaw_iou_uncond": yaw_aligned_iou(uncond, truth, resolution),
                "voxels": len(cond),
                "voxels_true": len(truth),
            }
        )
    summary = {
        key: float(np.mean([row[key] for row in per_asset]))
        for key in ("iou", "iou_uncond", "yaw_iou", "yaw_iou_uncond")
    }
    if out_dir is not None:
        _write_generation_previews(Path(out_dir), images, truths, cond_structs, uncond_structs, resolution)
    sampler = sampler or default_sampler()
    return {**summary, "assets": len(ids), "sampler": asdict(sampler), "per_asset": per_asset}


def _write_generation_previews(
    out_dir, images, truths, conds, unconds, resolution, limit: int = 8, size: int = 128
):
    """One row per asset: condition image | ground truth | conditional | unconditional."""
    from PIL import Image

    from voxforge.representations.voxels import render_preview

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for image, truth, cond, uncond in list(zip(images, truths, conds, unconds))[:limit]:
        picture = np.asarray(
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).resize(
                (size, size)
            )
        )
        cells = [picture] + [render_preview(c, resolution, size=size) for c in (truth, cond, uncond)]
        rows.append(np.concatenate(cells, axis=1))
    if rows:
        Image.fromarray(np.concatenate(rows, axis=0)).save(out_dir / "generations.png")
