import json

import pytest
import torch

from tests.stages.ss_helpers import VAE_OVERRIDES, prepared_dataset, stage1_artefacts
from voxforge.data.splits import split_ids
from voxforge.errors import ConfigError, UserError
from voxforge.recipe import load_recipe
from voxforge.stages.ss_vae import OccupancyAugment, SSVAEStage, cube_symmetry, yaw_symmetry
from voxforge.train.engine import train


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    return stage1_artefacts(tmp_path_factory.getbasetemp() / "stage1")


def test_recipes_load_and_match_the_documented_scales():
    tiny = load_recipe("ss_vae_tiny")
    assert (tiny.model.resolution, tiny.model.latent_resolution, tiny.model.latent_channels) == (32, 8, 8)
    big = load_recipe("ss_vae_trellis")
    assert (big.model.resolution, big.model.latent_resolution, big.model.channels) == (64, 16, [32, 128, 512])


def test_trained_run_has_checkpoint_metrics_and_previews(artefacts):
    run = artefacts["vae_run"]
    metrics = json.loads((run / "final_metrics.json").read_text())
    assert metrics["step"] == 3
    assert 0.0 <= metrics["eval_iou"] <= 1.0 and 0.0 <= metrics["eval_recall"] <= 1.0
    assert list(run.glob("samples/*/reconstructions.png"))
    losses = [
        json.loads(line)["loss"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert losses and all(loss == loss for loss in losses)  # finite, not NaN
    again = train(load_recipe("ss_vae_tiny", VAE_OVERRIDES + [f"data.path={artefacts['prepared']}"]), run)
    assert again.reason == "already_complete"


def test_held_out_assets_never_train(artefacts):
    recipe = load_recipe("ss_vae_tiny", VAE_OVERRIDES + [f"data.path={artefacts['prepared']}"])
    stage = SSVAEStage(recipe, artefacts["vae_run"], torch.device("cpu"))
    dataset = stage.build_dataset()
    _, train_ids, eval_ids = stage._split()
    assert len(eval_ids) == 3 and not set(eval_ids) & set(dataset.base.ids)
    assert split_ids(["c", "a", "b"], 1) == (["b", "c"], ["a"])
    item = dataset[0]
    assert item["occupancy"].shape == (1, 16, 16, 16)


def test_yaw_symmetries_keep_y_and_are_deterministic_per_epoch(tmp_path_factory):
    grid = torch.zeros(1, 4, 4, 4)
    grid[0, 0, 1, 3] = 1
    assert yaw_symmetry(grid, 1)[0, 3, 1, 3] == 1  # mirror x
    assert yaw_symmetry(grid, 2)[0, 0, 1, 0] == 1  # mirror z
    assert yaw_symmetry(grid, 4)[0, 3, 1, 0] == 1  # swap x, z
    assert {tuple(torch.nonzero(yaw_symmetry(grid, c))[0, 2:3].tolist()) for c in range(8)} == {(1,)}

    point = torch.zeros(1, 6, 6, 6)
    point[0, 0, 1, 2] = 1  # coordinates in three different mirror classes: an orbit of 48
    assert len({tuple(torch.nonzero(cube_symmetry(point, c))[0, 1:].tolist()) for c in range(48)}) == 48

    class Fixed:
        def __init__(self):
            self.epoch = 0

        def __len__(self):
            return 4

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __getitem__(self, index):
            return {"occupancy": torch.arange(64.0).view(1, 4, 4, 4)}

    data = OccupancyAugment(Fixed(), "yaw", seed=0)
    first = [data[i]["occupancy"] for i in range(4)]
    assert all(torch.equal(a, data[i]["occupancy"]) for i, a in enumerate(first))
    data.set_epoch(1)
    assert not all(torch.equal(a, data[i]["occupancy"]) for i, a in enumerate(first))


def test_missing_data_path_and_all_held_out_are_explained(tmp_path_factory):
    recipe = load_recipe("ss_vae_tiny", VAE_OVERRIDES)
    with pytest.raises(ConfigError, match="data.path"):
        SSVAEStage(recipe, tmp_path_factory.mktemp("x"), torch.device("cpu")).build_dataset()
    prepared = prepared_dataset(tmp_path_factory.getbasetemp() / "stage1")
    recipe = load_recipe("ss_vae_tiny", VAE_OVERRIDES + [f"data.path={prepared}", "data.eval_assets=50"])
    with pytest.raises(UserError, match="held out"):
        SSVAEStage(recipe, tmp_path_factory.mktemp("y"), torch.device("cpu")).build_dataset()
