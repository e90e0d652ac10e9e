"""`kind: get3d` pipeline files, the GET3D report and its checks, and `voxforge demo get3d` (slow)."""

from __future__ import annotations

import json

import pytest
import trimesh

from voxforge.cli import main
from voxforge.commands.demo import families, seed_overrides
from voxforge.errors import ConfigError
from voxforge.workflows.get3d_pipeline import (
    EVAL_RECORD,
    Get3DPipelineSpec,
    build_get3d_report,
    seed_codes,
    write_get3d_report,
)
from voxforge.workflows.pipeline import load_pipeline


def test_the_demo_files_load_as_get3d_pipelines():
    assert "get3d" in families()
    for name in ("demo_get3d", "demo_get3d_quick"):
        spec, _ = load_pipeline(name, seed_overrides(3, "get3d"))
        assert isinstance(spec, Get3DPipelineSpec)
        assert spec.seed == spec.data.synth.seed == spec.data.prepare["seed"] == 3
        assert spec.evaluate.checks and spec.stages["get3d"]["recipe"] == "get3d_tiny"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.other={recipe: get3d_tiny}", "one stage, 'get3d'"),
        ("stages.get3d.recipe=ss_vae_tiny", "trains 'ss_vae', not get3d"),
        ("evaluate.checks.nonsense=1", "unknown \\['nonsense'\\]"),
        ("data.source=/somewhere", "give 'synth'"),
        ("evaluate.classifier.width=0", "width"),
    ],
)
def test_bad_pipeline_files_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline("demo_get3d_quick", [override])


def test_a_seed_is_the_same_codes_alone_or_with_others():
    geo, tex = seed_codes(8, [5, 7])
    alone_geo, alone_tex = seed_codes(8, [7])
    assert (geo[1] == alone_geo[0]).all() and (tex[1] == alone_tex[0]).all()
    assert not (geo[0] == tex[0]).all()


def _scores(cov, mmd, fid, kid):
    return {"cov": cov, "mmd": mmd, "fid": fid, "kid": kid, "empty_meshes": 0, "faces": 100.0, "images": 8}


def _folder(tmp_path, trained, checks):
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = {"kind": "get3d", "evaluate": {"checks": checks}}
    steps = [{"step": "get3d", "status": "done", "detail": "", "seconds": 3.0, "info": {"cpu_seconds": 5.0}}]
    (tmp_path / "pipeline.json").write_text(json.dumps({"source": "", "spec": spec, "steps": steps}))
    evaluation = {
        "models": {
            "trained": trained,
            "untrained": _scores(0.25, 0.30, 9.0, 0.20),
            "training_set": _scores(0.75, 0.10, 0.5, 0.01),
        },
        "judge": {"kind": "shape classes", "train_images": 96},
        "reference": {"assets": ["a", "b"], "views": 24},
        "exports": [{"seed": 0, "faces": 100, "files": ["sample_000.glb", "sample_000.obj"]}],
        "interpolation": ["interpolation.mp4", "interpolation.gif"],
    }
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / EVAL_RECORD).write_text(json.dumps(evaluation))
    return tmp_path


def test_the_report_passes_when_the_trained_generator_is_ahead(tmp_path):
    checks = {"cov_gain": 0.0, "mmd_gain": 0.05, "fid_gain": 1.0, "kid_gain": 0.0}
    folder = _folder(tmp_path, _scores(0.5, 0.2, 4.0, 0.1), checks)
    report = write_get3d_report(folder, "title")
    values = {c.name: c.value for c in report.checks}
    assert values == pytest.approx({"cov_gain": 0.25, "mmd_gain": 0.1, "fid_gain": 5.0, "kid_gain": 0.1})
    assert report.passed
    text = (folder / "report.md").read_text()
    assert "| trained | 0.500 | 0.2000 | 4.000 |" in text and "| training_set |" in text
    assert "examples/sample_000.glb" in text and "examples/interpolation.mp4" in text
    assert json.loads((folder / "report.json").read_text())["passed"] is True


def test_the_report_fails_when_it_is_not_and_when_the_evaluation_is_missing(tmp_path):
    behind = _folder(tmp_path / "behind", _scores(0.25, 0.35, 9.5, 0.3), {"mmd_gain": 0.0, "fid_gain": 0.0})
    report = build_get3d_report(behind)
    assert not report.passed and all(not c.passed for c in report.checks)
    (behind / "eval" / EVAL_RECORD).unlink()
    missing = build_get3d_report(behind)
    assert [c.value for c in missing.checks] == [None, None] and not missing.passed


@pytest.mark.slow
def test_quick_demo_runs_and_the_trained_generator_wins(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "get3d", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["passed"]
    models = report["evaluation"]["models"]
    assert set(models) == {"trained", "untrained", "training_set"}
    for name in ("grid_trained.png", "grid_untrained.png", "grid_real.png"):
        assert (out / "eval" / name).is_file()
    mesh = trimesh.load(out / "examples" / "sample_000.glb", force="mesh")
    assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
    assert (out / "examples" / "interpolation.mp4").stat().st_size > 0
    # a second run is a no-op: every step skipped
    assert main(["demo", "get3d", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    steps = json.loads((out / "pipeline.json").read_text())["steps"]
    assert {s["step"]: s["status"] for s in steps if s["step"] != "report"} == {
        "synth": "skipped",
        "prepare": "skipped",
        "get3d": "skipped",
        "evaluate": "skipped",
    }
