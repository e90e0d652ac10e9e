"""A prepare that was interrupted and resumed writes the same bytes as one that was not.

Two ways in: a deterministic one stops after every step in turn (each run of `prepare` does
one more step, as a run killed between steps would leave it); the other SIGKILLs a real
`voxforge data prepare` (with a worker process) once some assets are done and runs the command
again (about 8 s on 2 idle cores); its reference is an in-process run, so it also checks that
worker processes and their thread settings change no byte. Both compare every output file, byte for byte, with an uninterrupted
run. The settings are large enough (R = 32, 8 views of 64 px) that float16 depth rounding
flips visibility tests, which is what made resumed features differ before.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from voxforge.data.prepare import ALL_STEPS, PrepareConfig, prepare
from voxforge.data.synth import SynthConfig, write_dataset

SETTINGS = {"resolution": 32, "views": 8, "image_size": 64, "cond_views": 2, "progress": False}


def outputs(out: Path) -> dict[str, bytes]:
    """Every file under OUT except the manifest (its timings and timestamps differ)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith("manifest")
    }


def assert_same_outputs(expected: Path, actual: Path) -> None:
    want, got = outputs(expected), outputs(actual)
    assert sorted(got) == sorted(want)  # no missing, extra or leftover temporary files
    differing = [name for name in want if want[name] != got[name]]
    assert not differing, f"{len(differing)} files differ, e.g. {differing[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    write_dataset(root / "src", SynthConfig(num=4, seed=3))
    summary = prepare(root / "src", root / "full", PrepareConfig(**SETTINGS, workers=0))
    assert summary["failures"] == {}
    return root


def test_stopping_after_every_step_gives_the_same_bytes(reference, tmp_path):
    out = tmp_path / "out"
    for count in range(1, len(ALL_STEPS) + 1):
        prepare(reference / "src", out, PrepareConfig(**SETTINGS, workers=0, steps=ALL_STEPS[:count]))
    assert_same_outputs(reference / "full", out)


def _progress(manifest: Path) -> tuple[int, int]:
    """(assets with features done, assets with views done but no features yet)."""
    try:
        db = sqlite3.connect(f"file:{manifest}?mode=ro", uri=True, timeout=1)
        try:
            done = dict(
                db.execute("SELECT step LIKE 'features_%', COUNT(*) FROM steps GROUP BY 1").fetchall()
            )
            views = db.execute(
                "SELECT COUNT(*) FROM steps WHERE step = 'views' AND status = 'done'"
            ).fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0, 0
    return done.get(1, 0), views - done.get(1, 0)


def test_sigkill_mid_run_then_resume_gives_the_same_bytes(reference, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "voxforge", "data", "prepare", str(reference / "src"), str(out)]
    command += ["--resolution", "32", "--views", "8", "--image-size", "64", "--cond-views", "2"]
    command += ["--workers", "1", "--no-progress"]  # one worker process
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    try:
        # some assets done, and one between its views and its features: the state whose
        # resumed features used to differ (they read views/depth.npz back, float16)
        while min(_progress(out / "manifest.sqlite")) < 1:
            assert process.poll() is None, "prepare ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert _progress(out / "manifest.sqlite")[0] < 4
    from voxforge.cli import main

    assert main(command[3:]) == 0  # the resume, in this process (no second interpreter start-up)
    assert_same_outputs(reference / "full", out)
