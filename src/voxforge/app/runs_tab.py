"""The runs tab: the training runs under the watched folders, refreshed while they train.

Everything comes from `voxforge.train.monitor`, which reads run folders without touching a
running training (`list_runs`, `read_run`, `plot_run`, `sample_images`), so the tab is what
`voxforge runs` prints. Endpoints:

- `/runs` (folder → a table row per run: name, stage, recipe, state, step, steps/s, last
  losses and metrics, age, error; and the same as `RunStatus.to_dict()` records), also run
  every 10 s by a timer while the page is open;
- `/run_detail` (folder, run name → loss and metric curves as a PNG, the newest sample
  images of `samples/`, the run's record).

A run is named by its path relative to the watched folder and looked up among the runs
`list_runs` finds there, so a request can never point the tab at another folder. The plot
is written into the app's output folder (`OUT/runs/<folder>-<run>.png`, replaced on each
request); sample images are read through `data.image_io.read_image` (size-checked) and sent as
pixels, so nothing outside OUT is served.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from voxforge.app.registry import AppContext
from voxforge.app.requests import RequestError, check_choice
from voxforge.app.ui import endpoint
from voxforge.data.image_io import read_image
from voxforge.errors import UserError
from voxforge.train.monitor import RunStatus, list_runs, plot_run, read_run, sample_images

__all__ = ["COLUMNS", "build", "run_record", "run_rows"]

COLUMNS = [
    "run",
    "stage",
    "recipe",
    "state",
    "step",
    "steps/s",
    "last losses",
    "last metrics",
    "updated",
    "error",
]
MAX_SAMPLES = 12
SAMPLE_PIXELS = 4 * 2**20


def _numbers(values: dict[str, float], limit: int = 4) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in list(values.items())[:limit])


def _age(updated: float | None) -> str:
    if updated is None:
        return ""
    seconds = max(0.0, time.time() - updated)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def run_rows(runs: list[RunStatus]) -> list[list[Any]]:
    rows = []
    for run in runs:
        step = f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
        speed = f"{run.steps_per_s:.3g}" if run.steps_per_s else ""
        state = run.state if not run.reason or run.state == "done" else f"{run.state} ({run.reason})"
        rows.append(
            [
                run.name,
                run.stage or "",
                run.recipe or "",
                state,
                step,
                speed,
                _numbers(run.last_losses),
                _numbers(
                    {k: v for k, v in run.last_metrics.items() if "/" not in k or k.startswith("final/")}
                ),
                _age(run.updated),
                run.error or "",
            ]
        )
    return rows


def run_record(status: RunStatus) -> dict[str, Any]:
    """`RunStatus.to_dict()` with `path` renamed `folder` (gradio_client downloads any dict with a `path`)."""
    record = status.to_dict()
    record["folder"] = record.pop("path")
    return record


def build(context: AppContext, demo: gr.Blocks) -> None:
    """The tab's components and its endpoints `/runs` and `/run_detail` (the table fills on page load)."""
    folders = {str(folder): Path(folder) for folder in context.runs_folders}
    labels = list(folders)
    plots = context.jobs.root / "runs"

    def runs_in(folder: str | None) -> list[RunStatus]:
        label = labels[0] if folder in (None, "") else check_choice("folder", folder, labels)
        try:
            return list_runs(folders[label])
        except UserError as err:
            raise RequestError(str(err)) from None

    initial = [r.name for r in runs_in(None)]
    with gr.Row():
        folder_box = gr.Dropdown(labels, value=labels[0], label="Runs folder", scale=3)
        refresh_box = gr.Button("Refresh", scale=1)
    table_box = gr.Dataframe(
        headers=COLUMNS, label="Runs", interactive=False, wrap=True, elem_id="runs-table"
    )
    records_box = gr.JSON(label="Runs (records)", visible=False)
    with gr.Row():
        # runs appear while the app is up: the value is checked against the runs found at request time
        run_box = gr.Dropdown(
            initial, value=initial[0] if initial else None, label="Run", scale=3, allow_custom_value=True
        )
        show_box = gr.Button("Show curves and samples", scale=1)
    with gr.Row():
        curves_box = gr.Image(label="Loss and metric curves", type="filepath")
        samples_box = gr.Gallery(label="Samples (newest first)", columns=4, height=360)
    detail_box = gr.JSON(label="Run record")

    @endpoint
    def runs(folder: str | None, current: str | None = None) -> tuple[Any, ...]:
        found = runs_in(folder)
        names = [r.name for r in found]
        keep = current if current in names else (names[0] if names else None)
        return run_rows(found), [run_record(r) for r in found], gr.update(choices=names, value=keep)

    @endpoint
    def run_detail(folder: str | None, run: str | None) -> tuple[Any, ...]:
        found = {r.name: r for r in runs_in(folder)}
        if not found:
            raise RequestError("no runs in this folder yet")
        name = check_choice("run", run, list(found))
        status = read_run(found[name].path, root=folders[folder or labels[0]])
        key = hashlib.sha256(f"{folder}\0{name}".encode()).hexdigest()[:16]
        try:
            plot = str(plot_run(status.path, plots / f"{Path(name).name}-{key}.png"))
        except UserError:  # no training record yet: the table says so, the plot stays empty
            plot = None
        images: list[np.ndarray] = []
        for path in sample_images(status.path)[:MAX_SAMPLES]:
            try:
                images.append(read_image(path, max_pixels=SAMPLE_PIXELS, what="sample image").rgba)
            except UserError:
                continue
        return plot, images, run_record(status)

    listing = [table_box, records_box, run_box]
    refresh_box.click(runs, [folder_box, run_box], listing, api_name="runs", concurrency_id="runs")
    folder_box.change(runs, [folder_box], listing, api_visibility="private", concurrency_id="runs")
    demo.load(runs, [folder_box, run_box], listing, api_visibility="private", concurrency_id="runs")
    timer = gr.Timer(10)
    timer.tick(
        runs,
        [folder_box, run_box],
        listing,
        api_visibility="private",
        show_progress="hidden",
        concurrency_id="runs",
    )
    details = [curves_box, samples_box, detail_box]
    show_box.click(run_detail, [folder_box, run_box], details, api_name="run_detail", concurrency_id="runs")
    run_box.input(run_detail, [folder_box, run_box], details, api_visibility="private", concurrency_id="runs")
