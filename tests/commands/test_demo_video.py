"""`voxforge demo video --quick` end to end (slow: about 265 s of CPU on 2 cores, see
docs/benchmarks.md "Video demo spread")."""

import json

import pytest

from voxforge.cli import main

pytest.importorskip("diffusers")
pytest.importorskip("av")


@pytest.mark.slow
def test_quick_video_demo_passes_its_checks(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "video", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert {"swap_reinitialised", "swap_kept", "swap_loss_drop", "swap_vs_control"} <= set(checks)
    assert all(c["passed"] for c in checks.values()), checks
    evaluation = report["evaluation"]
    assert set(evaluation["models"]["i2v"]["modes"]) == {"conditional", "unconditional"}  # reported
    assert evaluation["swap"]["counts"]["reinitialised"] >= 2
    assert {"x_embedder.weight", "out_layer.weight"} <= set(evaluation["swap"]["reinitialised"])
    assert report["changes"]["swap"]["changed"]["autoencoder"][1].startswith("ltx 8x32x32")
    assert (out / "eval" / "clips" / "i2v" / "prompt_0.gif").is_file()
    assert "## The autoencoder swap: swap" in (out / "report.md").read_text()
    # a re-run resumes: nothing but the report is done again
    assert main(["demo", "video", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    steps = json.loads((out / "pipeline.json").read_text())["steps"]
    assert [s["step"] for s in steps if s["status"] == "done"] == ["report"]
