"""The two former cycles stay broken: representations below data, one mesh-render dispatcher.

Every import counts, at the top of a module or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import voxforge

SRC = Path(voxforge.__file__).parent


def _voxforge_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("voxforge")}


def test_representations_import_no_higher_layer():
    allowed = ("voxforge.errors", "voxforge.config", "voxforge.representations")
    for path in sorted((SRC / "representations").glob("*.py")):
        upward = {name for name in _voxforge_imports(path) if not name.startswith(allowed)}
        assert not upward, f"{path.name} imports {sorted(upward)}"


def test_blender_backend_does_not_import_the_dispatcher():
    assert "voxforge.render.mesh_raster" not in _voxforge_imports(SRC / "render" / "blender.py")
    assert "voxforge.render.blender" in _voxforge_imports(SRC / "render" / "mesh_raster.py")
