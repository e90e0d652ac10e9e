"""The TRELLIS model classes and golden files voxforge knows, collected from their modules.

Each of `vaes`, `flows`, `mesh` and `dinov2` exports `SPECS` (one `ModelSpec` per TRELLIS
class it converts) and `GOLDENS` (one `GoldenCheck` per golden file it verifies); `compose`
adds the check of the whole image → Gaussians composition. A class or golden file listed
twice is a programming error, caught by `tests/trellis/test_registry.py`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from voxforge.errors import UserError
from voxforge.trellis.spec import GoldenCheck, ModelSpec

__all__ = ["all_goldens", "all_specs", "find_image_encoder", "spec_for"]


def _modules() -> tuple[Any, ...]:
    from voxforge.trellis import compose, dinov2, flows, mesh, vaes

    return (vaes, flows, mesh, dinov2, compose)


@cache
def all_specs() -> dict[str, ModelSpec]:
    specs: dict[str, ModelSpec] = {}
    for module in _modules():
        for spec in getattr(module, "SPECS", ()):
            if spec.trellis_class in specs:
                raise RuntimeError(f"TRELLIS class {spec.trellis_class} has two specs")
            specs[spec.trellis_class] = spec
    return specs


@cache
def all_goldens() -> dict[str, GoldenCheck]:
    checks: dict[str, GoldenCheck] = {}
    for module in _modules():
        for check in getattr(module, "GOLDENS", ()):
            if check.file in checks:
                raise RuntimeError(f"golden file {check.file} has two checks")
            checks[check.file] = check
    return checks


def spec_for(trellis_class: str, where: str) -> ModelSpec:
    specs = all_specs()
    if trellis_class not in specs:
        raise UserError(
            f"{where}: voxforge cannot load TRELLIS model class '{trellis_class}' "
            f"(known: {', '.join(sorted(specs))})"
        )
    return specs[trellis_class]


def find_image_encoder(root: Path, explicit: str | Path | None, device: Any) -> tuple[Any, Path]:
    """DINOv2 for a TRELLIS folder: `--dinov2`, a `dinov2_*.safetensors` beside it, or the hub cache."""
    from voxforge.trellis.dinov2 import find_dinov2, load_dinov2

    path = find_dinov2(root, explicit)
    return load_dinov2(path).to(device).eval(), Path(path)
