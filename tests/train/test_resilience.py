"""Crashes and preemption in real processes: kill -9 during a checkpoint write, SIGTERM
and SIGUSR1 preemption, and resuming after each."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.train.helpers import final_weights
from voxforge.train.checkpoint import list_checkpoints

ARGS = [
    "train",
    "debug_regression",
    "model.width=16",
    "data.size=64",
    "data.dim=4",
    "train.batch_size=8",
    "train.log_every=1",
    "train.tensorboard=false",
    "train.progress=false",
]

# Runs the CLI, but SIGKILLs itself right after trainer_state.pt of step 20 is written:
# the weights of step 20 are on disk, its COMMITTED marker is not.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from voxforge.train import checkpoint
    original = checkpoint._write_durable
    def write_then_die(path, write):
        original(path, write)
        if path.name == "trainer_state.pt" and path.parent.name == ".tmp-step_00000020":
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint._write_durable = write_then_die
    from voxforge.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _run(args, **kw):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180, **kw)


def _main(args, capsys) -> tuple[int, str]:
    """`voxforge ARGS` in this process (no second interpreter start-up): (exit code, stderr)."""
    from voxforge.cli import main

    code = main(args)
    return code, capsys.readouterr().err


def _events(run: Path, name: str):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("event") == name]


def test_kill_during_checkpoint_write_resumes_from_previous(tmp_path, capsys):
    run = tmp_path / "run"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    args = [*ARGS, "--out", str(run), "train.max_steps=30", "train.checkpoint_every=10"]
    crashed = _run([str(script), *args])
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    assert (run / "checkpoints" / ".tmp-step_00000020" / "model.safetensors").is_file()
    assert [c.step for c in list_checkpoints(run)] == [10]  # the half-written one does not count

    code, stderr = _main(args, capsys)  # the resume, in this process
    assert code == 0, stderr
    assert "removed incomplete checkpoint" in stderr
    assert not (run / "checkpoints" / ".tmp-step_00000020").exists()
    assert [c.step for c in list_checkpoints(run)][-1] == 30
    assert _events(run, "resume")[-1]["step"] == 10


@pytest.mark.parametrize(
    "signum, code",
    [
        (signal.SIGTERM, 143),
        pytest.param(signal.SIGUSR1, 138, marks=pytest.mark.slow),
    ],  # same path, other signal
)
def test_preemption_checkpoints_and_continues(tmp_path, signum, code, capsys):
    run = tmp_path / "run"
    args = ["-m", "voxforge", *ARGS, "--out", str(run), "train.checkpoint_every=100000"]
    proc = subprocess.Popen(
        [sys.executable, *args, "train.max_steps=100000", "data.step_sleep=0.01"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            metrics = run / "metrics.jsonl"
            if metrics.is_file() and sum(1 for _ in metrics.open()) >= 5:
                break
            time.sleep(0.1)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "preempted" in stderr
    stopped = list_checkpoints(run)[-1].step
    assert stopped >= 5 and _events(run, "preempted")

    finished, stderr = _main([*args[2:], f"train.max_steps={stopped + 5}"], capsys)  # in this process
    assert finished == 0, stderr
    assert list_checkpoints(run)[-1].step == stopped + 5
    assert _events(run, "resume")[-1]["step"] == stopped


def test_time_limit_stops_with_a_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    extra = ["train.max_steps=100000", "data.step_sleep=0.01", "train.time_limit=1.0"]
    code, stderr = _main([*ARGS, "--out", str(run), *extra], capsys)  # no signal: in this process
    assert code == 0, stderr
    assert "time_limit" in stderr
    assert list_checkpoints(run) and _events(run, "time_limit")


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_gloo_ddp_matches_one_process(tmp_path):
    common = [
        "model.width=32",
        "data.size=64",
        "data.dim=8",
        "train.max_steps=20",
        "train.progress=false",
        "train.tensorboard=false",
        "train.ema_rates=[0.9]",
    ]
    single = _run(
        [
            "-m",
            "voxforge",
            "train",
            "debug_regression",
            "--out",
            str(tmp_path / "one"),
            "train.batch_size=16",
            *common,
        ]
    )
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    multi = _run(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "voxforge",
            "train",
            "debug_regression",
            "--out",
            str(tmp_path / "two"),
            "train.batch_size=8",
            *common,
        ],
        env=env,
    )
    assert multi.returncode == 0, multi.stderr
    ckpt = list_checkpoints(tmp_path / "two")[-1]
    assert {p.name for p in ckpt.path.iterdir()} >= {"rng_rank0.pt", "rng_rank1.pt", "COMMITTED"}
    # Same samples per step; only the order of floating-point reductions differs.
    for key in ("model", "ema_0.9"):
        a, b = final_weights(tmp_path / "one", key), final_weights(tmp_path / "two", key)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
