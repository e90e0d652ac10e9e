"""Classifier-free guidance: condition dropout for training and guided velocities for sampling.

Training replaces a sample's condition by a *null* condition with probability `p_uncond`,
so one network learns both the conditional and the unconditional velocity. The null is
zeros (TRELLIS's choice for image features) or a tensor the caller provides (a learned
null token, or the index of a "no class" embedding). A mapping of tensors (several
conditions of one sample) is dropped as a unit with one mask.

Sampling combines the two predictions as v = v_u + w (v_c - v_u). Guidance rescale
(Lin et al. 2024) counters the over-saturation of large w: the guided x0 prediction is
rescaled to the per-sample standard deviation of the conditional x0 prediction and blended
with the plain guided one by `rescale`. It works on x0 (the data space whose statistics
it means to keep) and maps back to a velocity with the path's closed-form conversions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from voxforge.flow.path import noise_scale, velocity_from_x0, x0_from_velocity

__all__ = ["drop_conditions", "guided_velocity"]


def _drop_tensor(cond: Tensor, mask: Tensor, null: Tensor | None) -> Tensor:  # cond [B, ...], mask [B]
    if null is None:
        null = torch.zeros((), dtype=cond.dtype, device=cond.device)
    null = torch.as_tensor(null, dtype=cond.dtype, device=cond.device)
    try:
        null = torch.broadcast_to(null, cond.shape)
    except RuntimeError:
        raise ValueError(
            f"null condition of shape {tuple(null.shape)} does not broadcast to one condition "
            f"{tuple(cond.shape[1:])} or to the batch {tuple(cond.shape)}"
        ) from None
    keep_shape = (cond.shape[0],) + (1,) * (cond.ndim - 1)
    return torch.where(mask.reshape(keep_shape), null, cond)


def drop_conditions(
    cond: Tensor | Mapping[str, Tensor],  # [B, ...] or {name: [B, ...]}
    p_uncond: float,
    null: Tensor | Mapping[str, Tensor] | None = None,  # broadcastable to [...] or [B, ...]; None: zeros
    *,
    generator: torch.Generator | None = None,
) -> tuple[Any, Tensor]:  # (conditions with dropped samples replaced, dropped mask [B] bool)
    if not 0.0 <= p_uncond <= 1.0:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond}")
    if isinstance(cond, Mapping):
        tensors = list(cond.values())
        if not tensors:
            raise ValueError("drop_conditions needs at least one condition tensor")
    elif isinstance(cond, Tensor):
        tensors = [cond]
    else:
        raise TypeError(f"conditions must be a tensor or a mapping of tensors, got {type(cond).__name__}")
    batch, device = tensors[0].shape[0], tensors[0].device
    if any(t.shape[0] != batch for t in tensors):
        raise ValueError("all condition tensors must share the batch dimension")
    draw_device = generator.device if generator is not None else device
    mask = (torch.rand(batch, generator=generator, device=draw_device) < p_uncond).to(device)
    if isinstance(cond, Tensor):
        if isinstance(null, Mapping):
            raise TypeError("a single condition tensor needs a tensor (or None) as its null condition")
        return _drop_tensor(cond, mask, null), mask
    if null is not None and not isinstance(null, Mapping):
        raise TypeError("a mapping of conditions needs a mapping (or None) of null conditions")
    nulls = null or {}
    unknown = set(nulls) - set(cond)
    if unknown:
        raise ValueError(f"null conditions for unknown keys: {sorted(unknown)}")
    return {k: _drop_tensor(v, mask, nulls.get(k)) for k, v in cond.items()}, mask


def guided_velocity(
    v_cond: Tensor,  # [B, ...]
    v_uncond: Tensor,  # [B, ...]
    scale: float,
    *,
    x_t: Tensor | None = None,  # [B, ...]; needed when rescale > 0
    t: float | None = None,  # needed when rescale > 0
    rescale: float = 0.0,
    sigma_min: float = 1e-5,
) -> Tensor:  # [B, ...]
    if scale == 1.0:
        return v_cond
    guided = v_uncond + scale * (v_cond - v_uncond)
    if rescale <= 0.0:
        return guided
    if x_t is None or t is None:
        raise ValueError("guidance rescale needs x_t and t")
    if noise_scale(t, sigma_min) < 1e-6:  # x0 no longer depends on v here: nothing to rescale
        return guided
    dims = list(range(1, guided.ndim))
    x0_cond = x0_from_velocity(x_t, t, v_cond, sigma_min)
    x0_guided = x0_from_velocity(x_t, t, guided, sigma_min)
    std_cond = x0_cond.std(dim=dims, keepdim=True)
    std_guided = x0_guided.std(dim=dims, keepdim=True).clamp_min(1e-12)
    x0 = rescale * x0_guided * (std_cond / std_guided) + (1.0 - rescale) * x0_guided
    return velocity_from_x0(x_t, t, x0, sigma_min)
