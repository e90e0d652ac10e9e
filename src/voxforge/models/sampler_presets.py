"""TRELLIS's sampler settings of the 3D family's two flows, as plain data.

25 Euler steps, classifier-free guidance on t in [0.5, 1] only, and the time grid shifted by
3 (more steps at high noise, where the coarse structure forms); guidance 7.5 for the
structure flow, 3 for the SLat flow. `voxforge.models.conditioning` builds `SamplerConfig`s
from them (`default_structure_sampler`, `default_slat_sampler`); the `generate` commands take
their option defaults from here. No torch import, so building the CLI parser stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SLAT_SAMPLER", "STRUCTURE_SAMPLER"]

STRUCTURE_SAMPLER: dict[str, Any] = {
    "method": "euler",
    "steps": 25,
    "cfg_scale": 7.5,
    "guidance_interval": (0.5, 1.0),
    "time_shift": 3.0,
}
SLAT_SAMPLER: dict[str, Any] = {**STRUCTURE_SAMPLER, "cfg_scale": 3.0}
