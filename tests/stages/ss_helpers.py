"""Tiny stage-1 artefacts shared by the stage, command and pipeline tests (built once per session).

10 synthetic assets prepared at 16³ with two 32-px condition views each; an SS-VAE 16³ → 4³ × 4
and a structure flow over its latents, each trained for 3 steps through the real engine.
"""

from __future__ import annotations

from pathlib import Path

_CACHE: dict[str, dict[str, Path]] = {}

COMMON = ["train.progress=false", "train.tensorboard=false", "train.sample_every=0", "optim.warmup_steps=0"]
VAE_OVERRIDES = COMMON + [
    "model.resolution=16",
    "model.patch_size=2",
    "model.channels=[8,16]",
    "model.latent_channels=4",
    "model.num_res_blocks=1",
    "model.num_res_blocks_middle=1",
    "data.eval_assets=3",
    "train.max_steps=3",
    "train.batch_size=4",
    "train.checkpoint_every=3",
    "train.ema_rates=[0.9]",
]
FLOW_OVERRIDES = COMMON + [
    "model.resolution=4",
    "model.in_channels=4",
    "model.patch_size=1",
    "model.width=32",
    "model.depth=2",
    "model.heads=2",
    "image_encoder.image_size=32",
    "image_encoder.patch_size=8",
    "image_encoder.width=32",
    "image_encoder.depth=1",
    "image_encoder.heads=2",
    "data.eval_assets=3",
    "train.max_steps=3",
    "train.batch_size=4",
    "train.checkpoint_every=3",
    "train.ema_rates=[0.9]",
    "sampler.steps=2",
]


def synth_prepared(base: Path, *, num: int, seed: int = 0, **settings) -> Path:
    """`num` built-in assets (`data.synth`: `segments` among `settings`) prepared into base/prepared
    with the other PrepareConfig `settings` (in-process, no progress bar); returns that folder."""
    from voxforge.data.prepare import PrepareConfig, prepare
    from voxforge.data.synth import SynthConfig, write_dataset

    segments = {"segments": settings.pop("segments")} if "segments" in settings else {}
    write_dataset(base / "synth", SynthConfig(num=num, seed=seed, **segments))
    prepare(base / "synth", base / "prepared", PrepareConfig(workers=0, progress=False, **settings))
    return base / "prepared"


def prepared_dataset(base: Path) -> Path:
    out = base / "prepared"
    if not out.is_dir():
        synth_prepared(
            base,
            num=10,
            segments=16,
            resolution=16,
            image_size=32,
            cond_views=2,
            steps=("ingest", "cond", "voxels"),
        )
    return out


def stage1_artefacts(base: Path) -> dict[str, Path]:
    """{"prepared", "vae_run", "latents", "flow_run"} under `base`, built on first use."""
    key = str(base)
    if key in _CACHE:
        return _CACHE[key]
    from voxforge.pipelines.encode import encode_ss_latents
    from voxforge.recipe import load_recipe
    from voxforge.train.engine import train

    prepared = prepared_dataset(base)
    vae_run, latents, flow_run = base / "ss_vae", base / "latents", base / "ss_flow"
    train(load_recipe("ss_vae_tiny", VAE_OVERRIDES + [f"data.path={prepared}"]), vae_run)
    encode_ss_latents(vae_run, prepared, latents, batch_size=4)
    train(load_recipe("ss_flow_tiny", FLOW_OVERRIDES + [f"data.latents={latents}"]), flow_run)
    _CACHE[key] = {"prepared": prepared, "vae_run": vae_run, "latents": latents, "flow_run": flow_run}
    return _CACHE[key]
