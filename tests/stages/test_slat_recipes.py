"""Built-in SLat and pipeline recipes: they validate, agree with each other, and have the
TRELLIS sizes (models built on the meta device: no memory, no time)."""

from __future__ import annotations

import pytest
import torch

from voxforge.models.slat_flow import SLatFlowTransformer
from voxforge.models.slat_vae import SLatVAE
from voxforge.recipe import load_recipe
from voxforge.workflows.pipeline import STAGE_ORDER, load_pipeline, stage_recipe


def _params(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


@pytest.mark.parametrize(
    "vae_name, flow_name", [("slat_vae_tiny", "slat_flow_tiny"), ("slat_vae_trellis", "slat_flow_trellis_l")]
)
def test_vae_and_flow_recipes_fit_together(vae_name, flow_name):
    vae, flow = load_recipe(vae_name), load_recipe(flow_name)
    assert vae.model.resolution == flow.model.resolution
    assert vae.model.latent_channels == flow.model.in_channels == 8


def test_trellis_scale_sizes():
    vae, flow = load_recipe("slat_vae_trellis"), load_recipe("slat_flow_trellis_l")
    assert (vae.model.resolution, vae.model.width, vae.model.encoder_blocks, vae.model.window_size) == (
        64,
        768,
        12,
        8,
    )
    assert vae.model.head.gaussians_per_voxel == 32 and vae.train.precision == "bf16"
    assert flow.model.coarse_resolution == 32 and flow.model.width == 1024 and flow.model.depth == 24
    with torch.device("meta"):
        vae_params = _params(SLatVAE(vae.model))
        flow_params = _params(SLatFlowTransformer(flow.model, context_dim=1024))
    assert 150 < vae_params < 200  # TRELLIS: ~85 M encoder + ~85 M Gaussian decoder
    assert 500 < flow_params < 700  # TRELLIS-L SLat flow


def test_pipeline_tiny_builds_every_stage_recipe():
    spec, source = load_pipeline("pipeline_tiny")
    assert list(spec.stages) == list(STAGE_ORDER)
    paths = {
        "ss_vae": {"path": "P"},
        "ss_flow": {"latents": "L"},
        "slat_vae": {"path": "P"},
        "slat_flow": {"latents": "L"},
    }
    recipes = {stage: stage_recipe(spec, stage, paths[stage], source) for stage in STAGE_ORDER}
    assert recipes["slat_vae"].data.path == "P" and recipes["slat_flow"].data.latents == "L"
    assert recipes["slat_vae"].data.eval_assets == 4  # the pipeline file's entry is merged over the recipe
    assert (
        recipes["ss_vae"].model.resolution
        == recipes["slat_vae"].model.resolution
        == spec.data.prepare["resolution"]
    )


def test_pipeline_file_errors_name_the_key(tmp_path):
    from voxforge.errors import ConfigError

    bad = tmp_path / "p.yaml"
    bad.write_text("data: {synth: {num: 2}}\nstages: {slat_vae: {model: {width: 8}}}\n")
    with pytest.raises(ConfigError, match="stages.slat_vae.recipe"):
        load_pipeline(bad)
    bad.write_text("data: {synth: {num: 2}}\nstages: {slat_vea: {recipe: slat_vae_tiny}}\n")
    with pytest.raises(ConfigError, match="unknown stages"):
        load_pipeline(bad)
    bad.write_text("data: {}\nstages: {}\n")
    with pytest.raises(ConfigError, match="source"):
        load_pipeline(bad)
    spec, _ = load_pipeline("pipeline_tiny", ["stages.slat_vae.recipe=ss_vae_tiny"])
    with pytest.raises(ConfigError, match="trains 'ss_vae'"):
        stage_recipe(spec, "slat_vae", {"path": "P"})
