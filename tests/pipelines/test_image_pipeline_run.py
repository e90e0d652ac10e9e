"""ImagePipeline.from_run on real image_flow runs (2 training steps each): full and LoRA.

Builds the image stage's tiny artefacts (tests/stages/image_helpers.py: synthetic images,
a 2-step image_ae run) and trains a 2-step image_flow run and a LoRA run on top, then samples
from them through `from_run` and `voxforge generate image`. Skipped where the image family's
run loader (`voxforge.runs.load_image_models`) is not built.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from voxforge import runs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not hasattr(runs, "load_image_models"), reason="needs voxforge.runs.load_image_models"
    ),
]
image_helpers = pytest.importorskip("tests.stages.image_helpers")


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory):
    from voxforge.recipe import load_recipe
    from voxforge.train.engine import train

    base = tmp_path_factory.getbasetemp() / "image_stage"
    artefacts = image_helpers.image_artefacts(base)
    full, lora = base / "sampling_flow", base / "sampling_lora"
    train(load_recipe("image_flow_tiny", image_helpers.flow_overrides(artefacts)), full)
    train(
        load_recipe("image_lora_tiny", image_helpers.flow_overrides(artefacts, f"model.init_from={full}")),
        lora,
    )
    return {"full": full, "lora": lora}


def test_from_run_reads_the_run_record_and_samples(image_runs):
    from voxforge.pipelines.image import ImagePipeline

    info = json.loads((image_runs["full"] / runs.IMAGE_INFO).read_text())
    pipeline = ImagePipeline.from_run(image_runs["full"])
    assert pipeline.resolution == (info["resolution"],) * 2
    assert pipeline.flow_shift == info["flow_shift"] and pipeline.latent_scale == info["latent_scale"]
    assert pipeline.timestep_scale == info["timestep_scale"] and pipeline.sigma_min == info["sigma_min"]
    for sampler in ("euler", "dpm"):
        images = pipeline.generate(["a red circle", "a blue square"], steps=3, sampler=sampler, seed=1)
        assert images.shape == (2, info["resolution"], info["resolution"], 3) and images.dtype == np.uint8
        assert np.array_equal(
            images, pipeline.generate(["a red circle", "a blue square"], steps=3, sampler=sampler, seed=1)
        )


def test_lora_run_and_generate_command(image_runs, tmp_path):
    from voxforge.cli import main
    from voxforge.pipelines.image import ImagePipeline

    base = ImagePipeline.from_run(image_runs["full"]).generate(["a red circle"], steps=3)
    tuned = ImagePipeline.from_run(image_runs["lora"]).generate(["a red circle"], steps=3)
    assert base.shape == tuned.shape
    out = tmp_path / "out"
    argv = [
        "generate",
        "image",
        "--model",
        str(image_runs["lora"]),
        "--prompt",
        "a red circle",
        "--out",
        str(out),
    ]
    assert main(argv + ["--steps", "3"]) == 0
    assert np.array_equal(np.asarray(Image.open(out / "0.png")), tuned[0])
    assert json.loads((out / "generation.json").read_text())["images"][0]["seed"] == 0
