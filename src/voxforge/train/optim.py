"""Optimizer, learning-rate schedule and gradient clipping.

- `optim.name`: AdamW (torch's) or CAME (`train.came`, Sana's optimizer), with parameter
  groups: the recipe's `optim.param_groups` rules (regex on the parameter name, first match
  wins) set lr scales and weight decay; 1-D parameters (biases, norm gains, embeddings'
  scalars) get no weight decay unless told otherwise.
- Schedule: linear warmup, then constant or cosine down to `min_lr_ratio`. It is a
  LambdaLR over a plain closure, so its state dict holds only counters (safe to load with
  weights_only=True). It advances only on applied steps: a skipped non-finite step does
  not move it.
- Clipping: fixed max-norm, or adaptive as TRELLIS does — clip at a percentile of the
  recent gradient norms (capped by `grad_clip_norm`), which tames rare spikes without
  choosing a global threshold by hand. The window of norms is part of the trainer state.
- Norms are global: under FSDP2 the gradients are DTensor shards, and the norm is taken by
  `torch.nn.utils.get_total_norm`, which reduces the shards' partial norms across processes,
  so every process clips by the same factor as one process holding the whole model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch
from torch import nn

from voxforge.errors import ConfigError
from voxforge.train.came import CAME
from voxforge.train.config import OptimConfig, TrainConfig
from voxforge.train.distributed import dtensor_class


def build_param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    rules = [(re.compile(rule.match), rule) for rule in cfg.param_groups]
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr_scale, decay = 1.0, cfg.weight_decay
        if cfg.no_decay_1d and param.ndim <= 1:
            decay = 0.0
        for pattern, rule in rules:
            if pattern.search(name):
                lr_scale = rule.lr_scale
                if rule.weight_decay is not None:
                    decay = rule.weight_decay
                break
        group = groups.setdefault(
            (lr_scale, decay), {"params": [], "names": [], "lr_scale": lr_scale, "weight_decay": decay}
        )
        group["params"].append(param)
        group["names"].append(name)
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return list(groups.values())


def build_optimizer(groups: list[dict], cfg: OptimConfig) -> torch.optim.Optimizer:
    param_groups = [
        {
            "params": g["params"],
            "lr": cfg.lr * g.get("lr_scale", 1.0),
            "weight_decay": g.get("weight_decay", cfg.weight_decay),
        }
        for g in groups
    ]
    if cfg.name == "came":
        return CAME(
            param_groups,
            lr=cfg.lr,
            betas=(*cfg.betas, cfg.came_beta3),
            eps=tuple(cfg.came_eps),
            clip_threshold=cfg.came_clip,
        )
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of the peak lr after `step` applied optimizer steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int):
    def factor(step: int) -> float:
        return lr_factor(step, cfg, max_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class GradClipper:
    """Fixed or adaptive (percentile-of-recent-norms) gradient-norm clipping."""

    def __init__(self, cfg: TrainConfig):
        self.mode = cfg.grad_clip
        self.max_norm = cfg.grad_clip_norm
        self.percentile = cfg.grad_clip_percentile
        self.window = cfg.grad_clip_window
        self.norms = torch.empty(0, dtype=torch.float64)

    def threshold(self) -> float:
        if self.mode == "fixed":
            return self.max_norm
        if self.mode == "adaptive" and len(self.norms) > 0:
            return min(self.max_norm, float(torch.quantile(self.norms, self.percentile / 100.0)))
        return self.max_norm if self.mode == "adaptive" else math.inf

    def clip(self, params: Iterable[torch.Tensor], grad_norm: float) -> float:
        """Scale gradients so their norm is at most the threshold; returns the threshold."""
        limit = self.threshold()
        if self.mode != "none" and grad_norm > limit:
            scale = limit / (grad_norm + 1e-6)
            grads = [p.grad for p in params if p.grad is not None]
            torch._foreach_mul_(grads, scale)
        if self.mode == "adaptive":
            self.norms = torch.cat([self.norms, torch.tensor([grad_norm], dtype=torch.float64)])[
                -self.window :
            ]
        return limit

    def state_dict(self) -> dict:
        return {"norms": self.norms.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.norms = state["norms"].to(torch.float64)


def grad_norm(params: Iterable[torch.Tensor]) -> float:
    """The L2 norm of all gradients together (global across processes for DTensor shards)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    dtensor = dtensor_class()
    # FSDP2: partial norms of the shards, reduced across processes
    if dtensor is not None and isinstance(grads[0], dtensor):
        return float(torch.nn.utils.get_total_norm(grads, 2.0).full_tensor())
    norms = torch._foreach_norm(grads, 2.0)
    return float(torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), 2.0))
