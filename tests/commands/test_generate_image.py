"""`voxforge generate image`: a tiny diffusers Sana folder → PNGs, a grid and generation.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.pipelines.image_helpers import save_tiny_sana
from voxforge.cli import main
from voxforge.commands.generate_image import parse_size
from voxforge.errors import UserError
from voxforge.pipelines.image import ImagePipeline


@pytest.fixture(scope="module")
def sana_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sana") / "sana"
    save_tiny_sana(folder)
    return folder


def test_generate_image_writes_pngs_grid_and_record(sana_folder, tmp_path):
    out = tmp_path / "out"
    argv = [
        "generate",
        "image",
        "--model",
        str(sana_folder),
        "--out",
        str(out),
        "--steps",
        "3",
        "--seed",
        "4",
    ]
    argv += ["--prompt", "a red circle", "--prompt", "a blue square", "--per-prompt", "2", "--batch", "3"]
    argv += ["--size", "64x32", "--negative", "green"]
    assert main(argv) == 0
    record = json.loads((out / "generation.json").read_text())
    assert record["size"] == [64, 32] and record["sampler"]["method"] == "dpm"
    assert record["sampler"]["steps"] == 3 and record["sampler"]["flow_shift"] == 3.0
    assert [f["seed"] for f in record["images"]] == [4, 5, 6, 7]
    assert [f["prompt"] for f in record["images"]] == ["a red circle"] * 2 + ["a blue square"] * 2
    assert record["seconds"]["sample"] > 0
    images = [np.asarray(Image.open(out / f"{n}.png")) for n in range(4)]
    assert all(image.shape == (32, 64, 3) for image in images)
    assert Image.open(out / "grid.png").size == (64 * 2 + 2, 32 * 2 + 2)
    # the files are what the pipeline makes for the same seed, batched differently
    pipeline = ImagePipeline.from_diffusers(sana_folder)
    again = pipeline.generate(["a blue square"], negative="green", steps=3, seed=7, size=(64, 32))
    assert np.abs(again[0].astype(int) - images[3].astype(int)).max() <= 1


def test_euler_sampler_and_default_size(sana_folder, tmp_path):
    out = tmp_path / "euler"
    argv = ["generate", "image", "--model", str(sana_folder), "--out", str(out), "--prompt", "a small circle"]
    assert main(argv + ["--steps", "2", "--sampler", "euler", "--cfg", "1"]) == 0
    record = json.loads((out / "generation.json").read_text())
    assert record["size"] == [32, 32] and record["sampler"]["method"] == "euler"
    assert Image.open(out / "0.png").size == (32, 32)


def test_sana_schedule(sana_folder, tmp_path):
    out = tmp_path / "sana"
    argv = ["generate", "image", "--model", str(sana_folder), "--out", str(out), "--prompt", "a"]
    assert main(argv + ["--steps", "2", "--schedule", "sana"]) == 0
    assert json.loads((out / "generation.json").read_text())["sampler"]["schedule"] == "sana"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "30x32"], "multiples of 4"),
        (["--size", "big"], "WIDTHxHEIGHT"),
        (["--steps", "0"], "--steps"),
        (["--per-prompt", "0"], "--per-prompt"),
        (["--sampler", "euler", "--schedule", "sana"], "--sampler dpm"),
    ],
)
def test_bad_options_are_clear_errors(sana_folder, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    argv = ["generate", "image", "--model", str(sana_folder), "--out", str(out), "--prompt", "a"]
    assert main(argv + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_or_wrong_model(tmp_path, capsys):
    argv = ["generate", "image", "--out", str(tmp_path / "o"), "--prompt", "a", "--model"]
    assert main(argv + [str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert main(argv + [str(tmp_path / "folder")]) == 2
    assert "neither an image_flow run" in capsys.readouterr().err


def test_parse_size():
    assert parse_size("512x256") == (512, 256) and parse_size("64") == (64, 64)
    with pytest.raises(UserError):
        parse_size("0x64")
