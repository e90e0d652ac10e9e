"""End to end on a model the test trains itself: pipeline run (and its re-run skipping every
step), SLat encode, `voxforge generate` writing every export, bf16 SLat-VAE training finite."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from voxforge.cli import main
from voxforge.config.core import from_dict
from voxforge.workflows.pipeline import PipelineSpec, run_pipeline

QUIET = {"checkpoint_every": 100, "sample_every": 0, "log_every": 1, "progress": False, "tensorboard": False}
ENCODER = {"image_size": 32, "patch_size": 8, "width": 32, "depth": 1, "heads": 2}


def tiny_spec(**stage_changes) -> PipelineSpec:
    """The whole chain at toy size: 16³ voxels, one or two optimizer steps per stage."""
    stages = {
        "ss_vae": {
            "recipe": "ss_vae_tiny",
            "model": {"resolution": 16},
            "data": {"eval_assets": 0},
            "train": {"max_steps": 2, "batch_size": 2, **QUIET},
        },
        "ss_flow": {
            "recipe": "ss_flow_tiny",
            "model": {"resolution": 4, "patch_size": 2, "width": 32, "depth": 1, "heads": 2},
            "image_encoder": ENCODER,
            "data": {"eval_assets": 0},
            "train": {"max_steps": 2, "batch_size": 2, **QUIET},
        },
        "slat_vae": {
            "recipe": "slat_vae_tiny",
            "model": {
                "resolution": 16,
                "width": 32,
                "encoder_blocks": 1,
                "decoder_blocks": 1,
                "heads": 2,
                "head": {"gaussians_per_voxel": 2},
            },
            "data": {"image_size": 32, "views_per_item": 1, "eval_assets": 0, "holdout_every": 4},
            "train": {"max_steps": 3, "batch_size": 2, "precision": "bf16", **QUIET},
        },
        "slat_flow": {
            "recipe": "slat_flow_tiny",
            "model": {
                "resolution": 16,
                "io_channels": [8],
                "io_res_blocks": 0,
                "width": 32,
                "depth": 1,
                "heads": 2,
            },
            "image_encoder": ENCODER,
            "data": {"eval_assets": 0},
            "train": {"max_steps": 2, "batch_size": 2, **QUIET},
        },
    }
    for stage, change in stage_changes.items():
        stages[stage] = {**stages[stage], **change}
    data = {
        "synth": {"num": 4, "seed": 0},
        "prepare": {"resolution": 16, "views": 4, "image_size": 32, "cond_views": 2, "workers": 0},
    }
    return from_dict(PipelineSpec, {"data": data, "stages": stages})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("tiny_model")
    records = run_pipeline(tiny_spec(), out, progress=False)
    return out, records


def test_pipeline_runs_every_step_then_skips_them_all(tiny_model):
    out, records = tiny_model
    steps = [r.step for r in records]
    assert steps == [
        "synth",
        "prepare",
        "ss_vae",
        "encode_ss",
        "ss_flow",
        "slat_vae",
        "encode_slat",
        "slat_flow",
    ]
    assert all(r.status == "done" for r in records)
    record = json.loads((out / "pipeline.json").read_text())
    assert [s["step"] for s in record["steps"]] == steps
    start = time.perf_counter()
    again = run_pipeline(tiny_spec(), out, progress=False)
    assert [r.status for r in again] == ["skipped"] * len(steps)
    assert time.perf_counter() - start < 120  # nothing trained again (a loose bound: no retraining)


def test_pipeline_continues_only_the_stage_whose_schedule_grew(tiny_model):
    out, _ = tiny_model
    longer = {**tiny_spec().stages["slat_flow"], "train": {"max_steps": 3, "batch_size": 2, **QUIET}}
    statuses = {r.step: r.status for r in run_pipeline(tiny_spec(slat_flow=longer), out, progress=False)}
    assert statuses["slat_flow"] == "done"
    assert all(status == "skipped" for step, status in statuses.items() if step != "slat_flow")


def test_slat_vae_trained_in_bf16_without_non_finite_steps(tiny_model):
    out, _ = tiny_model
    lines = [
        json.loads(line) for line in (out / "runs" / "slat_vae" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert losses and all(np.isfinite(losses))
    assert not [line for line in lines if line.get("event") == "nonfinite"]
    final = json.loads((out / "runs" / "slat_vae" / "final_metrics.json").read_text())
    assert final["skipped_steps"] == 0


def test_slat_latents_match_the_structure(tiny_model):
    from voxforge.data import PreparedDataset
    from voxforge.data.latents import read_latent, read_latents_manifest

    out, _ = tiny_model
    manifest = read_latents_manifest(out / "latents" / "slat", "slat")
    assert manifest["latent_channels"] == 8 and manifest["resolution"] == 16 and len(manifest["std"]) == 8
    data = PreparedDataset(out / "prepared")
    for asset in manifest["ids"]:
        stored = read_latent(out / "latents" / "slat" / "latents" / f"{asset}.npz")
        coords, latent = stored.coords, stored.latent
        assert np.array_equal(coords, data.features(asset, "rgb", 16)[0])
        assert latent.shape == (len(coords), 8) and np.isfinite(latent).all()
    info = json.loads((out / "runs" / "slat_flow" / "slat.json").read_text())
    assert Path(info["vae_run"]) == (out / "runs" / "slat_vae").resolve()


def test_generate_writes_every_export(tiny_model, tmp_path):
    import imageio.v3 as iio
    import trimesh

    from voxforge.representations.gaussians import load_ply

    out, _ = tiny_model
    image = sorted((out / "prepared" / "assets").glob("*/cond/000.png"))[0]
    dest = tmp_path / "asset"
    argv = ["generate", "--model", str(out), "--image", str(image), "--image", str(image), "--out", str(dest)]
    argv += ["--steps", "2", "--slat-steps", "2", "--frames", "4", "--size", "32", "--seed", "3"]
    assert main(argv) == 0
    record = json.loads((dest / "generation.json").read_text())
    assert {"structure_flow", "structure_decode", "slat_flow", "slat_decode", "export"} <= set(
        record["seconds"]
    )
    gaussians = load_ply(dest / "asset.ply")
    assert gaussians.num_gaussians == record["gaussians"] > 0
    assert torch.isfinite(gaussians.means).all() and gaussians.means.abs().max() <= 0.5 + 1 / 16
    assert iio.imread(dest / "asset.mp4", index=None, plugin="FFMPEG").shape[0] == 4
    assert iio.imread(dest / "asset.gif", index=None).shape[0] == 4
    assert (dest / "asset_preview.png").is_file()
    mesh = trimesh.load(dest / "asset.glb", force="mesh")
    assert len(mesh.faces) > 0
    with np.load(dest / "structure.npz") as structure:
        assert len(structure["coords"]) == record["voxels"]


def test_generate_named_runs_same_seed_same_asset(tiny_model, tmp_path):
    from voxforge.representations.gaussians import load_ply

    out, _ = tiny_model
    image = str(sorted((out / "prepared" / "assets").glob("*/cond/000.png"))[0])
    runs = out / "runs"
    results = []
    for name, target in (
        ("a", ["--model", str(out)]),
        ("b", ["asset", "--structure", str(runs / "ss_flow"), "--slat", str(runs / "slat_flow")]),
    ):
        argv = ["generate", *target, "--image", image, "--out", str(tmp_path / name), "--steps", "2"]
        argv += ["--slat-steps", "2", "--seed", "5", "--formats", "ply"]
        assert main(argv) == 0
        results.append(load_ply(tmp_path / name / "asset.ply"))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "asset.ply",
        "generation.json",
        "structure.npz",
    ]
    torch.testing.assert_close(results[0].means, results[1].means)


def test_generate_errors_are_user_errors(tiny_model, tmp_path, capsys):
    out, _ = tiny_model
    assert main(["generate", "--model", str(tmp_path), "--image", "x.png", "--out", str(tmp_path / "o")]) == 2
    assert "not an image-to-3D model folder" in capsys.readouterr().err
    image = sorted((out / "prepared" / "assets").glob("*/cond/000.png"))[0]
    bad = [
        "generate",
        "--model",
        str(out),
        "--image",
        str(image),
        "--out",
        str(tmp_path / "o"),
        "--formats",
        "ply,obj",
    ]
    assert main(bad) == 2
    assert "obj" in capsys.readouterr().err
    assert (
        main(
            [
                "generate",
                "--model",
                str(out),
                "--image",
                str(tmp_path / "missing.png"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )


def test_generate_an_empty_structure_is_an_outcome(tiny_model, tmp_path, monkeypatch, capsys):
    """A cold decoder: the top-k fallback still gives an asset; with it off, the run records 'empty'."""
    from voxforge.pipelines.structure import StructurePipeline

    out, _ = tiny_model
    original = StructurePipeline.from_run

    def cold(*args, **kwargs):
        pipeline = original(*args, **kwargs)
        r = pipeline.resolution
        pipeline.vae.decode = lambda latents: torch.full((len(latents), 1, r, r, r), -4.0)
        return pipeline

    monkeypatch.setattr(StructurePipeline, "from_run", cold)
    image = str(sorted((out / "prepared" / "assets").glob("*/cond/000.png"))[0])
    argv = ["generate", "--model", str(out), "--image", image, "--steps", "2", "--slat-steps", "2"]
    argv += ["--formats", "ply"]
    assert main(argv + ["--out", str(tmp_path / "a"), "--fallback-voxels", "40"]) == 0
    record = json.loads((tmp_path / "a" / "generation.json").read_text())
    assert record["fallback"] and record["voxels"] == 40 and record["status"] == "done"
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "b"), "--fallback-voxels", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty structure" in err[0]
    record = json.loads((tmp_path / "b" / "generation.json").read_text())
    assert record["status"] == "empty_structure" and record["voxels"] == 0
    assert (tmp_path / "b" / "structure.npz").is_file()
