"""`train.precision: auto`: the probe, its override, the record in the run folder, and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.helpers import final_weights, make_recipe
from voxforge.recipe import load_recipe
from voxforge.train import precision as precision_mod
from voxforge.train.engine import train
from voxforge.train.precision import PRECISION_FILE, PROBE_ENV, autocast, probe_precision, resolve_precision

CPU = torch.device("cpu")


def _native_bf16_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo: cannot tell whether this CPU has native bf16")
    return {"avx512_bf16", "amx_bf16"} & set(text.split())


needs_cpu_without_bf16 = pytest.mark.skipif(
    sys.platform != "linux" or bool(_native_bf16_flags() if sys.platform == "linux" else True),
    reason="this CPU has native bf16 (AVX512-BF16 / AMX), where auto may rightly pick bf16",
)


def _record(run_dir: Path) -> dict:
    return json.loads((run_dir / PRECISION_FILE).read_text())


def _precision_events(run_dir: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("event") == "precision"]


@pytest.fixture
def measured(monkeypatch):
    """The real probe: no override, and a fresh per-process cache."""
    monkeypatch.delenv(PROBE_ENV, raising=False)
    monkeypatch.setattr(precision_mod, "_PROBE_CACHE", {})


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
def test_env_var_forces_either_branch(monkeypatch, forced):
    monkeypatch.setenv(PROBE_ENV, forced)
    choice = resolve_precision("auto", CPU)
    assert (choice.requested, choice.resolved) == ("auto", forced)
    assert PROBE_ENV in choice.reason
    monkeypatch.setenv(PROBE_ENV, "fp8")
    with pytest.raises(ValueError, match=f"{PROBE_ENV}='fp8'"):
        resolve_precision("auto", CPU)


def test_explicit_precision_is_not_probed(monkeypatch):
    monkeypatch.setenv(PROBE_ENV, "bf16")
    for name in ("fp32", "bf16", "fp16"):
        assert resolve_precision(name, CPU).resolved == name
    with pytest.raises(ValueError, match="resolve train.precision=auto"):
        autocast(CPU, "auto")


@needs_cpu_without_bf16
def test_auto_is_fp32_on_a_cpu_without_native_bf16(measured):
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    resolved, reason, probe = probe_precision(CPU)
    assert torch.equal(torch.rand(4), expected), "the probe must not draw from the training RNG"
    assert resolved == "fp32", reason
    assert probe["bf16_over_fp32"] < precision_mod.BF16_MIN_SPEEDUP
    assert probe["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert probe_precision(CPU) is probe_precision(CPU)  # measured once per process


@needs_cpu_without_bf16
def test_auto_is_fp32_with_default_cpu_capability(tmp_path):
    # ATEN_CPU_CAPABILITY is read when torch loads: measure in a fresh process.
    env = {k: v for k, v in os.environ.items() if k != PROBE_ENV}
    env.update(ATEN_CPU_CAPABILITY="default", OMP_NUM_THREADS="1")
    code = (
        "import json, torch; from voxforge.train.precision import probe_precision; "
        "print(json.dumps(probe_precision(torch.device('cpu'))))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    resolved, reason, probe = json.loads(proc.stdout.splitlines()[-1])
    assert probe["cpu_capability"] == "DEFAULT"
    assert resolved == "fp32", reason


def test_tiny_recipes_default_to_auto():
    for name in ("ss_vae_tiny", "ss_flow_tiny", "slat_vae_tiny", "slat_flow_tiny", "toy_flow"):
        assert load_recipe(name).train.precision == "auto", name
    assert load_recipe("debug_regression").train.precision == "fp32"  # the engine's smoke test


def test_auto_with_fp32_probe_trains_exactly_like_fp32(tmp_path, monkeypatch):
    monkeypatch.setenv(PROBE_ENV, "fp32")
    train(make_recipe(train={"precision": "auto", "max_steps": 6}), tmp_path / "auto")
    train(make_recipe(train={"precision": "fp32", "max_steps": 6}), tmp_path / "fp32")
    a, b = final_weights(tmp_path / "auto"), final_weights(tmp_path / "fp32")
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert _record(tmp_path / "fp32") == {
        "requested": "fp32",
        "resolved": "fp32",
        "reason": "set in the recipe",
        "probe": {},
    }


def test_resume_keeps_the_precision_chosen_at_first_start(tmp_path, monkeypatch, capsys):
    recipe = make_recipe(train={"precision": "auto", "max_steps": 10})
    monkeypatch.setenv(PROBE_ENV, "bf16")
    train(recipe, tmp_path / "straight")
    assert train(recipe, tmp_path / "split", stop_after=5).step == 5
    first = _record(tmp_path / "split")
    assert first["requested"] == "auto" and first["resolved"] == "bf16" and PROBE_ENV in first["reason"]
    assert "train.precision=auto -> bf16" in capsys.readouterr().err
    # the same run, resumed where the probe says fp32 (another machine): it stays bf16
    monkeypatch.setenv(PROBE_ENV, "fp32")
    assert train(recipe, tmp_path / "split").step == 10
    assert _record(tmp_path / "split") == first
    events = _precision_events(tmp_path / "split")
    assert [e["resolved"] for e in events] == ["bf16", "bf16"]
    assert "kept on resume" in events[1]["reason"]
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "split")
    assert all(torch.equal(a[name], b[name]) for name in a), "resumed half did not train in bf16"


def test_run_without_record_keeps_its_config_precision(tmp_path, monkeypatch):
    # A run started before precision.json existed: resuming it with `auto` keeps the precision
    # its config.yaml names, whatever the probe says now.
    monkeypatch.setenv(PROBE_ENV, "fp32")
    straight = make_recipe(train={"precision": "bf16", "max_steps": 10})
    train(straight, tmp_path / "straight")
    train(straight, tmp_path / "old", stop_after=5)
    (tmp_path / "old" / PRECISION_FILE).unlink()
    train(make_recipe(train={"precision": "auto", "max_steps": 10}), tmp_path / "old")
    assert _record(tmp_path / "old")["resolved"] == "bf16"
    a, b = final_weights(tmp_path / "straight"), final_weights(tmp_path / "old")
    assert all(torch.equal(a[name], b[name]) for name in a)
