"""Condition dropout for classifier-free guidance and the guided velocity."""

from __future__ import annotations

import math

import pytest
import torch

from voxforge.flow import drop_conditions, guided_velocity, x0_from_velocity


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_rate_matches_p(p):
    n = 20_000
    cond = torch.ones(n, 3)
    dropped, mask = drop_conditions(cond, p, generator=torch.Generator().manual_seed(0))
    rate = mask.float().mean().item()
    assert abs(rate - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert torch.equal(dropped[mask], torch.zeros(int(mask.sum()), 3))
    assert torch.equal(dropped[~mask], cond[~mask])


def test_dropout_extremes_and_provided_null():
    labels = torch.arange(10)
    kept, mask = drop_conditions(labels, 0.0)
    assert not mask.any() and torch.equal(kept, labels)
    null_class = torch.tensor(99)
    dropped, mask = drop_conditions(labels, 1.0, null_class)
    assert mask.all() and bool((dropped == 99).all()) and dropped.dtype == labels.dtype

    tokens = torch.randn(6, 4, 8)
    learned_null = torch.randn(4, 8)
    out, mask = drop_conditions(tokens, 0.5, learned_null, generator=torch.Generator().manual_seed(1))
    assert 0 < mask.sum() < 6
    for i in range(6):
        assert torch.equal(out[i], learned_null if mask[i] else tokens[i])


def test_dropout_of_a_mapping_uses_one_mask():
    cond = {"image": torch.randn(200, 5), "label": torch.arange(200)}
    out, mask = drop_conditions(
        cond, 0.3, {"label": torch.tensor(-1)}, generator=torch.Generator().manual_seed(2)
    )
    assert torch.equal(out["label"] == -1, mask)
    assert torch.equal((out["image"] == 0).all(dim=1), mask)


def test_dropout_errors():
    with pytest.raises(ValueError, match="p_uncond"):
        drop_conditions(torch.ones(3), 1.5)
    with pytest.raises(ValueError, match="broadcast"):
        drop_conditions(torch.ones(3, 4), 0.5, torch.zeros(5))
    with pytest.raises(ValueError, match="unknown keys"):
        drop_conditions({"a": torch.ones(2)}, 0.5, {"b": torch.zeros(())})


def test_guided_velocity_combination_and_rescale():
    gen = torch.Generator().manual_seed(0)
    v_c, v_u, x_t = (torch.randn(4, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    guided = guided_velocity(v_c, v_u, 3.0)
    assert torch.allclose(guided, v_u + 3.0 * (v_c - v_u))
    assert torch.equal(guided_velocity(v_c, v_u, 1.0), v_c)
    t, sigma = 0.6, 1e-5
    assert torch.allclose(guided_velocity(v_c, v_u, 3.0, x_t=x_t, t=t, rescale=0.0, sigma_min=sigma), guided)
    full = guided_velocity(v_c, v_u, 3.0, x_t=x_t, t=t, rescale=1.0, sigma_min=sigma)
    # full rescale: the guided x0 has the per-sample std of the conditional x0
    std_c = x0_from_velocity(x_t, t, v_c, sigma).std(dim=1)
    assert torch.allclose(x0_from_velocity(x_t, t, full, sigma).std(dim=1), std_c)
    half = guided_velocity(v_c, v_u, 3.0, x_t=x_t, t=t, rescale=0.5, sigma_min=sigma)
    assert torch.allclose(half, 0.5 * (full + guided))
    with pytest.raises(ValueError, match="x_t and t"):
        guided_velocity(v_c, v_u, 3.0, rescale=0.5)
