"""`image_flow`: text-to-image rectified flow on DC-AE latents (Sana's recipe), full or LoRA.

Recipe sections: `model` (`ImageFlowConfig`: a tiny `SanaTransformer2DModel` from scratch, a
local Sana folder via `pretrained`, or a previous run's weights via `init_from`; `finetune:
full | lora`), `lora` (`LoRAConfig`: rank, alpha, targets), `text_encoder`
(`TextEncoderConfig`), `flow` (`FlowConfig`), `sampler` (`SamplerConfig`, for sampling tools)
and `data` (`ImageFlowDataConfig`). Everything else is the engine's: gradient accumulation,
clipping, EMA, `train.precision` (fp16 with a scaler, non-finite steps skipped and counted),
the optimizer, checkpoints and resume.

Sana's choices, as keys:
- timesteps: `flow.timestep_sampling: logit_normal` (`logit_mean`, `logit_std`) and
  `flow.time_shift`, Sana's *flow shift* t' = s t / (1 + (s - 1) t): larger at higher
  resolution (Sana: 3 at 1024 px, about 1 at 512; the tiny recipes: 1 at 32 px, 2 at 64 px), so
  the noisier times a larger image needs are drawn more often. `flow.sigma_min: 0` makes
  the path Sana's (x_t = (1 - t) x0 + t eps, v = eps - x0); the denoiser sees t x 1000, the
  timestep scale of diffusers' flow-match scheduler, so the weights run in `SanaPipeline`.
- caption dropout for guidance: `flow.p_uncond`; the null condition is the text encoder's
  embedding (and mask) of the empty caption, as Sana's unconditional branch.
- loss mask weighting: the data's per-pixel weights (`data.mask_weight` inside a mask's
  regions, 1 elsewhere and for images without a mask; `voxforge.data.images`), averaged down
  to the latent grid, multiply the squared error.

Latents are encoded on the fly by the frozen autoencoder (`data.autoencoder`: an image_ae run
or a diffusers AutoencoderDC folder) and scaled by its `scaling_factor`. Captions are encoded
by the frozen text encoder; a builtin one is built from the data's captions at the first
start and saved in `RUN/text_encoder/` (a run started from `model.init_from` reuses its
base's), so resume and sampling use the same vocabulary.

Cached (`data.latents: CACHE`, written by `voxforge encode`; `voxforge.data.image_cache`):
batches carry the autoencoder's stored latents (scaled the same way) and, with
`data.text_cache` and a cache that has them, the captions' embeddings, so neither frozen part
runs on a training step. Before training the run checks that the cache was written by this
run's autoencoder and text encoder (sha256 of their files) and refuses it otherwise; a builtin
encoder the run does not have yet is adopted from `CACHE/text_encoder/`. The mask weights come
at the latent grid already (their average over each latent cell, as on the fly).

LoRA (`model.finetune: lora`): peft adapters on `lora.targets`; the model the engine trains
is a `LoRATransformer` whose registered parameters are the adapters, so its checkpoints hold
the adapters and their optimizer state only. Full runs end with `RUN/export/transformer/`
(`save_pretrained`), LoRA runs with `RUN/export/pytorch_lora_weights.safetensors` in
diffusers' format (what `SanaPipeline.load_lora_weights` reads). `RUN/image.json`
(`runs.IMAGE_INFO`) records the rest for `runs.load_image_models`.

Progressive resolution: a stage with `model.init_from: PREVIOUS_RUN` and a larger
`data.resolution` starts from the previous weights. Sana's transformer has no absolute
position embedding by default (`interpolation_scale: 0`), and with one it is a non-persistent
sin-cos buffer recomputed for the new size, so only `sample_size` (derived from the
resolution), the flow shift and the buckets change; weights whose shapes do not fit are
refused with every misfitting key named.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.config.core import option, to_dict
from voxforge.data.image_cache import TEXT_ENCODER_DIR as CACHE_TEXT_ENCODER
from voxforge.data.image_cache import ImageLatentCache, files_digest
from voxforge.data.images import ImageDataConfig, collate_images
from voxforge.data.latent_shards import require_same_encoder
from voxforge.errors import ConfigError, UserError
from voxforge.flow import FlowConfig, SamplerConfig
from voxforge.flow.guidance import drop_conditions
from voxforge.flow.path import interpolate, velocity_target
from voxforge.flow.timesteps import sample_timesteps
from voxforge.models.image import (
    ImageFlowConfig,
    LoRAConfig,
    LoRATransformer,
    TextEncoder,
    TextEncoderConfig,
    apply_lora,
    build_text_encoder,
    build_transformer,
    load_autoencoder,
    load_transformer_weights,
    lora_state_dict,
)
from voxforge.pipelines.image import ImagePipeline
from voxforge.pipelines.image_cache import BUILTIN_KEYS, text_encoder_folders
from voxforge.runs import IMAGE_INFO, Run, load_image_transformer, write_info
from voxforge.stages import Recipe
from voxforge.stages.base import Stage
from voxforge.stages.image_ae import AE_INFO, ImageData, image_grid

__all__ = ["TIMESTEP_SCALE", "ImageFlowDataConfig", "ImageFlowStage"]

#: the denoiser's timestep input is t x 1000 (diffusers' FlowMatchEulerDiscreteScheduler)
TIMESTEP_SCALE = 1000.0
TEXT_ENCODER_DIR = "text_encoder"
EXPORT = Path("export")


@dataclass
class ImageFlowDataConfig(ImageDataConfig):
    """The data toolkit's `ImageDataConfig` (path, resolution, mask_weight, augment, ...) plus
    the autoencoder, the split and the held-out loss's seed."""

    autoencoder: str = option(
        "", help="an image_ae run or a diffusers AutoencoderDC folder (default: model.init_from's)"
    )
    eval_images: int = option(8, ge=0, help="held-out images (first ids in sorted order)")
    eval_seed: int = option(0, ge=0, help="seed of the held-out loss's noise")


def resolve_autoencoder(path: str) -> str:
    """A diffusers AutoencoderDC folder: `path` itself, or the export of an image_ae run."""
    folder = Path(path)
    if (folder / AE_INFO).is_file():
        exported = json.loads((folder / AE_INFO).read_text())["autoencoder"]
        if not (Path(exported) / "config.json").is_file():
            raise UserError(f"{folder}: its exported autoencoder {exported} is missing; re-run that training")
        return exported
    if (folder / "config.json").is_file() and not (folder / "checkpoints").is_dir():
        return str(folder.resolve())
    raise UserError(
        f"{folder}: not an autoencoder (neither a finished image_ae run with {AE_INFO} nor a diffusers "
        "AutoencoderDC folder); finish `voxforge train image_ae_tiny` first"
    )


class ImageFlowStage(Stage):
    name = "image_flow"
    sections = {
        "model": ImageFlowConfig,
        "lora": LoRAConfig,
        "text_encoder": TextEncoderConfig,
        "flow": FlowConfig,
        "sampler": SamplerConfig,
        "data": ImageFlowDataConfig,
    }

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        self.model_cfg: ImageFlowConfig = recipe.model
        self.data_cfg: ImageFlowDataConfig = recipe.data
        self.flow_cfg: FlowConfig = recipe.flow
        self._data: ImageData | None = None
        self._autoencoder: nn.Module | None = None
        self._text: TextEncoder | None = None
        self._null: tuple[Tensor, Tensor] | None = None
        self._info: dict[str, Any] | None = None
        self._cache: ImageLatentCache | None = None

    # --- data, frozen parts, the run record -------------------------------------------
    def data(self) -> ImageData:
        if self._data is None:
            self._data = ImageData(self.data_cfg, self.recipe.train.seed)
        return self._data

    def cache(self) -> ImageLatentCache | None:
        """The latent cache of `data.latents`, or None."""
        if self._cache is None and self.data_cfg.latents:
            self._cache = ImageLatentCache(self.data_cfg.latents)
        return self._cache

    def cached_text(self) -> bool:
        """Whether training reads the captions' embeddings from the cache."""
        cache = self.cache()
        return bool(cache is not None and self.data_cfg.text_cache and cache.text_encoder)

    def check_cache(self) -> None:
        """Refuse a cache written by another autoencoder or text encoder than this run's."""
        cache = self.cache()
        if cache is None:
            return
        folder = self.info()["autoencoder"]
        fix = f"voxforge encode --model {folder} --data {self.data_cfg.path} --out {cache.folder}"
        require_same_encoder(cache.folder, cache.index["autoencoder"], folder, fix)
        if self.cached_text():
            self.text_encoder()  # adopts or checks the cache's text encoder

    def _check_text_cache(self, cfg: TextEncoderConfig, folder: str | Path | None) -> None:
        cache = self.cache()
        recorded = cache.text_encoder
        if recorded["kind"] != cfg.kind:
            raise ConfigError(
                f"key 'text_encoder.kind': {cfg.kind}, but {cache.folder} (data.latents) holds embeddings of a "
                f"{recorded['kind']} text encoder; match it or set data.text_cache=false"
            )
        sha, _ = files_digest(text_encoder_folders(cfg, folder), recorded.get("files"))
        if sha != recorded["sha256"] or (
            cfg.kind == "pretrained" and cfg.max_length != recorded["max_length"]
        ):
            raise UserError(
                f"{cache.folder} (data.latents): its caption embeddings come from another text encoder "
                f"(sha256 {recorded['sha256'][:12]}, max_length {recorded['max_length']}) than this run's "
                f"({sha[:12]}, {cfg.max_length}); encode again with `--text-encoder` naming this run's, "
                "or set data.text_cache=false"
            )

    def _adopt_cached_text_encoder(self, cfg: TextEncoderConfig, own: Path) -> Path:
        """Copy the cache's builtin encoder into RUN/text_encoder/ (its config must be the recipe's)."""
        cache = self.cache()
        saved = cache.text_encoder.get("config", {})
        differ = [k for k in BUILTIN_KEYS if saved.get(k) != getattr(cfg, k)]
        if differ:
            raise ConfigError(
                f"key 'text_encoder.{differ[0]}': the cache {cache.folder} was encoded with "
                + ", ".join(f"{k}={saved.get(k)}" for k in differ)
                + "; set the recipe's to match, or data.text_cache=false"
            )
        shutil.copytree(cache.folder / CACHE_TEXT_ENCODER, own, dirs_exist_ok=True)
        return own

    def base_run(self) -> Run | None:
        if not self.model_cfg.init_from:
            return None
        return Run.open(self.model_cfg.init_from, "image_flow", "model.init_from")

    def autoencoder(self) -> nn.Module:
        if self._autoencoder is None:
            source = self.data_cfg.autoencoder
            base = self.base_run()
            if not source and base is not None:
                source = base.read_info(IMAGE_INFO)["autoencoder"]
            if not source:
                raise ConfigError("key 'data.autoencoder': set it to an image_ae run (or a DC-AE folder)")
            ae = load_autoencoder(resolve_autoencoder(source))
            self._autoencoder = ae.requires_grad_(False).eval().to(self.device)
        return self._autoencoder

    def text_encoder(self) -> TextEncoder:
        if self._text is None:
            cfg: TextEncoderConfig = self.recipe.text_encoder
            folder = None
            if cfg.kind == "builtin":
                own = self.run_dir / TEXT_ENCODER_DIR
                base = self.base_run()
                if (own / "text_encoder.json").is_file():
                    folder = own
                elif base is not None:
                    folder = base.read_info(IMAGE_INFO).get("text_encoder_folder") or None
                elif self.cached_text() and self.cache().text_encoder["kind"] == "builtin":
                    folder = self._adopt_cached_text_encoder(cfg, own)
            if self.cached_text():  # before a pretrained encoder is loaded
                self._check_text_cache(cfg, folder)
            if cfg.kind == "builtin" and folder is None:
                encoder = build_text_encoder(cfg, captions=self.data().all.captions())
                encoder.save(self.run_dir / TEXT_ENCODER_DIR)
                folder = self.run_dir / TEXT_ENCODER_DIR
            else:
                encoder = build_text_encoder(cfg, folder=folder)
            self._text_folder = str(Path(folder).resolve()) if folder else ""
            self._text = encoder.to(self.device)
        return self._text

    def null_condition(self) -> tuple[Tensor, Tensor]:  # ([L, C], [L]) of the empty caption
        if self._null is None:
            embeds, mask = self.text_encoder().encode([""])
            self._null = (embeds[0], mask[0])
        return self._null

    def info(self) -> dict[str, Any]:
        if self._info is None:
            ae = self.autoencoder()
            text = self.text_encoder()
            compression = int(ae.spatial_compression_ratio)
            resolution = int(self.data().all.resolution)
            if resolution % (compression * self.model_cfg.patch_size):
                raise ConfigError(
                    f"key 'data.resolution': {resolution} px is not a multiple of the autoencoder's "
                    f"{compression}x compression times model.patch_size={self.model_cfg.patch_size}"
                )
            self._info = {
                "autoencoder": resolve_autoencoder(
                    self.data_cfg.autoencoder or self.base_run().read_info(IMAGE_INFO)["autoencoder"]
                ),
                "latent_scale": float(ae.config.scaling_factor),
                "latent_shift": 0.0,
                "latent_channels": int(ae.config.latent_channels),
                "compression": compression,
                "flow_shift": self.flow_cfg.time_shift,
                "sigma_min": self.flow_cfg.sigma_min,
                "timestep_scale": TIMESTEP_SCALE,
                "resolution": resolution,
                "sample_size": self.model_cfg.sample_size or resolution // compression,
                "caption_channels": int(text.dim),
                "text_encoder": to_dict(self.recipe.text_encoder),
                "text_encoder_folder": self._text_folder,
                "finetune": self.model_cfg.finetune,
                "base": str(Path(self.model_cfg.init_from).resolve()) if self.model_cfg.init_from else "",
                "pretrained": self.model_cfg.pretrained,
                "data": str(Path(self.data_cfg.path).resolve()) if self.data_cfg.path else "",
            }
            if self._info["latent_channels"] != self.model_cfg.in_channels and not self.model_cfg.pretrained:
                raise ConfigError(
                    f"key 'model.in_channels': {self.model_cfg.in_channels}, but the autoencoder's latents "
                    f"have {self._info['latent_channels']} channels; set them to match"
                )
        return self._info

    # --- building ----------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        info = self.info()
        write_info(self.run_dir, IMAGE_INFO, info)
        cfg = self.model_cfg
        model = build_transformer(
            cfg, caption_channels=info["caption_channels"], sample_size=info["sample_size"]
        )
        base = self.base_run()
        if base is not None:
            previous = load_image_transformer(base)
            if isinstance(previous, LoRATransformer):
                raise UserError(
                    f"{base.path}: model.init_from a LoRA run is not supported; start from its base run"
                )
            load_transformer_weights(model, previous.state_dict(), f"{base.path} (model.init_from)")
        if cfg.finetune == "lora":
            return apply_lora(model, self.recipe.lora)
        return model

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        if isinstance(model, LoRATransformer):  # its frozen base is not a registered parameter
            raise UserError(
                "train.parallel=fsdp with model.finetune=lora: the adapters are a few MB and the frozen "
                "base cannot be sharded under them; use train.parallel=ddp (or auto)"
            )
        return list(model.transformer_blocks)  # SanaTransformer2DModel's blocks, sharded one by one

    def build_dataset(self) -> torch.utils.data.Dataset:
        self.check_cache()
        return self.data().train()

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_images(items)

    def batch_sampler(self, dataset: Any, batch_size: int, **position: int) -> Any:
        return self.data().batch_sampler(dataset, batch_size, **position)

    # --- training ----------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """(scaled latents [B, C, h, w], text embeds [B, L, C'], text mask [B, L]); cached
        latents (`data.latents`: the autoencoder's raw output) are scaled the same way, cached
        caption embeddings (`text_embeds`, `text_mask`) used as they are."""
        if "latent" in batch:
            latents = batch["latent"].float() * self.info()["latent_scale"]
        else:
            latents = self.autoencoder().encode(batch["image"]).latent.float() * self.info()["latent_scale"]
        # AutoencoderDC returns a strided (channels-last) latent and randn_like keeps the strides:
        # contiguous, the noise of a step is the same whether the latents were cached or not
        latents = latents.contiguous()
        if "text_embeds" in batch:
            embeds, mask = batch["text_embeds"].float(), batch["text_mask"].bool()
        else:
            embeds, mask = self.text_encoder().encode(batch["caption"])
        return latents, embeds.to(latents.device), mask.to(latents.device)

    def velocity(self, model: nn.Module, x_t: Tensor, t: Tensor, embeds: Tensor, mask: Tensor) -> Tensor:
        return model(
            x_t,
            encoder_hidden_states=embeds,
            timestep=t * TIMESTEP_SCALE,
            encoder_attention_mask=mask,
            return_dict=False,
        )[0]

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        latents, embeds, mask = self.encode(batch)
        null_embeds, null_mask = self.null_condition()
        cond, dropped = drop_conditions(
            {"embeds": embeds, "mask": mask},
            self.flow_cfg.p_uncond,
            {"embeds": null_embeds, "mask": null_mask},
        )
        t = sample_timesteps(latents.shape[0], self.flow_cfg, device=latents.device)
        noise = torch.randn_like(latents)
        x_t = interpolate(latents, noise, t, self.flow_cfg.sigma_min)
        target = velocity_target(latents, noise, self.flow_cfg.sigma_min)
        pred = self.velocity(model, x_t, t, cond["embeds"], cond["mask"])
        error = (pred.float() - target.float()).pow(2)  # fp32 whatever the autocast
        weight = F.adaptive_avg_pool2d(batch["mask"].float(), latents.shape[-2:])  # [B, 1, h, w]
        loss = (error * weight).mean()
        return loss, {"mean_t": float(t.mean()), "dropped": float(dropped.float().mean())}

    # --- evaluation and export -----------------------------------------------------------
    @torch.no_grad()
    def heldout_loss(self, model: nn.Module) -> dict[str, float] | None:
        """Flow loss on the held-out images at fixed noise and timesteps, with their captions
        and with the empty caption: the gap says how much the captions are used."""
        batches = self.data().heldout()
        if not batches:
            return None
        generator = torch.Generator().manual_seed(self.data_cfg.eval_seed)
        count = sum(len(b["id"]) for b in batches)
        grid = (torch.arange(count) + 0.5) / count  # one fixed time per held-out image
        null_embeds, null_mask = self.null_condition()
        sums = {"heldout_loss": 0.0, "heldout_loss_uncond": 0.0}
        seen = 0
        for batch in batches:
            batch = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
            latents, embeds, mask = self.encode(batch)
            noise = torch.randn(latents.shape, generator=generator).to(latents.device)
            t = grid[seen : seen + latents.shape[0]].to(latents.device)
            seen += latents.shape[0]
            x_t = interpolate(latents, noise, t, self.flow_cfg.sigma_min)
            target = velocity_target(latents, noise, self.flow_cfg.sigma_min)
            for name, (e, m) in {
                "heldout_loss": (embeds, mask),
                "heldout_loss_uncond": (null_embeds.expand_as(embeds), null_mask.expand_as(mask)),
            }.items():
                pred = self.velocity(model, x_t, t, e, m)
                sums[name] += float((pred.float() - target).pow(2).flatten(1).mean(1).sum())
        return {name: total / count for name, total in sums.items()}

    def pipeline(self, model: nn.Module) -> ImagePipeline:
        """The sampling pipeline over `model` and this run's frozen parts (what
        `voxforge generate image` runs on the finished run)."""
        info = self.info()
        return ImagePipeline(
            model,
            self.autoencoder(),
            self.text_encoder(),
            latent_scale=info["latent_scale"],
            latent_shift=info["latent_shift"],
            flow_shift=self.recipe.sampler.time_shift,
            resolution=info["resolution"],
            sigma_min=info["sigma_min"],
            timestep_scale=TIMESTEP_SCALE,
            device=self.device,
        )

    @torch.no_grad()
    def samples(self, model: nn.Module, out_dir: Path, count: int = 8) -> None:
        """`out_dir/samples.png`: for up to `count` held-out captions, a row sampled with
        guidance (`sampler.cfg_scale`) above a row without the caption (cfg 0), same noise;
        `samples.json` lists the captions."""
        prompts = [c for batch in self.data().heldout() for c in batch["caption"]][:count]
        if not prompts:
            return
        sampler = self.recipe.sampler
        pipe = self.pipeline(model)
        rows = []
        for cfg in (sampler.cfg_scale, 0.0):
            images = pipe.generate(
                prompts,
                steps=sampler.steps,
                cfg=cfg,
                seed=self.data_cfg.eval_seed,
                sampler=sampler.method,
                output="float",
            )
            rows.append(torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1)  # [B, 3, H, W] in [-1, 1]
        image_grid(rows, out_dir / "samples.png")
        (out_dir / "samples.json").write_text(
            json.dumps({"prompts": prompts, "rows": ["cfg", "uncond"]}, indent=1)
        )

    def evaluate(self, model: nn.Module, out_dir: Path) -> dict[str, float] | None:
        result = self.heldout_loss(model)
        self.samples(model, out_dir)
        return result

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float] | None:
        return self.evaluate_once(model, step)

    def export(self, model: nn.Module) -> Path:
        out = self.run_dir / EXPORT
        out.mkdir(parents=True, exist_ok=True)
        if isinstance(model, LoRATransformer):
            from diffusers.loaders.lora_pipeline import SanaLoraLoaderMixin  # optional: the image extra

            state, meta = lora_state_dict(model)
            SanaLoraLoaderMixin.save_lora_weights(
                str(out), transformer_lora_layers=state, transformer_lora_adapter_metadata=meta
            )
            return out / "pytorch_lora_weights.safetensors"
        model.save_pretrained(str(out / "transformer"))
        return out / "transformer"

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float] | None:
        exported = self.export(model)
        info = {**self.info(), "export": str(exported.resolve())}
        write_info(self.run_dir, IMAGE_INFO, info)
        result = self.evaluate_once(model, step)
        if result is None:
            return None
        (self.run_dir / "eval_heldout.json").write_text(json.dumps(result, indent=1))
        return {f"eval_{k}": v for k, v in result.items()}
