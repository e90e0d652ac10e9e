"""The video_flow stage: training lowers the loss, first-frame conditioning masks the loss,
init_from across an autoencoder swap keeps the blocks, resume continues the loss exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from tests.stages.video_helpers import flow_overrides, video_artefacts, video_flow_run
from voxforge.errors import ConfigError, UserError
from voxforge.recipe import load_recipe
from voxforge.runs import Run
from voxforge.stages.video_flow import VideoFlowStage
from voxforge.train.engine import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    return video_artefacts(tmp_path_factory.getbasetemp() / "video_family")


@pytest.fixture(scope="session")
def base_run(artefacts, tmp_path_factory):
    return video_flow_run(tmp_path_factory.getbasetemp() / "video_family")


def losses(run) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}
    return [by_step[s] for s in sorted(by_step)]


def stage_of(artefacts, tmp_path, *extra) -> VideoFlowStage:
    recipe = load_recipe("video_flow_tiny", flow_overrides(artefacts, *extra))
    return VideoFlowStage(recipe, tmp_path / "run", torch.device("cpu"))


def first_batch(stage: VideoFlowStage) -> dict:
    data = stage.build_dataset()
    return stage.collate([data[i] for i in range(4)])


def test_a_few_steps_lower_the_loss(base_run):
    curve = losses(base_run)
    assert len(curve) == 10
    # zero-initialised output layer: the first losses are the target's variance (about 1);
    # measured 1.09, 0.99, 0.92 -> 0.55, 0.51, 0.49 (seed 0)
    assert sum(curve[-3:]) / 3 < 0.8 * sum(curve[:3]) / 3, curve
    info = json.loads((base_run / "video.json").read_text())
    assert info["denoiser"]["in_channels"] == 4 and info["frames"] == 9 and info["size"] == [16, 16]
    heldout = json.loads((base_run / "eval_heldout.json").read_text())
    assert set(heldout) == {"heldout_loss", "heldout_loss_uncond"}
    assert {"denoiser.safetensors", "video_dit.json", "video.json", "text_encoder"} <= {
        p.name for p in (base_run / "export").iterdir()
    }
    samples = base_run / "samples" / "step_00000010"
    assert (samples / "samples.gif").is_file()
    assert json.loads((samples / "samples.json").read_text())["rows"] == ["cfg", "uncond"]


class Recorder(torch.nn.Module):
    """The denoiser, its output on latent frame 0 replaced by garbage; records its conditions."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, {}

    def forward(self, x, t, context, **kw):
        self.seen = kw
        out = self.model(x, t, context, **kw).clone()
        out[:, :, 0] = 1e3
        return out


def test_first_frame_conditioning_is_given_and_masked_from_the_loss(artefacts, tmp_path):
    stage = stage_of(artefacts, tmp_path, "flow.p_image_cond=1.0", "flow.p_uncond=0")
    model = Recorder(stage.build_model())
    batch = first_batch(stage)
    torch.manual_seed(0)
    loss, metrics = stage.loss(model, batch)
    latents, _, _ = stage.encode(batch)
    mask = model.seen["cond_mask"]
    assert metrics["image_cond"] == 1.0 and mask.shape == (4, 1, *latents.shape[2:])
    assert mask[:, :, 0].eq(1).all() and mask[:, :, 1:].eq(0).all()
    assert torch.equal(model.seen["cond_latent"][:, :, 0], latents[:, :, 0])
    assert model.seen["cond_latent"][:, :, 1:].abs().max() == 0
    assert float(loss.detach()) < 10  # the garbage on the given frame is not in the loss

    plain = stage_of(artefacts, tmp_path, "flow.p_image_cond=0.0", "flow.p_uncond=0")
    torch.manual_seed(0)
    unmasked, metrics = plain.loss(Recorder(plain.build_model()), batch)
    assert metrics["image_cond"] == 0.0 and float(unmasked.detach()) > 1e4  # without conditioning it counts


def test_init_from_with_another_autoencoder_keeps_the_blocks(artefacts, base_run, tmp_path):
    extra = [f"model.init_from={base_run}", f"data.autoencoder={artefacts['ae8']}"]
    stage = stage_of(artefacts, tmp_path, *extra)
    model = stage.build_model()
    assert model.cfg.in_channels == 8
    record = json.loads((tmp_path / "run" / "transfer.json").read_text())
    actions = {row["key"]: row["action"] for row in record["tensors"]}
    assert {k for k, a in actions.items() if a == "reinitialised"} == {
        "x_embedder.weight",
        "out_layer.weight",
        "out_layer.bias",
    }
    assert all(a == "kept" for k, a in actions.items() if k.startswith("blocks."))
    base = Run.open(base_run)
    previous = VideoFlowStage(
        load_recipe(base_run / "config.yaml"), base_run, torch.device("cpu")
    ).build_model()
    base.load_weights(previous, ema=True)
    for key, value in previous.state_dict().items():
        if actions[key] == "kept":
            assert torch.equal(model.state_dict()[key], value), key
    table = (tmp_path / "run" / "transfer.md").read_text()
    assert "| `x_embedder.weight` | reinitialised |" in table and "reinit: changed" in table

    everything = stage_of(artefacts, tmp_path / "all", *extra, "model.reinit=all")
    everything.build_model()
    record = json.loads((tmp_path / "all" / "run" / "transfer.json").read_text())
    assert record["counts"]["kept"] == 0 and record["counts"]["reinitialised"] == len(record["tensors"])
    with pytest.raises(UserError, match="x_embedder.weight"):
        stage_of(artefacts, tmp_path / "none", *extra, "model.reinit=none").build_model()


def test_recipe_checks_name_the_key_or_bucket(artefacts, tmp_path):
    with pytest.raises(ConfigError, match="p_image_cond"):
        stage_of(artefacts, tmp_path, "flow.p_image_cond=0.5", "model.image_condition=false")
    with pytest.raises(ConfigError, match="in_channels"):
        stage_of(artefacts, tmp_path, "model.in_channels=6").build_model()
    with pytest.raises(ConfigError, match=r"bucket 16px/9/16x16 is 16x16; sides must be multiples of 12"):
        stage_of(artefacts, tmp_path, "model.patch_size=3").build_dataset()
    with pytest.raises(ConfigError, match=r"'model.patch_t': 2 does not divide the 5 latent frames"):
        stage_of(artefacts, tmp_path, "model.patch_t=2").build_dataset()


def test_stop_and_resume_continue_the_loss_exactly(artefacts, tmp_path):
    extra = ["train.max_steps=4", "train.checkpoint_every=2", "train.log_every=1", "flow.p_image_cond=0.5"]
    extra += ["data.eval_samples=0", "flow.p_uncond=0.5"]

    def recipe():
        return load_recipe("video_flow_tiny", flow_overrides(artefacts, *extra))

    train(recipe(), tmp_path / "straight")
    assert train(recipe(), tmp_path / "split", stop_after=2).step == 2
    assert train(recipe(), tmp_path / "split").step == 4
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")


# Runs `voxforge train`, SIGKILLing itself right after the checkpoint of step 6 is committed
# and its step 7 has started: the resumed run continues from step 6.
KILLER = """
import os, signal, sys
from voxforge.stages import video_flow
original = video_flow.VideoFlowStage.loss
calls = [0]
def loss_then_die(self, model, batch):
    calls[0] += 1
    if calls[0] == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, model, batch)
video_flow.VideoFlowStage.loss = loss_then_die
from voxforge.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_kill_9_and_resume_log_the_uninterrupted_losses(artefacts, tmp_path):
    """Two epochs (2 batches each) with caption dropout, first-frame conditioning and EMA: the
    per-step losses of a run killed mid-way and resumed equal an uninterrupted run's (fp32)."""
    extra = ["train.max_steps=10", "train.checkpoint_every=3", "train.log_every=1", "flow.p_image_cond=0.5"]
    overrides = flow_overrides(artefacts, *extra, "data.eval_samples=0", "flow.p_uncond=0.5")
    train(load_recipe("video_flow_tiny", overrides), tmp_path / "straight")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    command = ["train", "video_flow_tiny", "--out", str(tmp_path / "killed"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    crashed = subprocess.run([sys.executable, str(script), *command], capture_output=True, text=True, env=env)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert len(losses(tmp_path / "killed")) == 6
    resumed = subprocess.run(
        [sys.executable, "-m", "voxforge", *command], capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    from safetensors.torch import load_file

    from voxforge.train.checkpoint import latest_checkpoint

    for key in ("model", "ema_0.9"):
        a = load_file(str(latest_checkpoint(tmp_path / "straight").weights[key]))
        b = load_file(str(latest_checkpoint(tmp_path / "killed").weights[key]))
        assert all(torch.equal(a[k], b[k]) for k in a), key
