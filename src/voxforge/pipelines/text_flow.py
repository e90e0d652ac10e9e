"""What the text-conditioned flow pipelines share: text → image (`pipelines.image`) and
text / image → video (`pipelines.video`).

Both run the same recipe around different networks: prompts and their negatives encoded in
one call, split into the conditional and unconditional branch of classifier-free guidance
(cfg = 1 encodes no negative); noise per sample from `flow.make_noise`, seeded `seed + i` on
the CPU; the flow ODE by Euler / Heun (`flow.sample`) or DPM-Solver++ (`flow.dpm.sample_dpm`)
with guidance batched; sizes checked against one factor; the decoder's [0, 1] output as
uint8 or float, channels last. Loading has one shape too: `from_model` takes a run folder
(`config.yaml`) through the family's `from_run`, else the family's other layout through its
`_load_other` (a diffusers Sana folder, a run's export).

`TextFlowPipeline` is the base of both pipeline classes and holds only that. What differs
stays with each family: the networks and their calling conventions (`velocity`, `decode`),
latent shapes, time grids and shifts, image conditioning, what a folder holds, and the
signatures of `sample_latents` / `generate`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np
import torch
from torch import Tensor, nn

from voxforge import runs
from voxforge.errors import UserError
from voxforge.flow import make_noise, sample
from voxforge.flow.dpm import sample_dpm
from voxforge.flow.samplers import ModelFn, StepCallback

__all__ = ["OUTPUTS", "SAMPLERS", "TextEncoderLike", "TextFlowPipeline", "check_sampling", "read_json"]

SAMPLERS = ("euler", "heun", "dpm")
#: what `generate` returns: uint8 pixels, float pixels in [0, 1], or the latents
OUTPUTS = ("uint8", "float", "latent")


class TextEncoderLike(Protocol):
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:  # (embeds [B, L, C], mask [B, L])
        ...


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read ({err})") from None


def check_sampling(prompts: str | Sequence[str], *, sampler: str, steps: int, cfg: float) -> list[str]:
    """The prompts as a list, after the checks every sampling request passes."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise UserError("no prompt given")
    if sampler not in SAMPLERS:
        raise UserError(f"unknown sampler '{sampler}' ({', '.join(SAMPLERS)})")
    if steps < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    if cfg < 0:
        raise UserError(f"cfg must be >= 0, got {cfg}")
    return prompts


class TextFlowPipeline(ABC):
    """A denoiser, an autoencoder and a text encoder on one device: the guidance conditions,
    the noise, the sampler and the pixels of both families (see the module docstring)."""

    #: for messages: what a model folder of the family is ("a video_flow run or its export/ folder")
    MODEL_FOLDERS: ClassVar[str]
    #: for messages: "<a run> (config.yaml) nor <the other layout> (<its marker>)"
    NEITHER_FOLDER: ClassVar[str]

    device: torch.device
    autoencoder: nn.Module
    text_encoder: TextEncoderLike
    sigma_min: float
    factor: int  # frame sides must be multiples of this

    # ---------------------------------------------------------------- loading

    @classmethod
    @abstractmethod
    def from_run(cls, run_dir: str | Path, *, device: torch.device | str = "cpu", ema: bool = True) -> Self:
        """The pipeline of one of the family's run folders."""

    @classmethod
    @abstractmethod
    def _load_other(cls, path: Path, *, device: torch.device | str) -> Self | None:
        """The pipeline of a folder (without config.yaml) in the family's other layout; None
        when `path` is not one."""

    @classmethod
    def from_model(cls, path: str | Path, *, device: torch.device | str = "cpu", ema: bool = True) -> Self:
        """A run folder (`runs.CONFIG_FILE`) or a folder of the family's other layout."""
        path = Path(path)
        if not path.is_dir():
            raise UserError(f"{path}: model folder not found ({cls.MODEL_FOLDERS})")
        if (path / runs.CONFIG_FILE).is_file():
            return cls.from_run(path, device=device, ema=ema)
        pipeline = cls._load_other(path, device=device)
        if pipeline is None:
            raise UserError(f"{path}: neither {cls.NEITHER_FOLDER}")
        return pipeline

    # ---------------------------------------------------------------- set-up

    def _place(
        self,
        denoiser: nn.Module,
        autoencoder: nn.Module,
        text_encoder: TextEncoderLike,
        device: torch.device | str | None,  # None: the denoiser's
    ) -> nn.Module:  # the denoiser, in eval mode on the device
        self.device = torch.device(device) if device is not None else next(denoiser.parameters()).device
        denoiser = denoiser.eval().to(self.device)
        self.autoencoder = autoencoder.eval().to(self.device)
        self.text_encoder = text_encoder
        if isinstance(text_encoder, nn.Module):
            text_encoder.eval().to(self.device)
        return denoiser

    def _check_size(
        self, size: Sequence[int] | None, default: Sequence[int], *, what: str, reason: str
    ) -> tuple[int, int]:
        """(W, H) of `size` (None: `default`) as positive multiples of `factor`; the message
        names `what` and gives the `reason` for the factor."""
        width, height = default if size is None else (int(size[0]), int(size[1]))
        if width <= 0 or height <= 0 or width % self.factor or height % self.factor:
            raise UserError(
                f"{what} {width}x{height}: width and height must be positive multiples of {self.factor} "
                f"({reason})"
            )
        return width, height

    # ---------------------------------------------------------------- sampling

    def encode_prompts(self, prompts: list[str]) -> tuple[Tensor, Tensor]:  # ([B, L, C], [B, L] bool)
        embeds, mask = self.text_encoder.encode(list(prompts))
        return embeds.to(self.device), mask.to(self.device).bool()

    def text_conditions(
        self, prompts: list[str], negative: str | list[str] | None, cfg: float
    ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:  # (cond, uncond; None when cfg = 1)
        """Prompts and negatives (default empty) encoded in one call, split into the two
        branches of guidance: {"embeds": [B, L, C], "mask": [B, L]} each."""
        batch = len(prompts)
        negatives = (
            [negative or ""] * batch if negative is None or isinstance(negative, str) else list(negative)
        )
        if len(negatives) != batch:
            raise UserError(f"{len(negatives)} negative prompts for {batch} prompts")
        guided = cfg != 1.0
        embeds, mask = self.encode_prompts(prompts + negatives if guided else prompts)
        cond = {"embeds": embeds[:batch], "mask": mask[:batch]}
        uncond = {"embeds": embeds[batch:], "mask": mask[batch:]} if guided else None
        return cond, uncond

    def seeded_noise(self, shape: Sequence[int], batch: int, seed: int) -> Tensor:  # [B, *shape]
        """Sample i's noise from seed + i, drawn on the CPU: the same on every device and whatever
        else is in the batch."""
        return torch.cat([make_noise((1, *shape), seed=seed + i) for i in range(batch)]).to(self.device)

    def run_sampler(
        self,
        model_fn: ModelFn,
        noise: Tensor,  # [B, ...] at t = 1
        cond: dict[str, Tensor],
        uncond: dict[str, Tensor] | None,
        *,
        sampler: str,
        steps: int,
        cfg: float,
        time_shift: float,
        callback: StepCallback | None,
        times: Sequence[float] | None = None,  # dpm only: an explicit grid instead of (steps, time_shift)
    ) -> Tensor:  # [B, ...] fp32 at t = 0
        """The flow ODE with batched classifier-free guidance: DPM-Solver++ for "dpm", else Euler / Heun."""
        common = dict(
            cfg_scale=cfg,
            sigma_min=self.sigma_min,
            batch_guidance=True,
            time_shift=time_shift,
            callback=callback,
        )
        if sampler == "dpm":
            return sample_dpm(model_fn, noise, cond, uncond, steps=steps, times=times, **common)
        return sample(model_fn, noise, cond, uncond, steps=steps, method=sampler, **common)

    # ---------------------------------------------------------------- output

    @abstractmethod
    def decode(self, latents: Tensor) -> Tensor:  # [B, C, ...] latents -> [B, 3, ...] float in [0, 1]
        """The autoencoder's pixels of the sampled latents."""

    @staticmethod
    def check_output(output: str) -> None:
        if output not in OUTPUTS:
            raise ValueError(f"unknown output '{output}' (uint8, float, latent)")

    def output(self, latents: Tensor, output: str) -> np.ndarray | Tensor:  # [B, ..., 3] pixels or latents
        """`latents` as `generate` returns them: as they are ("latent"), or decoded, channels
        last, float32 in [0, 1] ("float") or uint8 (round(255 x))."""
        if output == "latent":
            return latents
        pixels = self.decode(latents).movedim(1, -1).cpu().numpy()
        if output == "float":
            return pixels
        return (pixels * 255.0).round().astype(np.uint8)
