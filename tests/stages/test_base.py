"""Stage.evaluate_once: the last step's evaluation runs once for on_sample + on_train_end."""

from __future__ import annotations

import torch
from torch import nn

from voxforge.stages.base import Stage


class CountingStage(Stage):
    name = "counting"

    def build_model(self) -> nn.Module:
        return nn.Linear(1, 1)

    def build_dataset(self) -> torch.utils.data.Dataset:
        return torch.utils.data.TensorDataset(torch.zeros(1, 1))

    def loss(self, model, batch):
        return model(batch[0]).sum(), {}

    def evaluate(self, model: nn.Module, out_dir):
        self.calls.append(out_dir)
        return {"score": float(len(self.calls))}


def test_evaluation_runs_once_per_step_into_the_step_folder(tmp_path):
    stage = CountingStage(None, tmp_path, torch.device("cpu"))
    stage.calls = []
    model = stage.build_model()
    first = stage.evaluate_once(model, 4)
    assert stage.evaluate_once(model, 4) == first == {"score": 1.0}
    assert stage.calls == [tmp_path / "samples" / "step_00000004"] and stage.calls[0].is_dir()
    assert stage.evaluate_once(model, 5) == {"score": 2.0}  # a new step evaluates again
