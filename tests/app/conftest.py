"""Fixtures of the app tests: a tiny image → 3D model folder (random weights, < 1 s), a tiny
diffusers Sana folder, a tiny video_flow run, a random-weight get3d run, and `voxforge app`
serving them from a
subprocess on a free port.

The server fixture is shared by the API tests (`app` marker) and the browser test
(`browser`), so the app starts once per session. It runs in its own working directory with
`--out` inside it, so the tests can check that nothing is written anywhere else.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from tests.app.tiny_model import write_tiny_model

    root = write_tiny_model(tmp_path_factory.mktemp("app_model") / "tiny3d")
    lines = [{"step": s, "loss": 1.0 / s, "steps_per_s": 2.0, "time": float(s)} for s in range(1, 6)]
    (root / "runs" / "ss_vae" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


@pytest.fixture(scope="session")
def sana_model(tmp_path_factory) -> Path:
    from tests.pipelines.image_helpers import save_tiny_sana

    folder = tmp_path_factory.mktemp("app_sana") / "sana"
    save_tiny_sana(folder)
    return folder


@pytest.fixture(scope="session")
def video_model(tmp_path_factory) -> Path:
    """A video_flow run trained 10 steps on tiny clips (tests/stages/video_helpers.py)."""
    from tests.stages.video_helpers import video_flow_run

    return video_flow_run(tmp_path_factory.mktemp("app_video"))


@pytest.fixture(scope="session")
def get3d_model(tmp_path_factory) -> Path:
    from tests.app.tiny_model import write_tiny_get3d

    return write_tiny_get3d(tmp_path_factory.mktemp("app_get3d") / "get3d")


@contextmanager
def serve_app(arguments: list[str], cwd: Path, log: Path):
    """`voxforge app ARGUMENTS --port P` in a subprocess (one torch thread, offline) with its
    output in `log`; yields its URL once it answers, and stops it afterwards."""
    port = free_port()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO / "src"),
    }
    command = [sys.executable, "-m", "voxforge", "app", *arguments, "--port", str(port)]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300  # imports of torch, gradio, diffusers on a loaded 2-core machine
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"voxforge app exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "config", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"voxforge app did not answer within 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Server:
    url: str
    cwd: Path  # the server's working directory
    out: Path  # its --out (inside cwd)
    log: Path
    started: float  # time.time() when it was launched


@pytest.fixture(scope="session")
def app_server(tmp_path_factory, tiny_model, sana_model, video_model, get3d_model) -> Server:
    pytest.importorskip("gradio")
    cwd = tmp_path_factory.mktemp("app_cwd")
    out, log = cwd / "out", tmp_path_factory.mktemp("app_log") / "server.log"
    started = time.time()
    command = ["--model", str(tiny_model), "--model", str(sana_model), "--model", str(video_model)]
    command += ["--model", str(get3d_model)]
    command += ["--runs", str(tiny_model / "runs"), "--out", "out"]
    command += ["--frames", "4", "--size", "48", "--device", "cpu"]
    with serve_app(command, cwd, log) as url:
        yield Server(url, cwd, out, log, started)
