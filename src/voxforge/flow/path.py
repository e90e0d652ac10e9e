"""The rectified-flow path between data and noise, and conversions between predictions.

x_t = (1 - t) * x0 + (sigma_min + (1 - sigma_min) * t) * eps,   t in [0, 1]

t = 0 is data (plus a sigma_min floor of noise, which keeps the map invertible at the data
end), t = 1 is pure noise (TRELLIS's convention). The path is linear in t, so its velocity
dx_t/dt = (1 - sigma_min) * eps - x0 does not depend on t; that is the regression target.

Given x_t and a velocity v the other parametrisations follow in closed form
(eps = x_t + (1 - t) v and x0 = (1 - sigma_min) x_t - (sigma_min + (1 - sigma_min) t) v);
guidance rescaling works on the x0 prediction through them.
"""

from __future__ import annotations

from torch import Tensor

__all__ = [
    "interpolate",
    "velocity_target",
    "noise_scale",
    "x0_from_velocity",
    "noise_from_velocity",
    "velocity_from_x0",
]


def _expand(t: Tensor | float, like: Tensor) -> Tensor | float:
    """[B] times -> [B, 1, ..., 1] so they broadcast over a sample's dimensions."""
    if isinstance(t, Tensor) and t.ndim == 1 and like.ndim > 1:
        if t.shape[0] != like.shape[0]:
            raise ValueError(f"t has {t.shape[0]} entries but the batch has {like.shape[0]} samples")
        return t.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
    return t


def noise_scale(t: Tensor | float, sigma_min: float) -> Tensor | float:
    """Coefficient of eps in x_t: sigma_min + (1 - sigma_min) * t."""
    return sigma_min + (1.0 - sigma_min) * t


def interpolate(
    x0: Tensor,  # [B, ...] data
    noise: Tensor,  # [B, ...] standard normal
    t: Tensor | float,  # [B] or scalar, in [0, 1]
    sigma_min: float = 1e-5,
) -> Tensor:  # [B, ...] x_t
    if x0.shape != noise.shape:
        raise ValueError(f"data {tuple(x0.shape)} and noise {tuple(noise.shape)} must have the same shape")
    t = _expand(t, x0)
    return (1.0 - t) * x0 + noise_scale(t, sigma_min) * noise


def velocity_target(
    x0: Tensor,  # [B, ...]
    noise: Tensor,  # [B, ...]
    sigma_min: float = 1e-5,
) -> Tensor:  # [B, ...] dx_t/dt
    return (1.0 - sigma_min) * noise - x0


def x0_from_velocity(
    x_t: Tensor,  # [B, ...]
    t: Tensor | float,  # [B] or scalar
    v: Tensor,  # [B, ...]
    sigma_min: float = 1e-5,
) -> Tensor:  # [B, ...]
    t = _expand(t, x_t)
    return (1.0 - sigma_min) * x_t - noise_scale(t, sigma_min) * v


def noise_from_velocity(
    x_t: Tensor,  # [B, ...]
    t: Tensor | float,  # [B] or scalar
    v: Tensor,  # [B, ...]
) -> Tensor:  # [B, ...]
    t = _expand(t, x_t)
    return x_t + (1.0 - t) * v


def velocity_from_x0(
    x_t: Tensor,  # [B, ...]
    t: Tensor | float,  # [B] or scalar; sigma_min + (1 - sigma_min) t must be > 0
    x0: Tensor,  # [B, ...]
    sigma_min: float = 1e-5,
) -> Tensor:  # [B, ...]
    t = _expand(t, x_t)
    return ((1.0 - sigma_min) * x_t - x0) / noise_scale(t, sigma_min)
