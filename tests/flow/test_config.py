"""Flow configs validate through the typed config system."""

from __future__ import annotations

import pytest

from voxforge.config.core import from_dict
from voxforge.errors import ConfigError
from voxforge.flow import FlowConfig, SamplerConfig


def test_defaults_and_recipe_values():
    flow = from_dict(FlowConfig, {"timestep_sampling": "uniform", "p_uncond": 0.2}, source="r.yaml")
    assert flow.sigma_min == 1e-5 and flow.timestep_sampling == "uniform" and flow.p_uncond == 0.2
    sampler = from_dict(SamplerConfig, {"method": "heun", "guidance_interval": [0.1, 0.8]})
    assert sampler.guidance_interval == (0.1, 0.8)


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (FlowConfig, {"p_uncond": 1.5}, "flow.p_uncond"),
        (FlowConfig, {"timestep_sampling": "cosine"}, "flow.timestep_sampling"),
        (SamplerConfig, {"guidance_interval": [0.8, 0.2]}, "lo <= hi"),
        (SamplerConfig, {"guidance_interval": [0.2, 1.5]}, "<= 1"),
        (SamplerConfig, {"method": "rk4"}, "flow.method"),
    ],
)
def test_bad_values_name_the_key(cls, data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(cls, data, source="r.yaml", prefix="flow")
