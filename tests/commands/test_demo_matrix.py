"""The quick demo's checks hold on every CPU kernel set, thread count and seed (slow: ~40 min).

`voxforge demo --quick --seed N` in a fresh process per (ATEN_CPU_CAPABILITY, threads, seed);
every run must exit 0, i.e. meet every check its report lists. The same matrix, with the
numbers, is `benchmarks/demo_spread.py` (docs/benchmarks.md, "Demo spread").
"""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from demo_spread import supported_capabilities  # noqa: E402

MATRIX = list(itertools.product(supported_capabilities(), (1, 2), (1, 2, 3, 4, 5)))


@pytest.mark.slow
@pytest.mark.parametrize(("capability", "threads", "seed"), MATRIX)
def test_quick_demo_passes_its_checks(tmp_path, capability, threads, seed):
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability, "OMP_NUM_THREADS": str(threads)}
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "voxforge", "demo", "--quick", "--seed", str(seed), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["checks"]
