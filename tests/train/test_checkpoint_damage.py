"""A committed checkpoint that went bad later (truncated, bytes flipped, a hostile pickle,
bad JSON) is detected on resume, moved into `checkpoints/damaged/`, and the run continues
from the newest checkpoint that verifies, ending with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.train.helpers import BASE, final_weights, make_recipe
from voxforge.cli import main
from voxforge.errors import UserError
from voxforge.stages import get_stage
from voxforge.train import checkpoint as ckpt_io
from voxforge.train.engine import train

TRAIN = {"max_steps": 20, "checkpoint_every": 5, "keep_last": 2, "ema_rates": [0.9]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted 20-step run, and a run stopped at step 10 (checkpoints 5 and 10)."""
    root = tmp_path_factory.mktemp("runs")
    recipe = make_recipe(train=TRAIN)
    assert train(recipe, root / "straight").step == 20
    assert train(recipe, root / "split", stop_after=10).step == 10
    assert [c.step for c in ckpt_io.list_checkpoints(root / "split")] == [5, 10]
    return root


def _copy_split(runs: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(runs / "split", run)
    return run


def _step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


def _events(run: Path, name: str) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("event") == name]


def _assert_same_final_weights(runs: Path, run: Path) -> None:
    for key in ("model", "ema_0.9"):
        a, b = final_weights(runs / "straight", key), final_weights(run, key)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{key}:{name} differs from the uninterrupted run"


def _flip_tensor_byte(path: Path) -> None:
    """Change one byte of tensor data: the file stays a valid safetensors file."""
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    assert len(data) > 8 + header_len
    data[-1] ^= 0x40
    path.write_bytes(bytes(data))


class _RunsShell:
    """Unpickling this calls os.system (what weights_only=True must refuse)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _write_hostile_pickle(path: Path, created: Path) -> None:
    # protocol 2: the oldest opcodes, so the unpickler reaches the GLOBAL os.system
    with open(path, "wb") as handle:
        pickle.dump({"step": 10, "optimizer": _RunsShell(f"touch {created}")}, handle, protocol=2)


def _make_legacy(checkpoint: Path) -> None:
    """What earlier versions wrote: no manifest, a marker holding only the step."""
    (checkpoint / ckpt_io.MANIFEST).unlink()
    (checkpoint / ckpt_io.MARKER).write_text(f"{int(checkpoint.name[5:])}\n")


def _resume_and_check(runs: Path, run: Path, capsys, damaged_file: str) -> Path:
    result = train(make_recipe(train=TRAIN), run)
    assert result.reason == "max_steps" and result.step == 20
    _assert_same_final_weights(runs, run)
    assert _events(run, "resume")[-1]["step"] == 5
    moved = run / "checkpoints" / "damaged" / "step_00000010"
    assert moved.is_dir() and (moved / "COMMITTED").is_file(), "the damaged checkpoint must be kept"
    assert damaged_file in (moved / ckpt_io.DAMAGED_NOTE).read_text()
    # the fallback is reported in one stderr line naming the file, and as an event
    lines = [line for line in capsys.readouterr().err.splitlines() if "damaged" in line]
    assert len(lines) == 1 and damaged_file in lines[0] and "step_00000010" in lines[0], lines
    assert _events(run, "checkpoint_damaged")[0]["moved_to"] == str(moved)
    # keep_last=2 pruned the intact ones but never looks into damaged/
    assert [c.step for c in ckpt_io.list_checkpoints(run)] == [15, 20]
    return moved


def test_truncated_newest_weights_resume_from_previous(runs, tmp_path, capsys):
    run = _copy_split(runs, tmp_path)
    weights = _step_dir(run, 10) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    moved = _resume_and_check(runs, run, capsys, "model.safetensors")
    assert (moved / "model.safetensors").stat().st_size == 100  # moved as it was, not repaired
    assert "truncated" in (moved / ckpt_io.DAMAGED_NOTE).read_text()


@pytest.mark.parametrize("legacy", [False, True], ids=["with-checksums", "earlier-version"])
def test_hostile_trainer_state_is_refused_and_moved_aside(runs, tmp_path, capsys, legacy):
    run = _copy_split(runs, tmp_path)
    created = tmp_path / "SOMEFILE"
    _write_hostile_pickle(_step_dir(run, 10) / "trainer_state.pt", created)
    if legacy:  # no checksum to catch it first: the weights_only unpickler must refuse it
        _make_legacy(_step_dir(run, 10))
    moved = _resume_and_check(runs, run, capsys, "trainer_state.pt")
    assert not created.exists(), "the pickle's os.system ran"
    note = (moved / ckpt_io.DAMAGED_NOTE).read_text()
    # with a manifest the swap is caught by its size before anything is unpickled
    assert ("unpickling refused" in note and "system" in note) if legacy else "when committed" in note


def test_flipped_byte_in_valid_weights_fails_the_checksum(runs, tmp_path, capsys):
    run = _copy_split(runs, tmp_path)
    weights = _step_dir(run, 10) / "ema_0.9.safetensors"
    _flip_tensor_byte(weights)
    load_file(str(weights))  # still a readable file: only the checksum can tell
    [_, newest] = ckpt_io.list_checkpoints(run)
    with pytest.raises(ckpt_io.CheckpointDamaged, match="sha256"):
        ckpt_io.verify_checkpoint(newest)
    ckpt_io.verify_checkpoint(newest, full=False)  # sizes alone cannot see it
    _resume_and_check(runs, run, capsys, "ema_0.9.safetensors")


@pytest.mark.parametrize(
    "damage",
    ["bad-meta-json", "missing-rng", "legacy-truncated-weights", "legacy-bad-meta-json"],
)
def test_other_damage_falls_back_the_same_way(runs, tmp_path, capsys, damage):
    run = _copy_split(runs, tmp_path)
    newest = _step_dir(run, 10)
    if damage.startswith("legacy"):
        _make_legacy(newest)
    if damage.endswith("bad-meta-json"):
        (newest / "meta.json").write_text('{"step": 10, "time"')
        file = "meta.json"
    elif damage == "missing-rng":
        (newest / "rng_rank0.pt").unlink()
        file = "rng_rank0.pt"
    else:
        (newest / "model.safetensors").write_bytes(b"\0" * 100)
        file = "model.safetensors"
    moved = _resume_and_check(runs, run, capsys, file)
    if damage == "missing-rng":
        assert "rng_rank0.pt: missing" in (moved / ckpt_io.DAMAGED_NOTE).read_text()


def test_checkpoints_of_earlier_versions_still_resume(runs, tmp_path):
    run = _copy_split(runs, tmp_path)
    for step in (5, 10):
        _make_legacy(_step_dir(run, step))
    assert not ckpt_io.verify_checkpoint(ckpt_io.latest_checkpoint(run))  # nothing to check against
    train(make_recipe(train=TRAIN), run)
    _assert_same_final_weights(runs, run)
    assert _events(run, "resume")[-1]["step"] == 10
    assert not (run / "checkpoints" / "damaged").exists()


@pytest.mark.slow
def test_every_checkpoint_damaged_is_one_line_error(runs, tmp_path):
    run = _copy_split(runs, tmp_path)
    for step in (5, 10):
        weights = _step_dir(run, step) / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(UserError, match="no checkpoint can be resumed"):
        train(make_recipe(train=TRAIN), run)
    # through the CLI, in a fresh process: exit 2, one line, no traceback
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**BASE, "train": {**BASE["train"], **TRAIN}}))
    command = [sys.executable, "-m", "voxforge", "train", str(recipe), "--out", str(run)]
    for _ in range(2):  # nothing is moved, so a re-run says the same instead of starting over
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if "error" in line]
        assert len(errors) == 1 and "step_00000010: model.safetensors" in errors[0], done.stderr
        assert "step_00000005: model.safetensors" in errors[0]
        assert [c.step for c in ckpt_io.list_checkpoints(run)] == [5, 10]


def test_load_model_weights_skips_a_damaged_newest(runs, tmp_path, capsys):
    run = _copy_split(runs, tmp_path)
    _flip_tensor_byte(_step_dir(run, 10) / "model.safetensors")
    net = get_stage("debug_regression")(make_recipe(train=TRAIN), run, torch.device("cpu")).build_model()
    info = ckpt_io.load_model_weights(net, run, ema=False)
    assert info.step == 5
    assert "using step_00000005" in capsys.readouterr().err
    expected = load_file(str(_step_dir(run, 5) / "model.safetensors"))
    for name, value in net.state_dict().items():
        assert torch.equal(value, expected[name])
    assert _step_dir(run, 10).is_dir()  # reading never moves anything


def test_checkpoints_command_shows_verification(runs, tmp_path, capsys):
    run = _copy_split(runs, tmp_path)
    weights = _step_dir(run, 10) / "model.safetensors"
    _flip_tensor_byte(weights)
    assert main(["checkpoints", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "[sizes-ok]" in out[0] and "[sizes-ok]" in out[1]  # the cheap check cannot see a flip
    assert main(["checkpoints", str(run), "--verify"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "[ok]" in out[0] and "DAMAGED: model.safetensors: sha256" in out[1]
    weights.write_bytes(weights.read_bytes()[:100])
    _make_legacy(_step_dir(run, 5))
    assert main(["checkpoints", str(run), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["state"] for c in listed] == ["unchecked", "damaged"]
    train(make_recipe(train=TRAIN), run)
    capsys.readouterr()
    assert main(["checkpoints", str(run)]) == 0
    assert "moved aside" in capsys.readouterr().out.splitlines()[-1]
