import json

import numpy as np
import pytest
from PIL import Image

from tests.stages.ss_helpers import stage1_artefacts
from voxforge.cli import main
from voxforge.pipelines.structure import DecodedStructure, StructurePipeline
from voxforge.representations.voxels import load_voxels


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory):
    return stage1_artefacts(tmp_path_factory.getbasetemp() / "stage1")


@pytest.fixture
def images(artefacts, tmp_path):
    """A held-out RGBA condition view and an RGB copy of another view on a white background."""
    asset = sorted(p.name for p in (artefacts["prepared"] / "assets").iterdir())[0]
    views = sorted((artefacts["prepared"] / "assets" / asset / "cond").glob("[0-9]*.png"))
    rgba = Image.open(views[1]).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    white.convert("RGB").save(tmp_path / "white.jpg", quality=95)
    return [views[0], tmp_path / "white.jpg"]


@pytest.mark.parametrize("mode", ["stochastic", "multidiffusion"])
def test_generate_structure_writes_voxels_mesh_and_preview(artefacts, images, tmp_path, mode, monkeypatch):
    out = tmp_path / "out"
    argv = ["generate", "structure", "--model", str(artefacts["flow_run"]), "--out", str(out), "--steps", "3"]
    argv += ["--image", str(images[0]), "--image", str(images[1]), "--mode", mode, "--seed", "3"]
    assert main(argv) == 0
    coords, resolution = load_voxels(out / "structure.npz")
    record = json.loads((out / "generation.json").read_text())
    assert resolution == 16 and record["voxels"] == len(coords) and record["mode"] == mode
    assert len(record["images"]) == 2 and record["sampler"]["steps"] == 3
    assert Image.open(out / "preview.png").size[0] == 192 * 6  # 2 condition images + 4 views
    assert (out / "structure.glb").is_file() == (len(coords) > 0)
    # same seed, same structure
    assert main(argv + ["--out", str(tmp_path / "again")]) == 0
    assert np.array_equal(load_voxels(tmp_path / "again" / "structure.npz")[0], coords)


def test_generate_writes_meshes_for_a_nonempty_structure(artefacts, images, tmp_path, monkeypatch):
    block = np.stack(np.meshgrid(*[np.arange(4, 8)] * 3, indexing="ij"), -1).reshape(-1, 3)
    monkeypatch.setattr(
        StructurePipeline,
        "decode_structures",
        lambda self, latents: [DecodedStructure(block, False) for _ in range(len(latents))],
    )
    out = tmp_path / "out"
    argv = ["generate", "structure", "--model", str(artefacts["flow_run"]), "--image", str(images[0])]
    assert main(argv + ["--out", str(out), "--steps", "2"]) == 0
    import trimesh

    mesh = trimesh.load(out / "structure.ply")
    assert mesh.is_watertight and np.allclose(mesh.bounds, [[-0.25, -0.25, -0.25], [0.0, 0.0, 0.0]])
    assert len(trimesh.load(out / "structure.glb", force="mesh").faces) == 6 * 16 * 2


def test_generate_reports_bad_inputs(artefacts, tmp_path, capsys):
    base = ["generate", "structure", "--model", str(artefacts["flow_run"]), "--out", str(tmp_path / "o")]
    assert main(base + ["--image", str(tmp_path / "missing.png")]) == 2
    assert "not found" in capsys.readouterr().err
    noisy = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    assert main(base + ["--image", str(tmp_path / "noisy.png")]) == 2
    assert "transparent background" in capsys.readouterr().err
    assert main(base + ["--image", str(tmp_path / "noisy.png"), "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert (
        main(["generate", "structure", "--model", str(artefacts["vae_run"]), "--image", "x", "--out", "y"])
        == 2
    )
    assert "ss_flow" in capsys.readouterr().err
