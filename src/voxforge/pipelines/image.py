"""Text → image inference of the image family (Sana's row): prompts → latents → pixels.

`ImagePipeline` holds a denoiser (diffusers' `SanaTransformer2DModel`), an autoencoder
(`AutoencoderDC`) and a text encoder with `encode(prompts) -> (embeds [B, L, C], mask [B, L])`.
`generate` runs: text → (embeds, mask) for the prompts and the negative (unconditional)
texts in one call → noise from `flow.make_noise` (a CPU generator per image, seeded
`seed + i`, so a seed gives the same image on every device and whatever else is in the batch)
→ the flow ODE over the latents (`flow.sample`: Euler or Heun; `flow.dpm.sample_dpm`:
DPM-Solver++ 2M) with classifier-free guidance batched (cond and uncond in one forward of
batch 2B) → `latents / latent_scale + latent_shift` → the autoencoder's decoder → uint8.

Conventions, mapped onto diffusers' `SanaPipeline` exactly (the parity test in
tests/pipelines/test_image_pipeline.py checks it):

- time: voxforge's flow time t (t = 1 noise, t = 0 data; `flow.path`) is diffusers' sigma;
  the transformer receives `timestep = timestep_scale * t`. For a diffusers folder
  timestep_scale = 1000 * transformer.config.timestep_scale, what SanaPipeline passes (the
  scheduler's `sigma * num_train_timesteps`, times the config's scale); an image_flow run
  records the scale it trained with (`timestep_scale` in its image.json, 1000).
- velocity: Sana's transformer predicts v = eps - x0 (`prediction_type="flow_prediction"`),
  the voxforge path's velocity with sigma_min = 0; an Euler step x += (t_next - t) v is
  FlowMatchEulerDiscreteScheduler's. DPM-Solver++ uses x0 = x_t - t v (sigma_min = 0 here,
  as Sana trains).
- guidance: v = v_uncond + cfg (v_cond - v_uncond); cfg = 1 skips the unconditional call.
  Unlike SanaPipeline (which turns guidance off for cfg <= 1), cfg = 0 here is the purely
  unconditional sample, which the evaluation uses.
- time grid: `flow.time_grid(steps, flow_shift)`, linspace(1, 0, steps + 1) through the
  shift s t / (1 + (s - 1) t) — SanaPipeline's FlowMatchEuler grid when it is given
  `sigmas=linspace(1, 0, steps + 1)[:-1]` with `shift=flow_shift`. SanaPipeline's default
  DPM grid differs slightly (it starts at shift(0.999) and truncates the network's timesteps
  to integers); `schedule="sana"` (with the dpm sampler) reproduces it exactly.
- pixels: the decoder's [-1, 1] → clamp((x + 1) / 2, 0, 1) → round(255 x), as diffusers'
  image processor does.

What it shares with the video family (device placement, prompt encoding and the guidance
conditions, seeded noise, the sampler dispatch, pixels, the run-or-other-folder choice) lives
in `pipelines.text_flow`; what is Sana's (timestep units, the "sana" grid) stays here.

Loading: `from_run(run_dir)` rebuilds the three models of an image_flow run through
`voxforge.runs.load_image_models`; `from_diffusers(folder)` reads a local diffusers Sana
folder (`SanaPipeline.save_pretrained` layout) without the network; `from_model(path)`
tells the two apart. The Gemma-2 text encoder of a diffusers folder is wrapped by
`models.image.PretrainedTextEncoder` (the one pretrained text encoder of the family), which
encodes as SanaPipeline does without its optional extras: no caption cleaning, no "complex
human instruction" prefix; prompts lower-cased and stripped, right-padded to the maximum
sequence length.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from voxforge import runs
from voxforge.errors import MissingDependencyError, UserError
from voxforge.flow.dpm import diffusers_flow_times, diffusers_flow_timesteps
from voxforge.flow.samplers import StepCallback
from voxforge.models.image import PretrainedTextEncoder
from voxforge.pipelines import text_flow

__all__ = ["SAMPLERS", "SCHEDULES", "ImagePipeline", "TextEncoderLike"]

SAMPLERS = text_flow.SAMPLERS
TextEncoderLike = text_flow.TextEncoderLike  # its home is text_flow; importers of this module keep it
#: flow: voxforge's grid from t = 1 (float timesteps); sana: SanaPipeline's default DPM grid
#: (from shift(0.999), integer network timesteps), for image-for-image comparisons with it
SCHEDULES = ("flow", "sana")
#: diffusers' `num_train_timesteps` of Sana's schedulers: the transformer's timestep is 1000 t
TIMESTEP_RANGE = 1000.0


def _dtype(module: nn.Module) -> torch.dtype:
    dtype = getattr(module, "dtype", None)  # diffusers models; a LoRA wrapper has none
    return dtype if isinstance(dtype, torch.dtype) else next(module.parameters()).dtype


class ImagePipeline(text_flow.TextFlowPipeline):
    """Denoiser + autoencoder + text encoder: prompts → images (see the module docstring)."""

    MODEL_FOLDERS = "an image_flow run or a diffusers Sana folder"
    NEITHER_FOLDER = f"an image_flow run ({runs.CONFIG_FILE}) nor a diffusers Sana folder (model_index.json)"

    def __init__(
        self,
        transformer: nn.Module,  # diffusers SanaTransformer2DModel
        autoencoder: nn.Module,  # diffusers AutoencoderDC
        text_encoder: text_flow.TextEncoderLike,
        *,
        latent_scale: float,
        flow_shift: float,
        latent_shift: float = 0.0,
        resolution: int | tuple[int, int] | None = None,  # default (W, H); None: the model's sample size
        sigma_min: float = 0.0,
        timestep_scale: float | None = None,  # transformer timestep = timestep_scale * t; None: Sana's
        device: torch.device | str | None = None,
    ):
        if latent_scale <= 0:
            raise UserError(f"latent_scale must be > 0, got {latent_scale}")
        if flow_shift <= 0:
            raise UserError(f"flow_shift must be > 0, got {flow_shift}")
        if getattr(transformer.config, "guidance_embeds", False):
            raise UserError(
                "this denoiser embeds the guidance scale (a distilled Sana-Sprint model); voxforge samples "
                "with classifier-free guidance and does not support it"
            )
        self.transformer = self._place(transformer, autoencoder, text_encoder, device)
        self.latent_scale, self.latent_shift = float(latent_scale), float(latent_shift)
        self.flow_shift, self.sigma_min = float(flow_shift), float(sigma_min)
        if timestep_scale is None:
            timestep_scale = TIMESTEP_RANGE * float(getattr(transformer.config, "timestep_scale", 1.0))
        self.timestep_scale = float(timestep_scale)
        self.latent_channels = int(transformer.config.in_channels)
        ae_factor = getattr(autoencoder, "spatial_compression_ratio", None)
        if ae_factor is None:
            ae_factor = 2 ** (len(autoencoder.config.encoder_block_out_channels) - 1)
        self.autoencoder_factor = int(ae_factor)
        #: image sizes must be multiples of this: autoencoder downsampling x denoiser patch
        self.factor = self.autoencoder_factor * int(transformer.config.patch_size)
        if resolution is None:
            side = int(transformer.config.sample_size) * self.autoencoder_factor
            resolution = (side, side)
        elif isinstance(resolution, int):
            resolution = (resolution, resolution)
        self.resolution = (int(resolution[0]), int(resolution[1]))

    # ---------------------------------------------------------------- loading

    @classmethod
    def from_run(
        cls, run_dir: str | Path, *, device: torch.device | str = "cpu", ema: bool = True
    ) -> ImagePipeline:
        """An image_flow run folder → its denoiser, autoencoder and text encoder
        (`voxforge.runs.load_image_models`) and the latent statistics it recorded."""
        loader = getattr(runs, "load_image_models", None)
        if loader is None:
            raise UserError(
                f"{run_dir}: loading image_flow runs needs voxforge.runs.load_image_models, which this "
                "install does not have; pass a diffusers Sana folder instead"
            )
        transformer, autoencoder, text_encoder, info = loader(run_dir, device=device, ema=ema)
        missing = [key for key in ("latent_scale", "flow_shift") if key not in info]
        if missing:
            raise UserError(f"{run_dir}: the run's image record lacks {', '.join(missing)}")
        return cls(
            transformer,
            autoencoder,
            text_encoder,
            latent_scale=info["latent_scale"],
            latent_shift=info.get("latent_shift", 0.0),
            flow_shift=info["flow_shift"],
            resolution=info.get("resolution"),
            sigma_min=info.get("sigma_min", 0.0),
            timestep_scale=info.get("timestep_scale"),
            device=device,
        )

    @classmethod
    def from_diffusers(
        cls,
        folder: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        max_sequence_length: int = 300,
        flow_shift: float | None = None,  # None: the scheduler's
    ) -> ImagePipeline:
        """A local diffusers Sana folder (transformer/, vae/, text_encoder/, tokenizer/,
        scheduler/), loaded with `local_files_only=True`: never the network."""
        folder = Path(folder)
        missing = [
            name
            for name in ("transformer", "vae", "text_encoder", "tokenizer")
            if not (folder / name).is_dir()
        ]
        if missing:
            raise UserError(
                f"{folder}: not a diffusers Sana folder (missing {', '.join(f'{m}/' for m in missing)}); "
                "expected the layout SanaPipeline.save_pretrained writes"
            )
        try:
            from diffusers import AutoencoderDC, SanaTransformer2DModel  # optional dependency
            from transformers import AutoModel, AutoTokenizer  # optional dependency
        except ImportError as err:
            raise MissingDependencyError(
                f"loading a diffusers Sana folder needs diffusers and transformers ({err}); "
                "pip install 'voxforge[image]'"
            ) from None
        if flow_shift is None:
            scheduler = folder / "scheduler" / "scheduler_config.json"
            config = text_flow.read_json(scheduler) if scheduler.is_file() else {}
            flow_shift = float(config.get("flow_shift", config.get("shift", 1.0)))
        local = dict(local_files_only=True)
        try:
            transformer = SanaTransformer2DModel.from_pretrained(
                folder / "transformer", torch_dtype=dtype, **local
            )
            autoencoder = AutoencoderDC.from_pretrained(folder / "vae", torch_dtype=dtype, **local)
            tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer", **local)
            text_model = AutoModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype, **local)
        except (OSError, ValueError) as err:
            raise UserError(f"{folder}: cannot load the Sana components ({err})") from None
        return cls(
            transformer,
            autoencoder,
            PretrainedTextEncoder.from_parts(tokenizer, text_model, max_length=max_sequence_length),
            latent_scale=float(autoencoder.config.scaling_factor),
            flow_shift=flow_shift,
            device=device,
        )

    @classmethod
    def _load_other(cls, path: Path, *, device: torch.device | str) -> ImagePipeline | None:
        """`from_model`'s other layout: a diffusers Sana folder (model_index.json or transformer/)."""
        if (path / "model_index.json").is_file() or (path / "transformer").is_dir():
            return cls.from_diffusers(path, device=device)
        return None

    # ---------------------------------------------------------------- sampling

    def check_size(self, size: Sequence[int] | None) -> tuple[int, int]:
        """(W, H), checked against the model's factor."""
        reason = f"the autoencoder's {self.autoencoder_factor}x downsampling times the denoiser's patch size"
        return self._check_size(size, self.resolution, what="image size", reason=reason)

    def make_latent_noise(self, batch: int, size: tuple[int, int], seed: int) -> Tensor:  # [B, C, h, w]
        """Image i's noise from seed + i, drawn on the CPU (the same on every device)."""
        width, height = size
        shape = (self.latent_channels, height // self.autoencoder_factor, width // self.autoencoder_factor)
        return self.seeded_noise(shape, batch, seed)

    def velocity(
        self, x: Tensor, t: Tensor, cond: dict[str, Tensor], *, timestep: Tensor | None = None
    ) -> Tensor:  # [N, C, h, w] fp32
        """The denoiser at flow time t (`[N]`, 1 = noise) in voxforge's convention; `timestep`
        ([N], in diffusers' 0..1000 units) overrides the one derived from t."""
        dtype = _dtype(self.transformer)
        if timestep is None:
            timestep = t * self.timestep_scale
        else:
            timestep = timestep.to(t.dtype) * (self.timestep_scale / TIMESTEP_RANGE)
        out = self.transformer(
            x.to(dtype),
            encoder_hidden_states=cond["embeds"].to(dtype),
            encoder_attention_mask=cond["mask"],
            timestep=timestep,
            return_dict=False,
        )[0].float()
        if out.shape[1] == 2 * self.latent_channels:  # a learned-variance head: keep the mean
            out = out[:, : self.latent_channels]
        return out

    @torch.no_grad()
    def sample_latents(
        self,
        prompts: list[str],
        negative: str | list[str] | None = None,
        *,
        steps: int = 20,
        cfg: float = 4.5,
        seed: int = 0,
        size: Sequence[int] | None = None,
        sampler: str = "dpm",
        latents: Tensor | None = None,  # [B, C, h, w] the noise at t = 1; None: from `seed`
        schedule: str = "flow",
        callback: StepCallback | None = None,  # after each sampler step (the app's progress bar)
    ) -> Tensor:  # [B, C, h, w] fp32 scaled latents at t = 0
        prompts = text_flow.check_sampling(prompts, sampler=sampler, steps=steps, cfg=cfg)
        if schedule not in SCHEDULES:
            raise UserError(f"unknown schedule '{schedule}' ({', '.join(SCHEDULES)})")
        if schedule == "sana" and sampler != "dpm":
            raise UserError("schedule 'sana' is SanaPipeline's DPM-Solver grid: use it with sampler 'dpm'")
        size = self.check_size(size)
        batch = len(prompts)
        cond, uncond = self.text_conditions(prompts, negative, cfg)
        if latents is None:
            noise = self.make_latent_noise(batch, size, seed)
        else:
            width, height = size
            expected = (
                batch,
                self.latent_channels,
                height // self.autoencoder_factor,
                width // self.autoencoder_factor,
            )
            if tuple(latents.shape) != expected:
                raise UserError(f"latents of shape {tuple(latents.shape)}, expected {expected}")
            noise = latents.to(self.device, torch.float32)
        common = dict(sampler=sampler, steps=steps, cfg=cfg, time_shift=self.flow_shift, callback=callback)
        if schedule == "flow":
            return self.run_sampler(self.velocity, noise, cond, uncond, **common)
        times = diffusers_flow_times(steps, self.flow_shift)
        starts = torch.tensor(times[:-1], dtype=torch.float64)
        timesteps = diffusers_flow_timesteps(steps, self.flow_shift)

        def integer_timesteps(x: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
            step = int(torch.argmin((starts - float(t[0])).abs()))
            return self.velocity(x, t, cond, timestep=torch.full_like(t, float(timesteps[step])))

        return self.run_sampler(integer_timesteps, noise, cond, uncond, times=times, **common)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:  # [B, C, h, w] scaled -> [B, 3, H, W] float in [0, 1]
        z = latents / self.latent_scale + self.latent_shift
        image = self.autoencoder.decode(z.to(_dtype(self.autoencoder)), return_dict=False)[0].float()
        return (image * 0.5 + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def generate(
        self,
        prompts: str | list[str],
        negative: str | list[str] | None = None,
        steps: int = 20,
        cfg: float = 4.5,
        seed: int = 0,
        size: Sequence[int] | None = None,  # (W, H); None: the model's resolution
        sampler: str = "dpm",
        *,
        latents: Tensor | None = None,
        schedule: str = "flow",  # "sana": SanaPipeline's default DPM grid (see SCHEDULES)
        output: Literal["uint8", "float", "latent"] = "uint8",
        callback: StepCallback | None = None,  # after each sampler step
    ) -> (
        np.ndarray | Tensor
    ):  # uint8 [B, H, W, 3]; "float": float32 [B, H, W, 3] in [0, 1]; "latent": [B, C, h, w]
        """Images for `prompts`; `negative` is the unconditional text (default empty)."""
        self.check_output(output)
        x = self.sample_latents(
            [prompts] if isinstance(prompts, str) else list(prompts),
            negative,
            steps=steps,
            cfg=cfg,
            seed=seed,
            size=size,
            sampler=sampler,
            latents=latents,
            schedule=schedule,
            callback=callback,
        )
        return self.output(x, output)
