"""A tiny image → 3D model folder written in under a second, for the app's tests.

The four run folders (ss_vae, ss_flow, slat_vae, slat_flow) get the layout `voxforge train`
leaves: `config.yaml` with the sections the pipelines read, one committed checkpoint of
random weights (`train.checkpoint.save_checkpoint`), and the records each flow stage writes
(`structure.json`, `slat.json`, `occupancy.json`). The networks are the real classes at toy
size (16³ voxels, 32-px images); training them is not what these tests check.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from voxforge.config.core import dump_yaml
from voxforge.models.image_encoders import ImageEncoderConfig
from voxforge.models.slat_flow import SLatFlowConfig, SLatFlowModel
from voxforge.models.slat_vae import GaussianHeadConfig, SLatVAE, SLatVAEConfig
from voxforge.models.ss_flow import SSFlowConfig, StructureFlowModel
from voxforge.models.ss_vae import SSVAE, SSVAEConfig
from voxforge.train.checkpoint import save_checkpoint

ENCODER = ImageEncoderConfig(image_size=32, patch_size=8, width=32, depth=1, heads=2)
FLOW = {"sigma_min": 1e-5}


def _write_run(folder: Path, stage: str, sections: dict, module: nn.Module) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(dump_yaml({"stage": stage, **sections}))
    state = module.state_dict()
    save_checkpoint(folder, 1, model_state=state, ema_states={0.9: state}, trainer_state={"step": 1})
    return folder


def write_tiny_model(root: str | Path, seed: int = 0) -> Path:
    """root/runs/{ss_vae,ss_flow,slat_vae,slat_flow}: a model folder for `--model root`."""
    root = Path(root)
    runs = root / "runs"
    torch.manual_seed(seed)
    ss_vae_cfg = SSVAEConfig(
        resolution=16,
        patch_size=2,
        channels=[8, 16],
        latent_channels=4,
        num_res_blocks=1,
        num_res_blocks_middle=1,
    )
    ss_vae = _write_run(runs / "ss_vae", "ss_vae", {"model": ss_vae_cfg}, SSVAE(ss_vae_cfg))
    (ss_vae / "occupancy.json").write_text(json.dumps({"rate": 0.15}))
    ss_flow_cfg = SSFlowConfig(resolution=4, in_channels=4, patch_size=2, width=32, depth=1, heads=2)
    ss_flow = _write_run(
        runs / "ss_flow",
        "ss_flow",
        {"model": ss_flow_cfg, "image_encoder": ENCODER, "flow": FLOW},
        StructureFlowModel(ss_flow_cfg, ENCODER),
    )
    stats = {"mean": [0.0] * 4, "std": [1.0] * 4}
    (ss_flow / "structure.json").write_text(json.dumps({"vae_run": str(ss_vae), "resolution": 16, **stats}))
    slat_vae_cfg = SLatVAEConfig(
        resolution=16,
        in_channels=3,
        latent_channels=8,
        width=32,
        encoder_blocks=1,
        decoder_blocks=1,
        heads=2,
        head=GaussianHeadConfig(gaussians_per_voxel=2),
    )
    slat_vae = _write_run(runs / "slat_vae", "slat_vae", {"model": slat_vae_cfg}, SLatVAE(slat_vae_cfg))
    slat_flow_cfg = SLatFlowConfig(
        resolution=16, io_channels=[8], io_res_blocks=0, width=32, depth=1, heads=2
    )
    flow = SLatFlowModel(slat_flow_cfg, ENCODER)
    slat_flow = _write_run(
        runs / "slat_flow",
        "slat_flow",
        {"model": slat_flow_cfg, "image_encoder": ENCODER, "flow": FLOW},
        flow,
    )
    (slat_flow / "slat.json").write_text(json.dumps({"vae_run": str(slat_vae), "extractor": "rgb"}))
    return root


def write_tiny_get3d(folder: str | Path, seed: int = 0) -> Path:
    """A get3d run folder with a random-weight generator (12³ FlexiCubes grid: a sphere at init)."""
    from voxforge.models.get3d import Get3DConfig, Get3DGAN

    torch.manual_seed(seed)
    cfg = Get3DConfig(
        z_dim=16,
        w_dim=16,
        mapping_layers=2,
        triplane_resolution=16,
        triplane_channels=8,
        channel_max=32,
        grid_resolution=12,
        mlp_hidden=16,
        image_size=32,
    )
    cfg.discriminator.channel_max = 32
    cfg.discriminator.cmap_dim = 16
    return _write_run(Path(folder), "get3d", {"model": cfg}, Get3DGAN(cfg))
