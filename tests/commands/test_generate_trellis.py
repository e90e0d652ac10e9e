"""`voxforge import trellis` and `voxforge generate --model TRELLIS_DIR` on the fixture folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from voxforge.cli import main
from voxforge.representations.gaussians import load_ply
from voxforge.representations.voxels import load_voxels

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "trellis"


@pytest.fixture
def trellis_dir() -> Path:
    if not (FIXTURES / "pipeline.json").is_file():
        pytest.skip(f"{FIXTURES} not present")
    return FIXTURES


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """An RGBA disc on a transparent background (TRELLIS crops around the alpha)."""
    yy, xx = np.mgrid[:160, :200]
    alpha = (((yy - 80) ** 2 + (xx - 90) ** 2) < 60**2).astype(np.uint8) * 255
    rgb = np.stack([xx * 255 // 200, yy * 255 // 160, np.full_like(xx, 90)], -1).astype(np.uint8)
    path = tmp_path / "disc.png"
    Image.fromarray(np.dstack([rgb, alpha])).save(path)
    return path


def _generate(model, image, out, *extra):
    argv = ["generate", "--model", str(model), "--image", str(image), "--out", str(out)]
    return main(argv + ["--steps", "1", "--slat-steps", "1", "--seed", "5", *extra])


@pytest.mark.slow
def test_import_then_generate_with_the_folder_defaults(trellis_dir, image, tmp_path):
    model = tmp_path / "imported"
    assert main(["import", "trellis", str(trellis_dir), "--out", str(model)]) == 0
    assert _generate(model, image, tmp_path / "a", "--formats", "ply") == 0
    record = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert record["status"] == "done" and record["structure_sampler"]["steps"] == 1
    assert record["structure_sampler"]["cfg_strength"] == 7.5  # pipeline.json's, not overridden
    coords, resolution = load_voxels(tmp_path / "a" / "structure.npz")
    assert resolution == 64 and len(coords) == record["voxels"] > 0
    gaussians = load_ply(tmp_path / "a" / "asset.ply")
    assert len(gaussians) > 0 and np.abs(gaussians.means.numpy()).max() < 0.6


@pytest.mark.slow
def test_download_and_import_give_the_same_asset(trellis_dir, image, tmp_path):
    assert _generate(trellis_dir, image, tmp_path / "a", "--formats", "ply") == 0
    model = tmp_path / "imported"
    assert main(["import", "trellis", str(trellis_dir), "--out", str(model)]) == 0
    assert _generate(model, image, tmp_path / "b", "--formats", "ply", "--cfg", "8.5") == 0
    assert (tmp_path / "a" / "asset.ply").read_bytes() == (tmp_path / "b" / "asset.ply").read_bytes()


@pytest.mark.slow
def test_verify_command_reports_and_exits_by_result(trellis_dir, tmp_path, capsys):
    golden = tmp_path / "golden"
    golden.mkdir()
    for name in ("ss_vae.safetensors", "README.md"):
        (golden / name).write_bytes((trellis_dir / "golden" / name).read_bytes())
    assert main(["import", "trellis", str(trellis_dir), "--verify", str(golden), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and {r["output"] for r in report["outputs"]} == {"mean", "logits"}

    from safetensors.torch import load_file, save_file

    tampered = load_file(str(golden / "ss_vae.safetensors"))
    tampered["logits"] = tampered["logits"] + 1e-2
    save_file(tampered, str(golden / "ss_vae.safetensors"))
    assert main(["import", "trellis", str(trellis_dir), "--verify", str(golden)]) == 1
    text = capsys.readouterr().out
    assert "logits" in text and "FAIL" in text and "1 of 2 outputs within tolerance" in text


def test_import_errors_are_one_line(tmp_path, capsys):
    assert main(["import", "trellis", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "no pipeline.json" in capsys.readouterr().err
    assert main(["import", "trellis", str(tmp_path)]) == 2


@pytest.mark.slow
def test_generate_writes_textured_glb_turntable_and_ply(trellis_dir, image, tmp_path):
    out = tmp_path / "out"
    extra = ["--frames", "4", "--size", "48", "--texture-size", "128", "--bake-views", "4"]
    assert _generate(trellis_dir, image, out, *extra) == 0
    record = json.loads((out / "generation.json").read_text())
    assert record["glb"] == "flexicubes_textured"
    assert {"asset.ply", "asset.glb", "asset.mp4", "asset.gif", "asset_preview.png"} <= set(record["files"])
    scene = trimesh.load(out / "asset.glb")
    (mesh,) = scene.geometry.values()
    assert mesh.visual.kind == "texture" and mesh.visual.material.baseColorTexture is not None
    assert mesh.visual.uv.shape == (len(mesh.vertices), 2)
