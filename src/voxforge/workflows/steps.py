"""What every pipeline kind shares: the step record of `OUT/pipeline.json`, the merge of a
stage entry's sections over its recipe and the test a step skips on (`recorded`: its record
holds the same settings).

`voxforge pipeline run` has one runner per kind (`workflows.pipeline` for 3D,
`workflows.image_pipeline`, `video_pipeline`, `get3d_pipeline`); all write `OUT/pipeline.json` in this one shape —
`{"source", "spec", "steps": [StepRecord, ...]}`, rewritten atomically after every step — so the
demo command, the reports and `voxforge runs` read any kind's folder the same way. What the
image, video and GET3D runners share beyond this is `workflows.family`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxforge.config.core import to_dict

__all__ = ["PIPELINE_RECORD", "StepRecord", "StepRunner", "deep_merge", "recorded", "write_pipeline_record"]

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


def recorded(
    path: Path, wanted: dict[str, Any], *, ignore: dict[str, tuple[str, ...]] | None = None
) -> dict[str, Any] | None:
    """The JSON record at `path` if it holds `wanted`'s keys with the same values (compared as
    JSON, so a tuple matches the list it was written as), else None. `ignore`: key -> the keys
    of that section compared on neither side."""
    if not path.is_file():
        return None
    have, want = json.loads(path.read_text()), json.loads(json.dumps(wanted))
    for key, inner in (ignore or {}).items():
        for record in (have, want):
            section = record.get(key)
            for name in inner if isinstance(section, dict) else ():
                section.pop(name, None)
    return have if {k: have.get(k) for k in want} == want else None


def write_pipeline_record(out: Path, source: str, spec: Any, records: list[StepRecord]) -> None:
    """Rewrite `out/pipeline.json` (temporary file + rename: a reader never sees half of it)."""
    payload = {"source": source, "spec": to_dict(spec), "steps": [to_dict(r) for r in records]}
    tmp = out / f".{PIPELINE_RECORD}.tmp"
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(out / PIPELINE_RECORD)


#: work() -> (status, detail, info)
StepWork = Callable[[], tuple[str, str, dict[str, Any]]]


class StepRunner:
    """The step bookkeeping of one pipeline call: log each step, keep its record, rewrite
    `OUT/pipeline.json` after it; `timed` adds the wall and CPU seconds of work that ran."""

    step_width = 20

    def __init__(self, spec: Any, out: Path, source: str, log: Callable[[str], None]):
        self.spec, self.out, self.source, self.log = spec, out, source, log
        self.records: list[StepRecord] = []

    def record(self, rec: StepRecord) -> None:
        self.records.append(rec)
        self.log(f"{rec.step:<{self.step_width}} {rec.status:<8} {rec.seconds:7.1f} s  {rec.detail}")
        write_pipeline_record(self.out, self.source, self.spec, self.records)

    def timed(self, step: str, work: StepWork) -> None:
        """Run `work` and record it, with its wall and CPU seconds when it did something."""
        wall, cpu = time.perf_counter(), time.process_time()
        status, detail, info = work()
        seconds = time.perf_counter() - wall if status == "done" else 0.0
        if status == "done":
            info = {**info, "cpu_seconds": round(time.process_time() - cpu, 2)}
        self.record(StepRecord(step, status, detail, seconds, info))
