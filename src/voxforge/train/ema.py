"""Exponential moving averages of the weights, at one or more rates.

Shadows are fp32 copies of every parameter (buffers are copied as they are), kept on the
training device and updated after each applied optimizer step with a fused lerp. Each
rate is saved as its own full state dict (`ema_<rate>.safetensors`), so it loads into the
model exactly like the raw weights.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, rates: list[float]):
        self.rates = sorted(set(rates))
        self.param_names = [n for n, p in model.named_parameters()]
        self.shadows: dict[float, dict[str, torch.Tensor]] = {
            rate: {
                k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
                for k, v in model.state_dict().items()
            }
            for rate in self.rates
        }

    @torch.no_grad()
    def update(self, model: nn.Module, num_updates: int | None = None) -> None:
        """Move the shadows toward `model`. With `num_updates` (warm-up), the rate is capped
        at (1 + n) / (10 + n), so short runs get a useful average instead of the init."""
        params = dict(model.named_parameters())
        current = [params[n].detach().float() for n in self.param_names]
        buffers = dict(model.named_buffers())
        for rate, shadow in self.shadows.items():
            if num_updates is not None:
                rate = min(rate, (1 + num_updates) / (10 + num_updates))
            torch._foreach_lerp_([shadow[n] for n in self.param_names], current, 1.0 - rate)
            for name, buf in buffers.items():
                if name in shadow:
                    shadow[name].copy_(buf)

    def state_dicts(self) -> dict[float, dict[str, torch.Tensor]]:
        return self.shadows

    def load_state_dicts(self, states: dict[float, dict[str, torch.Tensor]]) -> None:
        for rate, state in states.items():
            if rate not in self.shadows:
                continue
            for k, v in state.items():
                if k in self.shadows[rate]:
                    self.shadows[rate][k].copy_(v)

    def copy_to(self, model: nn.Module, rate: float | None = None) -> None:
        rate = max(self.rates) if rate is None else rate
        model.load_state_dict(self.shadows[rate], strict=False)
