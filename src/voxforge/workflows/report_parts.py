"""What the report of every pipeline family is made of (3D: `workflows.report`; image:
`workflows.image_report`; video: `workflows.video_report`; GET3D: `workflows.get3d_pipeline`).

A report is read back from the JSON records the steps wrote, so it can be rewritten at any
time; each family keeps its own `CHECKS` (name -> what it measures, how to read it off the
records), its `report.json` keys and its markdown sections. What reads the same in every
report lives here, once:

- `read_json`, `metric_rows`: a record (empty when its step did not run) and a run's
  `metrics.jsonl` (a torn last line of a killed run is skipped);
- `CheckResult`, `check_result`, `score_checks`: a check passes when its value is at least its
  threshold, and fails with the value null when its inputs are missing (NaN fails too);
- `Report`: the data written to `report.json` and the checks, `passed` and `verdict`;
- markdown pieces: `number` ("—" for a missing value), `checks_table`, `steps_table`, and
  `step_times`, the per-step seconds of the image and video `report.json`;
- `loss_curve`: a loss against step as a PNG. It is drawn with Pillow (a core dependency): a
  line plot is all a report needs, and matplotlib is only the optional `plot` extra, while
  every install must be able to run a demo.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from voxforge.errors import ConfigError

__all__ = [
    "CheckResult",
    "Report",
    "check_result",
    "checks_record",
    "checks_table",
    "label_font",
    "loss_curve",
    "metric_rows",
    "number",
    "read_json",
    "save_report",
    "score_checks",
    "step_times",
    "steps_table",
]

#: a check table: name -> (what it measures, its value read off the report's inputs)
Checks = dict[str, tuple[str, Callable[..., float | None]]]


def read_json(path: Path) -> dict[str, Any]:
    """The JSON record at `path`; empty when its step did not write it."""
    return json.loads(path.read_text()) if path.is_file() else {}


def metric_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a run's `metrics.jsonl` (none when it has none)."""
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            yield json.loads(line)
        except json.JSONDecodeError:  # a torn last line of a killed run
            continue


# --- checks ---------------------------------------------------------------------------------
@dataclass
class CheckResult:
    name: str
    what: str
    value: float | None
    threshold: float
    passed: bool


def check_result(
    name: str, what: str, value: float | None, threshold: float, *, finite: bool = False
) -> CheckResult:
    """`value` (None: its step did not run) against `threshold`: passes when value >= threshold
    and it is a number (`finite`: a finite one)."""
    value = None if value is None else float(value)
    usable = value is not None and (math.isfinite(value) if finite else value == value)
    return CheckResult(name, what, value, float(threshold), usable and value >= float(threshold))


def score_checks(
    checks: Checks, thresholds: dict[str, float], *inputs: Any, finite: bool = False
) -> list[CheckResult]:
    """Each check named in `thresholds`, in their order, measured on `inputs`."""
    results = []
    for name, threshold in thresholds.items():
        if name not in checks:
            raise ConfigError(
                f"key 'evaluate.checks': unknown check '{name}'; expected some of {sorted(checks)}"
            )
        what, measure = checks[name]
        results.append(check_result(name, what, measure(*inputs), threshold, finite=finite))
    return results


def checks_record(checks: list[CheckResult]) -> dict[str, Any]:
    """The `checks` and `passed` keys of `report.json`."""
    return {"checks": [asdict(c) for c in checks], "passed": all(c.passed for c in checks)}


@dataclass
class Report:
    """What `report.json` holds (`data`) and the checks it was judged by."""

    data: dict[str, Any]
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def verdict(self) -> str:
        return "all checks passed" if self.passed else "a check FAILED"


def save_report(out: Path, report: Report, markdown: Callable[[Report], str]) -> Report:
    """Write `report.json` (with the folder under "out") and `report.md`."""
    report.data["out"] = str(out)
    (out / "report.json").write_text(json.dumps(report.data, indent=1, default=float))
    (out / "report.md").write_text(markdown(report))
    return report


# --- markdown -------------------------------------------------------------------------------
def number(value: Any, digits: int = 3) -> str:
    """`value` with `digits` decimals; "—" when it is missing or NaN."""
    return "—" if value is None or value != value else f"{float(value):.{digits}f}"


def checks_table(
    checks: list[CheckResult],
    *,
    result: str = "result",
    code: bool = True,
    value: Callable[[float | None], str] = number,
) -> list[str]:
    """The checks as markdown table lines: name (`code`: in backticks), what, value, threshold,
    pass / FAIL under the heading `result`."""
    heading = f" {result} |" if result else " |"
    lines = [f"| check | what | value | threshold |{heading}", "| --- | --- | --- | --- | --- |"]
    for c in checks:
        name = f"`{c.name}`" if code else c.name
        outcome = "pass" if c.passed else "FAIL"
        lines.append(f"| {name} | {c.what} | {value(c.value)} | {c.threshold:g} | {outcome} |")
    return lines


def steps_table(
    steps: list[dict[str, Any]],
    cpu_seconds: dict[str, Any] | None = None,
    *,
    wall: str = "seconds",
    cpu: str = "CPU seconds",
) -> list[str]:
    """The `## Steps` section: each step's status, wall seconds, detail and, given `cpu_seconds`
    (step -> CPU seconds of the steps that did work), a CPU column."""
    if cpu_seconds is None:
        lines = ["## Steps", "", f"| step | status | {wall} | detail |", "| --- | --- | --- | --- |"]
        for s in steps:
            lines.append(
                f"| {s['step']} | {s['status']} | {float(s['seconds']):.1f} | {s.get('detail', '')} |"
            )
        return lines
    lines = [
        "## Steps",
        "",
        f"| step | status | {wall} | {cpu} | detail |",
        "| --- | --- | --- | --- | --- |",
    ]
    for s in steps:
        used = number(cpu_seconds.get(s["step"]) if s["status"] == "done" else None, 1)
        lines.append(
            f"| {s['step']} | {s['status']} | {float(s['seconds']):.1f} | {used} | {s.get('detail', '')} |"
        )
    return lines


def step_times(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The `steps`, `seconds`, `cpu_seconds` and `total_seconds` keys of an image or video
    `report.json` (the seconds of the steps that did work)."""
    done = [s for s in steps if s["status"] == "done"]
    return {
        "steps": [{k: s.get(k) for k in ("step", "status", "detail", "seconds")} for s in steps],
        "seconds": {s["step"]: round(float(s["seconds"]), 1) for s in done},
        "cpu_seconds": {s["step"]: s.get("info", {}).get("cpu_seconds") for s in done},
        "total_seconds": round(sum(float(s["seconds"]) for s in done), 1),
    }


# --- loss curves ----------------------------------------------------------------------------
def label_font() -> Any:
    """The font of the report's PNG labels (Pillow's built-in one: nothing to install)."""
    return ImageFont.load_default()


def loss_curve(metrics: Path, path: Path, title: str, key: str = "loss") -> bool:
    """Draw `key` against step from a run's metrics.jsonl as a PNG; False when it has none."""
    points = [
        (float(row["step"]), float(row[key]))
        for row in metric_rows(metrics)
        if isinstance(row.get(key), (int, float)) and "step" in row and math.isfinite(row[key])
    ]
    if len(points) < 2:
        return False
    width, height, left, right, top, bottom = 480, 300, 56, 12, 24, 30
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = label_font()
    steps, values = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    lo, hi = float(values.min()), float(values.max())
    hi = hi if hi > lo else lo + 1.0
    x0, x1 = float(steps.min()), float(steps.max()) if steps.max() > steps.min() else float(steps.min()) + 1

    def xy(step: float, value: float) -> tuple[float, float]:
        return (
            left + (step - x0) / (x1 - x0) * (width - left - right),
            top + (hi - value) / (hi - lo) * (height - top - bottom),
        )

    draw.rectangle([left, top, width - right, height - bottom], outline=(0, 0, 0))
    for frac in (0.0, 0.5, 1.0):
        value = hi - frac * (hi - lo)
        y = top + frac * (height - top - bottom)
        draw.line([left - 4, y, left, y], fill=(0, 0, 0))
        draw.text((2, y - 6), f"{value:.3g}", fill=(0, 0, 0), font=font)
    for frac in (0.0, 0.5, 1.0):
        step = x0 + frac * (x1 - x0)
        x = left + frac * (width - left - right)
        draw.text((x - 10, height - bottom + 6), f"{step:.0f}", fill=(0, 0, 0), font=font)
    draw.line([xy(s, v) for s, v in points], fill=(30, 90, 200), width=2)
    draw.text((left, 6), f"{title}: {key} vs step", fill=(0, 0, 0), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return True
