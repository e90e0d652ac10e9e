"""Stage-1 inference: condition image(s) → occupied voxels.

`StructurePipeline`: a trained structure flow (+ its SS-VAE) → sampled latents → decoded
voxels. `from_run(flow_run)` rebuilds it from the flow's run folder, whose `structure.json`
names the VAE run and the latent statistics (`voxforge.runs`). Several images of one object
combine as TRELLIS offers (`voxforge.models.conditioning.MultiViewCondition`: `stochastic` or
`multidiffusion`). Guidance uses all-zero tokens as the unconditional input, as in training;
the sampler defaults are TRELLIS's (`default_structure_sampler`).

The ss_flow stage evaluates its checkpoints through this pipeline
(`voxforge.pipelines.evaluate.evaluate_generation`), so what training reports is what
`voxforge generate structure` produces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import UserError
from voxforge.flow import FlowConfig, SamplerConfig, make_noise, sample_from_config
from voxforge.flow.samplers import StepCallback
from voxforge.models.conditioning import (
    MultiImageMode,
    MultiViewCondition,
    check_multi_image_mode,
    default_structure_sampler,
)
from voxforge.models.image_encoders import ImageEncoder
from voxforge.models.ss_flow import SSFlowConfig, StructureFlowModel
from voxforge.models.ss_vae import SSVAE
from voxforge.runs import CONFIG_FILE, OCCUPANCY_INFO, STRUCTURE_INFO, Run, load_image_flow, load_ss_vae

__all__ = ["DecodedStructure", "StructurePipeline"]

#: occupied fraction assumed for the top-k fallback when the VAE run did not record its data's
FALLBACK_OCCUPANCY = 0.05


@dataclass
class DecodedStructure:
    coords: np.ndarray  # [N, 3] int64 occupied voxels
    fallback: bool  # no voxel passed probability 0.5: coords are the most likely voxels instead


class StructurePipeline:
    """Trained structure flow + VAE decoder: image tokens → latents → occupied voxels."""

    def __init__(
        self,
        flow: StructureFlowModel,
        vae: SSVAE,
        *,
        latent_mean: Sequence[float],
        latent_std: Sequence[float],
        frozen_encoder: ImageEncoder | None = None,  # held outside the flow model (DINOv2)
        sigma_min: float = 1e-5,
        device: torch.device | str = "cpu",
        fallback_voxels: int | None = None,
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
        if fallback_voxels is None:
            fallback_voxels = round(FALLBACK_OCCUPANCY * self.resolution**3)
        self.fallback_voxels = fallback_voxels

    @classmethod
    def from_run(
        cls,
        flow_run: str | Path,
        *,
        vae_run: str | Path | None = None,
        device: torch.device | str = "cpu",
        ema: bool = True,
    ) -> StructurePipeline:
        run = Run.open(flow_run, "ss_flow", "--model")
        info = run.read_info(STRUCTURE_INFO)
        flow, frozen = load_image_flow(run, StructureFlowModel, SSFlowConfig, ema=ema)
        vae_run = vae_run or info["vae_run"]
        if not (Path(vae_run) / CONFIG_FILE).is_file():
            raise UserError(f"structure VAE run {vae_run} not found; pass its folder with --vae")
        vae, _ = load_ss_vae(vae_run, device, ema=ema)
        rate = read_occupancy_rate(vae_run)
        return cls(
            flow,
            vae,
            latent_mean=info["mean"],
            latent_std=info["std"],
            frozen_encoder=frozen,
            sigma_min=run.section("flow", FlowConfig).sigma_min,
            device=device,
            fallback_voxels=None if rate is None else round(rate * vae.cfg.resolution**3),
        )

    # --- pieces ------------------------------------------------------------------------------
    @torch.no_grad()
    def image_tokens(self, images: Tensor) -> Tensor:  # [N, 3, S, S] in [0, 1] -> [N, T, C]
        return self._encoder()(images.to(self.device)).float()

    def _encoder(self) -> ImageEncoder:  # a flow without its own encoder comes with a frozen one
        return self.frozen_encoder if self.frozen_encoder is not None else self.flow.image_encoder

    def _model_fn(self, x: Tensor, t: Tensor, views: MultiViewCondition) -> Tensor:
        k = views.tokens.shape[1]
        return views.velocity(
            lambda context: self.flow(x, t, context=context),
            lambda contexts: self.flow(
                x.repeat_interleave(k, 0), t.repeat_interleave(k, 0), context=contexts
            ),
        )

    @torch.no_grad()
    def sample_latents(
        self,
        tokens: Tensor | None,  # [B, K, T, C] condition tokens (K views per object), or None
        *,
        num: int = 1,  # objects when unconditional
        seed: int = 0,
        sampler: SamplerConfig | None = None,  # None: default_structure_sampler()
        mode: MultiImageMode = "stochastic",
        callback: StepCallback | None = None,  # after each sampler step (the app's progress bar)
    ) -> Tensor:  # [B, C, r, r, r] latents in the VAE's space
        sampler = sampler or default_structure_sampler()
        check_multi_image_mode(mode)
        cfg = self.flow.cfg
        batch = tokens.shape[0] if tokens is not None else num
        noise = make_noise(
            (batch, cfg.in_channels, cfg.resolution, cfg.resolution, cfg.resolution), seed=seed
        )
        noise = noise.to(self.device)
        token_shape = tuple(tokens.shape[2:]) if tokens is not None else (1, self.flow.context_dim)
        null = MultiViewCondition.null(batch, token_shape, self.device)
        if tokens is None:
            cond, uncond = null, None
            sampler = replace(sampler, cfg_scale=1.0)
        else:
            cond, uncond = MultiViewCondition(tokens.to(self.device), mode), null
        latents = sample_from_config(
            self._model_fn, noise, cond, uncond, sampler, sigma_min=self.sigma_min, callback=callback
        )
        return latents * self.latent_std + self.latent_mean

    @torch.no_grad()
    def decode_structures(self, latents: Tensor) -> list[DecodedStructure]:  # [B, C, r, r, r]
        """Voxels whose probability passes 0.5; where none does, the `fallback_voxels` most likely.

        A briefly trained model can sample latents whose every voxel stays under 0.5. An empty
        structure would end the whole image → 3D run, so the decoder falls back to the top-k
        voxels (k: the training data's mean occupied count, recorded by the SS-VAE run) and says
        so (`fallback`), which generate, the evaluations and the demo report. `fallback_voxels=0`
        turns the fallback off (an empty structure is then returned as such).
        """
        logits = self.vae.decode(latents.to(self.device)).float()  # [B, 1, R, R, R]
        decoded = []
        for grid in logits[:, 0]:
            occupied = grid > 0
            fallback = not occupied.any() and self.fallback_voxels > 0
            if fallback:  # the k most likely voxels, as a mask so both cases list coords in one order
                top = grid.flatten().topk(min(self.fallback_voxels, grid.numel())).indices
                occupied = torch.zeros(grid.numel(), dtype=torch.bool, device=grid.device)
                occupied[top] = True
                occupied = occupied.view(grid.shape)
            decoded.append(DecodedStructure(torch.nonzero(occupied).cpu().numpy().astype(np.int64), fallback))
        return decoded

    def decode(self, latents: Tensor) -> list[np.ndarray]:  # [B, C, r, r, r] -> B x coords [N, 3]
        return [d.coords for d in self.decode_structures(latents)]

    # --- user-facing -------------------------------------------------------------------------
    def generate(
        self,
        images: Tensor,
        *,
        seed: int = 0,
        sampler: SamplerConfig | None = None,
        mode: MultiImageMode = "stochastic",
    ) -> np.ndarray:  # images [K, 3, S, S]: K views of one object -> coords [N, 3]
        return self.generate_structure(images, seed=seed, sampler=sampler, mode=mode).coords

    def generate_structure(
        self,
        images: Tensor,
        *,
        seed: int = 0,
        sampler: SamplerConfig | None = None,
        mode: MultiImageMode = "stochastic",
    ) -> DecodedStructure:  # images [K, 3, S, S]: K views of one object
        tokens = self.image_tokens(images)[None]  # [1, K, T, C]
        return self.decode_structures(self.sample_latents(tokens, seed=seed, sampler=sampler, mode=mode))[0]

    def generate_each(
        self, images: Tensor, *, seed: int = 0, sampler: SamplerConfig | None = None
    ) -> list[np.ndarray]:
        """images [B, 3, S, S]: one object per image, sampled as one batch."""
        tokens = self.image_tokens(images)[:, None]  # [B, 1, T, C]
        return self.decode(self.sample_latents(tokens, seed=seed, sampler=sampler))

    def unconditional(
        self, num: int, *, seed: int = 0, sampler: SamplerConfig | None = None
    ) -> list[np.ndarray]:
        return self.decode(self.sample_latents(None, num=num, seed=seed, sampler=sampler))


def read_occupancy_rate(vae_run: str | Path) -> float | None:
    """The mean occupied fraction the SS-VAE run recorded for its training data (None: older run)."""
    import json

    path = Path(vae_run) / OCCUPANCY_INFO
    if not path.is_file():
        return None
    try:
        return float(json.loads(path.read_text())["rate"])
    except (ValueError, KeyError, TypeError):
        return None
