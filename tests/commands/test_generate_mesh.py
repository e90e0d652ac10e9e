"""`voxforge generate mesh`: textured .glb / .obj from a tiny get3d run, the record, the interpolation video."""

from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from tests.stages.ss_helpers import synth_prepared
from voxforge.cli import main
from voxforge.recipe import load_recipe
from voxforge.train.engine import train

pytest.importorskip("xatlas")

TINY = [
    "train.progress=false",
    "train.tensorboard=false",
    "train.max_steps=1",
    "train.checkpoint_every=1",
    "train.sample_every=0",
    "train.batch_size=2",
    "model.z_dim=8",
    "model.w_dim=8",
    "model.mapping_layers=1",
    "model.grid_resolution=12",
    "model.triplane_resolution=8",
    "model.triplane_channels=4",
    "model.channel_max=8",
    "model.image_size=16",
    "model.mlp_hidden=8",
    "model.mlp_layers=1",
    "model.discriminator.channel_max=8",
    "model.discriminator.cmap_dim=8",
    "data.eval_assets=1",
    "data.sample_count=2",
]


@pytest.fixture(scope="module")
def get3d_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("get3d_mesh")
    synth_prepared(root, num=2, segments=8, views=2, image_size=16, cond_views=0, steps=("ingest", "views"))
    train(load_recipe("get3d_tiny", [f"data.path={root / 'prepared'}", *TINY]), root / "run")
    return root / "run"


def test_generate_mesh_writes_textured_glb_and_obj(get3d_run, tmp_path):
    out = tmp_path / "meshes"
    argv = ["generate", "mesh", "--model", str(get3d_run), "--seed", "3", "--num", "2", "--out", str(out)]
    assert main([*argv, "--texture-size", "64", "--interpolate", "5", "--frames", "3", "--size", "32"]) == 0
    record = json.loads((out / "generation.json").read_text())
    assert record["seeds"] == [3, 4] and record["texture_size"] == 64
    assert record["interpolation"]["files"] == ["interpolation_3_5.mp4", "interpolation_3_5.gif"]
    assert (out / "interpolation_3_5.mp4").stat().st_size > 0
    for row in record["meshes"]:
        assert row["faces"] > 0, "the initial generator makes a sphere"
        stem = f"mesh_{row['seed']:03d}"
        assert sorted(row["files"]) == sorted(f"{stem}.{ext}" for ext in ("glb", "obj", "mtl", "png"))
        for ext in ("glb", "obj"):
            mesh = trimesh.load(out / f"{stem}.{ext}", force="mesh")
            assert isinstance(mesh.visual, trimesh.visual.TextureVisuals)
            material = mesh.visual.material
            image = material.baseColorTexture if ext == "glb" else material.image
            assert np.asarray(image).shape[:2] == (64, 64)
            assert len(mesh.faces) == row["faces"]
    # the same seed is the same shape, whatever else is generated with it
    again = tmp_path / "again"
    assert (
        main(
            [
                "generate",
                "mesh",
                "--model",
                str(get3d_run),
                "--seed",
                "4",
                "--out",
                str(again),
                "--texture-size",
                "64",
            ]
        )
        == 0
    )
    first = trimesh.load(out / "mesh_004.obj", force="mesh")
    second = trimesh.load(again / "mesh_004.obj", force="mesh")
    assert np.allclose(np.sort(first.vertices, 0), np.sort(second.vertices, 0), atol=1e-6)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num", "0"], "--num"),
        (["--truncation", "1.5"], "--truncation"),
        (["--texture-size", "4"], "--texture-size"),
    ],
)
def test_bad_options_are_named(tmp_path, capsys, extra, message):
    assert main(["generate", "mesh", "--model", str(tmp_path), *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_missing_run_is_named(tmp_path, capsys):
    assert main(["generate", "mesh", "--model", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
