"""Held-out evaluation of the inference pipelines: what the flow stages report while they
train, what the demo and the benchmarks print.

- `evaluate_generation` (stage 1): held-out assets' condition views → structures, IoU
  against the ground truth, for conditional and (same seeds) unconditional samples, plus
  the yaw-aligned IoU (`voxforge.eval.voxels`: synth and most real assets have an arbitrary
  yaw that no single view reveals). `out_dir` gets `generations.png`.
- `evaluate_image_to_3d` (both stages): structure IoU and PSNR / SSIM of the generated
  Gaussians rendered from the asset's feature views, for the full pipeline and for stage 2
  alone on the true structure. `out_dir` gets `image_to_3d.png`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from voxforge.data.dataset import ConditionImageDataset, PreparedDataset, condition_image
from voxforge.data.image_io import read_image
from voxforge.data.views import SLatDataConfig, SLatViewDataset, collate_views
from voxforge.errors import UserError
from voxforge.eval.voxels import voxel_iou, yaw_aligned_iou
from voxforge.flow import SamplerConfig
from voxforge.models.conditioning import default_structure_sampler
from voxforge.pipelines.image_to_3d import ImageTo3DPipeline
from voxforge.pipelines.structure import StructurePipeline
from voxforge.render.losses import RenderLossConfig, composite, render_losses
from voxforge.representations.voxels import coords_to_grid, render_preview

__all__ = ["evaluate_generation", "evaluate_image_to_3d"]


def evaluate_generation(
    pipeline: StructurePipeline,
    prepared: str | Path | PreparedDataset,
    ids: Sequence[str],
    *,
    seed: int = 0,
    sampler: SamplerConfig | None = None,
    batch_size: int = 16,
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Conditional vs unconditional structures for held-out assets, scored against the truth."""
    data = prepared if isinstance(prepared, PreparedDataset) else PreparedDataset(prepared)
    resolution = pipeline.resolution
    conds = ConditionImageDataset(data, cond_size=pipeline.image_size, ids=list(ids), seed=seed)
    truths = [data.voxels(i, resolution) for i in ids]
    cond_structs: list[np.ndarray] = []
    uncond_structs: list[np.ndarray] = []
    fallbacks: list[bool] = []
    images = []
    for first in range(0, len(ids), batch_size):
        chunk = list(range(first, min(len(ids), first + batch_size)))
        batch = torch.stack([conds[i]["cond"] for i in chunk])
        images.extend(batch)
        tokens = pipeline.image_tokens(batch)[:, None]  # one view per object
        decoded = pipeline.decode_structures(
            pipeline.sample_latents(tokens, seed=seed + first, sampler=sampler)
        )
        cond_structs += [d.coords for d in decoded]
        fallbacks += [d.fallback for d in decoded]
        uncond_structs += pipeline.unconditional(len(chunk), seed=seed + first, sampler=sampler)
    per_asset = []
    for asset, truth, cond, uncond, fallback in zip(ids, truths, cond_structs, uncond_structs, fallbacks):
        grid = coords_to_grid(truth, resolution)
        per_asset.append(
            {
                "id": asset,
                "iou": voxel_iou(coords_to_grid(cond, resolution), grid),
                "iou_uncond": voxel_iou(coords_to_grid(uncond, resolution), grid),
                "yaw_iou": yaw_aligned_iou(cond, truth, resolution),
                "yaw_iou_uncond": yaw_aligned_iou(uncond, truth, resolution),
                "voxels": len(cond),
                "voxels_true": len(truth),
                "fallback": fallback,
            }
        )
    summary = {
        key: float(np.mean([row[key] for row in per_asset]))
        for key in ("iou", "iou_uncond", "yaw_iou", "yaw_iou_uncond")
    }
    if out_dir is not None:
        _write_generation_previews(Path(out_dir), images, truths, cond_structs, uncond_structs, resolution)
    sampler = sampler or default_structure_sampler()
    return {
        **summary,
        "assets": len(ids),
        "fallbacks": fallbacks,  # conditional samples decoded by the top-k fallback
        "sampler": asdict(sampler),
        "per_asset": per_asset,
    }


def _write_generation_previews(
    out_dir: Path,
    images: list[Tensor],  # [3, S, S] each
    truths: list[np.ndarray],  # coords [N, 3] each
    conds: list[np.ndarray],
    unconds: list[np.ndarray],
    resolution: int,
    limit: int = 8,
    size: int = 128,
) -> None:
    """One row per asset: condition image | ground truth | conditional | unconditional."""
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


def evaluate_image_to_3d(
    pipeline: ImageTo3DPipeline,
    prepared: str | Path,
    ids: Sequence[str],
    *,
    seed: int = 0,
    structure_sampler: SamplerConfig | None = None,
    slat_sampler: SamplerConfig | None = None,
    views: int = 4,
    image_size: int = 64,
    extractor: str = "rgb",
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Image → 3D on held-out assets (their condition view 0), scored against the ground truth.

    Per asset: IoU and yaw-aligned IoU of the generated structure; PSNR / SSIM of the generated
    Gaussians rendered from `views` of the asset's feature views (white background) — for the
    full pipeline, and for stage 2 alone (SLat flow on the true structure, same image), which
    separates the two stages' errors. `out_dir` gets `image_to_3d.png`: per asset, the
    condition image, a ground-truth view, the full pipeline's render and stage 2's render.
    """
    data = PreparedDataset(prepared)
    resolution = pipeline.resolution
    cfg = SLatDataConfig(path=str(prepared), extractor=extractor, image_size=image_size, eval_views=views)
    view_set = SLatViewDataset(data, list(ids), cfg, resolution, seed, split="all_views")
    loss_cfg = RenderLossConfig(raster_backend="auto")
    rows, per_asset = [], []
    for index, asset in enumerate(ids):
        cond_files = sorted((data.asset_dir(asset) / "cond").glob("[0-9]*.png"))
        if not cond_files:
            raise UserError(f"asset {asset} has no condition views in {prepared}")
        rgba = read_image(cond_files[0], what="condition view").rgba
        image = torch.from_numpy(condition_image(rgba, pipeline.image_size))
        result = pipeline.generate(
            image[None], seed=seed + 2 * index, structure_sampler=structure_sampler, slat_sampler=slat_sampler
        )
        truth_coords = data.voxels(asset, resolution)
        truth_grid = coords_to_grid(truth_coords, resolution)
        tokens = pipeline.slat.image_tokens(image[None])[None]
        oracle = pipeline.slat.decode(
            pipeline.slat.sample_latents(
                [truth_coords], tokens, seed=seed + 2 * index + 1, sampler=slat_sampler
            )
        )[0]
        batch = collate_views([view_set[index]])
        white = torch.ones(*batch["images"].shape[:2], 3)
        _, full, full_renders = render_losses([result.gaussians], batch, white, loss_cfg)
        _, stage2, stage2_renders = render_losses([oracle.to("cpu")], batch, white, loss_cfg)
        per_asset.append(
            {
                "id": asset,
                "iou": voxel_iou(coords_to_grid(result.coords, resolution), truth_grid),
                "yaw_iou": yaw_aligned_iou(result.coords, truth_coords, resolution),
                "psnr": full["psnr"],
                "ssim": full["ssim"],
                "stage2_psnr": stage2["psnr"],
                "stage2_ssim": stage2["ssim"],
                "voxels": int(len(result.coords)),
                "fallback": result.fallback,
                "voxels_true": int(len(truth_coords)),
                "seconds": sum(result.timings.values()),
            }
        )
        truth = composite(batch["images"][0], white[0])
        cells = [
            _resize_image(image.permute(1, 2, 0), image_size),
            truth[0],
            full_renders[0][0],
            stage2_renders[0][0],
        ]
        rows.append(torch.cat([c.cpu().float() for c in cells], dim=1))
    keys = ("iou", "yaw_iou", "psnr", "ssim", "stage2_psnr", "stage2_ssim", "seconds")
    summary = {k: float(np.mean([row[k] for row in per_asset])) for k in keys} if per_asset else {}
    if out_dir is not None and rows:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        grid = (torch.cat(rows[:8], dim=0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        Image.fromarray(grid).save(path / "image_to_3d.png")
    return {**summary, "assets": len(per_asset), "per_asset": per_asset}


def _resize_image(image: Tensor, size: int) -> Tensor:  # [H, W, 3] -> [size, size, 3]
    return torch.nn.functional.interpolate(
        image.permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear", antialias=True
    )[0].permute(1, 2, 0)
