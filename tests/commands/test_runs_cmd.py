"""`voxforge runs [FOLDER] [--json]` and `voxforge runs plot RUN` on run folders written by hand."""

from __future__ import annotations

import json
import time

import pytest

from voxforge.cli import main

KEYS = {
    "path",
    "name",
    "stage",
    "recipe",
    "state",
    "step",
    "max_steps",
    "steps_per_s",
    "last_losses",
    "last_metrics",
    "updated",
    "error",
    "reason",
}


def _run(path, state, steps=(5, 10), **state_fields):
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("stage: toy_flow\ntrain: {max_steps: 100}\n")
    records = [
        {"step": s, "time": 0.0, "loss": 1.0 / s, "lr": 1e-3, "steps_per_s": 20.0, "skipped_steps": 0}
        for s in steps
    ]
    records.append({"step": steps[-1], "time": 0.0, "sample/mmd": 0.125})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    record = {"state": state, "step": steps[-1], "recipe": "toy_flow", **state_fields}
    (path / "state.json").write_text(json.dumps(record))
    return path


@pytest.fixture()
def runs(tmp_path):
    root = tmp_path / "runs"
    _run(root / "toy", "done", reason="max_steps")
    _run(root / "sweep" / "lr3", "failed", reason="error", error="RuntimeError: out of memory")
    _run(root / "sweep" / "lr4", "preempted", steps=(5,), reason="preempted")
    return root


def test_table_lists_every_run(runs, capsys):
    assert main(["runs", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "STAGE", "STATE", "STEP", "STEPS/S", "LOSS", "METRICS", "AGE"]
    rows = {line.split()[0]: line for line in lines[1:4]}
    assert set(rows) == {"toy", "sweep/lr3", "sweep/lr4"}
    assert rows["toy"].split()[1:6] == ["toy_flow", "done", "10/100", "20", "0.1"]
    assert "failed (error)" in rows["sweep/lr3"] and "preempted" in rows["sweep/lr4"]
    assert "sample/mmd=0.125" in rows["toy"] and "5/100" in rows["sweep/lr4"]
    assert lines[4:] == ["errors:", "  sweep/lr3: RuntimeError: out of memory"]


def test_json_is_a_list_of_run_records(runs, capsys):
    assert main(["runs", "--json", str(runs)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in listed] == ["sweep/lr3", "sweep/lr4", "toy"]
    for record in listed:
        assert set(record) == KEYS
        assert isinstance(record["step"], int) and isinstance(record["last_losses"], dict)
        assert record["steps_per_s"] == 20.0 and abs(time.time() - record["updated"]) < 600
    toy = listed[2]
    assert toy["state"] == "done" and toy["last_losses"] == {"loss": 0.1} and toy["recipe"] == "toy_flow"
    assert toy["last_metrics"]["sample/mmd"] == 0.125 and listed[0]["error"] == "RuntimeError: out of memory"


def test_plot_writes_the_png_and_prints_its_path(runs, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["runs", "plot", str(runs / "toy"), "--keys", "loss"]) == 0
    written = capsys.readouterr().out.strip()
    assert written == str(runs / "toy" / "curves.png")
    assert (runs / "toy" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["runs", "plot", str(runs / "toy"), "--out", str(tmp_path / "c.png"), "--keys", "loss"]) == 0
    assert (tmp_path / "c.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["runs", "{tmp}/missing"], "missing: folder not found"),
        (["runs", "{tmp}/empty"], "empty: no runs found"),
        (["runs", "plot", "{tmp}/empty"], "empty: not a run folder"),
        (["runs", "plot", "{tmp}/runs/toy", "--keys", "nope"], "no series named nope"),
        (["runs", "plot"], "usage: voxforge runs plot RUN"),
        (["runs", "{tmp}/runs", "--keys", "loss"], "--out and --keys belong to"),
    ],
)
def test_clear_errors(runs, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("voxforge runs: error:") and message in err and "Traceback" not in err
