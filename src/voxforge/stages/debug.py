"""`debug_regression`: a tiny deterministic stage for checking the engine and a machine.

An MLP regresses a fixed random linear map with noise. It has no randomness in its loss,
so runs on 1 or N processes, with or without accumulation, can be compared exactly, and
it can simulate the failures the engine must survive: corrupt samples (NaN inputs), and
slow steps (to leave time for a signal in preemption tests). Use it to smoke-test a
cluster: `torchrun --nproc-per-node 2 -m voxforge train debug_regression --out RUN`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from voxforge.config.core import option
from voxforge.stages.base import EpochAware, Stage


@dataclass
class DebugModelConfig:
    width: int = option(64, ge=1)
    depth: int = option(2, ge=1)
    dropout: float = option(0.0, ge=0.0, lt=1.0, help="draws from the RNG the engine checkpoints")


@dataclass
class DebugDataConfig:
    size: int = option(256, ge=1, help="number of samples")
    dim: int = option(16, ge=1, help="input and output dimension")
    noise: float = option(0.01, ge=0.0)
    corrupt_samples: list[int] = option(default_factory=list, ge=0, help="sample ids whose inputs are NaN")
    step_sleep: float = option(0.0, ge=0.0, help="seconds slept per micro-batch (preemption tests)")


class RegressionData(EpochAware, torch.utils.data.Dataset):
    def __init__(self, cfg: DebugDataConfig, seed: int):
        gen = torch.Generator().manual_seed(seed + 12345)
        self.inputs = torch.randn(cfg.size, cfg.dim, generator=gen)
        weight = torch.randn(cfg.dim, cfg.dim, generator=gen) / cfg.dim**0.5
        self.targets = torch.tanh(self.inputs @ weight) + cfg.noise * torch.randn(
            cfg.size, cfg.dim, generator=gen
        )
        self.corrupt = set(cfg.corrupt_samples)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = self.inputs[index]
        if index in self.corrupt:
            x = torch.full_like(x, float("nan"))
        return {"x": x, "y": self.targets[index], "index": torch.tensor(index)}


class DebugRegressionStage(Stage):
    name = "debug_regression"
    sections = {"model": DebugModelConfig, "data": DebugDataConfig}

    def build_model(self) -> nn.Module:
        cfg, dim = self.recipe.model, self.recipe.data.dim
        layers: list[nn.Module] = []
        width_in = dim
        for _ in range(cfg.depth):
            layers += [nn.Linear(width_in, cfg.width), nn.GELU(), nn.Dropout(cfg.dropout)]
            width_in = cfg.width
        layers.append(nn.Linear(width_in, dim))
        return nn.Sequential(*layers)

    def build_dataset(self) -> torch.utils.data.Dataset:
        return RegressionData(self.recipe.data, self.recipe.train.seed)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        if self.recipe.data.step_sleep:
            time.sleep(self.recipe.data.step_sleep)
        pred = model(batch["x"])
        loss = torch.nn.functional.mse_loss(pred.float(), batch["y"])
        return loss, {}

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float]:
        data = RegressionData(self.recipe.data, self.recipe.train.seed)
        keep = [i for i in range(len(data)) if i not in data.corrupt]
        pred = model(data.inputs[keep].to(self.device))
        return {"final_mse": float(torch.nn.functional.mse_loss(pred.float().cpu(), data.targets[keep]))}
