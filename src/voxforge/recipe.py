"""Recipes: a YAML file naming a stage plus the engine's and the stage's sections.

```yaml
stage: toy_flow          # which Stage trains (voxforge.stages)
train: {max_steps: 200}  # voxforge.train.config.TrainConfig
optim: {lr: 1e-3}        # voxforge.train.config.OptimConfig
model: {...}             # sections the stage declares in Stage.sections
```

`load_recipe` returns a dataclass instance whose type is assembled from the stage's
sections (a subclass of `voxforge.stages.Recipe`), so every key is checked against a
typed config. Assembling the type needs the stage's class, so this module sits with the
engine, above `voxforge.stages` (docs/architecture.md); reading a finished run folder for
inference does not need it (`voxforge.runs`). The built-in recipe files live in
`voxforge/recipes/`.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path
from typing import Any

from voxforge.config.core import apply_overrides, from_dict, load_yaml
from voxforge.errors import ConfigError
from voxforge.stages import Recipe, get_stage
from voxforge.train.config import OptimConfig, TrainConfig

__all__ = ["BUILTIN_RECIPES", "load_recipe", "recipe_class", "recipe_from_data", "resolve_recipe_path"]

BUILTIN_RECIPES = Path(__file__).resolve().parent / "recipes"


@cache
def recipe_class(stage_name: str, source: str = "") -> type[Recipe]:
    stage = get_stage(stage_name, source=source)
    fields: list[tuple[str, Any, Any]] = [
        ("stage", str, dataclasses.field(default=stage_name)),
        ("train", TrainConfig, dataclasses.field(default_factory=TrainConfig)),
        ("optim", OptimConfig, dataclasses.field(default_factory=OptimConfig)),
    ]
    for name, section in stage.sections.items():
        fields.append((name, section, dataclasses.field(default_factory=section)))
    return dataclasses.make_dataclass(f"{stage.__name__}Recipe_{stage_name}", fields, bases=(Recipe,))


def resolve_recipe_path(recipe: str | Path) -> Path:
    """A path, or the name of a built-in recipe (`toy_flow` -> voxforge/recipes/toy_flow.yaml)."""
    path = Path(recipe)
    if path.is_file():
        return path
    for candidate in (BUILTIN_RECIPES / f"{recipe}.yaml", BUILTIN_RECIPES / str(recipe)):
        if candidate.is_file():
            return candidate
    names = sorted(p.stem for p in BUILTIN_RECIPES.glob("*.yaml"))
    raise ConfigError(f"{recipe}: recipe file not found (built-in recipes: {', '.join(names)})")


def recipe_from_data(data: dict[str, Any], *, source: str = "") -> Recipe:
    stage_name = data.get("stage")
    if not isinstance(stage_name, str):
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}key 'stage': required, names the stage to train (e.g. stage: toy_flow)")
    return from_dict(recipe_class(stage_name, source), data, source=source)


def load_recipe(recipe: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = resolve_recipe_path(recipe)
    data = apply_overrides(load_yaml(path), overrides)
    source = str(path) + (" (with command-line overrides)" if overrides else "")
    return recipe_from_data(data, source=source)
