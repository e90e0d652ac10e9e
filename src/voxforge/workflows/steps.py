"""What every pipeline kind shares: the step record of `OUT/pipeline.json` and the merge of a
stage entry's sections over its recipe.

`voxforge pipeline run` has one runner per kind (`workflows.pipeline` for 3D,
`workflows.image_pipeline` for images); both write `OUT/pipeline.json` in this one shape —
`{"source", "spec", "steps": [StepRecord, ...]}`, rewritten atomically after every step — so the
demo command, the reports and `voxforge runs` read any kind's folder the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxforge.config.core import to_dict

__all__ = ["PIPELINE_RECORD", "StepRecord", "deep_merge", "write_pipeline_record"]

PIPELINE_RECORD = "pipeline.json"


@dataclass
class StepRecord:
    step: str
    status: str  # done | skipped | failed
    detail: str = ""
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """`base` with `extra` merged in: nested dicts merge key by key, other values replace."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def write_pipeline_record(out: Path, source: str, spec: Any, records: list[StepRecord]) -> None:
    """Rewrite `out/pipeline.json` (temporary file + rename: a reader never sees half of it)."""
    payload = {"source": source, "spec": to_dict(spec), "steps": [to_dict(r) for r in records]}
    tmp = out / f".{PIPELINE_RECORD}.tmp"
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(out / PIPELINE_RECORD)
