"""The video_ae stage: training lowers the reconstruction error, the export loads back and encodes
as the run's EMA weights do, the held-out evaluation is written, resume is exact, and frame
counts the autoencoder cannot take are refused naming the bucket."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from tests.stages.video_helpers import COMMON, prepared_clips
from voxforge.data.video_buckets import VideoBucket
from voxforge.errors import ConfigError, UserError
from voxforge.models.video_ae import VideoAEConfig, VideoAutoencoder, build_video_autoencoder
from voxforge.recipe import load_recipe
from voxforge.runs import VIDEO_AE_EXPORT, Run, load_video_autoencoder
from voxforge.stages.video_ae import EVAL_FILE, VIDEO_AE_INFO, VideoAEStage, fitting_frames, kl_divergence
from voxforge.train.checkpoint import latest_checkpoint
from voxforge.train.engine import train

pytest.importorskip("diffusers")

pytestmark = pytest.mark.usefixtures("one_thread")

#: 3 levels: 4x in time, 4x4 in space (9 frames of 16 px -> 3 x 4 x 4 latents)
HUNYUAN = [
    "model.kind=hunyuan",
    "model.latent_channels=4",
    "model.block_out_channels=[8,8,8]",
    "model.norm_num_groups=4",
    "model.spatial_compression=4",
]
#: 2 levels, 2x2 patches: 2x in time, 4x4 in space (9 frames -> 5 x 4 x 4)
LTX = ["model.kind=ltx", "model.latent_channels=8", "model.block_out_channels=[8,8]", "model.patch_size=2"]
RUN = COMMON + [
    "data.eval_clips=3",
    "data.calibrate_clips=4",
    "train.max_steps=4",
    "train.checkpoint_every=2",
    "train.ema_rates=[0.9]",
    "optim.lr=2e-3",
    "train.log_every=1",
]


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    return prepared_clips(tmp_path_factory.getbasetemp() / "video_family")  # 12 clips, 9 x 16 x 16


def recipe(clips, model, *extra, name="video_ae_tiny"):
    return load_recipe(name, [*RUN, *model, f"data.path={clips}", *extra])


@pytest.fixture(scope="session")
def ae_run(clips, tmp_path_factory):
    run = tmp_path_factory.getbasetemp() / "video_family" / "video_ae"
    if not (run / EVAL_FILE).is_file():
        extra = ("train.max_steps=8", "train.sample_every=8", "optim.lr=3e-3", "train.ema_rates=[]")
        train(recipe(clips, HUNYUAN, *extra), run)
    return run


def stage_of(clips, tmp_path, model=HUNYUAN, *extra) -> VideoAEStage:
    return VideoAEStage(recipe(clips, model, *extra), tmp_path / "run", torch.device("cpu"))


def heldout_psnr(ae: VideoAutoencoder, stage: VideoAEStage, out) -> float:
    with torch.no_grad():
        return stage.evaluate(ae.eval(), out)["psnr"]


def test_recipes_load_at_their_documented_compression():
    tiny, dc = load_recipe("video_ae_tiny"), load_recipe("video_ae_dc_tiny")
    assert tiny.stage == dc.stage == "video_ae"
    assert (tiny.model.kind, tiny.model.temporal_compression, tiny.model.spatial_compression) == (
        "hunyuan",
        4,
        8,
    )
    levels = len(dc.model.block_out_channels)
    assert (dc.model.kind, dc.model.latent_channels, dc.model.patch_size * 2 ** (levels - 1)) == (
        "ltx",
        128,
        32,
    )
    conv = load_recipe("video_ae_conv_tiny")
    assert (conv.model.kind, conv.model.temporal_compression, conv.model.spatial_compression) == (
        "conv",
        4,
        4,
    )
    assert (conv.loss.l1, conv.loss.l2) == (0.0, 1.0)  # plain L2: L1 alone keeps the shapes at the background
    real = load_recipe("video_ae_hunyuan")
    assert (real.model.latent_channels, real.model.block_out_channels[-1]) == (16, 512)  # as released
    assert real.model.gradient_checkpointing and real.loss.lpips_weight > 0


def test_training_lowers_the_error_and_writes_the_evaluation(ae_run, clips, tmp_path):
    result = json.loads((ae_run / EVAL_FILE).read_text())
    assert result["kind"] == "hunyuan" and result["step"] == 8
    assert (result["clips"], result["frames"]) == (3, 27) and list(result["buckets"]) == ["16px/9/16x16"]
    assert 0 < result["ssim"] <= 1 and 0 < result["first_frame_psnr"] < 100
    # a fresh autoencoder of the same config reconstructs the held-out clips clearly worse
    stage = stage_of(clips, tmp_path)
    torch.manual_seed(0)
    assert result["psnr"] > heldout_psnr(stage.build_model(), stage, tmp_path) + 1.0
    # the training loss fell too (the reconstruction term dominates; KL is small)
    losses = [
        r["loss"] for r in map(json.loads, (ae_run / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert len(losses) == 8 and sum(losses[-3:]) < sum(losses[:3])
    grid = Image.open(ae_run / "samples" / "step_00000008" / "reconstructions.png")
    assert grid.size == (9 * 16 + 8 * 2, 4 * 16 + 3 * 2)  # 9 frames; 2 clips: original, reconstruction


def test_export_loads_back_and_encodes_as_the_runs_weights(ae_run, clips):
    info = json.loads((ae_run / VIDEO_AE_INFO).read_text())
    assert (info["temporal_compression"], info["spatial_compression"], info["latent_channels"]) == (4, 4, 4)
    exported = load_video_autoencoder(ae_run)
    assert exported.kind == "hunyuan" and not exported.training
    assert torch.equal(exported.latent_std, torch.tensor(info["latent_std"]))
    # the run's newest weights with the recorded statistics encode identically
    run = Run.open(ae_run)
    own = build_video_autoencoder(run.section("model", VideoAEConfig))
    run.load_weights(own, ema=True)
    own.latent_mean.copy_(torch.tensor(info["latent_mean"]))
    own.latent_std.copy_(torch.tensor(info["latent_std"]))
    stage = VideoAEStage(recipe(clips, HUNYUAN), ae_run, torch.device("cpu"))
    batch = stage.data().batches(stage.data().train_ids[:4])[0]
    with torch.no_grad():
        latents = exported.encode(batch["video"])
        torch.testing.assert_close(own.eval().encode(batch["video"]), latents, rtol=0, atol=1e-6)
    # calibrated on these clips: unit statistics per channel
    flat = latents.transpose(0, 1).flatten(1)
    assert flat.mean(1).abs().max() < 1e-3 and (flat.std(1) - 1).abs().max() < 1e-2
    # the diffusers folder itself loads too
    assert load_video_autoencoder(ae_run / VIDEO_AE_EXPORT, kind="hunyuan").latent_channels == 4


def test_resume_after_a_checkpoint_gives_the_uninterrupted_weights(clips, tmp_path):
    def ltx_recipe():
        return recipe(
            clips, LTX, "train.sample_every=0", "loss.l2=0.5", "loss.kl=1e-3", "loss.sample_posterior=true"
        )

    train(ltx_recipe(), tmp_path / "straight")
    first = train(ltx_recipe(), tmp_path / "split", stop_after=2)
    assert first.reason == "stop_after" and first.step == 2
    assert train(ltx_recipe(), tmp_path / "split").step == 4
    for key in ("model", "ema_0.9"):
        a = load_file(str(latest_checkpoint(tmp_path / "straight").weights[key]))
        b = load_file(str(latest_checkpoint(tmp_path / "split").weights[key]))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), key
    assert load_video_autoencoder(tmp_path / "split", kind="ltx").spatial_compression == 4


def test_bad_frame_counts_and_sides_are_named_or_cropped(clips, tmp_path):
    stage = stage_of(clips, tmp_path)
    stage.check_buckets([VideoBucket("16px", 9, 16, 16), VideoBucket("16px", 1, 16, 16)])  # 1 + k*4: fine
    with pytest.raises(
        UserError, match=r"bucket 16px/7/16x16 has 7 frames.*1 \+ k\*4 frames \(5 or 9 here\)"
    ):
        stage.check_buckets([VideoBucket("16px", 9, 16, 16), VideoBucket("16px", 7, 16, 16)])
    with pytest.raises(UserError, match=r"bucket 16px/9/18x16 is 18x16.*divisible by 4"):
        stage.check_buckets([VideoBucket("16px", 9, 18, 16)])
    cropping = stage_of(clips, tmp_path, HUNYUAN, "data.crop_frames=true")
    cropping.check_buckets([VideoBucket("16px", 7, 16, 16)])
    assert fitting_frames(7, 4) == 5 and fitting_frames(9, 4) == 9 and fitting_frames(1, 8) == 1
    torch.manual_seed(0)
    model = cropping.build_model()
    video = torch.rand(2, 3, 7, 16, 16) * 2 - 1
    assert cropping.clip(video).shape[2] == 5
    loss, metrics = cropping.loss(model, {"video": video})
    loss.backward()
    assert torch.isfinite(loss) and metrics["kl"] > 0


@pytest.mark.parametrize("model", [HUNYUAN, LTX], ids=["hunyuan", "ltx"])
def test_images_train_as_one_frame_videos(clips, tmp_path, model):
    stage = stage_of(clips, tmp_path, model)
    torch.manual_seed(0)
    ae = stage.build_model()
    images = torch.rand(2, 3, 1, 16, 16) * 2 - 1
    recon, mean, logvar = ae(images)
    assert recon.shape == images.shape and mean.shape[2] == 1
    loss, _ = stage.loss(ae, {"video": images})
    loss.backward()
    assert all(p.grad is not None for p in ae.parameters() if p.requires_grad)


def test_kl_and_perceptual_terms_enter_the_loss(clips, tmp_path, monkeypatch):
    zero = torch.zeros(2, 3, 4, 4)
    assert kl_divergence(zero, zero) == 0 and kl_divergence(zero + 1, zero) == pytest.approx(0.5)
    seen = []

    class FrameDistance(torch.nn.Module):  # stands in for VGG-LPIPS: frames [N, H, W, 3] in [0, 1]
        def forward(self, pred, target):
            seen.append(
                (pred.shape, float(pred.detach().min()), float(pred.detach().max()), pred.requires_grad)
            )
            return (pred - target).abs().mean((1, 2, 3))

    monkeypatch.setattr("voxforge.stages.video_ae.load_lpips", lambda path: FrameDistance())
    extra = ("loss.lpips_weight=0.5", "loss.lpips_path=vgg.safetensors", "loss.kl=0.25", "loss.l1=0")
    stage = stage_of(clips, tmp_path, LTX, *extra)
    torch.manual_seed(0)
    ae = stage.build_model()
    video = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    torch.manual_seed(1)
    loss, metrics = stage.loss(ae, {"video": video})
    assert seen[0][0] == (18, 16, 16, 3) and 0 <= seen[0][1] and seen[0][2] <= 1 and seen[0][3]
    assert float(loss.detach()) == pytest.approx(0.5 * metrics["lpips"] + 0.25 * metrics["kl"], rel=1e-5)
    with pytest.raises(ConfigError, match="loss.lpips_path"):
        stage_of(clips, tmp_path, LTX, "loss.lpips_weight=0.5")


def test_loader_errors_name_the_folder(ae_run, tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_video_autoencoder(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.yaml").write_text("stage: video_flow\n")
    with pytest.raises(UserError, match="must be a 'video_ae' run"):
        load_video_autoencoder(tmp_path / "other")
    (tmp_path / "early").mkdir()
    (tmp_path / "early" / "config.yaml").write_text("stage: video_ae\n")
    with pytest.raises(UserError, match="no exported autoencoder"):
        load_video_autoencoder(tmp_path / "early")
    with pytest.raises(UserError, match="is a hunyuan"):
        load_video_autoencoder(ae_run, kind="ltx")


@pytest.mark.slow
def test_real_lpips_weights_train(clips, tmp_path):
    """A full-size VGG-LPIPS with random weights, saved in the lpips layout, loads and trains."""
    from safetensors.torch import save_file

    from voxforge.eval.lpips import LPIPS

    torch.manual_seed(0)
    lpips = LPIPS()
    for name, param in lpips.named_parameters():
        if name.startswith("lin"):
            param.data.uniform_(0.0, 0.1)
    path = tmp_path / "vgg_lpips.safetensors"
    save_file({k: v.contiguous() for k, v in lpips.state_dict().items()}, str(path))
    extra = ("loss.lpips_weight=0.1", f"loss.lpips_path={path}", "train.max_steps=2", "train.sample_every=0")
    result = train(recipe(clips, LTX, *extra), tmp_path / "run")
    assert result.step == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("lpips", 0) > 0 for r in records)
