"""Image → 3D: both stages end to end, timed per stage.

    image(s) ─► image tokens ─► SS flow ─► SS-VAE decode ─► occupied voxels
                                                               │
             image tokens ─► SLat flow on those voxels ─► SLat-VAE Gaussian decoder ─► Gaussians

- `SLatPipeline` (stage 2): a trained SLat flow (+ its SLat VAE) samples per-voxel latents on
  a given structure and decodes them to Gaussians. The sampler is the flow package's
  Euler/Heun on the packed `[N, C]` latents of a sparse batch; the network sees them as a
  `SparseTensor` on the structure's voxels. Several images of one object combine as in
  stage 1: `stochastic` conditions each evaluation on the next image in turn,
  `multidiffusion` averages the conditional velocities of all images. Guidance uses zero
  tokens as the null condition, as in training. (Guidance rescale is left out: its
  per-sample statistics are not defined per asset on packed voxels.)
- `ImageTo3DPipeline`: stage 1's `StructurePipeline` + `SLatPipeline`. `generate` returns the
  voxels, latents, Gaussians and the seconds each stage took (what the latency benchmark
  reports). The runs are found from a model folder (`resolve_model_dir`): the output folder
  of `voxforge pipeline run` (runs/ss_flow, runs/slat_flow), or any folder with `ss_flow/` and
  `slat_flow/` run folders; each flow run records its VAE run (`structure.json`,
  `slat.json`).

Seeds: the structure and the latents draw their noise from `seed` and `seed + 1` with
`flow.make_noise` (CPU generator), so a seed gives the same asset on every device.

The slat_flow stage evaluates its checkpoints through `SLatPipeline`; the held-out
evaluation of the whole pipeline is `voxforge.pipelines.evaluate.evaluate_image_to_3d`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

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
    default_slat_sampler,
    default_structure_sampler,
)
from voxforge.models.image_encoders import ImageEncoder
from voxforge.models.slat_flow import SLatFlowConfig, SLatFlowModel
from voxforge.models.slat_vae import SLatVAE
from voxforge.pipelines.images import load_condition_image
from voxforge.pipelines.structure import StructurePipeline
from voxforge.representations.gaussians import Gaussians
from voxforge.runs import CONFIG_FILE, SLAT_INFO, Run, load_image_flow, load_slat_vae
from voxforge.sparse.tensor import SparseTensor

__all__ = [
    "EmptyStructureError",
    "GenerationResult",
    "ImageTo3DPipeline",
    "SLatPipeline",
    "resolve_model_dir",
]

Output = TypeVar("Output")


class SLatPipeline:
    """Trained SLat flow (+ SLat VAE): structure voxels + image tokens → latents → Gaussians."""

    def __init__(
        self,
        flow: SLatFlowModel,
        vae: SLatVAE | None = None,  # needed by decode
        *,
        frozen_encoder: ImageEncoder | None = None,
        sigma_min: float = 1e-5,
        device: torch.device | str = "cpu",
    ):
        self.device = torch.device(device)
        self.flow = flow.to(self.device).eval()
        self.vae = vae.to(self.device).eval() if vae is not None else None
        self.frozen_encoder = frozen_encoder.to(self.device) if frozen_encoder is not None else None
        self.sigma_min = sigma_min
        encoder = self.frozen_encoder or flow.image_encoder
        self.image_size, self.num_tokens = encoder.image_size, encoder.num_tokens
        self.resolution = flow.cfg.resolution

    @classmethod
    def from_run(
        cls,
        flow_run: str | Path,
        *,
        vae_run: str | Path | None = None,
        device: torch.device | str = "cpu",
        ema: bool = True,
    ) -> SLatPipeline:
        run = Run.open(flow_run, "slat_flow", "the SLat flow")
        if vae_run is None:
            vae_run = run.read_info(SLAT_INFO)["vae_run"]
        if not (Path(vae_run) / CONFIG_FILE).is_file():
            raise UserError(f"SLat VAE run {vae_run} not found; pass its folder explicitly")
        flow, frozen = load_image_flow(run, SLatFlowModel, SLatFlowConfig, ema=ema)
        vae, _ = load_slat_vae(vae_run, device, ema=ema)
        sigma_min = run.section("flow", FlowConfig).sigma_min
        return cls(flow, vae, frozen_encoder=frozen, sigma_min=sigma_min, device=device)

    @torch.no_grad()
    def image_tokens(self, images: Tensor) -> Tensor:  # [N, 3, S, S] in [0, 1] -> [N, T, C]
        encoder = self.frozen_encoder or self.flow.image_encoder
        return encoder(images.to(self.device)).float()

    def _structure(self, coords: Sequence[np.ndarray]) -> SparseTensor:  # zero features on the voxels
        parts = []
        for b, c in enumerate(coords):
            c = torch.as_tensor(np.asarray(c), dtype=torch.int64).reshape(-1, 3)
            if len(c) == 0:
                raise UserError("cannot generate latents on an empty structure (no occupied voxel)")
            if int(c.min()) < 0 or int(c.max()) >= self.resolution:
                raise UserError(
                    f"structure voxels must lie in [0, {self.resolution}) (the SLat flow's resolution)"
                )
            parts.append(torch.cat([torch.full((len(c), 1), b, dtype=torch.int64), c], 1))
        all_coords = torch.cat(parts).to(self.device)
        x = SparseTensor.from_unsorted(
            all_coords,
            torch.zeros(len(all_coords), self.flow.cfg.in_channels, device=self.device),
            spatial_shape=(self.resolution,) * 3,
            batch_size=len(coords),
        )
        return x

    def _velocity(self, template: SparseTensor, x: Tensor, t: Tensor, views: MultiViewCondition) -> Tensor:
        t_batch = t.new_full((template.batch_size,), float(t[0]))

        def call(context: Tensor) -> Tensor:
            return self.flow(template.replace(x.to(template.dtype)), t_batch, context=context).feats.to(
                x.dtype
            )

        return views.velocity(call)

    @torch.no_grad()
    def sample_latents(
        self,
        coords: Sequence[np.ndarray],  # B structures, each [N_b, 3] voxels
        tokens: Tensor | None,  # [B, K, T, C] condition tokens, or None (unconditional)
        *,
        seed: int = 0,
        sampler: SamplerConfig | None = None,  # None: default_slat_sampler()
        mode: MultiImageMode = "stochastic",
        callback: StepCallback | None = None,  # after each sampler step (the app's progress bar)
    ) -> SparseTensor:  # [N, C] in the VAE's latent space (rows sorted by batch, i, j, k)
        sampler = sampler or default_slat_sampler()
        check_multi_image_mode(mode)
        template = self._structure(coords)
        batch = template.batch_size
        noise = make_noise((template.num_points, self.flow.cfg.in_channels), seed=seed).to(self.device)
        token_shape = (
            tuple(tokens.shape[2:]) if tokens is not None else (self.num_tokens, self.flow.context_dim)
        )
        null = MultiViewCondition.null(batch, token_shape, self.device)
        if tokens is None:
            cond, uncond = null, None
            sampler = replace(sampler, cfg_scale=1.0)
        else:
            if tokens.shape[0] != batch:
                raise ValueError(f"{tokens.shape[0]} token sets for {batch} structures")
            cond, uncond = MultiViewCondition(tokens.to(self.device), mode), null
        if sampler.guidance_rescale:
            sampler = replace(sampler, guidance_rescale=0.0)  # not defined per asset on packed voxels

        def model_fn(x: Tensor, t: Tensor, views: MultiViewCondition) -> Tensor:
            return self._velocity(template, x, t, views)

        x0 = sample_from_config(
            model_fn, noise, cond, uncond, sampler, sigma_min=self.sigma_min, callback=callback
        )
        return template.replace(self.flow.denormalize(x0.float()))

    @torch.no_grad()
    def decode(self, latents: SparseTensor) -> list[Gaussians]:  # one set per structure
        if self.vae is None:
            raise ValueError("this SLat pipeline has no VAE to decode with")
        return [g.detach() for g in self.vae.decode(latents)]


@dataclass
class GenerationResult:
    coords: np.ndarray  # [N, 3] occupied voxels of the structure
    resolution: int
    latents: Tensor  # [N, C] SLat latents on those voxels (rows in sorted voxel order)
    gaussians: Gaussians
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    fallback: bool = False  # the structure is the decoder's top-k fallback (no voxel passed 0.5)


class EmptyStructureError(UserError):
    """The structure stage sampled no voxel (and its top-k fallback is off)."""


def resolve_model_dir(model: str | Path) -> tuple[Path, Path]:
    """(ss_flow run, slat_flow run) inside a model folder (see the module docstring)."""
    root = Path(model)
    for base in (root / "runs", root):
        ss, slat = base / "ss_flow", base / "slat_flow"
        if (ss / "config.yaml").is_file() and (slat / "config.yaml").is_file():
            return ss, slat
    raise UserError(
        f"{model}: not an image-to-3D model folder; expected ss_flow/ and slat_flow/ run folders in it (or in "
        f"{root / 'runs'}), as `voxforge pipeline run` writes them; pass --structure and --slat to name the runs"
    )


class ImageTo3DPipeline:
    """Structure stage + SLat stage; see the module docstring."""

    def __init__(self, structure: StructurePipeline, slat: SLatPipeline):
        if structure.resolution != slat.resolution:
            raise UserError(
                f"the structure stage generates {structure.resolution}³ voxels but the SLat flow works at "
                f"{slat.resolution}³; train both stages at one resolution"
            )
        self.structure, self.slat = structure, slat
        self.resolution = slat.resolution
        self.image_size = max(structure.image_size, slat.image_size)

    @classmethod
    def from_runs(
        cls,
        ss_flow_run: str | Path,
        slat_flow_run: str | Path,
        *,
        ss_vae_run: str | Path | None = None,
        slat_vae_run: str | Path | None = None,
        device: torch.device | str = "cpu",
        ema: bool = True,
    ) -> ImageTo3DPipeline:
        structure = StructurePipeline.from_run(ss_flow_run, vae_run=ss_vae_run, device=device, ema=ema)
        slat = SLatPipeline.from_run(slat_flow_run, vae_run=slat_vae_run, device=device, ema=ema)
        return cls(structure, slat)

    @classmethod
    def from_model_dir(cls, model: str | Path, **kwargs: Any) -> ImageTo3DPipeline:
        ss, slat = resolve_model_dir(model)
        return cls.from_runs(ss, slat, **kwargs)

    def load_images(self, paths: Sequence[str | Path]) -> Tensor:  # -> [K, 3, S, S]
        if not paths:
            raise UserError("pass at least one image")
        return torch.stack([load_condition_image(p, self.image_size) for p in paths])

    def generate(
        self,
        images: Tensor,  # [K, 3, S, S] K views of one object, [0, 1], premultiplied on black
        *,
        seed: int = 0,
        structure_sampler: SamplerConfig | None = None,  # None: the structure stage's defaults
        slat_sampler: SamplerConfig | None = None,  # None: default_slat_sampler()
        mode: MultiImageMode = "stochastic",
        progress: Callable[[str, int, int], None] | None = None,  # (stage, step done, steps) per step
    ) -> GenerationResult:
        timings: dict[str, float] = {}

        def steps_of(stage: str, sampler: SamplerConfig | None, default: int) -> StepCallback | None:
            total = sampler.steps if sampler is not None else default
            return None if progress is None else lambda i, t, x: progress(stage, i + 1, total)

        def timed(name: str, fn: Callable[..., Output], *args: Any, **kwargs: Any) -> Output:
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
            return out

        structure = self.structure
        tokens = timed("image_encoder", structure.image_tokens, images)[None]  # [1, K, T, C]
        ss_latents = timed(
            "structure_flow",
            structure.sample_latents,
            tokens,
            seed=seed,
            sampler=structure_sampler,
            mode=mode,
            callback=steps_of("structure", structure_sampler, default_structure_sampler().steps),
        )
        decoded = timed("structure_decode", structure.decode_structures, ss_latents)[0]
        coords = decoded.coords
        if len(coords) == 0:
            raise EmptyStructureError(
                "the structure stage produced an empty structure (no voxel above the threshold and the top-k "
                "fallback is off); try another --seed, a clearer image, or a longer-trained model"
            )
        slat_tokens = timed("image_encoder", self.slat.image_tokens, images)[None]
        latents = timed(
            "slat_flow",
            self.slat.sample_latents,
            [coords],
            slat_tokens,
            seed=seed + 1,
            sampler=slat_sampler,
            mode=mode,
            callback=steps_of("latents", slat_sampler, default_slat_sampler().steps),
        )
        gaussians = timed("slat_decode", self.slat.decode, latents)[0]
        sorted_coords = latents.coords[:, 1:].cpu().numpy().astype(np.int64)
        return GenerationResult(
            sorted_coords,
            self.resolution,
            latents.feats.cpu(),
            gaussians.to("cpu"),
            timings,
            decoded.fallback,
        )
