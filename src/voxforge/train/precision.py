"""Mixed precision: parameters stay fp32; `train.precision` turns on autocast for the
network blocks (bf16, or fp16 with a GradScaler).

Parts that must stay fp32 whatever the setting (rasterizers, losses on rendered images,
sampling accumulators) use `fp32_region`, which disables autocast for its body.

`train.precision: auto` picks per machine. CPUs differ by two orders of magnitude in bf16
matmul speed: with AVX2 only, bf16 is emulated (matmuls at about 0.1x fp32); AVX512-BF16 runs it at about
2.4x fp32 and AMX at about 7x. So `auto` times a few square matmuls in each dtype (well under a
second, once per process) and uses bf16 autocast only where bf16 is clearly faster
(`BF16_MIN_SPEEDUP`): autocast adds casts and leaves the non-matmul work as it was, so a small
matmul edge does not pay. On CUDA `auto` is bf16 where the GPU supports it. The environment
variable `VOXFORGE_PRECISION_PROBE=fp32|bf16` replaces the measurement (tests, or a fleet whose
machines are known).

A run decides once: `resolve_run_precision` writes the choice and its reason to
`precision.json` in the run folder at the first start and reuses it on every resume, so a
resumed run (possibly on another machine) never switches precision midway.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_FILE = "precision.json"
PROBE_ENV = "VOXFORGE_PRECISION_PROBE"
BF16_MIN_SPEEDUP = 1.5  # bf16 matmul throughput over fp32 that `auto` needs before choosing bf16
EMULATED_RATIO = 0.5  # below this at the small size, bf16 is emulated: stop before the large size


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run trains in (`resolved`), what the recipe asked for, and why."""

    requested: str  # fp32 | bf16 | fp16 | auto
    resolved: str  # fp32 | bf16 | fp16
    reason: str
    probe: dict[str, Any] = field(default_factory=dict)  # measurements behind an `auto` choice

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return f"train.precision={self.requested} -> {self.resolved} ({self.reason})"


def autocast(device: torch.device, precision: str):
    if precision == "auto":
        raise ValueError("resolve train.precision=auto first (resolve_precision)")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def fp32_region(device_type: str = "cpu"):
    """Disable autocast (both CPU and CUDA) for the body of a `with` block."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(device_type="cpu", enabled=False))
    if device_type != "cpu" or torch.cuda.is_available():
        stack.enter_context(torch.autocast(device_type="cuda", enabled=False))
    return stack


def make_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


# --- auto ------------------------------------------------------------------------------


def _matmul_rate(
    dtype: torch.dtype, n: int, repeats: int, budget: float = 0.01, give_up_below: float = 0.0
) -> float:
    """Best GFLOP/s of `F.linear` on n x n operands (the path nn.Linear takes: oneDNN for bf16),
    over at least `repeats` calls and `budget` seconds (at most 50 calls): the best of many
    rides over a busy neighbour on a shared machine. When the first (warm-up) call already
    runs below `give_up_below`, its rate is the answer (an emulated bf16 at a large size).

    Operands come from a private generator, so the probe leaves the training RNG untouched."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(dtype)
    b = torch.randn(n, n, generator=generator).to(dtype)
    gflop = 2 * n**3 / 1e9
    start = time.perf_counter()
    torch.nn.functional.linear(a, b)  # warm-up: thread pool, oneDNN kernel selection
    first = max(time.perf_counter() - start, 1e-9)
    if gflop / first < give_up_below:
        return gflop / first
    best, calls, spent = float("inf"), 0, 0.0
    while calls < repeats or (spent < budget and calls < 50):
        start = time.perf_counter()
        torch.nn.functional.linear(a, b)
        seconds = time.perf_counter() - start
        best, calls, spent = min(best, seconds), calls + 1, spent + seconds
    return gflop / max(best, 1e-9)


def _cpu_flags() -> list[str]:
    """The bf16-relevant flags the kernel reports (Linux only; informative, not decisive)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})


def probe_cpu_bf16(small: int = 256, large: int = 1024, repeats: int = 3) -> tuple[str, str, dict[str, Any]]:
    """Time fp32 and bf16 matmuls on this CPU: (`bf16` | `fp32`, reason, measurements).

    First at `small`: an emulated bf16 (AVX2 only, about 1-10 GFLOP/s) is obvious there and
    the probe stops, so it stays fast where bf16 is slow. Otherwise the decision is made at
    `large`, where the matmul kernels reach their steady rate."""
    info: dict[str, Any] = {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": _cpu_flags(),
        "threads": torch.get_num_threads(),
    }
    with torch.no_grad(), fp32_region("cpu"):
        fp32 = _matmul_rate(torch.float32, small, repeats)
        bf16 = _matmul_rate(torch.bfloat16, small, repeats)
        info.update(size=small, fp32_gflops=round(fp32, 2), bf16_gflops=round(bf16, 2))
        # Inconclusive at the small size (or native): decide at the large one. On an
        # oversubscribed machine small fp32 matmuls can crawl (each call waits for a descheduled
        # thread), which the large size amortises.
        if bf16 >= EMULATED_RATIO * fp32:
            fp32 = _matmul_rate(torch.float32, large, repeats)
            bf16 = _matmul_rate(torch.bfloat16, large, repeats, give_up_below=EMULATED_RATIO * fp32)
            info.update(size=large, fp32_gflops=round(fp32, 2), bf16_gflops=round(bf16, 2))
    ratio = bf16 / fp32
    info["bf16_over_fp32"] = round(ratio, 3)
    measured = (
        f"bf16 matmul {bf16:.1f} GFLOP/s vs fp32 {fp32:.1f} at {info['size']}² "
        f"({ratio:.2f}x, CPU capability {info['cpu_capability']})"
    )
    if ratio >= BF16_MIN_SPEEDUP:
        return "bf16", f"native bf16: {measured}", info
    return "fp32", f"no bf16 speed-up (needs {BF16_MIN_SPEEDUP}x): {measured}", info


_PROBE_CACHE: dict[tuple[str, int | None, int], tuple[str, str, dict[str, Any]]] = {}


def probe_precision(device: torch.device) -> tuple[str, str, dict[str, Any]]:
    """The precision `auto` means on `device`: (`bf16` | `fp32`, reason, measurements).

    Measured once per process (and device, and thread count); `VOXFORGE_PRECISION_PROBE`
    replaces the measurement."""
    forced = os.environ.get(PROBE_ENV, "").strip().lower()
    if forced:
        if forced not in ("fp32", "bf16"):
            raise ValueError(f"{PROBE_ENV}={forced!r}: use fp32 or bf16 (or unset it to measure)")
        return forced, f"set by {PROBE_ENV}={forced}", {}
    key = (device.type, device.index, torch.get_num_threads())
    if key not in _PROBE_CACHE:
        if device.type == "cuda":
            supported = torch.cuda.is_bf16_supported()
            name = torch.cuda.get_device_name(device)
            _PROBE_CACHE[key] = (
                ("bf16", f"{name} supports bf16", {"device": name})
                if supported
                else ("fp32", f"{name} has no bf16 support", {"device": name})
            )
        elif device.type == "cpu":
            _PROBE_CACHE[key] = probe_cpu_bf16()
        else:
            _PROBE_CACHE[key] = ("fp32", f"autocast is not probed on {device.type}", {})
    return _PROBE_CACHE[key]


def resolve_precision(requested: str, device: torch.device) -> PrecisionChoice:
    if requested != "auto":
        return PrecisionChoice(requested, requested, "set in the recipe")
    resolved, reason, probe = probe_precision(device)
    return PrecisionChoice("auto", resolved, reason, probe)


def _previous_config_precision(run_dir: Path) -> str | None:
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None
    value = (data.get("train") or {}).get("precision") if isinstance(data, dict) else None
    return value if value in DTYPES else None


def resolve_run_precision(
    run_dir: str | Path, requested: str, device: torch.device, *, resuming: bool
) -> PrecisionChoice:
    """The precision of a run, decided at its first start and kept on resume (`precision.json`).

    An explicit `fp32 | bf16 | fp16` in the recipe always wins (a changed setting on resume is
    the user's decision; the engine reports it). `auto` reuses the recorded choice; a run that
    has checkpoints but no record (started by an older voxforge) keeps the concrete precision of
    its previous `config.yaml`, so call this before the new config is written. Rank 0 only."""
    run_dir = Path(run_dir)
    path = run_dir / PRECISION_FILE
    recorded: dict[str, Any] | None = None
    if path.is_file():
        with contextlib.suppress(ValueError):
            recorded = json.loads(path.read_text())
    if requested != "auto":
        choice = resolve_precision(requested, device)
    elif recorded is not None and recorded.get("resolved") in DTYPES:
        choice = PrecisionChoice(
            "auto",
            recorded["resolved"],
            f"recorded at the first start of this run, kept on resume ({recorded.get('reason', '')})",
            recorded.get("probe", {}),
        )
        return choice  # the record stays as first written
    elif resuming and (previous := _previous_config_precision(run_dir)) is not None:
        choice = PrecisionChoice("auto", previous, "kept from the checkpointed run's config.yaml")
    else:
        choice = resolve_precision("auto", device)
    if recorded != choice.to_json():
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(choice.to_json(), indent=1) + "\n")
        tmp.replace(path)
    return choice
