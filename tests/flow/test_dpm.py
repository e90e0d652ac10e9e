"""DPM-Solver++ (2M) on the flow: diffusers' scheduler step for step, second order, guidance."""

from __future__ import annotations

import pytest
import torch

from voxforge.flow import make_noise, sample, time_grid
from voxforge.flow.dpm import sample_dpm

diffusers = pytest.importorskip("diffusers")


def gaussian_velocity(mu: torch.Tensor, s: float, sigma_min: float):
    """Exact velocity of the path for data ~ N(mu, s^2 I) (see tests/flow/test_samplers.py)."""

    def model_fn(x, t, cond):
        mean = mu if cond is None else cond
        a = (1 - t)[:, None].to(x.dtype)
        b = sigma_min + (1 - sigma_min) * t[:, None].to(x.dtype)
        var = a**2 * s**2 + b**2
        return -mean + ((1 - sigma_min) * b - a * s**2) / var * (x - a * mean)

    return model_fn


MU = torch.tensor([[1.5, -0.7, 0.3]])
S = 0.4


def sana_scheduler(steps: int, shift: float):
    """Sana's scheduler (diffusers' DPMSolverMultistepScheduler for flow matching) on voxforge's grid.

    diffusers derives its flow grid from 1000 training steps (it starts at shift(0.999) and
    rounds the timesteps to integers); the solver math is compared here on one grid, so
    voxforge's grid is installed in place of that one.
    """
    scheduler = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=shift,
        solver_order=2,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    scheduler.set_timesteps(steps)
    scheduler.sigmas = time_grid(steps, shift).float()
    scheduler.timesteps = scheduler.sigmas[:-1] * 1000
    return scheduler


@pytest.mark.parametrize(("steps", "shift"), [(1, 1.0), (2, 1.0), (6, 3.0), (20, 1.0)])
def test_matches_diffusers_dpm_solver_step_for_step(steps, shift):
    model_fn = gaussian_velocity(MU, S, sigma_min=0.0)
    noise = make_noise((64, 3), seed=1)
    scheduler = sana_scheduler(steps, shift)
    x = noise.clone()
    for i, timestep in enumerate(scheduler.timesteps):
        v = model_fn(x, scheduler.sigmas[i].expand(x.shape[0]), None)
        x = scheduler.step(v, timestep, x, return_dict=False)[0]
    ours = sample_dpm(model_fn, noise, steps=steps, time_shift=shift, sigma_min=0.0)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=0)


def test_one_step_is_euler():
    model_fn = gaussian_velocity(MU, S, sigma_min=0.0)
    noise = make_noise((16, 3), seed=2)
    euler = sample(model_fn, noise, steps=1, sigma_min=0.0)
    torch.testing.assert_close(sample_dpm(model_fn, noise, steps=1, sigma_min=0.0), euler)


def test_second_order_beats_euler_and_converges():
    mu, s = MU.double(), S
    model_fn = gaussian_velocity(mu, s, sigma_min=1e-5)
    noise = make_noise((256, 3), seed=3, dtype=torch.float64)
    exact = mu + (s**2 + 1e-10) ** 0.5 * noise
    errors = {}
    for steps in (8, 16):
        dpm = sample_dpm(model_fn, noise, steps=steps, sigma_min=1e-5)
        euler = sample(model_fn, noise, steps=steps, sigma_min=1e-5)
        errors[steps] = (dpm - exact).abs().max().item()
        assert errors[steps] < 0.5 * (euler - exact).abs().max().item()
    assert errors[16] < errors[8] / 3  # about 4x for a second-order method


def test_batched_guidance_matches_separate_calls():
    def model_fn(x, t, cond):
        return x * 0.5 - cond * (1 + t[:, None])

    noise = make_noise((4, 3), seed=4)
    cond, uncond = torch.ones(4, 3), torch.zeros(4, 3)
    kwargs = dict(steps=5, cfg_scale=3.0, time_shift=2.0)
    separate = sample_dpm(model_fn, noise, cond, uncond, **kwargs)
    batched = sample_dpm(model_fn, noise, cond, uncond, batch_guidance=True, **kwargs)
    torch.testing.assert_close(batched, separate)
    assert not torch.allclose(separate, sample_dpm(model_fn, noise, cond, uncond, steps=5, time_shift=2.0))


def test_explicit_times_follow_diffusers_default_flow_grid():
    from voxforge.flow.dpm import diffusers_flow_times, diffusers_flow_timesteps

    steps, shift = 7, 3.0
    scheduler = diffusers.DPMSolverMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift, final_sigmas_type="zero"
    )
    scheduler.set_timesteps(steps)
    assert scheduler.sigmas.tolist() == diffusers_flow_times(steps, shift)
    assert scheduler.timesteps.tolist() == diffusers_flow_timesteps(steps, shift)
    model_fn = gaussian_velocity(MU, S, sigma_min=0.0)
    noise = make_noise((32, 3), seed=5)
    x = noise.clone()
    for i, timestep in enumerate(scheduler.timesteps):
        x = scheduler.step(
            model_fn(x, scheduler.sigmas[i].expand(len(x)), None), timestep, x, return_dict=False
        )[0]
    ours = sample_dpm(model_fn, noise, times=diffusers_flow_times(steps, shift), sigma_min=0.0)
    torch.testing.assert_close(ours, x, atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="descend"):
        sample_dpm(model_fn, noise, times=[1.0, 0.5, 0.6, 0.0])
