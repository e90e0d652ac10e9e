"""PreparedDataset reading, torch datasets, condition-image preparation, balanced sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.data.hostile import CUBE_OBJ
from voxforge.data.dataset import (
    OccupancyDataset,
    PreparedDataset,
    SparseFeatureDataset,
    VoxelBalancedBatchSampler,
    collate_sparse,
    condition_image,
)
from voxforge.data.prepare import PrepareConfig, prepare
from voxforge.data.synth import SynthConfig, write_dataset
from voxforge.errors import UserError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    write_dataset(root / "src", SynthConfig(num=6, seed=0))
    (root / "src" / "cube.obj").write_text(CUBE_OBJ)
    config = PrepareConfig(steps=("ingest", "voxels"), resolution=16, workers=0, progress=False)
    prepare(root / "src", root / "out", config)
    return root / "out"


def test_records_ids_labels_and_meshes(prepared):
    data = PreparedDataset(prepared)
    records = data.records()
    assert len(records) == 7 and all(r.status == "done" for r in records)
    labels = data.labels()
    assert sorted(labels.values()) == ["box", "capsule", "cone", "cylinder", "sphere", "torus"]
    cube = next(r for r in records if r.source == "cube.obj")
    assert cube.label is None
    mesh = data.normalized_mesh(cube.id)
    assert len(mesh.faces) == 12
    np.testing.assert_allclose(mesh.bounds, [[-0.5] * 3, [0.5] * 3], atol=1e-6)
    voxels = data.voxels(cube.id)
    assert voxels.dtype == np.int64 and voxels.shape[1] == 3
    assert len(voxels) == 16**3 - 14**3  # the surface shell of a cube filling the grid
    with pytest.raises(UserError):
        data.voxels(cube.id, 32)
    with pytest.raises(UserError):
        data.features(cube.id)


def test_occupancy_dataset(prepared):
    dataset = OccupancyDataset(prepared, resolution=16)
    assert len(dataset) == 7
    item = dataset[0]
    assert item["occupancy"].shape == (1, 16, 16, 16)
    coords = dataset.data.voxels(item["id"], 16)
    assert item["occupancy"].sum() == len(coords)
    assert item["occupancy"][0, coords[0, 0], coords[0, 1], coords[0, 2]] == 1
    with pytest.raises(UserError, match="no asset"):
        OccupancyDataset(prepared, resolution=32)
    with pytest.raises(UserError, match="lack"):
        OccupancyDataset(prepared, resolution=16, ids=["nope"])


def test_sparse_feature_dataset_and_collate(prepared):
    """Features written in the documented layout are read back and packed with a batch column."""
    data = PreparedDataset(prepared)
    ids = data.ids()[:2]
    for index, asset in enumerate(ids):
        coords = data.voxels(asset, 16)
        feats = np.full((len(coords), 3), index, np.float16)
        np.savez_compressed(
            data.asset_dir(asset) / "features_rgb_16.npz", coords=coords.astype(np.uint16), features=feats
        )
    import sqlite3

    with sqlite3.connect(prepared / "manifest.sqlite") as db:
        for asset in ids:
            db.execute(
                "INSERT INTO steps (id, step, status, stats, params) VALUES (?, 'features_rgb_16', 'done', ?, '{}')",
                (asset, json.dumps({"voxels": len(data.voxels(asset, 16))})),
            )
    dataset = SparseFeatureDataset(prepared, "rgb", 16)
    assert sorted(dataset.ids) == sorted(ids)
    batch = collate_sparse([dataset[0], dataset[1]])
    n0 = len(dataset[0]["coords"])
    assert batch["coords"].shape == (n0 + len(dataset[1]["coords"]), 4)
    assert batch["coords"].dtype == torch.int32
    assert (batch["coords"][:n0, 0] == 0).all() and (batch["coords"][n0:, 0] == 1).all()
    assert batch["feats"].dtype == torch.float32
    assert dataset.voxel_counts() == [len(data.voxels(i, 16)) for i in dataset.ids]


def test_condition_image_crops_alpha_box_and_premultiplies():
    rgba = np.zeros((100, 200, 4), np.uint8)
    rgba[10:30, 150:190] = [200, 100, 50, 255]  # 40 wide, 20 tall, off-centre
    rgba[10:30, 150:152, 3] = 128  # half transparent left edge
    image = condition_image(rgba, 60)
    assert image.shape == (3, 60, 60) and image.dtype == np.float32
    # the crop (40 px x 1.2 = 48 px) maps to 60 px: the object spans 50 px wide, centred
    row = image[0, 30]
    lit = np.nonzero(row > 0.05)[0]
    assert abs(lit[0] - 5) <= 1 and abs(lit[-1] - 54) <= 1
    column = image[0, :, 30]
    lit = np.nonzero(column > 0.05)[0]
    assert abs(lit[0] - 17.5) <= 1 and abs(lit[-1] - 42) <= 1  # 20 px tall -> 25 px, centred
    # background is black, colour premultiplied (half alpha -> about half value at the left edge)
    assert image[:, 0, 0].max() == 0
    np.testing.assert_allclose(image[:, 30, 30], np.array([200, 100, 50]) / 255, atol=0.02)
    assert image[0, 30, 5] < 0.7 * image[0, 30, 30]


def test_condition_image_of_empty_view_is_black():
    assert condition_image(np.zeros((16, 16, 4), np.uint8), 8).max() == 0


def test_balanced_sampler_balances_and_is_deterministic():
    rng = np.random.default_rng(0)
    counts = rng.integers(100, 20_000, size=64)
    samplers = [VoxelBalancedBatchSampler(counts, 4, rank=r, world_size=4, seed=1) for r in range(4)]
    batches = [list(s) for s in samplers]
    assert all(len(b) == len(samplers[0]) == 4 for b in batches)
    spreads_balanced, spreads_naive = [], []
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1 * 100_003)).numpy()
    for step in range(4):
        shares = [batches[r][step] for r in range(4)]
        assert all(len(s) == 4 for s in shares)
        assert sorted(sum(shares, [])) == sorted(perm[step * 16 : (step + 1) * 16].tolist())
        loads = [counts[s].sum() for s in shares]
        spreads_balanced.append(max(loads) - min(loads))
        naive = [counts[perm[step * 16 + r : (step + 1) * 16 : 4]].sum() for r in range(4)]
        spreads_naive.append(max(naive) - min(naive))
    assert sum(spreads_balanced) < sum(spreads_naive) / 3
    assert [list(s) for s in [VoxelBalancedBatchSampler(counts, 4, rank=0, world_size=4, seed=1)]][
        0
    ] == batches[0]
    resumed = VoxelBalancedBatchSampler(counts, 4, rank=0, world_size=4, seed=1, start_batch=2)
    assert list(resumed) == batches[0][2:]
    other_epoch = VoxelBalancedBatchSampler(counts, 4, rank=0, world_size=4, seed=1, epoch=1)
    assert list(other_epoch) != batches[0]
    with pytest.raises(UserError):
        VoxelBalancedBatchSampler(counts[:3], 4)
