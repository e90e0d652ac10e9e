"""Rendering losses: Gaussians rendered from a batch's cameras against its ground-truth views.

`render_losses` is the loss of the SLat VAE and the yardstick of everything scored on
renders (the SLat flow's and the image-to-3D evaluation): per asset, its Gaussians are
rendered from the batch's cameras (`SLatViewDataset` batches: images, viewmats, Ks) and
compared with the ground truth composited over the same background:
`l1_weight · L1 + ssim_weight · (1 − SSIM) + lpips_weight · LPIPS` (LPIPS only when a module
is passed; see `voxforge.eval.lpips`). Rendering and every image term run in fp32 with
autocast off, whatever the training precision, as the DESIGN asks of losses on renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from voxforge.config.core import option
from voxforge.eval.image_metrics import psnr, ssim
from voxforge.render.gaussians import render_gaussians
from voxforge.representations.gaussians import Gaussians

__all__ = ["RenderLossConfig", "composite", "render_losses"]


@dataclass
class RenderLossConfig:
    """The `loss:` section of the slat_vae stage; the evaluations use its defaults."""

    l1_weight: float = option(1.0, ge=0.0)
    ssim_weight: float = option(0.2, ge=0.0)
    lpips_weight: float = option(0.2, ge=0.0, help="used only when lpips_weights is set")
    lpips_weights: Path | None = option(None, help="local LPIPS (VGG) weights file; never downloaded")
    kl_weight: float = option(1e-6, ge=0.0, help="the VAE's KL term, added by the slat_vae stage")
    raster_backend: Literal["auto", "torch", "gsplat"] = option("auto")


def composite(images: Tensor, background: Tensor) -> Tensor:  # [..., H, W, 4], [..., 3] -> [..., H, W, 3]
    alpha = images[..., 3:]
    return images[..., :3] * alpha + background[..., None, None, :] * (1 - alpha)


def render_losses(
    gaussians: list[Gaussians],  # one per asset
    batch: dict[str, Tensor],
    backgrounds: Tensor,  # [B, V, 3]
    loss_cfg: RenderLossConfig,
    lpips: nn.Module | None = None,
) -> tuple[Tensor, dict[str, float], list[Tensor]]:
    """Rendering losses of a batch in fp32; returns (weighted image loss, metrics, renders)."""
    size = batch["images"].shape[-2]
    total = backgrounds.new_zeros(())
    sums = {"l1": 0.0, "ssim": 0.0, "psnr": 0.0, "lpips": 0.0}
    renders = []
    with torch.autocast(backgrounds.device.type, enabled=False):
        for b, g in enumerate(gaussians):
            out = render_gaussians(
                g,
                batch["viewmats"][b],
                batch["Ks"][b],
                size,
                size,
                backgrounds[b],
                backend=loss_cfg.raster_backend,
            )
            pred = out["rgb"]  # [V, S, S, 3]
            target = composite(batch["images"][b].float(), backgrounds[b])
            l1 = (pred - target).abs().mean()
            structural = ssim(pred, target).mean()
            loss = loss_cfg.l1_weight * l1 + loss_cfg.ssim_weight * (1 - structural)
            if lpips is not None and loss_cfg.lpips_weight > 0:
                perceptual = lpips(pred, target).mean()
                loss = loss + loss_cfg.lpips_weight * perceptual
                sums["lpips"] += float(perceptual.detach())
            total = total + loss
            sums["l1"] += float(l1.detach())
            sums["ssim"] += float(structural.detach())
            sums["psnr"] += float(psnr(pred.detach(), target, max_db=60.0).mean())
            renders.append(pred.detach())
    n = max(len(gaussians), 1)
    metrics = {k: v / n for k, v in sums.items() if k != "lpips" or lpips is not None}
    return total / n, metrics, renders
