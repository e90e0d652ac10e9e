"""Run folders: what `voxforge train --out RUN` leaves, read back for inference and encoding.

A run folder holds `config.yaml` (the resolved recipe), `checkpoints/` (`voxforge.train.checkpoint`)
and the small JSON records a stage writes for whoever uses its weights later (`structure.json`,
`slat.json`: the VAE that decodes the flow's latents, their statistics, the data).

`Run` reads a folder without the stage that wrote it: the caller names the sections it needs
and their config types (`run.section("model", SSVAEConfig)`), so loading an ss_flow run for
inference imports no training code, and the inference layer stays below training
(docs/architecture.md). `from_dict` checks each section as strictly as the recipe loader
does, so old run folders load as long as their sections still parse.

The VAE loaders of the 3D family live here because three layers use them: the encode step
(`pipelines.encode`), the pipelines (decoding) and the flow stages (evaluation).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from torch import nn

from voxforge.config.core import from_dict, load_yaml
from voxforge.errors import UserError
from voxforge.models.conditioning import ImageConditionedFlow, frozen_image_encoder
from voxforge.models.get3d import Get3DConfig, Get3DGAN, Get3DGenerator
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
)
from voxforge.models.image_encoders import ImageEncoder, ImageEncoderConfig
from voxforge.models.slat_vae import SLatVAE, SLatVAEConfig
from voxforge.models.ss_vae import SSVAE, SSVAEConfig
from voxforge.models.video_ae import VideoAutoencoder
from voxforge.models.video_ae import load_video_autoencoder as load_video_autoencoder_folder
from voxforge.train.checkpoint import (
    CheckpointInfo,
    latest_checkpoint,
    load_model_weights,
    load_state_dict_file,
)

__all__ = [
    "CONFIG_FILE",
    "IMAGE_INFO",
    "OCCUPANCY_INFO",
    "SLAT_INFO",
    "STRUCTURE_INFO",
    "VIDEO_AE_EXPORT",
    "Run",
    "load_get3d",
    "load_image_flow",
    "load_image_models",
    "load_image_transformer",
    "load_slat_vae",
    "load_ss_vae",
    "load_video_autoencoder",
    "video_autoencoder_folder",
    "write_info",
]

CONFIG_FILE = "config.yaml"
#: written by the ss_vae stage: the mean occupied fraction of its training grids (decode fallback)
OCCUPANCY_INFO = "occupancy.json"
#: written by the ss_flow stage: the SS-VAE run, latent statistics, latents and prepared folders
STRUCTURE_INFO = "structure.json"
#: written by the slat_flow stage: the SLat-VAE run, latents and prepared folders, extractor
SLAT_INFO = "slat.json"
#: written by the image_flow stage: autoencoder folder, latent scale, flow shift, text encoder, base
IMAGE_INFO = "image.json"
#: written by the video_ae stage at the end of training: the autoencoder with its latent statistics
VIDEO_AE_EXPORT = Path("export") / "autoencoder"

Section = TypeVar("Section")


@dataclass(frozen=True)
class Run:
    """A training run folder: its stage, its resolved recipe as plain data, its checkpoints."""

    path: Path
    stage: str
    config: dict[str, Any]

    @classmethod
    def open(cls, path: str | Path | Run, stage: str | None = None, what: str = "the run") -> Run:
        """Read `path/config.yaml`; with `stage`, insist the run trained that stage (`what`
        names the run in the message, e.g. "--model")."""
        if isinstance(path, Run):
            run = path
        else:
            config_path = Path(path) / CONFIG_FILE
            if not config_path.is_file():
                raise UserError(
                    f"{path}: not a training run ({config_path} not found); pass the --out folder of "
                    "`voxforge train`"
                )
            config = load_yaml(config_path)
            run = cls(Path(path), str(config.get("stage", "")), config)
        if stage is not None and run.stage != stage:
            raise UserError(f"{run.path}: {what} must be a '{stage}' run, this one trained '{run.stage}'")
        return run

    def section(self, name: str, cls: type[Section]) -> Section:
        """The recipe section `name` as a `cls` config, checked like a recipe."""
        return from_dict(cls, self.config.get(name) or {}, source=str(self.path / CONFIG_FILE), prefix=name)

    def load_weights(self, model: nn.Module, *, ema: bool = True) -> CheckpointInfo:
        """The newest committed checkpoint's weights (EMA when the run has it and `ema`)."""
        return load_model_weights(model, self.path, ema=ema)

    def latest_checkpoint(self) -> CheckpointInfo:
        ckpt = latest_checkpoint(self.path)
        if ckpt is None:
            raise UserError(f"{self.path}: no committed checkpoint found (has this run trained yet?)")
        return ckpt

    def read_info(self, name: str) -> dict[str, Any]:
        """A JSON record the stage wrote into the run folder (`STRUCTURE_INFO`, `SLAT_INFO`)."""
        path = self.path / name
        if not path.is_file():
            raise UserError(
                f"{self.path}: {name} missing (written when the {self.stage} stage starts training)"
            )
        return json.loads(path.read_text())


def write_info(run_dir: str | Path, name: str, info: dict[str, Any]) -> None:
    """Write a run record atomically; every rank may write the same content concurrently."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{name}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=1))
    tmp.replace(run_dir / name)


Flow = TypeVar("Flow", bound=ImageConditionedFlow)


def load_image_flow(
    run: Run, flow_cls: type[Flow], config_cls: type, *, ema: bool = True
) -> tuple[Flow, ImageEncoder | None]:
    """(an image-conditioned flow of `run` with its newest weights, the frozen image encoder
    its tokens come from, or None when the flow trains its own)."""
    encoder_cfg = run.section("image_encoder", ImageEncoderConfig)
    frozen = frozen_image_encoder(encoder_cfg)
    flow = flow_cls(
        run.section("model", config_cls), encoder_cfg, context_dim=frozen.out_dim if frozen else None
    )
    run.load_weights(flow, ema=ema)
    return flow, frozen


def load_ss_vae(
    run: str | Path | Run, device: torch.device | str = "cpu", *, ema: bool = True
) -> tuple[SSVAE, CheckpointInfo]:
    """(SSVAE in eval mode with the newest checkpoint's EMA weights, the checkpoint loaded)."""
    run = Run.open(run, "ss_vae", "the structure VAE")
    vae = SSVAE(run.section("model", SSVAEConfig))
    ckpt = run.load_weights(vae, ema=ema)
    return vae.to(device).eval(), ckpt


def load_slat_vae(
    run: str | Path | Run, device: torch.device | str = "cpu", *, ema: bool = True
) -> tuple[SLatVAE, CheckpointInfo]:
    """(SLatVAE in eval mode with the newest checkpoint's EMA weights, the checkpoint loaded).

    The feature width comes from the checkpoint when the recipe left it to the data.
    """
    run = Run.open(run, "slat_vae", "the SLat VAE")
    cfg = run.section("model", SLatVAEConfig)
    in_channels = cfg.in_channels
    if in_channels is None:
        weights = run.latest_checkpoint().weights["model"]
        with safe_open(str(weights), framework="pt") as handle:
            in_channels = int(handle.get_slice("encoder.stack.input.weight").get_shape()[1])
    vae = SLatVAE(cfg, in_channels)
    ckpt = run.load_weights(vae, ema=ema)
    return vae.to(device).eval(), ckpt


def load_get3d(
    run: str | Path | Run, device: torch.device | str = "cpu", *, ema: bool = True
) -> Get3DGenerator:
    """The generator of a get3d run with its newest weights, eval mode: G_ema (the average
    the stage keeps inside the model, `Get3DGAN.g_ema`) or, with `ema=False`, the raw G.
    Its `generate(z_geo, z_tex)` gives `(vertices, faces, texture)` per code pair."""
    run = Run.open(run, "get3d", "the GET3D run")
    gan = Get3DGAN(run.section("model", Get3DConfig))
    run.load_weights(gan, ema=False)  # G_ema is part of the model's weights, not an engine EMA
    generator = gan.g_ema if ema else gan.generator
    return generator.to(device).eval()


def video_autoencoder_folder(path: str | Path | Run) -> Path:
    """The diffusers folder of a video autoencoder: a video_ae run's `export/autoencoder/`
    (written at the end of training), or `path` itself (a folder `VideoAutoencoder.save` wrote,
    or a released HunyuanVideo / LTX-Video VAE)."""
    if isinstance(path, Run) or (Path(path) / CONFIG_FILE).is_file():
        run = Run.open(path, "video_ae", "the video autoencoder")
        folder = run.path / VIDEO_AE_EXPORT
        if not (folder / "config.json").is_file():
            raise UserError(
                f"{run.path}: no exported autoencoder ({folder} is written when the video_ae run "
                "finishes training; let it finish or resume it)"
            )
        return folder
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(
            f"{folder}: video autoencoder not found (a video_ae run folder or a diffusers "
            "AutoencoderKLHunyuanVideo / AutoencoderKLLTXVideo folder)"
        )
    return folder


def load_video_autoencoder(
    path: str | Path | Run, device: torch.device | str = "cpu", *, kind: str | None = None
) -> VideoAutoencoder:
    """A video autoencoder in eval mode on `device` from a video_ae run folder or a diffusers
    folder (`video_autoencoder_folder`). With `kind`, insist on that `autoencoder.kind`."""
    return load_video_autoencoder_folder(video_autoencoder_folder(path), kind=kind).to(device).eval()


def _run_weights(run: Run, ema: bool) -> tuple[dict[str, torch.Tensor], Path]:
    """The newest checkpoint's state dict (its slowest EMA when `ema` and the run has one)."""
    ckpt = run.latest_checkpoint()
    ema_keys = [k for k in ckpt.weights if k.startswith("ema_")]
    key = max(ema_keys, key=lambda k: float(k[4:])) if (ema and ema_keys) else "model"
    return load_state_dict_file(ckpt.weights[key]), Path(ckpt.weights[key])


def load_image_transformer(run: str | Path | Run, *, ema: bool = True) -> nn.Module:
    """The denoiser of an image_flow run with its newest weights, eval mode: a
    `SanaTransformer2DModel` (full runs) or a `models.image.LoRATransformer` whose base is
    rebuilt from the run's `model.init_from` / `model.pretrained` (LoRA runs)."""
    run = Run.open(run, "image_flow", "the image model")
    cfg = run.section("model", ImageFlowConfig)
    info = run.read_info(IMAGE_INFO)
    if cfg.init_from:
        base = load_image_transformer(cfg.init_from, ema=ema)
        if isinstance(base, LoRATransformer):
            raise UserError(
                f"{cfg.init_from}: a LoRA run cannot be the base of another run; use its base run"
            )
        base.register_to_config(sample_size=info["sample_size"])
    else:
        base = build_transformer(
            cfg, caption_channels=info["caption_channels"], sample_size=info["sample_size"]
        )
    state, path = _run_weights(run, ema)
    if cfg.finetune == "lora":
        model = apply_lora(base, run.section("lora", LoRAConfig))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise UserError(
                f"{path}: adapter weights do not fit (missing: {list(missing)[:5]}, unexpected: {list(unexpected)[:5]})"
            )
    else:
        load_transformer_weights(base, state, str(path))
        model = base
    return model.eval()


def load_image_models(
    run: str | Path | Run, device: torch.device | str = "cpu", *, ema: bool = True
) -> tuple[nn.Module, nn.Module, TextEncoder, dict[str, Any]]:
    """(denoiser, autoencoder, text encoder, the run's `IMAGE_INFO` record) of an image_flow
    run, in eval mode on `device`; the record holds `latent_scale`, `flow_shift`,
    `resolution` and what else sampling needs. The denoiser is a diffusers
    `SanaTransformer2DModel` (a LoRA run's with its peft adapters active), usable as the
    `transformer` of diffusers' `SanaPipeline`."""
    run = Run.open(run, "image_flow", "the image model")
    info = run.read_info(IMAGE_INFO)
    transformer = load_image_transformer(run, ema=ema)
    if isinstance(transformer, LoRATransformer):
        transformer = transformer.base
    autoencoder = load_autoencoder(info["autoencoder"])
    text_cfg = from_dict(TextEncoderConfig, info["text_encoder"], source=str(run.path / IMAGE_INFO))
    text_encoder = build_text_encoder(text_cfg, folder=info.get("text_encoder_folder") or None)
    return transformer.to(device), autoencoder.to(device), text_encoder.to(device), info
