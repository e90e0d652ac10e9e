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


def test_decoder_falls_back_to_the_most_likely_voxels(artefacts):
    """No voxel above 0.5: the top-k voxels (k from the VAE run), flagged; k=0 keeps it empty."""
    import torch

    pipeline = StructurePipeline.from_run(artefacts["flow_run"])
    rate = json.loads((artefacts["vae_run"] / "occupancy.json").read_text())["rate"]
    assert pipeline.fallback_voxels == round(rate * pipeline.resolution**3) > 0
    r = pipeline.resolution
    logits = torch.full((2, 1, r, r, r), -5.0)
    logits[0, 0, 1, 2, 3] = 3.0  # one voxel passes
    ramp = torch.arange(r**3, dtype=torch.float32).view(r, r, r) / r**3 - 2.0  # all below 0: top-k
    logits[1, 0] = ramp
    pipeline.vae.decode = lambda latents: logits
    first, second = pipeline.decode_structures(torch.zeros(2, 1))
    assert not first.fallback and first.coords.tolist() == [[1, 2, 3]]
    assert second.fallback and len(second.coords) == pipeline.fallback_voxels
    flat = np.ravel_multi_index(second.coords.T, (r, r, r))
    assert sorted(flat.tolist()) == list(range(r**3 - pipeline.fallback_voxels, r**3))  # the largest logits
    pipeline.fallback_voxels = 0
    assert len(pipeline.decode_structures(torch.zeros(2, 1))[1].coords) == 0


def test_generate_records_the_fallback_and_an_empty_structure(
    artefacts, images, tmp_path, monkeypatch, capsys
):
    import torch

    r = 16
    original = StructurePipeline.from_run

    def cold(*args, **kwargs):  # a decoder whose every logit stays below 0
        pipeline = original(*args, **kwargs)
        pipeline.vae.decode = lambda latents: torch.full((len(latents), 1, r, r, r), -4.0)
        return pipeline

    monkeypatch.setattr(StructurePipeline, "from_run", cold)
    base = [
        "generate",
        "structure",
        "--model",
        str(artefacts["flow_run"]),
        "--image",
        str(images[0]),
        "--steps",
        "2",
    ]
    assert main(base + ["--out", str(tmp_path / "a"), "--fallback-voxels", "50"]) == 0
    record = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert record["fallback"] and record["voxels"] == 50 and "top-k fallback" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "b"), "--fallback-voxels", "0"]) == 0
    record = json.loads((tmp_path / "b" / "generation.json").read_text())
    assert record["voxels"] == 0 and not record["fallback"] and (tmp_path / "b" / "preview.png").is_file()
    assert "empty" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "c"), "--fallback-voxels", "-1"]) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("bomb", "decompression bomb"),
        (b"hello, I am text\n", "not a readable image"),
        (b"", "empty"),
    ],
)
def test_generate_rejects_bad_images_in_one_line(artefacts, tmp_path, capsys, content, message):
    from tests.data.hostile import bomb_png

    path = tmp_path / "bad.png"
    path.write_bytes(bomb_png(50_000, 50_000) if content == "bomb" else content)
    argv = ["generate", "structure", "--model", str(artefacts["flow_run"]), "--image", str(path)]
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "bad.png" in err[0] and "Traceback" not in err[0]
