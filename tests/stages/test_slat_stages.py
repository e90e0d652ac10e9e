"""SLat stages on a small prepared dataset: view splits, intrinsics, loss, evaluation keys."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from voxforge.errors import ConfigError
from voxforge.recipe import load_recipe


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from voxforge.data.prepare import PrepareConfig, prepare
    from voxforge.data.synth import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp("slat_data")
    write_dataset(root / "synth", SynthConfig(num=3, seed=1))
    config = PrepareConfig(resolution=16, views=6, image_size=32, cond_views=2, workers=0, progress=False)
    prepare(root / "synth", root / "prepared", config)
    return root / "prepared"


def _vae_recipe(path, **extra):
    overrides = [
        f"data.path={path}",
        "model.resolution=16",
        "model.width=32",
        "model.encoder_blocks=1",
        "model.decoder_blocks=1",
        "model.heads=2",
        "model.head.gaussians_per_voxel=2",
        "data.image_size=16",
        "data.views_per_item=2",
        "data.holdout_every=3",
        "data.eval_assets=1",
        "data.eval_views=2",
    ]
    return load_recipe("slat_vae_tiny", overrides + [f"{k}={v}" for k, v in extra.items()])


def test_view_splits_never_train_on_held_out_views(prepared):
    from voxforge.data.views import SLatViewDataset
    from voxforge.stages.slat_vae import feature_split

    recipe = _vae_recipe(prepared)
    data, train_ids, eval_ids = feature_split(recipe.data, 16)
    assert len(train_ids) == 2 and len(eval_ids) == 1 and eval_ids[0] < min(train_ids)
    train = SLatViewDataset(data, train_ids, recipe.data, 16, 0, split="train")
    assert train.view_indices(train_ids[0]) == ([0, 1, 3, 4], [2, 5])
    seen = set()
    for epoch in range(6):
        train.set_epoch(epoch)
        item = train[0]
        # every sampled view is a training view: compare the cameras against the held-out ones
        files, cams = train._cameras(train_ids[0])
        for viewmat in item["viewmats"]:
            index = int(
                np.argmin([np.abs(cams.world_to_cam[i] - viewmat.numpy()).max() for i in range(len(cams))])
            )
            seen.add(index)
    assert seen <= {0, 1, 3, 4} and len(seen) > 1
    item = train[1]
    assert item["images"].shape == (2, 16, 16, 4) and float(item["images"].max()) <= 1.0
    # intrinsics follow the resize (32 -> 16 px)
    full = train._cameras(train_ids[1])[1]
    assert float(item["Ks"][0, 0, 2]) == pytest.approx(float(full.K[0, 0, 2]) / 2)
    held = SLatViewDataset(data, train_ids, recipe.data, 16, 0, split="heldout_views")
    everything = SLatViewDataset(data, eval_ids, recipe.data, 16, 0, split="all_views")
    assert held[0]["images"].shape[0] == 2 and everything[0]["images"].shape[0] == 2


def test_stage_loss_is_finite_and_evaluation_reports_both_splits(prepared, tmp_path):
    from voxforge.stages.slat_vae import SLatVAEStage

    recipe = _vae_recipe(prepared)
    stage = SLatVAEStage(recipe, tmp_path, torch.device("cpu"))
    model = stage.build_model()
    assert model.in_channels == 3  # read from the rgb features
    dataset = stage.build_dataset()
    batch = stage.collate([dataset[0], dataset[1]])
    assert stage.batch_size_of(batch) == 2
    loss, metrics = stage.loss(model, batch)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and {"l1", "ssim", "psnr", "kl"} <= set(metrics)
    scores = stage.evaluate(model.eval(), tmp_path)
    assert set(scores) == {"views_psnr", "views_ssim", "assets_psnr", "assets_ssim"}
    assert (tmp_path / "heldout_views.png").is_file()


def test_missing_data_path_and_all_held_out_are_clear_errors(prepared, tmp_path):
    from voxforge.errors import UserError
    from voxforge.stages.slat_vae import SLatVAEStage

    with pytest.raises(ConfigError, match="data.path"):
        SLatVAEStage(_vae_recipe(""), tmp_path, torch.device("cpu")).build_dataset()
    with pytest.raises(UserError, match="held out"):
        SLatVAEStage(
            _vae_recipe(prepared, **{"data.eval_assets": 5}), tmp_path, torch.device("cpu")
        ).build_dataset()
    with pytest.raises(ConfigError, match="holdout_every"):
        _vae_recipe(prepared, **{"data.holdout_every": 1})
