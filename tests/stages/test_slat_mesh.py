"""The slat_mesh stage: losses reach the SDF and deformations, a short run records its
evaluations from the untrained start, and an interrupted run resumes to the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.stages.ss_helpers import synth_prepared
from voxforge.errors import ConfigError
from voxforge.models.slat_mesh import MESH_LAYOUT, fields_to_mesh, mesh_fields
from voxforge.recipe import load_recipe
from voxforge.render.cameras import intrinsics, look_at
from voxforge.representations.flexicubes import CUBE_CORNERS
from voxforge.stages.slat_mesh import EVAL_FILE, MeshLossConfig, geometry_losses, render_geometry
from voxforge.train.checkpoint import latest_checkpoint
from voxforge.train.engine import train

#: held on all three seeds of the tiny recipe (docs/benchmarks.md, "SLat mesh decoder")
CHAMFER_MARGIN = 0.03  # measured: 3.4 %, 35.4 %, 30.3 % (seeds 0, 1, 2)
VOXEL_IOU_GAIN = 0.5  # measured: 0 -> 0.58, 0.70, 0.67

TINY = [
    "model.resolution=8",
    "model.width=32",
    "model.encoder_blocks=1",
    "model.decoder_blocks=1",
    "model.heads=2",
    "model.num_groups=4",
    "data.image_size=16",
    "data.views_per_item=2",
    "data.holdout_every=0",
    "data.eval_assets=1",
    "data.eval_limit=1",
    "evaluation.points=256",
    "train.batch_size=1",
    "train.progress=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "train.precision=fp32",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("slat_mesh_data")
    return synth_prepared(root, num=2, seed=3, resolution=8, views=3, image_size=16, cond_views=1)


def _recipe(path, *extra):
    return load_recipe("slat_mesh_tiny", [f"data.path={path}", *TINY, *extra])


def _sphere_features(radius: float, res: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Cubes of a res³ grid near a sphere, with its SDF at their corners (raw, before the bias)."""
    ijk = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centre = (ijk.float() + 0.5) / res - 0.5
    coords = ijk[(centre.norm(dim=1) - radius).abs() < 2.0 / res]
    corners = coords[:, None] + torch.tensor(CUBE_CORNERS)  # [N, 8, 3]
    sdf = (corners.float() / res - 0.5).norm(dim=-1) - radius + 1.0 / res  # undo the -1/res bias
    feats = torch.zeros(len(coords), sum(n for _, n in MESH_LAYOUT))
    feats[:, :8] = sdf
    return coords, feats


def _cameras(count: int = 3, size: int = 24):
    eyes = [
        np.array([2.0 * np.cos(a), 0.6, 2.0 * np.sin(a)])
        for a in np.linspace(0, 2 * np.pi, count, endpoint=False)
    ]
    viewmats = torch.from_numpy(look_at(np.stack(eyes))).float()
    K = torch.from_numpy(intrinsics(40.0, size, size)).float()
    return viewmats, K.expand(count, 3, 3).contiguous(), size


@pytest.mark.parametrize("term", ["mask", "depth", "normal"])
def test_each_rendered_loss_reaches_the_sdf_and_the_deformation(term):
    viewmats, Ks, size = _cameras()
    coords, truth = _sphere_features(0.3)
    target_mesh = fields_to_mesh(mesh_fields(coords, truth, 12))
    with torch.no_grad():
        t = render_geometry(target_mesh.vertices, target_mesh.faces, viewmats, Ks, size)
    targets = torch.cat([t["mask"][..., None], t["depth"][..., None], t["normal"]], -1)
    coords, feats = _sphere_features(0.25)  # too small: every term wants it to grow
    feats.requires_grad_(True)
    only = {k: 0.0 for k in ("mask_weight", "depth_weight", "normal_weight", "color_weight")}
    only[f"{term}_weight"] = 1.0
    cfg = MeshLossConfig(**only, tsdf_weight=0.0, dev_weight=0.0, flex_weight_reg=0.0, sign_weight=0.0)
    fields = mesh_fields(coords, feats, 12)
    mesh = fields_to_mesh(fields)
    images = torch.zeros(len(viewmats), size, size, 4)
    loss, metrics = geometry_losses(mesh, fields, targets, images, torch.ones(3, 3), viewmats, Ks, cfg)
    assert metrics[term] > 0
    loss.backward()
    sdf_grad, deform_grad = feats.grad[:, :8], feats.grad[:, 8:32]
    assert float(sdf_grad.abs().sum()) > 0 and float(deform_grad.abs().sum()) > 0
    if term in ("mask", "depth"):
        # growing the sphere lowers the loss: lowering the SDF grows it, so d loss / d sdf > 0
        assert float(sdf_grad.sum()) > 0


def test_recipe_checks_the_group_count():
    with pytest.raises(ConfigError, match="model.num_groups.*multiples"):
        load_recipe("slat_mesh_tiny", ["model.width=32", "model.num_groups=8"])


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(prepared, tmp_path):
    # one thread: the rasterizer's and FlexiCubes' scatter-adds sum in thread order, so two runs
    # with several threads differ in the last bits whether or not one was interrupted
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _resume_matches(prepared, tmp_path)
    finally:
        torch.set_num_threads(threads)


def _resume_matches(prepared, tmp_path):
    # no held-out asset: the evaluations (tested below) stay out of this one's time
    extra = ["train.max_steps=2", "train.checkpoint_every=1", "data.eval_assets=0", "train.ema_rates=[0.9]"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_recipe(prepared, *extra), straight)
    first = train(_recipe(prepared, *extra), resumed, stop_after=1)
    assert first.reason == "stop_after" and first.step == 1
    train(_recipe(prepared, *extra), resumed)
    a, b = latest_checkpoint(straight), latest_checkpoint(resumed)
    assert a.step == b.step == 2
    for kind in ("model", "ema_0.9"):
        wa, wb = load_file(a.weights[kind]), load_file(b.weights[kind])
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    start = load_file(a.weights["model"])
    assert any(k.startswith("decoder.") for k in start)
    assert list((straight / "gt_cache").glob("*.npz"))  # ground-truth renders cached per asset


def test_the_untrained_start_is_recorded_and_evaluations_score_held_out_meshes(prepared, tmp_path):
    from voxforge.stages.slat_mesh import SLatMeshStage

    stage = SLatMeshStage(_recipe(prepared), tmp_path, torch.device("cpu"))
    model = stage.build_model()  # scores the untrained model at step 0
    records = json.loads((tmp_path / EVAL_FILE).read_text())["evaluations"]
    assert [r["step"] for r in records] == [0] and len(records[0]["assets"]) == 1
    r = records[0]
    assert 0 < r["chamfer"] < 1 and 0 < r["normal_consistency"] <= 1 and 0 <= r["voxel_iou"] <= 1
    assert r["faces"] > 0  # the untrained decoder extracts the structure's shell
    stage.build_model()  # a resumed run does not score step 0 again
    assert len(json.loads((tmp_path / EVAL_FILE).read_text())["evaluations"]) == 1
    final = stage.on_train_end(model.eval(), 5)
    assert final["eval_chamfer_untrained"] == r["chamfer"] and final["eval_chamfer"] == pytest.approx(
        r["chamfer"]
    )
    steps = [e["step"] for e in json.loads((tmp_path / EVAL_FILE).read_text())["evaluations"]]
    assert steps == [0, 5] and list((tmp_path / "samples").glob("step_00000005/meshes/*.ply"))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_recipe_lowers_held_out_chamfer_against_its_untrained_start(tmp_path_factory, seed):
    """`voxforge train slat_mesh_tiny` on the data its header prepares (docs/benchmarks.md,
    "SLat mesh decoder": the numbers of these three seeds)."""
    from voxforge.data.prepare import PrepareConfig, prepare
    from voxforge.data.synth import SynthConfig, write_dataset

    root = tmp_path_factory.mktemp(f"slat_mesh_tiny_{seed}")
    write_dataset(root / "synth", SynthConfig(num=24, seed=0))
    config = PrepareConfig(resolution=16, views=12, image_size=64, cond_views=1, workers=0, progress=False)
    prepare(root / "synth", root / "prepared", config)
    recipe = load_recipe(
        "slat_mesh_tiny",
        [
            f"data.path={root / 'prepared'}",
            f"train.seed={seed}",
            "train.progress=false",
            "train.tensorboard=false",
        ],
    )
    train(recipe, root / "run")
    records = json.loads((root / "run" / EVAL_FILE).read_text())["evaluations"]
    start, end = records[0], records[-1]
    assert start["step"] == 0 and end["step"] == recipe.train.max_steps
    assert end["chamfer"] < (1 - CHAMFER_MARGIN) * start["chamfer"]
    assert end["voxel_iou"] > start["voxel_iou"] + VOXEL_IOU_GAIN
