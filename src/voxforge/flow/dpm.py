"""DPM-Solver++ (2M), the multistep second-order solver Sana samples with, on voxforge's flow.

Lu et al. 2022 ("DPM-Solver++") integrate the probability-flow ODE of a path
x_t = alpha_t x0 + sigma_t eps in the log signal-to-noise ratio lambda = log(alpha / sigma),
where the data prediction x0 enters linearly and the linear part is solved exactly. On
voxforge's rectified flow (`flow.path`: t = 0 data, t = 1 noise) alpha_t = 1 - t and
sigma_t = sigma_min + (1 - sigma_min) t, and x0 follows from the network's velocity in closed
form (`path.x0_from_velocity`), so a velocity network plugs in unchanged as
`model_fn(x_t, t, cond) -> v`, with the guidance of `flow.samplers` applied to v first.

One step from s to t (t < s), with h = lambda_t - lambda_s and D0 = x0(x_s, s):

    first order:   x_t = (sigma_t / sigma_s) x_s - c D0,        c = alpha_t (exp(-h) - 1)
    second order:  x_t = (sigma_t / sigma_s) x_s - c D0 - c/2 D1,  D1 = (D0 - D_prev) / r,
                   r = h_prev / h  (the "midpoint" form of diffusers' DPMSolverMultistepScheduler)

c is written as sigma_t alpha_s / sigma_s - alpha_t, which needs no logarithm and stays
finite at the noise end (alpha_s = 0 at t = 1: x_t = sigma_t x_s + alpha_t D0, which is
exactly one Euler step of the flow). The first step is first order (no history), so is a
step whose history starts at t = 1 (lambda = -inf, so r = inf and D1 = 0: the same
numbers diffusers computes), and so is the last step, as diffusers does with
`final_sigmas_type="zero"`. With sigma_min = 0 and the same time grid this is diffusers'
`DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint")` — Sana's scheduler;
`tests/flow/test_dpm.py` checks it step by step.

The time grid is `samplers.time_grid` (linspace(1, 0) through the shift) unless `times` gives
one: diffusers' Sana scheduler starts at shift(1 - 1/1000) instead (`diffusers_flow_times`
reproduces its grid; docs/image.md, "Sampling"). One model evaluation per step, like Euler,
but second order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from voxforge.flow.path import noise_scale, x0_from_velocity
from voxforge.flow.samplers import ModelFn, StepCallback, _Velocity, time_grid

__all__ = ["diffusers_flow_times", "diffusers_flow_timesteps", "sample_dpm"]


def _diffusers_flow_sigmas(steps: int, shift: float, train_steps: int) -> Tensor:  # [steps] float64
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    sigmas = 1.0 - torch.linspace(1.0, 1.0 / train_steps, steps + 1, dtype=torch.float64)
    return (shift * sigmas / (1 + (shift - 1) * sigmas)).flip(0)[:-1]


def diffusers_flow_times(steps: int, shift: float, train_steps: int = 1000) -> list[float]:
    """The flow-sigma grid of diffusers' DPMSolverMultistepScheduler(use_flow_sigmas=True):
    linspace(0, 1 - 1/train_steps, steps + 1) through the shift, descending, its last (zero)
    point dropped, then a final 0 (`final_sigmas_type="zero"`); float32 values as diffusers
    stores them. steps + 1 times."""
    sigmas = _diffusers_flow_sigmas(steps, shift, train_steps)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float64)]).float().tolist()


def diffusers_flow_timesteps(steps: int, shift: float, train_steps: int = 1000) -> list[int]:
    """The network timesteps that scheduler hands out with those times: train_steps * sigma
    truncated to integers (`timesteps.to(torch.int64)`). steps values."""
    sigmas = _diffusers_flow_sigmas(steps, shift, train_steps)
    return (sigmas * train_steps).to(torch.int64).tolist()


def _log_snr(t: float, sigma_min: float) -> float:
    """lambda = log(alpha / sigma); -inf at the noise end (alpha = 0), +inf at t = 0 when sigma_min = 0."""
    alpha, sigma = 1.0 - t, noise_scale(t, sigma_min)
    if alpha <= 0.0:
        return -math.inf
    if sigma <= 0.0:
        return math.inf
    return math.log(alpha) - math.log(sigma)


@torch.no_grad()
def sample_dpm(
    model_fn: ModelFn,
    noise: Tensor,  # [B, ...] the state at t = 1
    cond: Any = None,
    uncond: Any = None,
    *,
    steps: int = 20,
    cfg_scale: float = 1.0,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    guidance_rescale: float = 0.0,
    time_shift: float = 1.0,
    sigma_min: float = 1e-5,
    batch_guidance: bool = False,
    callback: StepCallback | None = None,
    times: Sequence[float] | None = None,  # [steps + 1] descending to 0; None: time_grid(steps, time_shift)
) -> Tensor:  # [B, ...] the state at t = 0, dtype at least fp32
    """Integrate the flow ODE from `noise` (at the grid's first time, 1 by default) to t = 0
    with DPM-Solver++ (2M).

    Arguments mean what they mean for `flow.sample` (guidance, its interval and rescale,
    batched guidance, the shifted time grid); the model is called once per step.
    """
    velocity = _Velocity(
        model_fn, cond, uncond, cfg_scale, guidance_interval, guidance_rescale, sigma_min, batch_guidance
    )
    x = noise.to(torch.promote_types(noise.dtype, torch.float32))
    if times is None:
        grid = time_grid(steps, time_shift).tolist()
    else:
        grid = [float(t) for t in times]
        if len(grid) < 2 or grid[-1] != 0.0 or any(a <= b for a, b in zip(grid, grid[1:])) or grid[0] > 1.0:
            raise ValueError("times must descend strictly from at most 1 to exactly 0")
        steps = len(grid) - 1
    previous: tuple[Tensor, float] | None = None  # (x0 prediction, its lambda) of the last step
    for i in range(steps):
        s, t = grid[i], grid[i + 1]
        x0 = x0_from_velocity(x, s, velocity(x, s), sigma_min)
        alpha_s, sigma_s = 1.0 - s, noise_scale(s, sigma_min)
        alpha_t, sigma_t = 1.0 - t, noise_scale(t, sigma_min)
        c = sigma_t * alpha_s / sigma_s - alpha_t  # alpha_t (exp(-h) - 1)
        update = x0
        lam_s = _log_snr(s, sigma_min)
        last = i == steps - 1
        if previous is not None and not last and math.isfinite(previous[1]):
            x0_prev, lam_prev = previous
            h = _log_snr(t, sigma_min) - lam_s
            r = (lam_s - lam_prev) / h
            update = x0 + (0.5 / r) * (x0 - x0_prev)  # D0 + D1 / 2
        x = (sigma_t / sigma_s) * x - c * update
        previous = (x0, lam_s)
        if callback is not None:
            callback(i, s, x)
    return x
