"""voxforge's modules at the official TRELLIS-image-large configs take the official weights.

`official_shapes.json` (beside the fixtures) lists, per released checkpoint, its config and
every key with its shape and dtype. Each model is built on the meta device (no memory), a
meta state dict of exactly those shapes goes through the conversion, and the result must
have exactly the module's keys and shapes — the check the loader makes before it loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from voxforge.trellis.loading import check_state_dict, convert_state
from voxforge.trellis.registry import all_specs

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "trellis"
OFFICIAL = FIXTURES / "official_shapes.json"


def _official() -> dict:
    if not OFFICIAL.is_file():
        pytest.skip(f"{OFFICIAL} not present")
    return json.loads(OFFICIAL.read_text())


def _names() -> list[str]:
    return sorted(json.loads(OFFICIAL.read_text())) if OFFICIAL.is_file() else []


@pytest.mark.parametrize("name", _names())
def test_official_checkpoint_converts_to_exact_keys_and_shapes(name):
    entry = _official()[name]
    spec = all_specs()[entry["name"]]
    with torch.device("meta"):
        module = spec.build(entry["args"])
        state = {
            key: torch.empty(shape, dtype=getattr(torch, dtype)).float()
            for key, (shape, dtype) in entry["state_dict"].items()
        }
    converted = convert_state(entry["name"], entry["args"], state, name)
    check_state_dict(module, converted, name)  # raises naming missing / unexpected / wrong keys
    assert set(converted) == set(module.state_dict())


def test_every_official_class_has_a_spec():
    classes = {entry["name"] for entry in _official().values()}
    assert classes <= set(all_specs()), classes - set(all_specs())


def test_official_sizes_are_trellis_image_large():
    """The big ones really are the L models: about 0.56 B (SS flow) and 0.60 B (SLat flow) parameters."""
    official = _official()
    counts = {
        entry["name"]: sum(int(torch.Size(shape).numel()) for shape, _ in entry["state_dict"].values())
        for entry in official.values()
    }
    assert 4.5e8 < counts["SparseStructureFlowModel"] < 6.5e8
    assert 4.5e8 < counts["SLatFlowModel"] < 6.5e8
