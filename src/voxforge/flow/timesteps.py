"""Training timesteps: uniform or logit-normal densities, then a resolution shift.

- uniform: t ~ U(0, 1).
- logit-normal: t = sigmoid(n), n ~ N(mean, std) (SD3; TRELLIS trains with mean 1, std 1,
  which puts more weight on the noisy half where the structure of a sample is decided).
- shift s: t' = s t / (1 + (s - 1) t), a monotone map of [0, 1] onto itself. It is the
  change of time that keeps the signal-to-noise ratio of a sample of larger resolution
  (more correlated dimensions) comparable; s > 1 moves mass toward t = 1. The same map
  shifts the sampler's time grid (TRELLIS's `rescale_t`).

All draws take an explicit `torch.Generator` (drawn on its device, then moved) or, when none
is given, the global RNG (which the training engine checkpoints, so resumed runs draw the
same timesteps).
"""

from __future__ import annotations

import torch
from torch import Tensor

from voxforge.flow.config import FlowConfig

__all__ = ["shift_time", "sample_uniform", "sample_logit_normal", "sample_timesteps"]


def shift_time(t: Tensor, shift: float) -> Tensor:  # [...] in [0, 1] -> [...] in [0, 1]
    if shift <= 0:
        raise ValueError(f"time shift must be > 0, got {shift}")
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_uniform(
    n: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:  # [n]
    draw_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=draw_device, dtype=dtype).to(device)


def sample_logit_normal(
    n: int,
    mean: float = 0.0,
    std: float = 1.0,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:  # [n] in (0, 1)
    if std <= 0:
        raise ValueError(f"logit-normal std must be > 0, got {std}")
    draw_device = generator.device if generator is not None else device
    normal = torch.randn(n, generator=generator, device=draw_device, dtype=dtype).to(device)
    return torch.sigmoid(mean + std * normal)


def sample_timesteps(
    n: int,
    config: FlowConfig,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:  # [n] float32 in [0, 1]
    """Draw `n` training timesteps with the density and shift of `config`."""
    if config.timestep_sampling == "uniform":
        t = sample_uniform(n, generator=generator, device=device)
    elif config.timestep_sampling == "logit_normal":
        t = sample_logit_normal(n, config.logit_mean, config.logit_std, generator=generator, device=device)
    else:
        raise ValueError(f"unknown timestep_sampling '{config.timestep_sampling}' (uniform, logit_normal)")
    return shift_time(t, config.time_shift)
