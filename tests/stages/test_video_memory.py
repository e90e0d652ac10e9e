"""The video flow stage's memory check: a bucket predicted (models.video_memory) over
data.memory_limit_gb is refused at start, naming the bucket and a batch size that fits."""

import pytest
import torch

from tests.stages.video_helpers import flow_overrides, video_artefacts
from voxforge.errors import UserError
from voxforge.models.video_memory import predict_step_memory
from voxforge.recipe import load_recipe
from voxforge.stages.video_flow import VideoFlowStage


def test_prediction_terms():
    kwargs = dict(params=10**6, width=64, depth=8, heads=4, batch=4, tokens=256)
    off = predict_step_memory(**kwargs, grad_checkpoint=False)
    on = predict_step_memory(**kwargs, grad_checkpoint=True)
    assert off.state == on.state == 10**6 * 4 * 5  # weights, gradients, two AdamW moments, one EMA
    assert on.activations < off.activations / 2 and on.total < off.total
    double = predict_step_memory(**{**kwargs, "batch": 8}, grad_checkpoint=False)
    assert double.activations == pytest.approx(2 * off.activations)
    scores = predict_step_memory(**kwargs, grad_checkpoint=False, fused_attention=False)
    assert scores.attention == 4 * 4 * 256**2 * 4 * 8


def test_a_bucket_predicted_not_to_fit_is_refused(tmp_path_factory, tmp_path):
    artefacts = video_artefacts(tmp_path_factory.getbasetemp() / "video_family")

    def stage(limit: float) -> VideoFlowStage:
        recipe = load_recipe("video_flow_tiny", flow_overrides(artefacts, f"data.memory_limit_gb={limit}"))
        return VideoFlowStage(recipe, tmp_path / f"run{limit}", torch.device("cpu"))

    assert len(stage(64.0).build_dataset()) > 0
    # the process base (0.59 GiB) alone is over 0.1 GiB: nothing fits, not even batch 1
    with pytest.raises(
        UserError, match=r"bucket 16px/9/16x16 at batch 4 is predicted to need .* GiB.*grad_checkpoint"
    ):
        stage(0.1).build_dataset()
