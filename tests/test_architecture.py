"""The layer map of docs/architecture.md, enforced on every import of the package.

Every module of `src/voxforge` is parsed with `ast` (imports inside functions and under
`TYPE_CHECKING` included) and each import of a voxforge module becomes an edge. An edge
must point to the same layer or a lower one; inside a layer, the parts (rows of `LAYERS`)
may use each other but never in a circle. `LAYERS` is the table the architecture page
shows; the last test checks the page still shows this table.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "architecture.md"

#: lowest first: (layer, its parts). A module belongs to the part with the longest matching
#: prefix (`voxforge.train.engine` is training, the rest of `voxforge.train` a primitive).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("voxforge", "voxforge.errors")),
    ("config", ("voxforge.config",)),
    (
        "primitives",
        (
            "voxforge.nn",
            "voxforge.sparse",
            "voxforge.flow",
            "voxforge.representations",
            "voxforge.render",
            "voxforge.eval",
            "voxforge.data",
            "voxforge.export",
            "voxforge.train",
        ),
    ),
    ("models", ("voxforge.models",)),
    ("runs", ("voxforge.runs", "voxforge.trellis")),
    ("inference", ("voxforge.pipelines",)),
    ("training", ("voxforge.stages", "voxforge.recipe", "voxforge.train.engine")),
    ("workflows", ("voxforge.workflows", "voxforge.app")),
    ("commands", ("voxforge.commands",)),
    ("cli", ("voxforge.cli", "voxforge.__main__")),
)


@dataclass(frozen=True)
class Edge:
    path: Path
    line: int
    source: str  # importing module
    target: str  # imported module

    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "voxforge").rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from voxforge.commands import train` imports the submodule voxforge.commands.train
            targets = [
                f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names
            ]
        else:
            continue
        for target in dict.fromkeys(targets):
            if target == "voxforge" or target.startswith("voxforge."):
                edges.append(Edge(path, node.lineno, name, target))
    return edges


def part_of(module: str) -> str | None:
    """The row of LAYERS a module belongs to (longest prefix; the root only as itself)."""
    best = None
    for _, parts in LAYERS:
        for part in parts:
            matches = module == part or (part != "voxforge" and module.startswith(part + "."))
            if matches and (best is None or len(part) > len(best)):
                best = part
    return best


LAYER_OF = {part: index for index, (_, parts) in enumerate(LAYERS) for part in parts}


def describe(part: str) -> str:
    return f"{LAYERS[LAYER_OF[part]][0]} ({part})"


def all_edges() -> list[Edge]:
    modules = all_modules()
    return [edge for name, path in modules.items() for edge in imports_of(name, path, modules)]


def test_every_module_has_a_layer():
    missing = sorted(name for name in all_modules() if part_of(name) is None)
    assert not missing, (
        f"modules outside the layer table: {missing}; add them to LAYERS here and to docs/architecture.md"
    )


def test_imports_point_down_the_layers():
    upward = []
    for edge in all_edges():
        source, target = part_of(edge.source), part_of(edge.target)
        if source is None or target is None:
            continue  # reported by test_every_module_has_a_layer
        if LAYER_OF[target] > LAYER_OF[source]:
            upward.append(
                f"{edge.where()}: {edge.source} [{describe(source)}] imports {edge.target} [{describe(target)}]"
            )
    assert not upward, "imports against the layer order (docs/architecture.md):\n" + "\n".join(upward)


def test_parts_of_a_layer_import_each_other_without_circles():
    graph: dict[str, dict[str, Edge]] = defaultdict(dict)
    for edge in all_edges():
        source, target = part_of(edge.source), part_of(edge.target)
        if source and target and source != target and LAYER_OF[source] == LAYER_OF[target]:
            graph[source].setdefault(target, edge)  # edges across layers: test_imports_point_down
    cycles, done = [], set()

    def visit(node: str, trail: list[str]) -> None:
        if node in trail:
            loop = trail[trail.index(node) :] + [node]
            steps = [
                f"  {graph[a][b].where()}: {graph[a][b].source} imports {graph[a][b].target}"
                for a, b in zip(loop, loop[1:])
            ]
            cycles.append(" -> ".join(loop) + "\n" + "\n".join(steps))
            return
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, [*trail, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    assert not cycles, "parts that import each other (move the shared piece down a layer):\n" + "\n".join(
        cycles
    )


def test_the_architecture_page_shows_this_table():
    text = DOC.read_text()
    block = text.split("<!-- layers -->", 1)[1].split("<!-- /layers -->", 1)[0]
    rows = [line for line in block.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    shown = []
    for row in rows:
        cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
        shown.append((cells[1], tuple(re.findall(r"`(voxforge[\w.]*)`", cells[2]))))
    assert shown == [(name, parts) for name, parts in LAYERS], (
        "docs/architecture.md's layer table differs from tests/test_architecture.py's LAYERS"
    )
