import json

import pytest

from voxforge.cli import main
from voxforge.commands.demo import Demo, DemoPlan
from voxforge.errors import UserError

MICRO = DemoPlan(
    num_assets=20, eval_assets=4, cond_views=2, image_size=32, vae_steps=2, flow_steps=2, eval_steps=2
)


def test_micro_demo_writes_a_report_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    report = Demo(out, MICRO, "cpu").run()
    for section in ("vae_heldout", "generation_heldout", "examples", "seconds", "previews"):
        assert section in report
    generation = report["generation_heldout"]
    assert (
        generation["assets"] == 4
        and 0.0 <= generation["iou"] <= 1.0
        and 0.0 <= generation["iou_uncond"] <= 1.0
    )
    assert {e["mode"] for e in report["examples"]} == {"stochastic", "multidiffusion"}
    for example in report["examples"]:
        assert (out / "examples" / example["name"] / "structure.npz").is_file()
    assert (out / "report.md").read_text().startswith("# voxforge demo")
    assert json.loads((out / "report.json").read_text())["plan"]["num_assets"] == 20
    first = dict(report["seconds"])
    capsys.readouterr()
    again = Demo(out, MICRO, "cpu").run()  # everything done: only quick idempotent checks run
    err = capsys.readouterr().err
    for step in (
        "synth",
        "prepare",
        "train ss_vae",
        "encode",
        "train ss_flow",
        "evaluate",
        "generate examples",
    ):
        assert f"{step}: already done" in err
    assert again["generation_heldout"] == report["generation_heldout"]
    assert again["seconds"] == first  # the times of the run that did the work
    other = DemoPlan(**{**MICRO.__dict__, "vae_steps": 3})
    with pytest.raises(UserError, match="another --out"):
        Demo(out, other, "cpu").run()


def test_quick_demo_command(tmp_path):
    """The CI plan end to end through the CLI: both stages, a report, every export."""
    out = tmp_path / "quick"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["plan"]["vae_steps"] == 60 and report["vae_heldout"]["iou"] > 0.1
    stage2 = report["stage2"]
    assert stage2["slat_vae_heldout"]["views_psnr"] > 12.0  # 17.7 dB when measured
    assert stage2["image_to_3d_heldout"]["assets"] >= 1
    for name in ("asset.ply", "asset.glb", "asset.mp4", "asset.gif"):
        assert (out / "examples" / "image_to_3d" / name).is_file()
    assert "# Stage 2" in (out / "report.md").read_text()
