"""`voxforge pipeline run` for `kind: image` files and `voxforge demo image` (micro plans here)."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from voxforge.cli import main
from voxforge.commands.demo import families, seed_overrides
from voxforge.errors import ConfigError
from voxforge.workflows.image_report import loss_curve
from voxforge.workflows.pipeline import load_pipeline, run_pipeline

pytest.importorskip("diffusers")
pytest.importorskip("peft")

#: the quick demo at toy size: two steps per model, a handful of images and prompts
MICRO = [
    "data.synth_images.num=24",
    "data.held_back.num=6",
    "holdout=2",
    "data.images.workers=0",
    "evaluate.judge.images=12",
    "evaluate.judge.classifier.steps=2",
    "evaluate.prompts.num=3",
    "evaluate.prompts.held_back=2",
    "evaluate.sampling.steps=2",
    "device=cpu",
    "stages.image_ae.model.block_out_channels=[8,8,8]",
    "stages.image_ae.model.attention_head_dim=8",
    "stages.image_ae.data.scale_images=4",
    *(f"stages.{s}.model.num_layers=1" for s in ("flow_16", "flow_32", "lora")),
    *(
        f"stages.{s}.train.{key}={value}"
        for s in ("image_ae", "flow_16", "flow_32", "lora")
        for key, value in {
            "max_steps": 2,
            "batch_size": 4,
            "checkpoint_every": 1,
            "log_every": 1,
            "precision": "fp32",
        }.items()
    ),
    "evaluate.checks={prompt_gain: -1, lora_colour_gain: -1, judge_colour: 0}",  # untrained: any value
]


def test_image_demo_is_offered():
    assert {"3d", "image"} <= set(families())
    assert seed_overrides(4, "image") == ["seed=4", "data.synth_images.seed=4"]
    assert "data.prepare.seed=4" in seed_overrides(4)


@pytest.mark.slow
def test_micro_image_pipeline_runs_reports_and_resumes(tmp_path):
    """Two steps per model: nothing is learned, yet every step, file and check runs, and a
    re-run skips every step but the report."""
    out = tmp_path / "demo"
    spec, source = load_pipeline("demo_image_quick", [*seed_overrides(1, "image"), *MICRO])
    assert spec.kind == "image" and spec.seed == 1 and spec.evaluate.lora == "lora"
    records = run_pipeline(spec, out, source=source, progress=False)
    steps = [r.step for r in records]
    assert steps[:6] == [
        "synth images",
        "synth held-back",
        "synth judge images",
        "prepare images",
        "prepare held-back",
        "prepare all",
    ]
    assert steps[6:] == ["image_ae", "flow_16", "flow_32", "lora", "evaluate", "report"]
    assert {r.status for r in records} == {"done"}
    # the base data never shows the held-back colour; its own set always does; the judge's has all
    base = [json.loads(x) for x in (out / "synth" / "metadata.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (out / "synth_held_back" / "metadata.jsonl").read_text().splitlines()]
    assert "purple" not in {row["colour"] for row in base} and {row["colour"] for row in held} == {"purple"}
    # the autoencoder is a codec of every colour: it trains on both sets, the flows on the base only
    ae_data = yaml.safe_load((out / "runs" / "image_ae" / "config.yaml").read_text())["data"]["path"]
    flow_data = yaml.safe_load((out / "runs" / "flow_16" / "config.yaml").read_text())["data"]["path"]
    assert Path(ae_data).name == "images_all" and Path(flow_data).name == "images"
    # each flow stage starts from the one it names, at its own resolution
    info = {
        s: json.loads((out / "runs" / s / "image.json").read_text()) for s in ("flow_16", "flow_32", "lora")
    }
    assert info["flow_16"]["resolution"] == 16 and info["flow_32"]["resolution"] == 32
    assert info["flow_32"]["base"].endswith("flow_16") and info["lora"]["base"].endswith("flow_32")
    assert info["lora"]["finetune"] == "lora"
    pipeline = json.loads((out / "pipeline.json").read_text())
    assert [s["step"] for s in pipeline["steps"]] == steps and pipeline["spec"]["kind"] == "image"
    assert all(s["seconds"] > 0 and s["info"]["cpu_seconds"] >= 0 for s in pipeline["steps"])

    report = json.loads((out / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert set(checks) == {"prompt_gain", "lora_colour_gain", "judge_colour"}
    assert all(c["value"] is not None for c in checks.values()) and report["passed"]
    assert set(report["modes"]) == {"conditional", "unconditional", "shuffled"}
    assert report["held_back"]["colour"] == "purple" and report["held_back"]["prompts"] == 2
    for mode in report["modes"].values():
        assert 0.0 <= mode["colour"] <= 1.0 and mode["fid"] >= 0.0
    for name in ("grid.png", "held_back.png", "curves/image_ae.png", "curves/lora.png"):
        assert (out / "eval" / name).is_file(), name
    text = (out / "report.md").read_text()
    assert "| `prompt_gain` |" in text and "eval/grid.png" in text and "## The held-back colour" in text

    again = run_pipeline(spec, out, source=source, progress=False)
    assert {r.step: r.status for r in again if r.step != "report"} == dict.fromkeys(steps[:-1], "skipped")
    assert json.loads((out / "report.json").read_text())["modes"] == report["modes"]


def test_image_pipeline_file_errors_name_the_key():
    with pytest.raises(ConfigError, match="stages.flow_32.init_from"):
        load_pipeline("demo_image_quick", ["stages.flow_32.init_from=nope"])
    with pytest.raises(ConfigError, match="stages.lora.train_on"):
        load_pipeline("demo_image_quick", ["stages.lora.train_on=elsewhere"])
    with pytest.raises(ConfigError, match="unknown checks"):
        load_pipeline("demo_image_quick", ["evaluate.checks.no_such_check=1"])
    with pytest.raises(ConfigError, match="kind"):
        load_pipeline("demo_image_quick", ["kind=audio"])


def test_standard_options_belong_to_the_image_demo(tmp_path):
    weights = tmp_path / "inception.pth"
    weights.write_bytes(b"")
    assert main(["demo", "3d", "--quick", "--inception", str(weights), "--out", str(tmp_path / "x")]) == 2
    assert (
        main(["demo", "image", "--quick", "--clip", str(tmp_path / "none"), "--out", str(tmp_path / "y")])
        == 2
    )


def test_loss_curve_is_drawn_from_metrics(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": 1.0 / (s + 1)} for s in range(0, 100, 10)] + [{"step": 5, "event": "x"}]
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n{torn")
    assert loss_curve(metrics, tmp_path / "curve.png", "run")
    from PIL import Image

    with Image.open(tmp_path / "curve.png") as image:
        pixels = list(image.convert("RGB").getdata())
    assert (30, 90, 200) in pixels  # the line is drawn
    assert not loss_curve(tmp_path / "missing.jsonl", tmp_path / "none.png", "run")


@pytest.mark.slow
def test_quick_image_demo_passes_its_checks(tmp_path):
    assert main(["demo", "image", "--quick", "--out", str(tmp_path / "demo")]) == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["passed"] and (tmp_path / "demo" / "eval" / "grid.png").is_file()


def test_colour_shown_counts_pixels_nearest_the_colour():
    from voxforge.data.synth_images import COLOURS
    from voxforge.workflows.image_report import colour_shown

    images = np.zeros((3, 10, 10, 3), dtype=np.uint8)
    images[:] = COLOURS["green"]
    images[1, :2, :2] = (150, 110, 215)  # a lighter purple: still nearest to purple, 4 % of the pixels
    images[2, 0, 0] = COLOURS["purple"]  # 1 % only
    assert colour_shown(images, "purple", 0.02).tolist() == [False, True, False]
    assert colour_shown(images.astype(np.float32) / 255, "purple", 0.01).tolist() == [False, True, True]
