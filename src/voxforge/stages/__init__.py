"""Registry of trainable stages (name in a recipe's `stage:` key -> Stage class), and the
base type of their recipes.

Built-in stages are listed as import strings, so looking up one stage does not import
the others (nor torch: this module and `Recipe` stay light for `voxforge config`). Plugins
and tests add their own with `register_stage`.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from voxforge.errors import ConfigError
from voxforge.train.config import OptimConfig, TrainConfig


@dataclass
class Recipe:
    """A typed recipe: the engine's sections here, the stage's `sections` added by
    `voxforge.recipe.recipe_class` (one dataclass per stage, built on this one)."""

    stage: str = ""
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    if TYPE_CHECKING:  # the stage's sections (model, data, ...) are attributes of the subclass

        def __getattr__(self, name: str) -> Any: ...


_BUILTIN = {
    "debug_regression": "voxforge.stages.debug:DebugRegressionStage",
    "toy_flow": "voxforge.stages.toy_flow:ToyFlowStage",
    "ss_vae": "voxforge.stages.ss_vae:SSVAEStage",
    "ss_flow": "voxforge.stages.ss_flow:SSFlowStage",
    "slat_vae": "voxforge.stages.slat_vae:SLatVAEStage",
    "slat_flow": "voxforge.stages.slat_flow:SLatFlowStage",
    "slat_mesh": "voxforge.stages.slat_mesh:SLatMeshStage",
    "image_ae": "voxforge.stages.image_ae:ImageAEStage",
    "image_flow": "voxforge.stages.image_flow:ImageFlowStage",
    "video_ae": "voxforge.stages.video_ae:VideoAEStage",
    "video_flow": "voxforge.stages.video_flow:VideoFlowStage",
    "get3d": "voxforge.stages.get3d:Get3DStage",
}
_REGISTERED: dict[str, type] = {}


def register_stage(cls: type) -> type:
    """Register a Stage subclass under `cls.name` (usable as a class decorator)."""
    _REGISTERED[cls.name] = cls
    return cls


def stage_names() -> list[str]:
    names = set(_REGISTERED)
    for name, target in _BUILTIN.items():
        module = target.split(":")[0]
        if importlib.util.find_spec(module) is not None:
            names.add(name)
    return sorted(names)


def get_stage(name: str, *, source: str = "") -> type:
    if name in _REGISTERED:
        return _REGISTERED[name]
    target = _BUILTIN.get(name)
    if target is None or importlib.util.find_spec(target.split(":")[0]) is None:
        where = f"{source}: " if source else ""
        raise ConfigError(
            f"{where}key 'stage': unknown stage '{name}'; available: {', '.join(stage_names())}"
        )
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)
