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
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import UserError

__all__ = [
    "GenerationResult",
    "ImageTo3DPipeline",
    "SLatPipeline",
    "default_slat_sampler",
    "resolve_model_dir",
]


def default_slat_sampler(**overrides: Any) -> Any:
    """TRELLIS's sampler settings for this stage: 25 Euler steps, guidance 3 for t in [0.5, 1],
    time grid shifted by 3."""
    from voxforge.flow import SamplerConfig

    settings = {"steps": 25, "cfg_scale": 3.0, "guidance_interval": (0.5, 1.0), "time_shift": 3.0}
    settings.update(overrides)
    return SamplerConfig(**settings)


MultiImageMode = Literal["stochastic", "multidiffusion"]


class _Views:
    def __init__(self, tokens: Tensor, mode: str):  # [B, K, T, C]
        self.tokens, self.mode, self.calls = tokens, mode, 0


class SLatPipeline:
    """Trained SLat flow (+ SLat VAE): structure voxels + image tokens → latents → Gaussians."""

    def __init__(
        self,
        flow: Any,  # SLatFlowModel
        vae: Any = None,  # SLatVAE (needed by decode)
        *,
        frozen_encoder: Any = None,
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
        from voxforge.models.image_encoders import build_image_encoder
        from voxforge.models.slat_flow import SLatFlowModel
        from voxforge.pipelines.encode_slat import load_run_recipe, load_slat_vae
        from voxforge.stages.slat_flow import SLAT_INFO
        from voxforge.train.checkpoint import load_model_weights

        recipe = load_run_recipe(flow_run, "slat_flow", "the SLat flow")
        info_path = Path(flow_run) / SLAT_INFO
        if vae_run is None:
            if not info_path.is_file():
                raise UserError(
                    f"{flow_run}: {SLAT_INFO} missing (written when the slat_flow stage starts training)"
                )
            vae_run = json.loads(info_path.read_text())["vae_run"]
        if not (Path(vae_run) / "config.yaml").is_file():
            raise UserError(f"SLat VAE run {vae_run} not found; pass its folder explicitly")
        frozen = build_image_encoder(recipe.image_encoder) if recipe.image_encoder.kind != "vit" else None
        flow = SLatFlowModel(
            recipe.model, recipe.image_encoder, context_dim=frozen.out_dim if frozen else None
        )
        load_model_weights(flow, flow_run, ema=ema)
        vae, _, _ = load_slat_vae(vae_run, device, ema=ema)
        return cls(flow, vae, frozen_encoder=frozen, sigma_min=recipe.flow.sigma_min, device=device)

    @torch.no_grad()
    def image_tokens(self, images: Tensor) -> Tensor:  # [N, 3, S, S] in [0, 1] -> [N, T, C]
        encoder = self.frozen_encoder or self.flow.image_encoder
        return encoder(images.to(self.device)).float()

    def _structure(self, coords: Sequence[np.ndarray]):  # -> SparseTensor with zero features
        from voxforge.sparse.tensor import SparseTensor

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

    def _velocity(self, template: Any, x: Tensor, t: Tensor, views: _Views) -> Tensor:
        batch = template.batch_size
        t_batch = t.new_full((batch,), float(t[0]))
        tokens = views.tokens  # [B, K, T, C]
        k = tokens.shape[1]

        def call(context: Tensor) -> Tensor:
            return self.flow(template.replace(x.to(template.dtype)), t_batch, context=context).feats.to(
                x.dtype
            )

        if k == 1:
            return call(tokens[:, 0])
        if views.mode == "multidiffusion":
            return torch.stack([call(tokens[:, i]) for i in range(k)]).mean(0)
        index = views.calls % k
        views.calls += 1
        return call(tokens[:, index])

    @torch.no_grad()
    def sample_latents(
        self,
        coords: Sequence[np.ndarray],  # B structures, each [N_b, 3] voxels
        tokens: Tensor | None,  # [B, K, T, C] condition tokens, or None (unconditional)
        *,
        seed: int = 0,
        sampler: Any = None,  # voxforge.flow.SamplerConfig; None: default_slat_sampler()
        mode: MultiImageMode = "stochastic",
    ):  # -> SparseTensor [N, C] in the VAE's latent space (rows sorted by batch, i, j, k)
        from voxforge.flow import make_noise, sample_from_config

        sampler = sampler or default_slat_sampler()
        if mode not in ("stochastic", "multidiffusion"):
            raise UserError(f"multi-image mode '{mode}': expected stochastic or multidiffusion")
        template = self._structure(coords)
        batch = template.batch_size
        noise = make_noise((template.num_points, self.flow.cfg.in_channels), seed=seed).to(self.device)
        token_shape = tokens.shape[2:] if tokens is not None else (self.num_tokens, self.flow.context_dim)
        null = _Views(torch.zeros(batch, 1, *token_shape, device=self.device), mode)
        if tokens is None:
            cond, uncond = null, None
            sampler = replace(sampler, cfg_scale=1.0)
        else:
            if tokens.shape[0] != batch:
                raise ValueError(f"{tokens.shape[0]} token sets for {batch} structures")
            cond, uncond = _Views(tokens.to(self.device), mode), null
        if sampler.guidance_rescale:
            sampler = replace(sampler, guidance_rescale=0.0)  # not defined per asset on packed voxels

        def model_fn(x: Tensor, t: Tensor, views: _Views) -> Tensor:
            return self._velocity(template, x, t, views)

        x0 = sample_from_config(model_fn, noise, cond, uncond, sampler, sigma_min=self.sigma_min)
        return template.replace(self.flow.denormalize(x0.float()))

    @torch.no_grad()
    def decode(self, latents: Any) -> list[Any]:  # SparseTensor -> list[Gaussians], one per structure
        if self.vae is None:
            raise ValueError("this SLat pipeline has no VAE to decode with")
        return [g.detach() for g in self.vae.decode(latents)]


@dataclass
class GenerationResult:
    coords: np.ndarray  # [N, 3] occupied voxels of the structure
    resolution: int
    latents: Tensor  # [N, C] SLat latents on those voxels (rows in sorted voxel order)
    gaussians: Any  # Gaussians
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


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

    def __init__(self, structure: Any, slat: SLatPipeline):  # structure: StructurePipeline
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
        from voxforge.pipelines.structure import StructurePipeline

        structure = StructurePipeline.from_runs(ss_flow_run, vae_run=ss_vae_run, device=device, ema=ema)
        slat = SLatPipeline.from_run(slat_flow_run, vae_run=slat_vae_run, device=device, ema=ema)
        return cls(structure, slat)

    @classmethod
    def from_model_dir(cls, model: str | Path, **kwargs: Any) -> ImageTo3DPipeline:
        ss, slat = resolve_model_dir(model)
        return cls.from_runs(ss, slat, **kwargs)

    def load_images(self, paths: Sequence[str | Path]) -> Tensor:  # -> [K, 3, S, S]
        from voxforge.pipelines.structure import load_condition_image

        if not paths:
            raise UserError("pass at least one image")
        return torch.stack([load_condition_image(p, self.image_size) for p in paths])

    def generate(
        self,
        images: Tensor,  # [K, 3, S, S] K views of one object, [0, 1], premultiplied on black
        *,
        seed: int = 0,
        structure_sampler: Any = None,  # SamplerConfig; None: the structure stage's defaults
        slat_sampler: Any = None,  # SamplerConfig; None: default_slat_sampler()
        mode: MultiImageMode = "stochastic",
    ) -> GenerationResult:
        timings: dict[str, float] = {}

        def timed(name: str, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
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
        )
        coords = timed("structure_decode", structure.decode, ss_latents)[0]
        if len(coords) == 0:
            raise UserError(
                "the structure stage produced an empty structure (no voxel above the threshold); try another "
                "--seed, a clearer image, or a longer-trained model"
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
        )
        gaussians = timed("slat_decode", self.slat.decode, latents)[0]
        sorted_coords = latents.coords[:, 1:].cpu().numpy().astype(np.int64)
        return GenerationResult(
            sorted_coords, self.resolution, latents.feats.cpu(), gaussians.to("cpu"), timings
        )


# ------------------------------------------------------------------------------------------
# evaluation


def evaluate_image_to_3d(
    pipeline: ImageTo3DPipeline,
    prepared: str | Path,
    ids: Sequence[str],
    *,
    seed: int = 0,
    structure_sampler: Any = None,
    slat_sampler: Any = None,
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
    from PIL import Image

    from voxforge.data import PreparedDataset
    from voxforge.data.dataset import condition_image
    from voxforge.pipelines.structure import _iou, yaw_aligned_iou
    from voxforge.representations.voxels import coords_to_grid
    from voxforge.stages.slat_vae import (
        SLatDataConfig,
        SLatViewDataset,
        collate_views,
        composite,
        render_losses,
    )

    data = PreparedDataset(prepared)
    resolution = pipeline.resolution
    cfg = SLatDataConfig(path=str(prepared), extractor=extractor, image_size=image_size, eval_views=views)
    view_set = SLatViewDataset(data, list(ids), cfg, resolution, seed, split="all_views")
    loss_cfg = _white_loss_config()
    rows, per_asset = [], []
    for index, asset in enumerate(ids):
        cond_files = sorted((data.asset_dir(asset) / "cond").glob("[0-9]*.png"))
        if not cond_files:
            raise UserError(f"asset {asset} has no condition views in {prepared}")
        with Image.open(cond_files[0]) as im:
            image = torch.from_numpy(condition_image(np.asarray(im.convert("RGBA")), pipeline.image_size))
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
                "iou": _iou(coords_to_grid(result.coords, resolution), truth_grid),
                "yaw_iou": yaw_aligned_iou(result.coords, truth_coords, resolution),
                "psnr": full["psnr"],
                "ssim": full["ssim"],
                "stage2_psnr": stage2["psnr"],
                "stage2_ssim": stage2["ssim"],
                "voxels": int(len(result.coords)),
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


def _white_loss_config() -> Any:
    from voxforge.stages.slat_vae import SLatLossConfig

    return SLatLossConfig(raster_backend="auto")


def _resize_image(image: Tensor, size: int) -> Tensor:  # [H, W, 3] -> [size, size, 3]
    return torch.nn.functional.interpolate(
        image.permute(2, 0, 1)[None].float(), size=(size, size), mode="bilinear", antialias=True
    )[0].permute(1, 2, 0)
