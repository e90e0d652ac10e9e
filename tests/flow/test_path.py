"""The rectified-flow path: endpoints, velocity target, conversions and the training loss."""

from __future__ import annotations

import pytest
import torch

from voxforge.flow import (
    FlowConfig,
    flow_matching_loss,
    interpolate,
    noise_from_velocity,
    velocity_from_x0,
    velocity_target,
    x0_from_velocity,
)


def _pair(shape=(4, 3, 5), seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(
        shape, generator=gen, dtype=torch.float64
    )


def test_endpoints_data_at_zero_noise_at_one():
    x0, eps = _pair()
    sigma = 1e-3
    assert torch.allclose(interpolate(x0, eps, 0.0, sigma), x0 + sigma * eps)
    assert torch.allclose(interpolate(x0, eps, 1.0, sigma), eps)
    assert torch.equal(interpolate(x0, eps, 0.0, 0.0), x0)
    batch_t = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    mixed = interpolate(x0, eps, batch_t, 0.0)
    assert torch.equal(mixed[0], x0[0]) and torch.equal(mixed[1], eps[1])


def test_velocity_target_is_time_derivative_of_path():
    x0, eps = _pair()
    sigma = 1e-2
    target = velocity_target(x0, eps, sigma)
    assert torch.allclose(target, (1 - sigma) * eps - x0)
    for t in (0.1, 0.5, 0.9):
        h = 1e-6
        finite = (interpolate(x0, eps, t + h, sigma) - interpolate(x0, eps, t - h, sigma)) / (2 * h)
        assert torch.allclose(finite, target, atol=1e-8)


def test_conversions_recover_data_and_noise_from_exact_velocity():
    x0, eps = _pair()
    sigma = 1e-2
    t = torch.tensor([0.05, 0.3, 0.7, 0.99], dtype=torch.float64)
    x_t = interpolate(x0, eps, t, sigma)
    v = velocity_target(x0, eps, sigma)
    assert torch.allclose(x0_from_velocity(x_t, t, v, sigma), x0, atol=1e-12)
    assert torch.allclose(noise_from_velocity(x_t, t, v), eps, atol=1e-12)
    assert torch.allclose(velocity_from_x0(x_t, t, x0, sigma), v, atol=1e-10)


def test_interpolate_rejects_mismatched_shapes_and_batch():
    x0, eps = _pair()
    with pytest.raises(ValueError, match="same shape"):
        interpolate(x0, eps[:, :2], 0.5)
    with pytest.raises(ValueError, match="entries"):
        interpolate(x0, eps, torch.rand(3))


def test_flow_matching_loss_zero_for_oracle_and_differentiable():
    x0 = torch.randn(16, 2)
    config = FlowConfig(sigma_min=0.0, timestep_sampling="uniform")
    gen_a = torch.Generator().manual_seed(3)
    t = torch.rand(16, generator=gen_a)
    eps = torch.randn(16, 2, generator=gen_a)

    def oracle(x_t, t_in, cond):  # knows the draws, so it predicts the target exactly
        assert torch.equal(t_in, t)
        return velocity_target(x0, eps, 0.0)

    loss, metrics = flow_matching_loss(oracle, x0, None, config, generator=torch.Generator().manual_seed(3))
    assert float(loss) < 1e-12 and 0.0 < metrics["mean_t"] < 1.0

    layer = torch.nn.Linear(3, 2)
    loss, _ = flow_matching_loss(lambda x, t, c: layer(torch.cat([x, t[:, None]], 1)), x0, None, config)
    loss.backward()
    assert torch.isfinite(loss) and layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
