"""`voxforge pipeline run` for `kind: video` files: the staged pipeline with the autoencoder swap at
toy size (two steps per model), its records, report, resume and the file's checks."""

import json

import pytest

from voxforge.commands.demo import families, seed_overrides
from voxforge.errors import ConfigError
from voxforge.workflows.pipeline import load_pipeline, run_pipeline

pytest.importorskip("diffusers")
pytest.importorskip("av")

pytestmark = pytest.mark.usefixtures("one_thread")

STAGES = ("ae_a", "t2v", "i2v", "ae_b", "swap", "swap_control")
FLOWS = ("t2v", "i2v", "swap", "swap_control")
#: demo_video_quick at toy size: 16 px clips, two steps per model, a handful of clips and prompts
MICRO = [
    "data.synth_videos.num=12",
    "data.synth_videos.size=16",
    "holdout=2",
    "data.prepare.f5.buckets={16px: {5: [1.0, 4]}}",
    "data.prepare.f5.multiple=8",
    "data.prepare.f9.buckets={16px: {9: [1.0, 4]}}",
    "data.prepare.f9.multiple=8",
    *(f"stages.{s}.data.batch_sizes={{}}" for s in ("t2v", "i2v")),  # the plan names 32-px buckets
    "evaluate.judge.clips=8",
    "evaluate.judge.classifier={steps: 2, width: 4, levels: 1, size: 16, frames: 3}",
    "evaluate.prompts.num=2",
    "evaluate.sampling.steps=1",
    "evaluate.image_clips=1",
    "evaluate.show=1",
    "evaluate.swap.window=1",
    "device=cpu",
    "stages.ae_a.model={block_out_channels: [4, 4, 4], latent_channels: 4, spatial_compression: 4}",
    "stages.ae_b.model={block_out_channels: [4, 4], latent_channels: 8, patch_size: 2}",
    *(f"stages.{s}.data.calibrate_clips=2" for s in ("ae_a", "ae_b")),
    *(f"stages.{s}.data.grid_clips=0" for s in ("ae_a", "ae_b")),
    *(f"stages.{s}.model.{k}={v}" for s in FLOWS for k, v in {"width": 24, "depth": 1, "heads": 2}.items()),
    *(f"stages.{s}.text_encoder={{width: 8, layers: 1, heads: 2}}" for s in FLOWS),
    *(f"stages.{s}.flow.shift_reference=0" for s in FLOWS),
    *(
        f"stages.{s}.train.{key}={value}"
        for s in STAGES
        for key, value in {"max_steps": 2, "checkpoint_every": 2, "log_every": 1, "precision": "fp32"}.items()
    ),
    "evaluate.checks={swap_reinitialised: 1, swap_kept: 1, prompt_gain: -1, judge_mean: 0}",
]


def test_video_demo_is_offered():
    assert "video" in families()
    assert seed_overrides(3, "video") == ["seed=3", "data.synth_videos.seed=3"]


@pytest.mark.slow
def test_micro_video_pipeline_stages_swap_report_and_resume(tmp_path):
    """Two steps per model: every stage runs, each says what it changed, the swap keeps the blocks
    and re-initialises the latent in/out projections, the report passes its checks, and a re-run
    skips every step but the report."""
    out = tmp_path / "video"
    spec, source = load_pipeline("demo_video_quick", [*seed_overrides(1, "video"), *MICRO])
    assert spec.kind == "video" and spec.evaluate.swap.stage == "swap" and spec.evaluate.model == "i2v"
    records = run_pipeline(spec, out, source=source, progress=False)
    status = {r.step: r.status for r in records}
    assert all(status[s] == "done" for s in STAGES), status
    info = {r.step: r.info for r in records}
    assert info["t2v"]["changes"]["now"]["frames"] == 5
    assert info["i2v"]["changes"]["changed"] == {
        "frames": [5, 9],
        "conditioning": ["text → video", "text / image → video"],
    }
    swap = info["swap"]["changes"]
    assert set(swap["changed"]) == {"autoencoder"} and swap["changed"]["autoencoder"][1].startswith("ltx")
    assert swap["transfer"]["reinitialised"] >= 2 and swap["transfer"]["kept"] > 10
    assert info["swap_control"]["changes"]["transfer"]["kept"] == 0  # reinit: all
    evaluation = json.loads((out / "eval" / "video_eval.json").read_text())
    assert set(evaluation["models"]) == {"t2v", "i2v", "swap"}
    assert set(evaluation["first_frame"]) == {"i2v", "swap"}  # trained with p_image_cond > 0
    assert set(evaluation["autoencoders"]) == {"ae_a", "ae_b"}
    assert "x_embedder.weight" in evaluation["swap"]["reinitialised"]
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and [c["name"] for c in report["checks"]][:2] == [
        "swap_reinitialised",
        "swap_kept",
    ]
    text = (out / "report.md").read_text()
    assert "## The autoencoder swap: swap" in text and "**text / image → video**" in text
    assert (out / "eval" / "clips" / "i2v" / "prompt_0.png").is_file()
    assert (out / "eval" / "clips" / "i2v" / "prompt_0.gif").is_file()
    again = run_pipeline(spec, out, source=source, progress=False)
    assert [r.step for r in again if r.status == "done"] == ["report"]


def test_a_swap_to_a_stage_that_is_not_an_autoencoder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="stages.swap.autoencoder.*'t2v' is not a video_ae stage"):
        load_pipeline("demo_video_quick", ["stages.swap.autoencoder=t2v"])
    with pytest.raises(ConfigError, match="stages.i2v.data_from.*'f7' is not a prepared folder"):
        load_pipeline("demo_video_quick", ["stages.i2v.data_from=f7"])
