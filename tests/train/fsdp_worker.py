"""Runs engine trainings for tests/train/test_fsdp.py, on one process or under torchrun.

    python fsdp_worker.py JOBS.json

JOBS.json is a list of {"run_dir", "overrides", "stop_after" (optional), "recipe"
(optional)}; the jobs run one after another in this process (a stop_after job followed by
the same run_dir without it is an interrupted run and its resume). Without "recipe" the
recipe is `test_blocks` (overrides: {dotted key: value}): a residual MLP whose blocks sit in
an nn.ModuleList, so fsdp shards each block and the root, trained on the debug stage's
regression data (no randomness in the loss). With "recipe" (a built-in name or file), the
overrides are `key=value` strings as on the command line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import torch
from torch import nn

from voxforge.config.core import option
from voxforge.recipe import load_recipe, recipe_from_data
from voxforge.stages import register_stage
from voxforge.stages.base import Stage
from voxforge.stages.debug import DebugDataConfig, RegressionData
from voxforge.train.engine import train


@dataclass
class BlocksModelConfig:
    width: int = option(24, ge=1)
    depth: int = option(3, ge=1)


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, 2 * width + 1)  # odd sizes: uneven shards
        self.down = nn.Linear(2 * width + 1, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class BlocksNet(nn.Module):
    def __init__(self, dim: int, width: int, depth: int):
        super().__init__()
        self.inp = nn.Linear(dim, width)
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.out = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.out(x)


@register_stage
class BlocksStage(Stage):
    name = "test_blocks"
    sections = {"model": BlocksModelConfig, "data": DebugDataConfig}

    def build_model(self) -> nn.Module:
        cfg = self.recipe.model
        return BlocksNet(self.recipe.data.dim, cfg.width, cfg.depth)

    def build_dataset(self) -> torch.utils.data.Dataset:
        return RegressionData(self.recipe.data, self.recipe.train.seed)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        return torch.nn.functional.mse_loss(model(batch["x"]).float(), batch["y"]), {}

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float]:
        data = RegressionData(self.recipe.data, self.recipe.train.seed)
        pred = model(data.inputs.to(self.device))
        return {"final_mse": float(torch.nn.functional.mse_loss(pred.float().cpu(), data.targets))}


BASE = {
    "stage": "test_blocks",
    "data": {"size": 64, "dim": 8},
    "optim": {"lr": 1e-2, "schedule": "cosine", "warmup_steps": 2, "weight_decay": 0.01},
    "train": {
        "max_steps": 8,
        "checkpoint_every": 1000,
        "progress": False,
        "tensorboard": False,
        "log_every": 1,
    },
}


def recipe(overrides: dict[str, object]):
    data = json.loads(json.dumps(BASE))
    for key, value in overrides.items():
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    return recipe_from_data(data, source="fsdp_worker")


def main(path: str) -> None:
    for job in json.loads(open(path).read()):
        if "recipe" in job:
            built = load_recipe(job["recipe"], job["overrides"])
        else:
            built = recipe(job["overrides"])
        train(built, job["run_dir"], stop_after=job.get("stop_after"))


if __name__ == "__main__":
    main(sys.argv[1])
