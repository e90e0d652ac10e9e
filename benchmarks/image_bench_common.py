"""Shared by the image family's benchmarks (`bench_image_*.py`): the machine line every
report starts with, a markdown table printer, and a least-squares slope.

Not a benchmark itself; the scripts import it from their own folder.
"""

from __future__ import annotations

import math
import os
import resource
from pathlib import Path

import torch


def cpu_model() -> str:
    """The 'model name' of /proc/cpuinfo ('unknown' where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine() -> dict[str, str | int | float]:
    """What a result depends on: CPU, ATen kernel set, threads, torch, load."""
    try:
        load = round(os.getloadavg()[0], 2)
    except OSError:
        load = -1.0
    return {
        "cpu": cpu_model(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count() or 0,
        "torch": torch.__version__,
        "load_average_1min": load,
    }


def machine_line(info: dict[str, str | int | float] | None = None) -> str:
    info = info or machine()
    return (
        f"CPU: {info['cpu']} (torch.backends.cpu.get_cpu_capability() = {info['capability']}), "
        f"{info['threads']} torch thread(s) of {info['cores']} cores, torch {info['torch']}, "
        f"load average {info['load_average_1min']} at the start"
    )


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    var = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / var if var else float("nan")


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mib() -> float:
    """This process's resident set now (VmRSS), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
