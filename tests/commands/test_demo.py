"""`voxforge demo`: the demo is a built-in pipeline recipe plus a report (micro plans here)."""

import json

import pytest

from voxforge.cli import main
from voxforge.commands.demo import families, seed_overrides
from voxforge.errors import UserError
from voxforge.workflows.pipeline import load_pipeline, run_pipeline
from voxforge.workflows.report import write_report

MICRO = [
    "data.synth.num=20",
    "holdout=4",
    "data.prepare.cond_views=2",
    "data.prepare.image_size=32",
    "data.stage2.assets=2",
    "data.stage2.prepare.views=8",
    "data.stage2.prepare.image_size=32",
    "evaluate.image_to_3d.steps=2",
    "evaluate.examples.steps=2",
    "evaluate.examples.frames=4",
    "evaluate.examples.size=32",
    "device=cpu",
    *(f"stages.{s}.train.max_steps=2" for s in ("ss_vae", "ss_flow", "slat_vae", "slat_flow")),
    *(f"stages.{s}.train.checkpoint_every=1" for s in ("ss_vae", "ss_flow", "slat_vae", "slat_flow")),
    "stages.ss_flow.sampler.steps=2",
    "stages.slat_flow.sampler.steps=2",
    "stages.slat_vae.data.eval_views=2",
    "stages.slat_flow.train.batch_size=2",
]


def test_demo_families_come_from_the_recipes():
    assert "3d" in families()


def test_micro_demo_runs_reports_and_resumes(tmp_path):
    """Two training steps per model: nothing is learned, yet every step, file and check runs."""
    out = tmp_path / "demo"
    spec, source = load_pipeline("demo_3d_quick", [*seed_overrides(3), *MICRO])
    assert spec.seed == 3 and spec.data.synth.seed == 3
    records = run_pipeline(spec, out, source=source)
    assert [r.step for r in records if r.status == "failed"] == []
    report = write_report(out, "micro demo")
    data = report.data
    assert data["generation_heldout"]["assets"] == 4
    assert 0.0 <= data["generation_heldout"]["iou"] <= 1.0
    assert data["image_to_3d_heldout"]["assets"] == 1 and data["image_to_3d_heldout"]["psnr"] > 0
    names = set(data["examples"])
    assert {"asset0_single_white_background", "asset0_two_views_multidiffusion", "image_to_3d"} <= names
    for name in ("asset.ply", "asset.glb", "asset.mp4", "asset.gif", "structure.npz"):
        assert (out / "examples" / "image_to_3d" / name).is_file()
    # the checks are listed with their thresholds; `exports` holds even for an untrained model
    checks = {c["name"]: c for c in data["checks"]}
    assert set(checks) == set(spec.evaluate.checks) and checks["exports"]["passed"]
    text = (out / "report.md").read_text()
    assert text.startswith("# micro demo") and "| `ss_vae_iou` |" in text and "## Stage 2" in text
    # the stage-2 subset holds exactly the stage-1 held-out assets as its first ids
    from voxforge.data import PreparedDataset

    first = sorted(PreparedDataset(out / "prepared").ids())[:4]
    assert sorted(PreparedDataset(out / "stage2" / "prepared").ids())[:4] == first
    # everything done: a re-run skips every step and reports the same numbers
    again = run_pipeline(spec, out, source=source)
    assert {r.status for r in again} == {"skipped"}, [(r.step, r.status) for r in again]
    assert write_report(out, "micro demo").data["generation_heldout"] == data["generation_heldout"]


def test_demo_command_refuses_another_plan_in_the_same_folder(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "pipeline.json").write_text(json.dumps({"spec": {"seed": 99}, "steps": []}))
    assert main(["demo", "--quick", "--out", str(out)]) == 2


def test_unknown_check_is_a_config_error(tmp_path):
    spec, source = load_pipeline("demo_3d_quick", [*MICRO, "evaluate.checks.no_such_check=1"])
    (tmp_path / "pipeline.json").write_text(json.dumps({"spec": {"evaluate": {"checks": {"nope": 1}}}}))
    with pytest.raises(UserError, match="unknown checks"):
        write_report(tmp_path)
