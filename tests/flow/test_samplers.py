"""Euler / Heun samplers: exactness on a Gaussian, determinism, guidance and its interval."""

from __future__ import annotations

import pytest
import torch

from voxforge.flow import SamplerConfig, make_noise, sample, sample_from_config, time_grid

SIGMA = 1e-5


def gaussian_velocity(mu: torch.Tensor, s: float, sigma_min: float = SIGMA):
    """Exact velocity E[v | x_t = x] of the path for data ~ N(mu, s^2 I).

    x_t is Gaussian with mean a*mu and variance V = a^2 s^2 + b^2 (a = 1 - t,
    b = sigma_min + (1 - sigma_min) t), so E[x0 | x] and E[eps | x] are linear in x and
    v*(x, t) = -mu + ((1 - sigma_min) b - a s^2) / V * (x - a mu).
    """

    def model_fn(x, t, cond):
        mean = mu if cond is None else cond
        a = (1 - t)[:, None]
        b = sigma_min + (1 - sigma_min) * t[:, None]
        var = a**2 * s**2 + b**2
        return -mean + ((1 - sigma_min) * b - a * s**2) / var * (x - a * mean)

    return model_fn


def exact_endpoint(noise, mu, s, sigma_min=SIGMA):
    # the probability-flow map is affine: x_t = a mu + sqrt(V(t)) * noise, V(1) = 1
    return mu + (s**2 + sigma_min**2) ** 0.5 * noise


MU = torch.tensor([[1.5, -0.7, 0.3]], dtype=torch.float64)
S = 0.4


def _noise(n=512, seed=0):
    return make_noise((n, 3), seed=seed, dtype=torch.float64)


@pytest.mark.parametrize("time_shift", [1.0, 3.0])
def test_ode_maps_noise_to_analytic_solution(time_shift):
    noise = _noise()
    exact = exact_endpoint(noise, MU, S)
    model_fn = gaussian_velocity(MU, S)
    heun = sample(model_fn, noise, steps=1000, method="heun", time_shift=time_shift, sigma_min=SIGMA)
    euler = sample(model_fn, noise, steps=2000, method="euler", time_shift=time_shift, sigma_min=SIGMA)
    assert (heun - exact).abs().max() < 2e-6
    assert (euler - exact).abs().max() < 3e-3
    # the samples carry the target distribution's moments
    assert torch.allclose(heun.mean(0), MU[0] + S * noise.mean(0), atol=1e-6)


@pytest.mark.parametrize("steps", [4, 10, 40])
def test_heun_more_accurate_than_euler_at_equal_steps(steps):
    noise = _noise()
    exact = exact_endpoint(noise, MU, S)
    model_fn = gaussian_velocity(MU, S)
    err_euler = (sample(model_fn, noise, steps=steps) - exact).abs().max()
    err_heun = (sample(model_fn, noise, steps=steps, method="heun") - exact).abs().max()
    assert err_heun < 0.2 * err_euler


def test_convergence_orders():
    noise = _noise(64)
    exact = exact_endpoint(noise, MU, S)
    model_fn = gaussian_velocity(MU, S)

    def err(method, steps):
        return float((sample(model_fn, noise, steps=steps, method=method) - exact).abs().max())

    assert 1.6 < err("euler", 50) / err("euler", 100) < 2.4  # first order
    assert 3.2 < err("heun", 50) / err("heun", 100) < 4.8  # second order


def test_guidance_on_gaussians_is_exact():
    # v* is affine in the mean, so guided velocities of two Gaussians with equal spread are the
    # velocity of the Gaussian with the guided mean mu_u + w (mu_c - mu_u).
    mu_c, mu_u, w = MU, torch.zeros_like(MU), 2.5
    noise = _noise()
    out = sample(gaussian_velocity(MU, S), noise, mu_c, mu_u, steps=1000, method="heun", cfg_scale=w)
    assert (out - exact_endpoint(noise, mu_u + w * (mu_c - mu_u), S)).abs().max() < 5e-6


def test_same_seed_same_samples():
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.SiLU(), torch.nn.Linear(32, 3))

    def model_fn(x, t, cond):
        return net(torch.cat([x, t[:, None]], 1)) * cond

    config = SamplerConfig(
        method="heun", steps=7, cfg_scale=3.0, guidance_interval=(0.2, 0.9), time_shift=2.0
    )
    runs = [
        sample_from_config(model_fn, make_noise((16, 3), seed=seed), 1.0, 0.0, config)
        for seed in (11, 11, 12)
    ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


class Recorder:
    def __init__(self):
        self.calls: list[tuple[float, object]] = []

    def __call__(self, x, t, cond):
        self.calls.append((float(t[0]), cond))
        return -x * (1.0 if cond == "c" else 0.5)


def test_guidance_interval_limits_unconditional_calls():
    noise = make_noise((2, 3), seed=0)
    lo, hi = 0.3, 0.7
    rec = Recorder()
    sample(rec, noise, "c", "u", steps=10, cfg_scale=4.0, guidance_interval=(lo, hi))
    cond_ts = [t for t, c in rec.calls if c == "c"]
    uncond_ts = [t for t, c in rec.calls if c == "u"]
    assert len(cond_ts) == 10
    assert uncond_ts and all(lo - 1e-9 <= t <= hi + 1e-9 for t in uncond_ts)
    assert len(uncond_ts) == sum(lo - 1e-9 <= t <= hi + 1e-9 for t in cond_ts)


def test_guidance_outside_interval_is_the_conditional_flow():
    noise = make_noise((2, 3), seed=0)
    plain = sample(Recorder(), noise, "c", None, steps=10)
    never = sample(Recorder(), noise, "c", "u", steps=10, cfg_scale=4.0, guidance_interval=(0.95, 0.96))
    always = sample(Recorder(), noise, "c", "u", steps=10, cfg_scale=4.0)
    middle = sample(Recorder(), noise, "c", "u", steps=10, cfg_scale=4.0, guidance_interval=(0.3, 0.7))
    assert torch.equal(plain, never)
    assert not torch.allclose(plain, always)
    assert not torch.allclose(middle, always) and not torch.allclose(middle, plain)
    # cfg_scale 1 never calls the unconditional branch
    rec = Recorder()
    sample(rec, noise, "c", "u", steps=5, cfg_scale=1.0)
    assert all(c == "c" for _, c in rec.calls)


def test_time_grid_and_argument_errors():
    grid = time_grid(8, 3.0)
    assert grid[0] == 1 and grid[-1] == 0 and bool((grid.diff() < 0).all())
    # shift > 1 spends more of the steps at high noise
    assert (grid > 0.5).sum() > (time_grid(8) > 0.5).sum()
    noise = make_noise((2, 3), seed=0)
    with pytest.raises(ValueError, match="uncond"):
        sample(Recorder(), noise, "c", None, cfg_scale=2.0)
    with pytest.raises(ValueError, match="method"):
        sample(Recorder(), noise, "c", method="rk4")
    with pytest.raises(ValueError, match="guidance_interval"):
        sample(Recorder(), noise, "c", "u", cfg_scale=2.0, guidance_interval=(0.8, 0.2))
    with pytest.raises(ValueError, match="shape"):
        sample(lambda x, t, c: x[:, :2], noise)


def test_callback_sees_every_step_and_fp32_state():
    seen = []
    out = sample(
        lambda x, t, c: -x,
        make_noise((2, 3), seed=0).half(),
        steps=4,
        callback=lambda i, t, x: seen.append(i),
    )
    assert seen == [0, 1, 2, 3] and out.dtype == torch.float32
