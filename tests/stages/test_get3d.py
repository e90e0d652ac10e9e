"""The get3d stage through the real engine: D and G both learn, lazy R1, G_ema, exact resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.stages.ss_helpers import synth_prepared
from voxforge.errors import UserError
from voxforge.models.get3d import Discriminator, Get3DGAN
from voxforge.recipe import load_recipe
from voxforge.runs import load_get3d
from voxforge.stages.get3d import Get3DStage, augment, ema_beta
from voxforge.train.checkpoint import latest_checkpoint
from voxforge.train.engine import train

TINY = [
    "train.progress=false",
    "train.tensorboard=false",
    "train.log_every=1",
    "model.z_dim=16",
    "model.w_dim=16",
    "model.mapping_layers=2",
    "model.grid_resolution=10",
    "model.triplane_resolution=8",
    "model.triplane_channels=4",
    "model.channel_max=16",
    "model.image_size=16",
    "model.mlp_hidden=8",
    "model.mlp_layers=1",
    "model.discriminator.channel_max=16",
    "model.discriminator.cmap_dim=8",
    "data.eval_assets=1",
    "data.sample_count=2",
    "train.batch_size=2",
    "gan.ada_interval=1",
    "gan.ada_speed=50",
    "gan.ema_half_life=20",
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("get3d_data")
    return synth_prepared(
        root, num=3, segments=12, views=4, image_size=32, cond_views=0, steps=("ingest", "views")
    )


def _recipe(prepared, *extra):
    return load_recipe("get3d_tiny", [f"data.path={prepared}", *TINY, *extra])


def _initial_state(recipe) -> tuple[dict, dict]:
    """G and D_rgb at initialisation: the engine seeds with train.seed before build_model."""
    random.seed(recipe.train.seed)
    np.random.seed(recipe.train.seed)
    torch.manual_seed(recipe.train.seed)
    model = Get3DGAN(recipe.model)
    d_rgb = Discriminator(3, recipe.model.image_size, recipe.model.discriminator)
    return model.state_dict(), d_rgb.state_dict()


def _max_diff(a: dict, b: dict) -> float:  # over parameters (w_avg buffers are copied, not averaged)
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if not k.endswith("w_avg"))


def test_training_changes_g_and_d_with_lazy_r1(prepared, tmp_path):
    recipe = _recipe(
        prepared, "train.max_steps=2", "train.checkpoint_every=2", "gan.r1_interval=2", "gan.ema_rampup=null"
    )
    result = train(recipe, tmp_path / "run")
    assert result.step == 2
    ckpt = latest_checkpoint(tmp_path / "run")
    weights = load_file(ckpt.weights["model"])
    state = torch.load(ckpt.path / "trainer_state.pt", weights_only=True)
    g0, d0 = _initial_state(recipe)
    generator = {k: v for k, v in weights.items() if k.startswith("generator.")}
    assert _max_diff(generator, g0) > 1e-4  # G stepped (engine optimizer)
    assert _max_diff(state["stage"]["d_rgb"], d0) > 1e-4  # D stepped (stage optimizer)
    ema = {k.replace("g_ema.", "generator."): v for k, v in weights.items() if k.startswith("g_ema.")}
    assert 0 < _max_diff(ema, g0) < _max_diff(generator, g0)  # G_ema lags G
    assert state["stage"]["d_steps"] == 2 and state["stage"]["d_optimizer"]["state"]
    logs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in logs if "loss" in r}
    for record in steps.values():
        assert all(np.isfinite(record[k]) for k in ("loss", "d_loss", "g_adv", "sdf_reg"))
    assert "r1_penalty" not in steps[1] and steps[2]["r1_penalty"] > 0  # lazy: every 2nd D step
    assert (tmp_path / "run" / "samples" / "step_00000002" / "samples.png").is_file()
    final = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert final["empty_meshes"] == 0 and final["faces"] > 0
    # the loader of the generation / evaluation side: G_ema, eval mode
    generator = load_get3d(tmp_path / "run")
    assert not generator.training
    loaded = {f"g_ema.{k}": v for k, v in generator.state_dict().items()}
    assert all(torch.equal(loaded[k], weights[k]) for k in loaded)
    vertices, faces, texture = generator.generate(torch.randn(1, 16), torch.randn(1, 16))[0]
    assert len(faces) > 0 and texture(vertices).shape == vertices.shape


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_weights(prepared, tmp_path):
    extra = ["train.max_steps=3", "train.checkpoint_every=1", "gan.r1_interval=2", "gan.augment_p=0.3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_recipe(prepared, *extra), straight)
    first = train(_recipe(prepared, *extra), resumed, stop_after=1)
    assert first.reason == "stop_after" and first.step == 1
    train(_recipe(prepared, *extra), resumed)
    a, b = latest_checkpoint(straight), latest_checkpoint(resumed)
    assert a.step == b.step == 3
    wa, wb = load_file(a.weights["model"]), load_file(b.weights["model"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # G and G_ema
    sa = torch.load(a.path / "trainer_state.pt", weights_only=True)["stage"]
    sb = torch.load(b.path / "trainer_state.pt", weights_only=True)["stage"]
    for key in ("d_rgb", "d_mask"):
        assert all(torch.equal(sa[key][k], sb[key][k]) for k in sa[key])
    assert sa["augment"] == sb["augment"] and sa["augment"]["p"] != 0.3  # ADA moved p, restored exactly
    assert sa["d_steps"] == sb["d_steps"] == 3


def test_g_ema_follows_the_stylegan2_rule(prepared, tmp_path):
    recipe = _recipe(prepared, "gan.ema_half_life=100", "gan.ema_rampup=null")
    stage = Get3DStage(recipe, tmp_path, torch.device("cpu"))
    model = stage.build_model()
    before = {k: v.clone() for k, v in model.g_ema.state_dict().items()}
    with torch.no_grad():
        for p in model.generator.parameters():
            p.add_(1.0)
    stage.after_step(model, 5)
    beta = 0.5 ** (2 / 100)
    assert ema_beta(5, 2, 100.0, None) == pytest.approx(beta)
    assert ema_beta(5, 2, 100.0, 0.05) == pytest.approx(0.5 ** (2 / 0.5))  # ramp-up: 10 images x 0.05
    after = model.g_ema.state_dict()
    current = model.generator.state_dict()
    for name, _ in model.g_ema.named_parameters():
        expected = current[name].lerp(before[name], beta)
        assert torch.allclose(after[name], expected, atol=1e-6)
    assert not any(p.requires_grad for p in model.g_ema.parameters())


def test_augment_is_identity_at_zero_and_keeps_black_background():
    torch.manual_seed(0)
    rgb = torch.rand(4, 3, 16, 16)
    mask = torch.zeros(4, 1, 16, 16)
    mask[:, :, 4:12, 4:12] = 1
    rgb = rgb * mask
    same = augment(rgb, mask, 0.0)
    assert same[0] is rgb and same[1] is mask
    rgb.requires_grad_(True)
    out_rgb, out_mask = augment(rgb, mask, 1.0)
    assert not torch.allclose(out_rgb, rgb)
    assert torch.allclose(out_mask.sum((1, 2, 3)), mask.sum((1, 2, 3)))  # integer shifts inside the frame
    outside = out_mask == 0
    assert float(out_rgb.detach().masked_select(outside.expand_as(out_rgb)).abs().max()) < 1e-5
    out_rgb.sum().backward()
    assert rgb.grad is not None and float(rgb.grad.abs().sum()) > 0


def test_refuses_settings_it_cannot_train(prepared, tmp_path):
    for bad in ("train.grad_accum=2", "train.precision=fp16", "train.parallel=fsdp", "train.ema_rates=[0.9]"):
        with pytest.raises(UserError, match="get3d: train"):
            Get3DStage(_recipe(prepared, bad), tmp_path, torch.device("cpu"))


def test_recipes_load_at_their_scales():
    tiny = load_recipe("get3d_tiny")
    assert (tiny.model.image_size, tiny.model.grid_resolution, tiny.model.triplane_resolution) == (64, 32, 32)
    assert 8 <= tiny.model.triplane_channels <= 16 and tiny.model.mapping_layers == 8
    full = load_recipe("get3d_shapenet_scale")
    assert full.stage == "get3d" and full.model.image_size in (512, 1024)
    assert (full.model.grid_resolution, full.model.triplane_resolution, full.model.triplane_channels) == (
        90,
        256,
        32,
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_gloo_ddp_trains(prepared, tmp_path):
    """G through DDP, the stage's discriminators with their gradients all-reduced by the stage:
    two steps on two processes finish and checkpoint both ranks' RNG and the D state."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    args = [f"data.path={prepared}", *TINY, "train.max_steps=2", "train.checkpoint_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "voxforge", "train", "get3d_tiny", "--out", str(run), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = latest_checkpoint(run)
    assert ckpt.step == 2 and {"rng_rank0.pt", "rng_rank1.pt"} <= {p.name for p in ckpt.path.iterdir()}
    state = torch.load(ckpt.path / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and state["stage"]["d_steps"] == 2
