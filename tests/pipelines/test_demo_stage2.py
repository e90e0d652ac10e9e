"""The stage-2 half of `voxforge demo` at micro size: report sections, exports, resume."""

from __future__ import annotations

import json

from voxforge.commands.demo import Demo, DemoPlan
from voxforge.pipelines.demo_stage2 import Stage2Plan, run_stage2

MICRO = DemoPlan(
    num_assets=20, eval_assets=4, cond_views=2, image_size=32, vae_steps=2, flow_steps=2, eval_steps=2
)
MICRO2 = Stage2Plan(
    train_assets=2,
    views=8,
    image_size=32,
    vae_steps=2,
    flow_steps=2,
    sample_steps=2,
    eval_limit=1,
    frames=4,
    export_size=32,
)


def test_micro_demo_with_stage2_reports_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    demo = Demo(out, MICRO, "cpu")
    report = run_stage2(demo, demo.run(), plan=MICRO2)
    stage2 = report["stage2"]
    assert {"views_psnr", "assets_psnr", "assets_ssim"} <= set(stage2["slat_vae_heldout"])
    scores = stage2["image_to_3d_heldout"]
    assert (
        scores["assets"] == 1
        and 0.0 <= scores["iou"] <= 1.0
        and scores["psnr"] > 0
        and scores["stage2_psnr"] > 0
    )
    example = out / "examples" / "image_to_3d"
    for name in ("asset.ply", "asset.mp4", "asset.gif", "asset.glb", "asset_preview.png", "generation.json"):
        assert (example / name).is_file()
    text = (out / "report.md").read_text()
    assert text.startswith("# voxforge demo — image → 3D") and "# Stage 2" in text and "PSNR" in text
    assert json.loads((out / "report.json").read_text())["stage2"]["plan"]["vae_steps"] == 2
    # the prepared stage-2 set holds exactly the stage-1 held-out assets as its first ids
    from voxforge.data import PreparedDataset

    first = sorted(PreparedDataset(out / "data" / "prepared").ids())[:4]
    assert sorted(PreparedDataset(out / "data" / "prepared_slat").ids())[:4] == first
    capsys.readouterr()
    demo = Demo(out, MICRO, "cpu")
    again = run_stage2(demo, demo.run(), plan=MICRO2)
    err = capsys.readouterr().err
    for step in (
        "stage 2 data",
        "train slat_vae",
        "encode slat",
        "train slat_flow",
        "evaluate image to 3D",
        "export example",
    ):
        assert f"{step}: already done" in err
    assert again["stage2"]["image_to_3d_heldout"] == stage2["image_to_3d_heldout"]
