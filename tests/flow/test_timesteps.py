"""Training timestep densities: moments, the resolution shift and RNG handling."""

from __future__ import annotations

import math

import pytest
import torch

from voxforge.flow import FlowConfig, sample_logit_normal, sample_timesteps, sample_uniform, shift_time

N = 200_000


def test_uniform_moments():
    t = sample_uniform(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert t.min() >= 0 and t.max() < 1
    assert abs(t.mean() - 0.5) < 5e-3
    assert abs(t.var() - 1 / 12) < 2e-3


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (1.0, 1.0), (-0.5, 0.6)])
def test_logit_normal_moments_of_the_logit(mean, std):
    t = sample_logit_normal(N, mean, std, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() - mean) < 0.02
    assert abs(logit.std() - std) < 0.02
    # the median of t is sigmoid(mean): mean > 0 favours noisier timesteps
    assert abs(t.median() - 1 / (1 + math.exp(-mean))) < 0.01


def test_shift_formula_and_shifted_uniform_median():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.equal(shift_time(t, 1.0), t)
    s = 3.0
    shifted = shift_time(t, s)
    assert torch.allclose(shifted, s * t / (1 + (s - 1) * t))
    assert shifted[0] == 0 and shifted[-1] == 1 and bool((shifted.diff() > 0).all())
    config = FlowConfig(timestep_sampling="uniform", time_shift=s)
    draws = sample_timesteps(N, config, generator=torch.Generator().manual_seed(2))
    # a monotone map moves the median: s * 0.5 / (1 + (s - 1) * 0.5) = s / (1 + s)
    assert abs(float(draws.median()) - s / (1 + s)) < 0.01
    with pytest.raises(ValueError):
        shift_time(t, 0.0)


def test_generator_and_global_rng_are_reproducible():
    config = FlowConfig()
    a = sample_timesteps(64, config, generator=torch.Generator().manual_seed(5))
    b = sample_timesteps(64, config, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    torch.manual_seed(7)
    c = sample_timesteps(64, config)
    torch.manual_seed(7)
    d = sample_timesteps(64, config)
    assert torch.equal(c, d) and not torch.equal(a, c)
    # an explicit generator leaves the global stream alone
    torch.manual_seed(7)
    sample_timesteps(64, config, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sample_timesteps(64, config), c)
