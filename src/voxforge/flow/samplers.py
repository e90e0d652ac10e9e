"""ODE samplers of a rectified flow: Euler and Heun from noise (t = 1) to data (t = 0).

Samplers know nothing about networks (diffusers' split): they call
`model_fn(x_t, t, cond) -> v` with x_t `[B, ...]`, t `[B]` and whatever condition object the
caller passes through, and integrate dx/dt = v over a time grid. The grid is
`linspace(1, 0, steps + 1)` mapped through the shift t' = s t / (1 + (s - 1) t)
(TRELLIS's `rescale_t`): s > 1 spends more steps at high noise, where the coarse
structure forms.

Guidance: where `cfg_scale != 1` and t lies in `guidance_interval`, the conditional and the
unconditional velocities are combined (and optionally rescaled, see `guidance`); outside
the interval only the conditional prediction is computed, which both saves a model call
and follows Kynkäänniemi et al. 2024 (guidance at the extremes of t harms diversity and
detail). By default conditional and unconditional calls are separate, so conditions can be
any object (tensors, mappings, sparse tensors) without the sampler knowing how to batch them.
`batch_guidance=True` evaluates both in one call of batch 2B instead — x_t and t repeated,
the condition pair concatenated once before the loop (tensors, or mappings of tensors) —
which is what a GPU wants (one wide matmul per layer instead of two narrow ones) and how
TRELLIS-scale models sample; `model_fn` then also sees batches of 2B (and B outside the
guidance interval). The output is the same up to floating-point summation order.

Heun is the trapezoidal predictor-corrector: it re-evaluates the velocity at the Euler
prediction and averages the two slopes, second order in the step size for two model calls
per step. The flow's velocity is finite at t = 0, so the corrector also runs on the last
step (unlike EDM's Heun, whose t = 0 derivative is singular).

Determinism: the samplers draw no random numbers; the output is a function of the noise
(use `make_noise(..., seed=)`), so the same seed gives bit-identical samples on one
machine. The state is integrated in at least fp32 whatever autocast the model runs under.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor

from voxforge.flow.config import SamplerConfig
from voxforge.flow.guidance import guided_velocity
from voxforge.flow.timesteps import shift_time

__all__ = ["ModelFn", "time_grid", "make_noise", "sample", "sample_from_config"]

#: model_fn(x_t [B, ...], t [B], cond) -> velocity [B, ...]
ModelFn = Callable[[Tensor, Tensor, Any], Tensor]
#: callback(step index, t of the step's start, x after the step)
StepCallback = Callable[[int, float, Tensor], None]


def time_grid(
    steps: int, time_shift: float = 1.0, *, dtype: torch.dtype = torch.float64
) -> Tensor:  # [steps + 1]
    """Times from 1 down to 0 (both included), shifted by `time_shift`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, dtype=dtype), time_shift)


def make_noise(
    shape: Sequence[int],
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Tensor:  # shape
    """Standard normal noise from a seed (drawn on the CPU, so it is the same on every device)."""
    if seed is not None and generator is not None:
        raise ValueError("pass either seed or generator, not both")
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    if generator is not None and generator.device.type != "cpu":
        return torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype).to(device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)


def _cat_conditions(cond: Any, uncond: Any) -> Any:
    """[cond; uncond] along the batch: tensors, or mappings of tensors with the same keys."""
    if isinstance(cond, Tensor) and isinstance(uncond, Tensor):
        return torch.cat([cond, uncond.to(cond.dtype)])
    if isinstance(cond, Mapping) and isinstance(uncond, Mapping) and set(cond) == set(uncond):
        return {k: _cat_conditions(cond[k], uncond[k]) for k in cond}
    raise TypeError(
        "batch_guidance needs cond and uncond as tensors or mappings of tensors with the same keys, "
        f"got {type(cond).__name__} and {type(uncond).__name__}"
    )


class _Velocity:
    """One evaluation of the (guided) velocity at time t; counts model calls."""

    def __init__(self, model_fn, cond, uncond, cfg_scale, interval, rescale, sigma_min, batch_guidance=False):
        if cfg_scale != 1.0 and uncond is None:
            raise ValueError("classifier-free guidance (cfg_scale != 1) needs an unconditional `uncond`")
        lo, hi = interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"guidance_interval must satisfy 0 <= lo <= hi <= 1, got [{lo}, {hi}]")
        self.model_fn, self.cond, self.uncond = model_fn, cond, uncond
        self.cfg_scale, self.interval, self.rescale, self.sigma_min = cfg_scale, (lo, hi), rescale, sigma_min
        # the condition pair of a batched guided call, concatenated once for all steps
        self.pair = _cat_conditions(cond, uncond) if batch_guidance and cfg_scale != 1.0 else None
        self.calls = 0

    def __call__(self, x: Tensor, t: float) -> Tensor:
        lo, hi = self.interval
        guided = self.cfg_scale != 1.0 and lo <= t <= hi
        if guided and self.pair is not None:
            both = torch.cat([x, x])
            t_both = torch.full((both.shape[0],), t, dtype=x.dtype, device=x.device)
            v_cond, v_uncond = self._call(both, t_both, self.pair).chunk(2)
        else:
            t_batch = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
            v_cond = self._call(x, t_batch, self.cond)
            if not guided:
                return v_cond
            v_uncond = self._call(x, t_batch, self.uncond)
        return guided_velocity(
            v_cond, v_uncond, self.cfg_scale, x_t=x, t=t, rescale=self.rescale, sigma_min=self.sigma_min
        )

    def _call(self, x: Tensor, t: Tensor, cond: Any) -> Tensor:
        self.calls += 1
        v = self.model_fn(x, t, cond)
        if v.shape != x.shape:
            raise ValueError(
                f"model_fn returned a velocity of shape {tuple(v.shape)} for x_t {tuple(x.shape)}"
            )
        return v.to(x.dtype)


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    noise: Tensor,  # [B, ...] the state at t = 1
    cond: Any = None,  # passed to model_fn as is
    uncond: Any = None,  # null condition for guidance (same structure as cond)
    *,
    steps: int = 25,
    cfg_scale: float = 1.0,
    method: str = "euler",
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    guidance_rescale: float = 0.0,
    time_shift: float = 1.0,
    sigma_min: float = 1e-5,
    batch_guidance: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:  # [B, ...] the state at t = 0, dtype at least fp32
    """Integrate the flow ODE from `noise` at t = 1 to t = 0 (see module docstring)."""
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown sampler method '{method}' (euler, heun)")
    velocity = _Velocity(
        model_fn, cond, uncond, cfg_scale, guidance_interval, guidance_rescale, sigma_min, batch_guidance
    )
    x = noise.to(torch.promote_types(noise.dtype, torch.float32))
    grid = time_grid(steps, time_shift).tolist()
    for i in range(steps):
        t, t_next = grid[i], grid[i + 1]
        dt = t_next - t  # negative: integrating toward the data
        slope = velocity(x, t)
        if method == "heun":
            predicted = x + dt * slope
            slope = 0.5 * (slope + velocity(predicted, t_next))
        x = x + dt * slope
        if callback is not None:
            callback(i, t, x)
    return x


def sample_from_config(
    model_fn: ModelFn,
    noise: Tensor,  # [B, ...]
    cond: Any,
    uncond: Any,
    config: SamplerConfig,
    *,
    sigma_min: float = 1e-5,
    batch_guidance: bool = False,
    callback: StepCallback | None = None,
) -> Tensor:  # [B, ...]
    return sample(
        model_fn,
        noise,
        cond,
        uncond,
        sigma_min=sigma_min,
        batch_guidance=batch_guidance,
        callback=callback,
        **asdict(config),
    )
