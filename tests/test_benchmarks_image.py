"""The image family's benchmark scripts (benchmarks/bench_image_*.py; numbers in
docs/benchmarks.md, "Image family"). No timing is asserted: the default tests check the
slope fit and the plot on made-up numbers; the `--quick` smoke runs of the three scripts
(each imports diffusers and builds models in fresh processes: tens of seconds) are slow.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
from bench_image_attention import plot, slopes  # noqa: E402
from image_bench_common import loglog_slope, machine, markdown_table  # noqa: E402


def test_loglog_slope_recovers_power_laws():
    tokens = [64, 144, 256, 576, 1024, 1600, 2304, 4096]
    assert loglog_slope(tokens, [3e-4 * n for n in tokens]) == pytest.approx(1.0)
    assert loglog_slope(tokens, [2e-7 * n * n for n in tokens]) == pytest.approx(2.0)
    # a constant cost on top of the quadratic one: flatter overall, steeper at the large end
    mixed = [0.05 + 1e-8 * n * n for n in tokens]
    fitted = slopes([{"tokens": n, **_times(n, t)} for n, t in zip(tokens, mixed)])
    assert fitted["softmax_fwd"]["all"] < fitted["softmax_fwd"]["largest_4"] < 2.0
    assert fitted["linear_fwd"]["all"] == pytest.approx(1.0)


def _times(n: int, softmax: float) -> dict[str, float]:
    linear = 1e-4 * n
    keys = {
        "linear_fwd": linear,
        "linear_fwd_bwd": 3 * linear,
        "softmax_fwd": softmax,
        "softmax_fwd_bwd": 3 * softmax,
    }
    return {**{f"{k}_s": v for k, v in keys.items()}, **{f"{k}_cpu_s": v for k, v in keys.items()}}


def test_plot_writes_a_png_with_every_series(tmp_path):
    from PIL import Image

    tokens = [64, 256, 1024, 4096]
    rows = [{"tokens": n, **_times(n, 1e-7 * n * n + 0.01)} for n in tokens]
    path = tmp_path / "plot.png"
    plot(rows, slopes(rows), "test", path)
    image = Image.open(path).convert("RGB")
    colours = set(image.getdata())
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # the linear and softmax lines
    assert path.stat().st_size < 200_000


def test_machine_record_and_table():
    info = machine()
    assert info["capability"] and info["threads"] >= 1
    table = markdown_table(["a", "b"], [[1, 2]])
    assert table.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | 2 |"]


def _run(script: str, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCH / script), "--quick", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=BENCH.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "get_cpu_capability() =" in proc.stdout
    return proc


@pytest.mark.slow
def test_attention_benchmark_quick(tmp_path):
    proc = _run("bench_image_attention.py", tmp_path)
    record = json.loads((tmp_path / "attention_scaling.json").read_text())
    assert [r["tokens"] for r in record["rows"]] == [64, 144, 256]
    assert all(math.isfinite(s["all"]) for s in record["slopes"].values())
    assert (tmp_path / "attention_scaling.png").stat().st_size > 1000
    assert "| px | latent | tokens |" in proc.stdout


@pytest.mark.slow
def test_lora_benchmark_quick(tmp_path):
    proc = _run("bench_image_lora.py", tmp_path)
    record = json.loads((tmp_path / "lora_overhead.json").read_text())
    assert 0 < record["parameters"]["trainable"] < 0.1 * record["parameters"]["total"]
    for ratio in record["ratios"].values():
        assert 0.2 < ratio["wall"] < 5 and 0.2 < ratio["cpu"] < 5
    assert "voxforge / bare diffusers + peft" in proc.stdout


@pytest.mark.slow
def test_memory_benchmark_quick(tmp_path):
    _run("bench_image_memory.py", tmp_path)
    rows = {r["mode"]: r for r in json.loads((tmp_path / "memory.json").read_text())["rows"]}
    assert rows["full"]["trainable_params"] == rows["full"]["total_params"]
    assert 0 < rows["lora"]["trainable_params"] < 0.1 * rows["lora"]["total_params"]
    for r in rows.values():
        assert r["peak_mib"] >= r["rss_after_build_mib"] >= r["rss_after_imports_mib"] > 0
