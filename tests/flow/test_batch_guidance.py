"""Batched classifier-free guidance: one call of 2B equals separate conditional/unconditional calls."""

from __future__ import annotations

import pytest
import torch

from voxforge.flow import SamplerConfig, sample, sample_from_config


def _model(calls):
    def model_fn(x, t, cond):  # cond: [B, 3] tensor or {"a": [B, 3]}
        c = cond["a"] if isinstance(cond, dict) else cond
        calls.append(x.shape[0])
        return torch.tanh(x * c + t[:, None])

    return model_fn


@pytest.mark.parametrize("mapping", [False, True])
def test_batched_guidance_equals_separate_calls(mapping):
    torch.manual_seed(0)
    noise, cond = torch.randn(3, 3), torch.randn(3, 3)
    uncond = torch.zeros(3, 3)
    if mapping:
        cond, uncond = {"a": cond}, {"a": uncond}
    config = SamplerConfig(steps=6, cfg_scale=4.0, guidance_interval=(0.4, 1.0), time_shift=3.0)
    separate, batched = [], []
    ref = sample_from_config(_model(separate), noise, cond, uncond, config)
    out = sample_from_config(_model(batched), noise, cond, uncond, config, batch_guidance=True)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    guided = len(separate) - 6  # steps inside the interval made a second (unconditional) call
    assert 0 < guided < 6
    assert len(batched) == 6 and batched.count(6) == guided  # one call per step, 2B where guided


def test_batched_guidance_with_heun_and_without_guidance():
    torch.manual_seed(1)
    noise, cond = torch.randn(2, 3), torch.randn(2, 3)
    kwargs = dict(steps=3, cfg_scale=2.0, method="heun")
    ref = sample(_model([]), noise, cond, torch.zeros(2, 3), **kwargs)
    out = sample(_model([]), noise, cond, torch.zeros(2, 3), batch_guidance=True, **kwargs)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    calls = []
    sample(_model(calls), noise, cond, None, steps=2, batch_guidance=True)  # cfg 1: plain calls
    assert calls == [2, 2]


def test_batched_guidance_needs_tensor_conditions():
    with pytest.raises(TypeError, match="batch_guidance"):
        sample(_model([]), torch.randn(2, 3), object(), object(), steps=1, cfg_scale=2.0, batch_guidance=True)
