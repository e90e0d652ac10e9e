"""`voxforge runs [FOLDER] [--json]` and `voxforge runs plot RUN [--out PNG] [--keys KEY ...]`.

The first lists the runs under a folder (default `runs/`; a `voxforge pipeline run` or
`voxforge demo` folder lists its `runs/`) with their state, step, speed, last losses and
metrics; the second draws a run's curves. Both only read files (`voxforge.train.monitor`),
so they are safe to call on a run that is training. The sub-action is a plain word rather
than an argparse sub-parser because FOLDER is optional: a folder named `plot` is `./plot`.
"""

from __future__ import annotations

import argparse
import json
import time

USAGE = "voxforge runs [FOLDER] [--json]\n       voxforge runs plot RUN [--out PNG] [--keys KEY ...]"
DEFAULT_FOLDER = "runs"
#: shown last in the table's metrics column: engine diagnostics rather than results
DIAGNOSTICS = ("lr", "grad_norm", "skipped_steps")
TABLE_METRICS = 3
TABLE_LOSSES = 2


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs",
        help="list training runs (state, step, speed, losses) or plot a run's curves",
        usage=USAGE,
        description="List the runs under FOLDER (default: runs/) with their state (running, done, failed, "
        "preempted, stopped, empty), step, steps/s, last losses and metrics; or, with 'plot RUN', write "
        "the run's loss and metric curves to a PNG.",
    )
    p.add_argument("target", nargs="*", metavar="FOLDER | plot RUN", help="folder to list, or: plot RUN")
    p.add_argument("--json", action="store_true", help="print the runs as a JSON list")
    p.add_argument(
        "--out", default=None, metavar="PNG", help="plot: the PNG to write (default: RUN/curves.png)"
    )
    p.add_argument("--keys", nargs="+", default=None, metavar="KEY", help="plot: the series to draw")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from voxforge.errors import UserError

    target = list(args.target)
    if target and target[0] == "plot":
        if len(target) != 2:
            raise UserError(f"usage: {USAGE.splitlines()[1].strip()}")
        if args.json:
            raise UserError("--json lists runs; it does not apply to 'plot'")
        return _plot(target[1], args.out, args.keys)
    if len(target) > 1:
        raise UserError(f"one FOLDER at a time (got {' '.join(target)}); usage: {USAGE.splitlines()[0]}")
    if args.out is not None or args.keys is not None:
        raise UserError("--out and --keys belong to 'voxforge runs plot RUN'")
    return _list(target[0] if target else DEFAULT_FOLDER, args.json)


def _list(folder: str, as_json: bool) -> int:
    from pathlib import Path

    from voxforge.errors import UserError
    from voxforge.train.monitor import list_runs

    if not Path(folder).is_dir():
        hint = (
            " (pass the folder that holds your runs: voxforge runs FOLDER)"
            if folder == DEFAULT_FOLDER
            else ""
        )
        raise UserError(f"{folder}: folder not found{hint}")
    runs = list_runs(folder)
    if not runs:
        raise UserError(
            f"{folder}: no runs found (a run folder holds config.yaml and checkpoints/ or metrics.jsonl, "
            "as `voxforge train --out RUN` writes it)"
        )
    if as_json:
        print(json.dumps([r.to_dict() for r in runs], indent=1))
    else:
        print(format_table(runs))
    return 0


def _plot(run_path: str, out: str | None, keys: list[str] | None) -> int:
    from pathlib import Path

    from voxforge.train.monitor import plot_run, read_run

    read_run(run_path)  # a clear error for a path that is not a run
    written = plot_run(run_path, Path(out) if out else Path(run_path) / "curves.png", keys)
    print(written)
    return 0


def _num(value: float) -> str:
    return f"{value:.4g}"


def _age(updated: float | None, now: float) -> str:
    if updated is None:
        return "-"
    seconds = max(0.0, now - updated)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _metrics_cell(metrics: dict[str, float]) -> str:
    ordered = sorted(
        metrics,
        key=lambda k: (k in DIAGNOSTICS, not k.startswith("final/"), not k.startswith(("sample/", "eval/"))),
    )
    shown = [f"{k}={_num(metrics[k])}" for k in ordered[:TABLE_METRICS]]
    if len(ordered) > TABLE_METRICS:
        shown.append(f"(+{len(ordered) - TABLE_METRICS})")
    return " ".join(shown) or "-"


def format_table(runs, now: float | None = None) -> str:
    """One line per run: name, stage, state, step/max, steps/s, last losses, metrics, age."""
    now = time.time() if now is None else now
    header = ("NAME", "STAGE", "STATE", "STEP", "STEPS/S", "LOSS", "METRICS", "AGE")
    rows = []
    for r in runs:
        state = r.state + (f" ({r.reason})" if r.reason and r.state not in ("running", "done") else "")
        losses = sorted(r.last_losses, key=lambda k: k != "loss")
        loss = " ".join(f"{k}={_num(r.last_losses[k])}" for k in losses[:TABLE_LOSSES])
        if len(losses) == 1 and losses[0] == "loss":
            loss = _num(r.last_losses["loss"])
        rows.append(
            (
                r.name,
                r.stage or "-",
                state,
                f"{r.step}/{r.max_steps}" if r.max_steps else str(r.step),
                f"{r.steps_per_s:.3g}" if r.steps_per_s is not None else "-",
                loss or "-",
                _metrics_cell(r.last_metrics),
                _age(r.updated, now),
            )
        )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    errors = [f"  {r.name}: {r.error}" for r in runs if r.error]
    return "\n".join(lines + (["errors:", *errors] if errors else []))
