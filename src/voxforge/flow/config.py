"""Typed configs of the rectified flow: the training objective and the ODE sampler.

Pure dataclasses (no torch import) so recipes validate without loading the numerics.
Conventions (TRELLIS): t = 0 is data, t = 1 is noise, and a sampler integrates from 1 to 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from voxforge.config.core import ConfigValueError, option


@dataclass
class FlowConfig:
    """How training draws (x_t, t, v): the path, the timestep density and CFG dropout."""

    sigma_min: float = option(
        1e-5, ge=0.0, lt=1.0, help="noise scale left at t=0 (x_0 = data + sigma_min*eps)"
    )
    timestep_sampling: Literal["uniform", "logit_normal"] = option(
        "logit_normal", help="density of training timesteps before the shift"
    )
    logit_mean: float = option(1.0, help="logit_normal: mean of logit(t); > 0 favours noisier t (TRELLIS: 1)")
    logit_std: float = option(1.0, gt=0.0, help="logit_normal: std of logit(t)")
    time_shift: float = option(
        1.0, gt=0.0, help="resolution shift t' = s*t / (1 + (s-1)*t); s > 1 favours noisier t (SD3)"
    )
    p_uncond: float = option(0.1, ge=0.0, le=1.0, help="probability of replacing a condition by the null one")


@dataclass
class SamplerConfig:
    """How to integrate the flow ODE from noise (t=1) to data (t=0)."""

    method: Literal["euler", "heun"] = option("euler", help="heun: 2nd order, two model calls per step")
    steps: int = option(25, ge=1, help="integration steps")
    cfg_scale: float = option(1.0, ge=0.0, help="classifier-free guidance scale (1: no guidance)")
    guidance_interval: tuple[float, float] = option(
        (0.0, 1.0), ge=0.0, le=1.0, help="apply guidance only for t in [lo, hi]"
    )
    guidance_rescale: float = option(
        0.0, ge=0.0, le=1.0, help="blend toward the guided x0 rescaled to the conditional std (0: off)"
    )
    time_shift: float = option(
        1.0, gt=0.0, help="shift of the time grid (TRELLIS rescale_t); > 1: finer near t=1"
    )

    def __post_init__(self):
        lo, hi = self.guidance_interval
        if lo > hi:
            raise ConfigValueError("guidance_interval", f"expected lo <= hi, got [{lo}, {hi}]")
