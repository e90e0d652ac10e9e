import json

import pytest
import torch

from tests.stages.ss_helpers import FLOW_OVERRIDES, stage1_artefacts
from voxforge.errors import ConfigError, UserError
from voxforge.recipe import load_recipe
from voxforge.stages.ss_flow import SSFlowStage


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    return stage1_artefacts(tmp_path_factory.getbasetemp() / "stage1")


def test_recipes_load_and_match_the_documented_scales():
    tiny = load_recipe("ss_flow_tiny")
    assert (tiny.model.resolution, tiny.model.in_channels, tiny.image_encoder.kind) == (8, 8, "vit")
    assert tiny.flow.p_uncond == 0.1 and tiny.flow.timestep_sampling == "logit_normal"
    big = load_recipe("ss_flow_trellis_l")
    assert (big.model.width, big.model.depth, big.model.resolution, big.image_encoder.kind) == (
        1024,
        24,
        16,
        "dinov2",
    )


def test_trained_run_records_structure_info_and_evaluation(artefacts):
    run = artefacts["flow_run"]
    info = json.loads((run / "structure.json").read_text())
    assert info["vae_run"] == str(artefacts["vae_run"].resolve()) and len(info["mean"]) == 4
    result = json.loads((run / "eval_generation.json").read_text())
    assert result["assets"] == 3 and len(result["per_asset"]) == 3
    for key in ("iou", "iou_uncond", "yaw_iou", "yaw_iou_uncond"):
        assert 0.0 <= result[key] <= 1.0
    assert result["yaw_iou"] >= result["iou"] - 1e-9  # the identity rotation is among the candidates
    assert list(run.glob("samples/*/generations.png"))


def test_dataset_items_and_loss_with_condition_dropout(artefacts):
    recipe = load_recipe(
        "ss_flow_tiny", FLOW_OVERRIDES + [f"data.latents={artefacts['latents']}", "flow.p_uncond=1.0"]
    )
    stage = SSFlowStage(recipe, artefacts["flow_run"], torch.device("cpu"))
    dataset = stage.build_dataset()
    assert len(dataset) == 7
    item = dataset[0]
    assert item["latent"].shape == (4, 4, 4, 4) and item["cond"].shape == (3, 32, 32)
    model = stage.build_model()
    batch = stage.collate([dataset[i] for i in range(2)])
    loss, metrics = stage.loss(model, batch)
    assert torch.isfinite(loss) and metrics["dropped"] == 1.0
    loss.backward()
    # every sample dropped: the image encoder receives no gradient through zeroed tokens
    assert all(p.grad is None or not p.grad.any() for p in model.image_encoder.parameters())


def test_latents_of_another_shape_are_refused(artefacts):
    recipe = load_recipe(
        "ss_flow_tiny", FLOW_OVERRIDES + [f"data.latents={artefacts['latents']}", "model.in_channels=8"]
    )
    with pytest.raises(ConfigError, match="model.in_channels"):
        SSFlowStage(recipe, artefacts["flow_run"], torch.device("cpu")).build_dataset()
    recipe = load_recipe("ss_flow_tiny", FLOW_OVERRIDES + [f"data.latents={artefacts['prepared']}"])
    with pytest.raises(UserError, match="voxforge encode"):
        SSFlowStage(recipe, artefacts["flow_run"], torch.device("cpu")).build_dataset()
