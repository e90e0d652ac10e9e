"""The app's tabs: one per model family, registered by name like the trainable stages.

A family tab is a `Family`: which model folders it claims (`claims`), which it finds under
a runs folder (`discover`), and `build(context, models)`, called inside the tab to add its
components and named endpoints. The built-in families are import strings (`_BUILTIN`), so
listing them imports nothing heavy; a family whose inference API is not in the tree has no
line here. Adding one is a module with a `FAMILY` and a line in `_BUILTIN`; plugins and tests
call `register_family`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxforge.app.requests import JobFolders, RequestLimits

__all__ = ["AppContext", "Family", "families", "get_family", "model_labels", "register_family"]


@dataclass
class AppContext:
    """What every tab builder gets: where outputs go, the limits, the device, the runs."""

    jobs: JobFolders
    limits: RequestLimits = field(default_factory=RequestLimits)
    device: Any = "cpu"  # torch.device or its name
    runs_folders: list[Path] = field(default_factory=list)
    frames: int = 36  # turntable frames of the 3D tab
    size: int = 256  # turntable side in pixels
    texture_size: int = 1024  # TRELLIS models' .glb: texture side,
    bake_views: int = 24  # renders the texture is baked from,
    simplify: float = 0.95  # fraction of faces removed first (pipelines.trellis_export.GlbOptions)


@dataclass(frozen=True)
class Family:
    name: str  # the family's key, e.g. "image_to_3d"
    title: str  # the tab's label
    claims: Callable[[Path], bool]  # is this --model folder one of this family's models
    discover: Callable[[Path], list[Path]]  # this family's models under a runs folder
    build: Callable[[AppContext, list[Path]], None]  # adds the tab's components (inside gr.Tab)
    order: int = 0  # tabs left to right


#: family name -> "module:attribute" of its Family, in tab order
_BUILTIN = {
    "image_to_3d": "voxforge.app.image_to_3d:FAMILY",
    "text_to_image": "voxforge.app.text_to_image:FAMILY",
    "text_to_video": "voxforge.app.text_to_video:FAMILY",
    "mesh_gan": "voxforge.app.mesh_gan:FAMILY",
}
_REGISTERED: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    _REGISTERED[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name in _REGISTERED:
        return _REGISTERED[name]
    module, attr = _BUILTIN[name].split(":")
    return getattr(importlib.import_module(module), attr)


def families() -> list[Family]:
    """Every family (built-in first, then registered), in tab order."""
    names = list(dict.fromkeys([*_BUILTIN, *_REGISTERED]))
    found = [get_family(name) for name in names]
    return sorted(found, key=lambda family: family.order)


def model_labels(models: list[Path]) -> dict[str, Path]:
    """A short unique name per model folder (its folder name, or more of its path)."""
    labels: dict[str, Path] = {}
    for path in models:
        parts = path.resolve().parts
        for n in range(1, len(parts) + 1):
            label = "/".join(parts[-n:])
            if label not in labels:
                labels[label] = path
                break
    return labels
