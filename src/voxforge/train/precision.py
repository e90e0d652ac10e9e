"""Mixed precision: parameters stay fp32; `train.precision` turns on autocast for the
network blocks (bf16, or fp16 with a GradScaler).

Parts that must stay fp32 whatever the setting (rasterizers, losses on rendered images,
sampling accumulators) use `fp32_region`, which disables autocast for its body. On CPUs
with AMX, bf16 autocast is a large speed-up for matmul-heavy blocks (see
benchmarks/bench_precision.py).
"""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
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
