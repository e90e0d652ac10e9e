"""The flow-matching training objective.

One call draws t (from `FlowConfig`'s density) and eps, builds x_t on the path and regresses
the network's velocity on the path's velocity with a mean squared error, computed in fp32
(the prediction may come from an autocast region). Condition dropout for guidance is left
to the caller (`guidance.drop_conditions`): only the stage knows what its null condition is.

Randomness comes from `generator` or the global RNG, which the training engine checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from voxforge.flow.config import FlowConfig
from voxforge.flow.path import interpolate, velocity_target
from voxforge.flow.samplers import ModelFn
from voxforge.flow.timesteps import sample_timesteps

__all__ = ["flow_matching_loss"]


def flow_matching_loss(
    model_fn: ModelFn,
    x0: Tensor,  # [B, ...] clean data (latents)
    cond: Any,
    config: FlowConfig,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, float]]:  # (scalar loss, metrics)
    batch = x0.shape[0]
    t = sample_timesteps(batch, config, generator=generator, device=x0.device)  # [B]
    if generator is not None:
        noise = torch.randn(x0.shape, generator=generator, device=generator.device, dtype=x0.dtype).to(
            x0.device
        )
    else:
        noise = torch.randn_like(x0)
    x_t = interpolate(x0, noise, t, config.sigma_min)
    target = velocity_target(x0, noise, config.sigma_min)
    pred = model_fn(x_t, t, cond)
    if pred.shape != target.shape:
        raise ValueError(
            f"the model predicted a velocity of shape {tuple(pred.shape)}, expected {tuple(target.shape)}"
        )
    per_sample = (pred.float() - target.float()).pow(2).reshape(batch, -1).mean(dim=1)  # [B]
    loss = per_sample.mean()
    return loss, {"mean_t": float(t.mean())}
