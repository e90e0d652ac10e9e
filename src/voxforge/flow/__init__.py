"""Rectified flow, independent of any network: the path, training timesteps, the
flow-matching loss, classifier-free guidance and ODE samplers (Euler, Heun, DPM-Solver++ 2M).

Convention (TRELLIS): t = 0 is data, t = 1 is noise,
x_t = (1 - t) x0 + (sigma_min + (1 - sigma_min) t) eps and the network predicts the
velocity v = (1 - sigma_min) eps - x0. A network plugs in as `model_fn(x_t, t, cond) -> v`.
"""

from voxforge.flow.config import FlowConfig, SamplerConfig
from voxforge.flow.dpm import sample_dpm
from voxforge.flow.guidance import drop_conditions, guided_velocity
from voxforge.flow.loss import flow_matching_loss
from voxforge.flow.path import (
    interpolate,
    noise_from_velocity,
    noise_scale,
    velocity_from_x0,
    velocity_target,
    x0_from_velocity,
)
from voxforge.flow.samplers import make_noise, sample, sample_from_config, time_grid
from voxforge.flow.timesteps import sample_logit_normal, sample_timesteps, sample_uniform, shift_time

__all__ = [
    "FlowConfig",
    "SamplerConfig",
    "drop_conditions",
    "flow_matching_loss",
    "guided_velocity",
    "interpolate",
    "make_noise",
    "noise_from_velocity",
    "noise_scale",
    "sample",
    "sample_dpm",
    "sample_from_config",
    "sample_logit_normal",
    "sample_timesteps",
    "sample_uniform",
    "shift_time",
    "time_grid",
    "velocity_from_x0",
    "velocity_target",
    "x0_from_velocity",
]
