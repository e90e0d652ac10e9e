"""Shared helpers for engine tests: a debug-regression recipe and weight comparison."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from voxforge.recipe import recipe_from_data
from voxforge.train.checkpoint import latest_checkpoint, load_state_dict_file, load_trainer_state

BASE = {
    "stage": "debug_regression",
    "model": {"width": 32, "depth": 2},
    "data": {"size": 64, "dim": 8},
    "optim": {"lr": 1e-2, "schedule": "cosine", "warmup_steps": 3, "weight_decay": 0.01},
    "train": {
        "max_steps": 20,
        "batch_size": 8,
        "checkpoint_every": 1000,
        "progress": False,
        "tensorboard": False,
        "log_every": 5,
    },
}


def make_recipe(**sections):
    data = copy.deepcopy(BASE)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return recipe_from_data(data, source="test")


def final_weights(run_dir: Path, key: str = "model") -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir)
    assert ckpt is not None, f"no checkpoint in {run_dir}"
    return load_state_dict_file(ckpt.weights[key])


def optimizer_tensors(run_dir: Path) -> list[torch.Tensor]:
    state = load_trainer_state(latest_checkpoint(run_dir))["optimizer"]["state"]
    return [t for k in sorted(state) for _, t in sorted(state[k].items())]
