"""`get3d`: a GET3D-style textured-mesh GAN trained from the data toolkit's rendered views.

Data: a folder written by `voxforge data prepare` (`data.path`); every RGBA view of every
training asset is a real image, with its camera (`voxforge.data.view_images`). The first
`data.eval_assets` ids in sorted order are held out, as in every stage (the evaluation of
generated meshes against unseen ones is built on this split). Fake views are rendered from
cameras drawn uniformly from the training views' cameras, so generated and real images
share the camera distribution, and the discriminators are conditioned on the camera.

One engine step is one discriminator update and one generator update, StyleGAN2-style:

1. **D**: fakes from fresh codes (no generator gradients), non-saturating logistic loss
   `softplus(D(fake)) + softplus(-D(real))` for the RGB and the silhouette discriminator;
   every `gan.r1_interval`-th D step adds lazy R1 on the real images,
   `r1_gamma / 2 · |∇ D(real)|² · r1_interval` (the interval factor keeps the penalty's
   strength as if it ran every step). The discriminators and their Adam optimizer belong to
   the stage, which steps them itself (skipping a non-finite step, counted as `d_skipped`)
   and, on several processes, all-reduces their gradients.
2. **G**: fakes with gradients through FlexiCubes, the rasterizer and the texture field,
   `softplus(-D_rgb(fake)) + softplus(-D_mask(fake))` with the discriminators frozen, plus
   `gan.sdf_reg_weight ·` GET3D's SDF sign regulariser. This is the loss the engine
   back-propagates and steps with its optimizer (the recipe's `optim:` section: the
   generator's parameters only).
3. After the engine's step (`Stage.after_step`), **G_ema** moves toward G with StyleGAN2's
   rule: `beta = 0.5 ** (images_per_step / half_life)`, the half-life `gan.ema_half_life`
   images, ramped up as `min(half_life, images_seen · ema_rampup)`. G_ema is a frozen copy
   inside the model (`voxforge.models.get3d.Get3DGAN.g_ema`), so it is saved with the weights and is what
   `voxforge.runs.load_get3d` returns.

**Augmentation** (`gan.augment`): `ada` is a small ADA: with probability p per image, an
integer translation (up to 1/8 of the side, the same for RGB and mask), brightness,
contrast and saturation jitter, applied to real and fake images alike before both
discriminators; every `ada_interval` D steps p moves by
`sign(E[sign(D_rgb(real))] - ada_target) · images / ada_speed` within [0, 1]. `fixed`
keeps p at `augment_p`; `none` turns it off. Colour and translation only: flips and
rotations would contradict the camera the discriminators are conditioned on.

**Exact resume.** The engine checkpoints G, G_ema (the model), G's optimizer and the RNG;
the stage's `state_dict` adds both discriminators, their optimizer, the D step count (which
decides the R1 steps) and the augmentation state (p and its running statistic). An
interrupted run resumes to the same weights as an uninterrupted one.

Limits, checked at start: `train.grad_accum: 1` (one D update per G update), precision
fp32 or bf16 (the stage's D update has no GradScaler), no FSDP, no engine EMA
(`train.ema_rates`; G_ema is the stage's). A step whose G loss is non-finite is skipped by the
engine as usual; its D update has already happened (a non-finite D update is skipped by the
stage instead).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from voxforge.config.core import option
from voxforge.data.splits import heldout_split, open_prepared
from voxforge.data.view_images import ViewImageDataset
from voxforge.errors import UserError
from voxforge.models.get3d import Discriminator, Get3DConfig, Get3DGAN, camera_features
from voxforge.stages import Recipe
from voxforge.stages.base import Stage

__all__ = ["Get3DDataConfig", "Get3DLossConfig", "Get3DStage", "augment", "ema_beta"]


@dataclass
class Get3DDataConfig:
    path: str = option("", help="folder written by `voxforge data prepare` (its views are the real images)")
    eval_assets: int = option(4, ge=0, help="held-out assets (first ids in sorted order, as every stage)")
    sample_count: int = option(8, ge=1, help="G_ema samples in each samples/ grid")


@dataclass
class Get3DLossConfig:
    d_lr: float = option(0.002, gt=0.0, help="discriminators' Adam learning rate")
    d_betas: tuple[float, float] = option((0.0, 0.99), ge=0.0, lt=1.0)
    d_eps: float = option(1e-8, gt=0.0)
    r1_gamma: float = option(1.0, ge=0.0, help="R1 weight on real images (GET3D: 40-80 at 1024²)")
    r1_interval: int = option(16, ge=1, help="lazy R1: every n-th D step")
    sdf_reg_weight: float = option(0.01, ge=0.0, help="GET3D's SDF sign regulariser")
    ema_half_life: float = option(10000.0, gt=0.0, help="G_ema half-life in images (StyleGAN2: 10k)")
    ema_rampup: float | None = option(0.05, gt=0.0, help="half-life <= images seen x this; null: none")
    augment: Literal["ada", "fixed", "none"] = option("ada")
    augment_p: float = option(0.0, ge=0.0, le=1.0, help="initial (ada) or constant (fixed) probability")
    ada_target: float = option(0.6, ge=0.0, le=1.0, help="target of E[sign(D_rgb(real))]")
    ada_interval: int = option(4, ge=1, help="D steps between adjustments of p")
    ada_speed: float = option(500000.0, gt=0.0, help="images for p to move from 0 to 1")


def ema_beta(step: int, images_per_step: int, half_life: float, rampup: float | None) -> float:
    """StyleGAN2's G_ema rate after `step` steps of `images_per_step` images."""
    if rampup is not None:
        half_life = min(half_life, step * images_per_step * rampup)
    return 0.5 ** (images_per_step / max(half_life, 1e-8))


def augment(rgb: Tensor, mask: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Differentiable ADA-style augmentation of [B, 3, S, S] premultiplied RGB and [B, 1, S, S]
    masks, each transform applied per image with probability p (global torch RNG)."""
    if p <= 0:
        return rgb, mask
    batch, _, size, _ = rgb.shape
    device = rgb.device

    def chosen() -> Tensor:  # [B, 1, 1, 1]
        return (torch.rand(batch, device=device) < p).float().reshape(batch, 1, 1, 1)

    limit = max(1, size // 8)
    shift = torch.randint(-limit, limit + 1, (batch, 2), device=device).float() * chosen().reshape(batch, 1)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = -2.0 * shift / size  # integer pixels: bilinear sampling is exact
    both = torch.cat([rgb, mask], 1)
    grid = F.affine_grid(theta, list(both.shape), align_corners=False)
    both = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rgb, mask = both[:, :3], both[:, 3:]
    brightness = torch.randn(batch, 1, 1, 1, device=device) * 0.2 * chosen()
    rgb = rgb + brightness * mask  # premultiplied: the background stays black
    contrast = torch.exp2(torch.randn(batch, 1, 1, 1, device=device) * 0.5 * chosen())
    rgb = rgb * contrast
    luma = rgb.mean(1, keepdim=True)
    saturation = torch.exp2(torch.randn(batch, 1, 1, 1, device=device) * chosen())
    rgb = luma + (rgb - luma) * saturation
    return rgb, mask


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class Get3DStage(Stage):
    name = "get3d"
    sections = {"model": Get3DConfig, "data": Get3DDataConfig, "gan": Get3DLossConfig}

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        train = recipe.train
        if train.grad_accum != 1:
            raise UserError(
                f"get3d: train.grad_accum must be 1 (one D update per G update), got {train.grad_accum}"
            )
        if train.precision == "fp16":
            raise UserError(
                "get3d: train.precision fp16 is not supported (no GradScaler on the D update); use bf16"
            )
        if train.parallel == "fsdp":
            raise UserError("get3d: train.parallel fsdp is not supported; use ddp or none")
        if train.ema_rates:
            raise UserError(
                "get3d: train.ema_rates must be empty; the stage keeps G_ema itself (gan.ema_half_life)"
            )
        self.d_rgb: Discriminator | None = None
        self.d_mask: Discriminator | None = None
        self.d_optimizer: torch.optim.Optimizer | None = None
        self.d_steps = 0
        self.d_skipped = 0
        self.ada_p = recipe.gan.augment_p if recipe.gan.augment != "none" else 0.0
        self.ada_sum = 0.0
        self.ada_count = 0.0
        self._cameras: tuple[Tensor, Tensor] | None = None
        self._eval_reals: Tensor | None = None

    # -- building ---------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        cfg, gan = self.recipe.model, self.recipe.gan
        model = Get3DGAN(cfg)
        self.d_rgb = Discriminator(3, cfg.image_size, cfg.discriminator).to(self.device)
        self.d_mask = Discriminator(1, cfg.image_size, cfg.discriminator).to(self.device)
        params = [*self.d_rgb.parameters(), *self.d_mask.parameters()]
        self.d_optimizer = torch.optim.Adam(params, lr=gan.d_lr, betas=tuple(gan.d_betas), eps=gan.d_eps)
        return model

    def split(self) -> tuple[Any, list[str], list[str]]:
        data = open_prepared(self.recipe.data.path)
        train_ids, eval_ids = heldout_split(
            data.ids(require=("views",)),
            self.recipe.data.eval_assets,
            where=str(data.root),
            items="assets with rendered views",
            remedy="prepare more assets or lower data.eval_assets",
        )
        return data, train_ids, eval_ids

    def build_dataset(self) -> ViewImageDataset:
        data, train_ids, _ = self.split()
        dataset = ViewImageDataset(data, train_ids, self.recipe.model.image_size)
        viewmats, Ks = dataset.cameras()
        self._cameras = (viewmats.to(self.device), Ks.to(self.device))
        return dataset

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        raise UserError("get3d: train.parallel fsdp is not supported; use ddp or none")

    # -- training ---------------------------------------------------------------------------
    def _sample_cameras(self, count: int) -> tuple[Tensor, Tensor]:
        viewmats, Ks = self._cameras
        index = torch.randint(len(viewmats), (count,), device=viewmats.device)
        return viewmats[index], Ks[index]

    def _codes(self, count: int) -> tuple[Tensor, Tensor]:
        z_dim = self.recipe.model.z_dim
        return torch.randn(count, z_dim, device=self.device), torch.randn(count, z_dim, device=self.device)

    def _logits(self, rgb: Tensor, mask: Tensor, camera: Tensor) -> tuple[Tensor, Tensor]:
        rgb, mask = augment(rgb, mask, self.ada_p)
        return self.d_rgb(rgb, camera), self.d_mask(mask, camera)

    def loss(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        gan = self.recipe.gan
        image = batch["image"].permute(0, 3, 1, 2)  # [B, 4, S, S] straight alpha
        real_mask = image[:, 3:]
        real_rgb = image[:, :3] * real_mask
        real_cam = camera_features(batch["viewmat"])
        count = len(image)
        metrics = self._discriminator_step(model, real_rgb, real_mask, real_cam, count)

        # generator: D frozen, gradients through FlexiCubes, the rasterizer and the texture field
        self.d_rgb.requires_grad_(False)
        self.d_mask.requires_grad_(False)
        try:
            viewmats, Ks = self._sample_cameras(count)
            fake = model(*self._codes(count), viewmats, Ks)
            logit_rgb, logit_mask = self._logits(fake.rgb, fake.mask, camera_features(viewmats))
            g_adv = F.softplus(-logit_rgb).mean() + F.softplus(-logit_mask).mean()
            g_loss = g_adv + gan.sdf_reg_weight * fake.sdf_reg
        finally:
            self.d_rgb.requires_grad_(True)
            self.d_mask.requires_grad_(True)
        metrics.update(
            g_adv=float(g_adv.detach()),
            sdf_reg=float(fake.sdf_reg.detach()),
            faces=float(np.mean(fake.faces)),
            fake_coverage=float(fake.mask.detach().mean()),
        )
        return g_loss, metrics

    def _discriminator_step(
        self, model: nn.Module, real_rgb: Tensor, real_mask: Tensor, real_cam: Tensor, count: int
    ) -> dict[str, float]:
        gan = self.recipe.gan
        self.d_steps += 1
        with torch.no_grad():
            viewmats, Ks = self._sample_cameras(count)
            fake = model(*self._codes(count), viewmats, Ks)
        fake_rgb, fake_mask = self._logits(fake.rgb.detach(), fake.mask.detach(), camera_features(viewmats))
        r1_step = gan.r1_gamma > 0 and self.d_steps % gan.r1_interval == 0
        real_rgb = real_rgb.detach().requires_grad_(r1_step)
        real_mask = real_mask.detach().requires_grad_(r1_step)
        real_logit_rgb, real_logit_mask = self._logits(real_rgb, real_mask, real_cam)
        d_loss = (
            F.softplus(fake_rgb).mean()
            + F.softplus(fake_mask).mean()
            + F.softplus(-real_logit_rgb).mean()
            + F.softplus(-real_logit_mask).mean()
        )
        metrics = {
            "d_loss": float(d_loss.detach()),
            "d_real": float(real_logit_rgb.detach().mean()),
            "d_fake": float(fake_rgb.detach().mean()),
            "augment_p": self.ada_p,
        }
        if r1_step:
            grads = torch.autograd.grad(
                real_logit_rgb.sum() + real_logit_mask.sum(), [real_rgb, real_mask], create_graph=True
            )
            penalty = sum(g.square().flatten(1).sum(1) for g in grads).mean()
            d_loss = d_loss + penalty * (gan.r1_gamma / 2) * gan.r1_interval
            metrics["r1_penalty"] = float(penalty.detach())
        self.d_optimizer.zero_grad(set_to_none=True)
        d_loss.float().backward()
        params = [p for p in self.d_optimizer.param_groups[0]["params"] if p.grad is not None]
        if _distributed():
            world = torch.distributed.get_world_size()
            for p in params:
                torch.distributed.all_reduce(p.grad)
                p.grad.div_(world)
        finite = math.isfinite(float(d_loss.detach())) and all(bool(p.grad.isfinite().all()) for p in params)
        if finite:
            self.d_optimizer.step()
        else:
            self.d_skipped += 1
        self.d_optimizer.zero_grad(set_to_none=True)
        metrics["d_skipped"] = float(self.d_skipped)
        if gan.augment == "ada":
            self._adjust_augment(real_logit_rgb.detach(), count)
        return metrics

    def _adjust_augment(self, real_logits: Tensor, count: int) -> None:
        gan = self.recipe.gan
        stats = torch.tensor([float(real_logits.sign().sum()), float(len(real_logits))], dtype=torch.float64)
        if _distributed():
            stats = stats.to(self.device)
            torch.distributed.all_reduce(stats)
        self.ada_sum += float(stats[0])
        self.ada_count += float(stats[1])
        if self.d_steps % gan.ada_interval == 0 and self.ada_count > 0:
            rt = self.ada_sum / self.ada_count
            step = (
                math.copysign(self.ada_count / gan.ada_speed, rt - gan.ada_target)
                if rt != gan.ada_target
                else 0.0
            )
            self.ada_p = min(1.0, max(0.0, self.ada_p + step))
            self.ada_sum = self.ada_count = 0.0

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        gan = self.recipe.gan
        world = torch.distributed.get_world_size() if _distributed() else 1
        images = self.recipe.train.batch_size * world
        beta = ema_beta(step, images, gan.ema_half_life, gan.ema_rampup)
        for p_ema, p in zip(model.g_ema.parameters(), model.generator.parameters(), strict=True):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(model.g_ema.buffers(), model.generator.buffers(), strict=True):
            b_ema.copy_(b)

    # -- stage-owned state (checkpointed by the engine) ------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "d_rgb": self.d_rgb.state_dict(),
            "d_mask": self.d_mask.state_dict(),
            "d_optimizer": self.d_optimizer.state_dict(),
            "d_steps": self.d_steps,
            "d_skipped": self.d_skipped,
            "augment": {"p": self.ada_p, "sum": self.ada_sum, "count": self.ada_count},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            raise UserError(f"{self.run_dir}: the checkpoint has no discriminator state (not a get3d run?)")
        self.d_rgb.load_state_dict(state["d_rgb"])
        self.d_mask.load_state_dict(state["d_mask"])
        self.d_optimizer.load_state_dict(state["d_optimizer"])
        self.d_steps, self.d_skipped = int(state["d_steps"]), int(state["d_skipped"])
        aug = state["augment"]
        self.ada_p, self.ada_sum, self.ada_count = float(aug["p"]), float(aug["sum"]), float(aug["count"])

    # -- samples -----------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, out_dir: Path | None = None) -> dict[str, float]:
        """G_ema samples from fixed codes and cameras: a grid (row 1 real views, then fakes
        over white) in `out_dir/samples.png`, and their mean silhouette coverage and faces."""
        count = self.recipe.data.sample_count
        generator = model.g_ema.eval()
        seed = torch.Generator().manual_seed(1234)
        z_dim = self.recipe.model.z_dim
        z_geo = torch.randn(count, z_dim, generator=seed).to(self.device)
        z_tex = torch.randn(count, z_dim, generator=seed).to(self.device)
        viewmats, Ks = self._cameras
        index = torch.linspace(0, len(viewmats) - 1, count).round().long().to(viewmats.device)
        fake = generator(z_geo, z_tex, viewmats[index], Ks[index])
        if self._eval_reals is None:
            dataset = ViewImageDataset(*self.split()[:2], self.recipe.model.image_size)
            picks = np.linspace(0, len(dataset) - 1, count).round().astype(int)
            self._eval_reals = torch.stack([dataset[int(i)]["image"] for i in picks]).permute(0, 3, 1, 2)
        real = self._eval_reals
        if out_dir is not None:
            fake_rgba = torch.cat([fake.rgb / fake.mask.clamp_min(1e-6), fake.mask], 1).cpu()
            rows = [real, fake_rgba]
            tiles = [torch.cat(list(row), 2) for row in rows]  # [4, S, count*S]
            grid = torch.cat(tiles, 1)
            rgb = grid[:3] * grid[3:] + (1 - grid[3:])
            pixels = (rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            Image.fromarray(pixels).save(out_dir / "samples.png")
        return {
            "fake_coverage": float(fake.mask.mean()),
            "real_coverage": float(real[:, 3].mean()),
            "faces": float(np.mean(fake.faces)),
            "empty_meshes": float(sum(f == 0 for f in fake.faces)),
        }

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        return self.evaluate_once(model, step)

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float]:
        return self.evaluate_once(model, step)
