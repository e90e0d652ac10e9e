"""Tiny video-family artefacts shared by the video flow and generate-video tests (built once per session).

12 synthetic captioned clips of 9 frames at 16 px prepared into one bucket (batch 4); two fresh
LTX-Video autoencoders (2x in time, 4x in space: 9 frames -> 5 latent frames of 4 x 4), one with 4
latent channels and one with 8 (the swap), saved as diffusers folders; the tiny flow overrides.
"""

from __future__ import annotations

from pathlib import Path

COMMON = [
    "train.progress=false",
    "train.tensorboard=false",
    "train.sample_every=0",
    "optim.warmup_steps=0",
    "train.precision=fp32",
]
FLOW_OVERRIDES = COMMON + [
    "model.width=48",
    "model.depth=2",
    "model.heads=2",
    "text_encoder.width=16",
    "text_encoder.layers=1",
    "text_encoder.heads=2",
    "text_encoder.max_length=16",
    "flow.shift_reference=80",
    "data.eval_clips=4",
    "data.eval_samples=2",
    "train.max_steps=2",
    "train.checkpoint_every=2",
    "train.ema_rates=[0.9]",
    "sampler.steps=2",
]

_CACHE: dict[Path, dict[str, Path]] = {}


def prepared_clips(base: Path, num: int = 12, frames: int = 9, size: int = 16, batch: int = 4) -> Path:
    from voxforge.config.core import from_dict
    from voxforge.data.synth_videos import SynthVideosConfig, write_synth_videos
    from voxforge.data.videos import VideoPrepareConfig, prepare_videos

    out = base / f"clips_{num}_{frames}_{size}"
    if not (out / "dataset.json").is_file():
        src = base / f"src_{num}_{frames}_{size}"
        write_synth_videos(src, SynthVideosConfig(num=num, frames=frames, size=size, seed=0))
        config = from_dict(
            VideoPrepareConfig,
            {
                "buckets": {f"{size}px": {frames: [1.0, batch]}},
                "progress": False,
                "workers": 0,
                "multiple": 8,
            },
            source="test",
        )
        prepare_videos([str(src)], out, config)
    return out


def tiny_autoencoder(folder: Path, channels: int) -> Path:
    import torch

    from voxforge.models.video_ae import VideoAEConfig, build_video_autoencoder

    if not (folder / "config.json").is_file():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(channels)
            ae = build_video_autoencoder(
                VideoAEConfig(kind="ltx", latent_channels=channels, block_out_channels=[8, 8], patch_size=2)
            )
        ae.save(folder)
    return folder


def video_artefacts(base: Path) -> dict[str, Path]:
    """{"clips": prepared folder, "ae": 4-channel autoencoder folder, "ae8": the 8-channel one}."""
    if base not in _CACHE:
        _CACHE[base] = {
            "clips": prepared_clips(base),
            "ae": tiny_autoencoder(base / "ae4", 4),
            "ae8": tiny_autoencoder(base / "ae8", 8),
        }
    return _CACHE[base]


def flow_overrides(artefacts: dict[str, Path], *extra: str) -> list[str]:
    return FLOW_OVERRIDES + [f"data.path={artefacts['clips']}", f"data.autoencoder={artefacts['ae']}", *extra]


def video_flow_run(base: Path) -> Path:
    """A video_flow run of 10 steps on the artefacts, every loss logged, half the batch
    image-conditioned (trained once per session)."""
    from voxforge.recipe import load_recipe
    from voxforge.train.engine import train

    run = base / "video_flow"
    if not (run / "final_metrics.json").is_file():
        extra = ["train.max_steps=10", "train.checkpoint_every=5", "train.log_every=1", "optim.lr=3e-3"]
        recipe = load_recipe(
            "video_flow_tiny", flow_overrides(video_artefacts(base), *extra, "flow.p_image_cond=0.5")
        )
        train(recipe, run)
    return run
