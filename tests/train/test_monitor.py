"""train.monitor: run states written by the engine and read back, series, plots and samples."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.train.helpers import make_recipe
from voxforge.errors import MissingDependencyError, UserError
from voxforge.stages.debug import DebugRegressionStage
from voxforge.train.engine import train
from voxforge.train.monitor import (
    RunStateFile,
    find_runs,
    list_runs,
    metric_series,
    plot_run,
    read_run,
    sample_images,
)

SMALL = {
    "train": {"max_steps": 10, "log_every": 5, "batch_size": 8},
    "model": {"width": 8},
    "data": {"size": 32},
}


def _recipe(**train):
    return make_recipe(train={**SMALL["train"], **train}, model=SMALL["model"], data=SMALL["data"])


@pytest.fixture(scope="module")
def done_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("monitor") / "done"
    result = train(_recipe(), run, recipe_name="debug_regression")
    assert result.reason == "max_steps"
    return run


def _fake_run(path, records=(), state=None, config=None):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(
        json.dumps(config or {"stage": "toy_flow", "train": {"max_steps": 100}})
    )
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if state is not None:
        (path / "state.json").write_text(json.dumps(state))
    return path


def _record(step, loss, **extra):
    return {"step": step, "time": 0.0, "loss": loss, "lr": 1e-3, "steps_per_s": 12.5, **extra}


def test_finished_run_reads_done_with_its_numbers(done_run):
    state = json.loads((done_run / "state.json").read_text())
    assert state["state"] == "done" and state["pid"] == os.getpid() and state["host"] == socket.gethostname()
    status = read_run(done_run)
    assert (status.state, status.reason, status.step, status.max_steps) == ("done", "max_steps", 10, 10)
    assert status.stage == "debug_regression" and status.recipe == "debug_regression"
    assert status.steps_per_s is not None and status.steps_per_s > 0
    assert set(status.last_losses) == {"loss"} and 0 < status.last_losses["loss"] < 10
    assert "final/final_mse" in status.last_metrics and "lr" in status.last_metrics
    assert abs(time.time() - status.updated) < 600 and status.error is None
    data = json.loads(json.dumps(status.to_dict(), allow_nan=False))
    assert data["path"] == str(done_run) and data["state"] == "done"


def test_a_stage_that_raises_reads_failed_with_the_error(tmp_path, monkeypatch):
    original, calls = DebugRegressionStage.loss, []

    def loss(self, model, batch):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom: the data went away\nsecond line")
        return original(self, model, batch)

    monkeypatch.setattr(DebugRegressionStage, "loss", loss)
    with pytest.raises(RuntimeError, match="boom"):
        train(_recipe(log_every=1), tmp_path / "run")
    status = read_run(tmp_path / "run")
    assert status.state == "failed" and status.reason == "error"
    assert status.error == "RuntimeError: boom: the data went away" and status.step == 3


def test_sigterm_reads_preempted(tmp_path, monkeypatch):
    original, calls = DebugRegressionStage.loss, []

    def loss(self, model, batch):
        calls.append(1)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # the engine's handler is installed: a preemption
        return original(self, model, batch)

    monkeypatch.setattr(DebugRegressionStage, "loss", loss)
    result = train(_recipe(max_steps=1000), tmp_path / "run")
    assert result.reason == "preempted"
    status = read_run(tmp_path / "run")
    assert (status.state, status.reason, status.step) == ("preempted", "preempted", 4)


def test_stop_after_reads_stopped(tmp_path):
    train(_recipe(), tmp_path / "run", stop_after=3)
    status = read_run(tmp_path / "run")
    assert (status.state, status.reason, status.step, status.max_steps) == ("stopped", "stop_after", 3, 10)


def test_running_whose_process_is_gone_reads_stopped(tmp_path):
    writer = RunStateFile(tmp_path / "alive", max_steps=100)
    _fake_run(tmp_path / "alive", [_record(5, 0.5)])
    writer.start()
    assert read_run(tmp_path / "alive").state == "running"  # this very process

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead = dict(writer.record, pid=int(finished.stdout))
    _fake_run(tmp_path / "dead", [_record(5, 0.5)], state=dead)
    status = read_run(tmp_path / "dead")
    assert (status.state, status.reason, status.step) == ("stopped", "killed", 5)

    reused = dict(
        writer.record, proc_start=(writer.record["proc_start"] or 0) + 1
    )  # our pid, not our process
    _fake_run(tmp_path / "reused", state=reused)
    if writer.record["proc_start"] is not None:
        assert read_run(tmp_path / "reused").state == "stopped"
    elsewhere = dict(dead, host=socket.gethostname() + "-other")
    _fake_run(tmp_path / "elsewhere", state=elsewhere)
    assert read_run(tmp_path / "elsewhere").state == "running"  # cannot be checked from here


def test_folders_without_state_file_are_judged_from_their_events(tmp_path):
    old = time.time() - 3600
    empty = _fake_run(tmp_path / "empty", [{"step": 0, "event": "precision"}])
    assert read_run(empty).state == "empty"
    preempted = _fake_run(
        tmp_path / "pre", [_record(5, 1.0), {"step": 5, "event": "preempted", "signal": 15}]
    )
    assert read_run(preempted).state == "preempted"
    diverged = _fake_run(
        tmp_path / "div", [_record(5, 1.0), {"step": 5, "event": "diverged", "message": "20 in a row"}]
    )
    assert (read_run(diverged).state, read_run(diverged).error) == ("failed", "20 in a row")
    done = _fake_run(tmp_path / "done", [_record(100, 0.1)])
    (done / "final_metrics.json").write_text(json.dumps({"step": 100, "mmd": 0.25}))
    assert read_run(done).state == "done" and read_run(done).last_metrics["final/mmd"] == 0.25
    quiet = _fake_run(tmp_path / "quiet", [_record(50, 0.1)])
    os.utime(quiet / "metrics.jsonl", (old, old))
    os.utime(quiet / "config.yaml", (old, old))
    assert (read_run(quiet).state, read_run(quiet).reason) == ("stopped", "unknown")


def test_find_runs_skips_run_subfolders_and_reads_pipeline_folders(tmp_path):
    _fake_run(tmp_path / "a", [_record(5, 1.0)])
    _fake_run(tmp_path / "a" / "samples" / "nested", [_record(5, 1.0)])  # inside a run: not searched
    _fake_run(tmp_path / "group" / "b", [_record(5, 1.0)])
    demo = tmp_path / "demo"
    _fake_run(
        demo / "runs" / "ss_vae", [_record(5, 1.0)], config={"stage": "ss_vae", "train": {"max_steps": 9}}
    )
    _fake_run(demo / "prepared" / "x", [_record(5, 1.0)])  # a pipeline folder lists runs/ only
    (demo / "pipeline.json").write_text(
        json.dumps({"spec": {"stages": {"ss_vae": {"recipe": "ss_vae_tiny"}}}})
    )
    (tmp_path / "not_a_run").mkdir()
    (tmp_path / "not_a_run" / "config.yaml").write_text("stage: x\n")
    assert find_runs(tmp_path) == [tmp_path / "a", demo / "runs" / "ss_vae", tmp_path / "group" / "b"]
    names = {s.name: s for s in list_runs(tmp_path)}
    assert set(names) == {"a", "demo/runs/ss_vae", "group/b"}
    assert names["demo/runs/ss_vae"].recipe == "ss_vae_tiny" and names["demo/runs/ss_vae"].max_steps == 9
    assert [s.name for s in list_runs(demo)] == ["runs/ss_vae"]
    assert find_runs(tmp_path / "a") == [tmp_path / "a"]
    with pytest.raises(UserError, match="not a run folder"):
        read_run(tmp_path / "not_a_run")
    with pytest.raises(UserError, match="folder not found"):
        find_runs(tmp_path / "missing")


def test_metric_series_keep_the_later_values_after_a_resume(tmp_path):
    records = [_record(5, 4.0), _record(10, 3.0), _record(15, 2.5), {"step": 10, "event": "resume"}]
    records += [_record(15, 2.0), _record(20, 1.0), {"step": 20, "time": 1.0, "sample/mmd": 0.5}]
    run = _fake_run(tmp_path / "run", records)
    (run / "metrics.jsonl").open("a").write('{"step": 25, "loss": 0.')  # a torn last line
    series = metric_series(run)
    assert series["loss"] == [(5, 4.0), (10, 3.0), (15, 2.0), (20, 1.0)]
    assert series["sample/mmd"] == [(20, 0.5)] and "time" not in series and "event" not in series
    status = read_run(run)
    assert status.last_losses == {"loss": 1.0} and status.last_metrics["sample/mmd"] == 0.5
    assert status.steps_per_s == 12.5 and status.step == 20


@pytest.mark.slow
def test_plot_is_a_png_with_curves(done_run, tmp_path):
    pytest.importorskip("matplotlib")
    out = plot_run(done_run, tmp_path / "plots" / "curves.png")
    image = np.asarray(Image.open(out).convert("RGB"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.shape[0] > 300 and image.shape[1] > 500
    dark = (image.sum(axis=-1) < 200).mean()  # text, axes and lines on white
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    assert 0.002 < dark < 0.3 and colours > 30
    single = np.asarray(Image.open(plot_run(done_run, tmp_path / "loss.png", keys=["loss"])))
    assert single.shape[1] < image.shape[1]  # one panel instead of a grid
    with pytest.raises(UserError, match="no series named nope.*it has:.*loss"):
        plot_run(done_run, tmp_path / "x.png", keys=["nope"])


def test_plot_without_matplotlib_names_the_extra(done_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingDependencyError, match=r"voxforge\[plot\]"):
        plot_run(done_run, tmp_path / "x.png")


def test_sample_images_newest_first(tmp_path):
    run = _fake_run(tmp_path / "run", [_record(5, 1.0)])
    for name in (
        "step_00000010/a.png",
        "step_00000020/grid.png",
        "step_00000020/b.jpg",
        "step_00000020/n.txt",
    ):
        (run / "samples" / name).parent.mkdir(parents=True, exist_ok=True)
        (run / "samples" / name).write_bytes(b"x")
    listed = [p.relative_to(run / "samples").as_posix() for p in sample_images(run)]
    assert listed[2] == "step_00000010/a.png" and set(listed[:2]) == {
        "step_00000020/grid.png",
        "step_00000020/b.jpg",
    }
    assert sample_images(tmp_path) == []
