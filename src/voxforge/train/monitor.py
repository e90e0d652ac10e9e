"""Run folders watched from outside: their state, step, speed, last losses and metrics, curves.

Everything here reads files only (it never imports torch, so `voxforge runs` starts fast, and a
run that is training is never disturbed). A run folder (`voxforge.train.engine`) holds
`config.yaml`, `checkpoints/`, `metrics.jsonl` (`train.logging`), `samples/` and `state.json`:

```json
{"state": "running", "reason": null, "pid": 4242, "host": "node1", "started": 1796135406.2,
 "updated": 1796135406.2, "step": 0, "max_steps": 500, "recipe": "toy_flow", "error": null}
```

The engine writes `state.json` on rank 0 (`RunStateFile`, atomically: a temporary file, then
`os.replace`) when it starts (`running`), when it ends normally (`done` for `max_steps` and
`already_complete`; `preempted`; `stopped` for `time_limit` and `stop_after`) and when it raises
(`failed` with the error's first line; `stopped` with reason `interrupted` for Ctrl-C). A
`kill -9` or a crash of the machine leaves `running` behind, so a reader checks the process:
`running` whose pid is gone on this host (or whose host rebooted, or whose pid now belongs to
another process) reads as `stopped` with reason `killed`. A run on another host cannot be
checked and reads as `running`. Folders written before `state.json` existed are judged from
their events (`metrics.jsonl`) and `final_metrics.json`.

`metrics.jsonl` is only appended to; a long run's file is large, so `read_run` parses its last
256 KiB (the whole file only when no training record lies there), and `metric_series` reads it
whole. After a crash and resume, the steps between the last checkpoint and the crash are logged
twice; the series keep the later values.

Checkpoint folders are recognised by name and marker here (`step_XXXXXXXX/COMMITTED`, as
`train.checkpoint` writes them) rather than through that module, which imports torch.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from voxforge.errors import MissingDependencyError, UserError

STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"
FINAL_METRICS_FILE = "final_metrics.json"
PIPELINE_RECORD = "pipeline.json"  # a `voxforge pipeline run` / `voxforge demo` folder; runs under runs/
STATES = ("running", "done", "failed", "preempted", "stopped", "empty")
#: the engine's stop reasons (`TrainResult.reason`) -> the state they leave the run in
REASON_STATES = {
    "max_steps": "done",
    "already_complete": "done",
    "preempted": "preempted",
    "time_limit": "stopped",
    "stop_after": "stopped",
}
#: bookkeeping fields of a training record: neither a loss nor a metric
BOOKKEEPING = frozenset({"step", "time", "steps_per_s", "samples_per_s"})
#: left out of the default plot (they stay available through `keys`)
PLOT_SKIP = frozenset({"steps_per_s", "samples_per_s", "skipped_steps"})
MAX_PANELS = 12
TAIL_BYTES = 256 * 1024
#: folders without state.json: a run updated this recently with no end recorded reads as running
LEGACY_RUNNING_WINDOW = 600.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_CHECKPOINT_MARKER = "COMMITTED"


@dataclass
class RunStatus:
    path: Path
    name: str
    stage: str | None
    recipe: str | None
    state: str  # running | done | failed | preempted | stopped | empty
    step: int
    max_steps: int | None
    steps_per_s: float | None
    last_losses: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    updated: float | None = None  # newest mtime of the run's records (seconds since the epoch)
    error: str | None = None  # failed: the error's first line
    reason: str | None = None  # why it is in this state: max_steps, time_limit, killed, diverged, ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the path as a string, non-finite numbers as None."""
        return _json_safe({**asdict(self), "path": str(self.path)})


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# --- the state file (written by the engine) ----------------------------------------------


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a Linux process, None elsewhere."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and ')'
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= 500 else text[:497] + "..."


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_json_safe(payload), indent=1))
    os.replace(tmp, path)


class RunStateFile:
    """`RUN/state.json` of one training invocation; the engine calls it on rank 0 only."""

    def __init__(self, run_dir: str | Path, *, recipe: str | None = None, max_steps: int | None = None):
        self.path = Path(run_dir) / STATE_FILE
        stat = _proc_stat(os.getpid())
        self.record: dict[str, Any] = {
            "state": "running",
            "reason": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "boot_id": _boot_id(),
            "proc_start": stat[1] if stat else None,
            "started": round(time.time(), 3),
            "updated": None,
            "step": 0,
            "max_steps": max_steps,
            "recipe": recipe,
            "error": None,
        }

    def _write(self, **values: Any) -> None:
        self.record.update(values, updated=round(time.time(), 3))
        write_json_atomic(self.path, self.record)

    def start(self, step: int = 0) -> None:
        self._write(state="running", step=step)

    def finish(self, reason: str, step: int) -> None:
        self._write(state=REASON_STATES.get(reason, "stopped"), reason=reason, step=step)

    def fail(self, err: BaseException, step: int) -> None:
        if isinstance(err, (KeyboardInterrupt, SystemExit)):
            self._write(state="stopped", reason="interrupted", step=step)
        else:
            reason = "diverged" if type(err).__name__ == "TrainingDiverged" else "error"
            self._write(state="failed", reason=reason, error=_one_line(err), step=step)


def _process_alive(record: dict[str, Any]) -> bool | None:
    """Whether the process that wrote `record` still runs; None when this machine cannot tell."""
    if os.name != "posix" or record.get("host") != socket.gethostname():
        return None  # (os.kill(pid, 0) would terminate the process on Windows)
    boot = _boot_id()
    if record.get("boot_id") and boot and record["boot_id"] != boot:
        return False  # the machine restarted since
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    except OSError:
        return None
    stat = _proc_stat(pid)
    if stat is not None:
        if stat[0] in "ZX":  # a zombie: it ended, its parent has not collected it yet
            return False
        started = record.get("proc_start")
        if isinstance(started, int) and started != stat[1]:
            return False  # the pid was reused by another process
    return True


# --- reading a run -----------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _records(path: Path, tail_bytes: int | None = None) -> list[dict[str, Any]]:
    """The JSON objects of metrics.jsonl (the last `tail_bytes` of it); a torn last line is skipped."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - tail_bytes) if tail_bytes else 0
            f.seek(start)
            data = f.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if start > 0:
        lines = lines[1:]  # the first line is cut
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            out.append(record)
    return out


def _is_training_record(record: dict[str, Any]) -> bool:
    return "event" not in record and "steps_per_s" in record


def _latest_checkpoint_step(run: Path) -> int | None:
    try:
        children = list((run / "checkpoints").iterdir())
    except OSError:
        return None
    steps = [
        int(m.group(1))
        for c in children
        if (m := _STEP_DIR.match(c.name)) and (c / _CHECKPOINT_MARKER).is_file()
    ]
    return max(steps) if steps else None


def is_run(path: str | Path) -> bool:
    """A folder holding config.yaml and checkpoints/, metrics.jsonl or state.json."""
    path = Path(path)
    return (path / "config.yaml").is_file() and any(
        (path / marker).exists() for marker in ("checkpoints", METRICS_FILE, STATE_FILE)
    )


def _recipe_from_pipeline(run: Path) -> str | None:
    """OUT/runs/<stage> of a pipeline folder: the recipe its pipeline file names for the stage."""
    if run.parent.name != "runs":
        return None
    spec = _read_json(run.parent.parent / PIPELINE_RECORD).get("spec")
    entry = spec.get("stages", {}).get(run.name) if isinstance(spec, dict) else None
    recipe = entry.get("recipe") if isinstance(entry, dict) else None
    return recipe if isinstance(recipe, str) else None


def _legacy_state(
    records: list[dict[str, Any]],
    final: dict[str, Any],
    step: int,
    max_steps: int | None,
    updated: float | None,
) -> tuple[str, str | None, str | None]:
    """(state, reason, error) of a folder without state.json, from its events."""
    for record in reversed(records):
        event = record.get("event")
        if event == "diverged":
            return "failed", "diverged", str(record.get("message", "")) or None
        if event in REASON_STATES:
            return REASON_STATES[event], event, None
        if _is_training_record(record):
            break  # it trained on after its last end event
    if final and (max_steps is None or step >= max_steps):
        return "done", "max_steps", None
    if updated is not None and time.time() - updated < LEGACY_RUNNING_WINDOW:
        return "running", None, None
    return "stopped", "unknown", None


def _name(run: Path, root: Path | None) -> str:
    if root is not None:
        try:
            relative = run.resolve().relative_to(root.resolve())
            if relative.parts:
                return relative.as_posix()
        except ValueError:
            pass
    return run.resolve().name


def read_run(path: str | Path, *, root: str | Path | None = None) -> RunStatus:
    """The status of one run folder; `name` is its path relative to `root` (else its folder name)."""
    run = Path(path)
    if not is_run(run):
        raise UserError(
            f"{run}: not a run folder (a run folder holds config.yaml and checkpoints/ or metrics.jsonl; "
            "`voxforge runs FOLDER` lists the runs under a folder)"
        )
    config = _read_yaml(run / "config.yaml")
    train_cfg = config.get("train") if isinstance(config.get("train"), dict) else {}
    max_steps = train_cfg.get("max_steps") if isinstance(train_cfg.get("max_steps"), int) else None
    stage = config.get("stage") if isinstance(config.get("stage"), str) else None
    state_record = _read_json(run / STATE_FILE)
    metrics_path = run / METRICS_FILE
    records = _records(metrics_path, TAIL_BYTES)
    if not any(_is_training_record(r) for r in records):
        records = _records(metrics_path)

    losses: dict[str, float] = {}
    metrics: dict[str, float] = {}
    steps_per_s = None
    for record in records:
        if "event" in record:
            continue
        if _is_training_record(record):
            losses = {k: v for k, x in record.items() if "loss" in k and (v := _number(x)) is not None}
            steps_per_s = _number(record.get("steps_per_s"))
        for key, value in record.items():
            number = _number(value)
            if number is not None and key not in BOOKKEEPING and "loss" not in key:
                metrics[key] = number
    final = _read_json(run / FINAL_METRICS_FILE)
    for key, value in final.items():
        if key not in ("step", "skipped_steps") and (number := _number(value)) is not None:
            metrics[f"final/{key}"] = number

    steps = [r["step"] for r in records]
    steps += [s for s in (state_record.get("step"), _latest_checkpoint_step(run)) if isinstance(s, int)]
    step = max(steps, default=0)
    mtimes = []
    for name in (METRICS_FILE, STATE_FILE, "config.yaml", FINAL_METRICS_FILE):
        try:
            mtimes.append((run / name).stat().st_mtime)
        except OSError:
            pass
    updated = max(mtimes) if mtimes else None

    error = reason = None
    if state_record.get("state") in STATES:
        state = state_record["state"]
        reason = state_record.get("reason") if isinstance(state_record.get("reason"), str) else None
        error = state_record.get("error") if isinstance(state_record.get("error"), str) else None
        if state == "running" and _process_alive(state_record) is False:
            state, reason = "stopped", "killed"
        if isinstance(state_record.get("max_steps"), int):
            max_steps = state_record["max_steps"]
    elif not any(map(_is_training_record, records)) and _latest_checkpoint_step(run) is None:
        state = "empty"
    else:
        state, reason, error = _legacy_state(records, final, step, max_steps, updated)

    recipe = state_record.get("recipe") if isinstance(state_record.get("recipe"), str) else None
    return RunStatus(
        path=run,
        name=_name(run, Path(root) if root is not None else None),
        stage=stage,
        recipe=recipe or _recipe_from_pipeline(run),
        state=state,
        step=step,
        max_steps=max_steps,
        steps_per_s=steps_per_s,
        last_losses=losses,
        last_metrics=metrics,
        updated=updated,
        error=error,
        reason=reason,
    )


def find_runs(folder: str | Path, *, max_depth: int = 6) -> list[Path]:
    """Run folders under `folder` (itself included), sorted; a run's own subfolders are not
    searched, and in a pipeline folder (pipeline.json) only `runs/` is."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root}: folder not found")
    found: list[Path] = []
    seen: set[Path] = set()

    def walk(directory: Path, depth: int) -> None:
        try:
            resolved = directory.resolve()
        except OSError:
            return
        if resolved in seen:  # a symlink loop
            return
        seen.add(resolved)
        if is_run(directory):
            found.append(directory)
            return
        if depth >= max_depth:
            return
        if (directory / PIPELINE_RECORD).is_file():
            children = [directory / "runs"]
        else:
            try:
                children = sorted(c for c in directory.iterdir() if not c.name.startswith("."))
            except OSError:
                return
        for child in children:
            if child.is_dir():
                walk(child, depth + 1)

    walk(root, 0)
    return sorted(found)


def list_runs(folder: str | Path) -> list[RunStatus]:
    """`read_run` of every run under `folder`, named by their paths relative to it."""
    return [read_run(run, root=folder) for run in find_runs(folder)]


# --- curves and samples ----------------------------------------------------------------


def metric_series(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """key -> [(step, value)] of every number the run logged (events left out), steps rising."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in _records(Path(path) / METRICS_FILE):
        if "event" in record:
            continue
        step = record["step"]
        for key, value in record.items():
            number = _number(value)
            if number is None or key in ("step", "time"):
                continue
            points = series.setdefault(key, [])
            while points and points[-1][0] >= step:  # re-logged after a resume: the later run wins
                points.pop()
            points.append((step, number))
    return series


def _resume_steps(path: Path) -> list[int]:
    return [r["step"] for r in _records(path / METRICS_FILE) if r.get("event") == "resume"]


def _panels(
    series: dict[str, list[tuple[int, float]]], keys: list[str] | None
) -> tuple[list[list[str]], int]:
    """Keys grouped one panel each, every loss in the first; and how many were left out."""
    if keys is None:
        chosen = [k for k in series if k not in PLOT_SKIP]
    else:
        unknown = [k for k in keys if k not in series]
        if unknown:
            raise UserError(
                f"no series named {', '.join(unknown)} in this run's {METRICS_FILE}; "
                f"it has: {', '.join(sorted(series)) or 'none'}"
            )
        chosen = list(dict.fromkeys(keys))
    losses = [k for k in chosen if "loss" in k]
    panels = ([losses] if losses else []) + [[k] for k in chosen if "loss" not in k]
    return panels[:MAX_PANELS], max(0, len(panels) - MAX_PANELS)


def plot_run(path: str | Path, out_png: str | Path, keys: list[str] | None = None) -> Path:
    """Loss and metric curves of a run as a PNG (losses share the first panel, log scale when
    they span a decade); `keys` picks the series, by default all but throughput."""
    run = Path(path)
    status = read_run(run)
    series = metric_series(run)
    if not series:
        raise UserError(f"{run / METRICS_FILE}: no training records to plot yet")
    panels, left_out = _panels(series, keys)
    try:  # an optional dependency (the `plot` extra); the Figure API keeps pyplot's global state out
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise MissingDependencyError("matplotlib", "plot", "Plotting training curves") from None

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.0 * cols, 3.6 * rows), dpi=100, layout="constrained")
    resumes = _resume_steps(run)
    for index, group in enumerate(panels):
        ax = fig.add_subplot(rows, cols, index + 1)
        values = []
        for key in group:
            steps, ys = zip(*series[key], strict=True)
            ax.plot(
                steps, ys, label=key, marker="o" if len(steps) < 20 else None, markersize=3, linewidth=1.4
            )
            values += ys
        for i, step in enumerate(resumes):
            ax.axvline(step, color="grey", linestyle=":", linewidth=1, label="resume" if i == 0 else None)
        positive = [v for v in values if v > 0]
        if len(positive) == len(values) and max(values) > 10 * min(values):
            ax.set_yscale("log")
        ax.set_title(group[0] if len(group) == 1 else "losses", fontsize=11)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel("loss" if "loss" in group[0] else group[0])
        ax.grid(True, alpha=0.3)
        if len(group) > 1 or resumes or "loss" in group[0]:
            ax.legend(fontsize=8)
    title = status.name if status.name == status.stage else f"{status.name}: {status.stage or '?'}"
    title += f" ({status.state}, step {status.step}"
    title += f"/{status.max_steps})" if status.max_steps else ")"
    if left_out:
        title += f"  [{left_out} more series: pick them with --keys]"
    fig.suptitle(title, fontsize=12)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out)  # a viewer never reads a half-written file
    return out


def sample_images(path: str | Path) -> list[Path]:
    """Images under RUN/samples/, newest first (by the step of their step_XXXXXXXX folder, then mtime)."""
    root = Path(path) / "samples"
    if not root.is_dir():
        return []

    def key(image: Path) -> tuple[int, float, str]:
        step = next((int(m.group(1)) for p in image.parents if (m := _STEP_DIR.match(p.name))), -1)
        try:
            mtime = image.stat().st_mtime
        except OSError:
            mtime = 0.0
        return -step, -mtime, str(image)

    images = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(images, key=key)
