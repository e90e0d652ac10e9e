"""Sampler options shared by the `generate` targets, with TRELLIS's defaults
(`voxforge.models.sampler_presets`) in their values and help."""

from __future__ import annotations

import argparse
from typing import Any


def add_steps_and_guidance(
    p: argparse.ArgumentParser,
    preset: dict[str, Any],
    *,
    prefix: str = "",
    what: str = "",
    model_defaults: bool = False,
) -> None:
    """`--{prefix}steps` and `--{prefix}cfg`; `what` names the flow in the help ("SLat ").

    With `model_defaults`, an option left out stays None so that a model folder that carries
    its own sampler settings (an imported TRELLIS model) can fill it; `preset_value` gives
    the preset's value otherwise.
    """
    where = " or the model folder's" if model_defaults else ""
    p.add_argument(
        f"--{prefix}steps",
        type=int,
        default=None if model_defaults else preset["steps"],
        help=f"{what}sampler steps (default {preset['steps']}{where})",
    )
    p.add_argument(
        f"--{prefix}cfg",
        type=float,
        default=None if model_defaults else preset["cfg_scale"],
        help=f"{what}guidance scale w in v_u + w (v_c - v_u); 1 = off (default {preset['cfg_scale']:g}{where})",
    )


def preset_value(value: Any, preset: dict[str, Any], key: str) -> Any:
    """An option's value, or the preset's when the option was left out (None)."""
    return preset[key] if value is None else value


def add_fallback_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--fallback-voxels",
        type=int,
        default=None,
        metavar="K",
        help="when no voxel passes probability 0.5, keep the K most likely (default: the VAE data's mean "
        "occupied count; 0: off, an empty structure stays empty)",
    )


def fallback_message(fallback: bool, voxels: int) -> str:
    if fallback:
        return (
            f"voxforge generate: note: no voxel passed probability 0.5; kept the {voxels} most likely "
            "(top-k fallback, recorded in generation.json); a longer-trained model or another --seed does better"
        )
    return ""
