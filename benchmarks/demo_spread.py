"""Spread of the demo's numbers over CPU kernels, thread counts and seeds.

    python benchmarks/demo_spread.py --out runs/spread [--full] [--seeds 1 2 3 4 5]
        [--capabilities default avx2 avx512] [--threads 1 2] [--parallel 2]

Runs `voxforge demo [--quick] --seed N` once per (ATEN_CPU_CAPABILITY, threads, seed) in a
fresh process, each in its own folder, and prints one row per run (exit code, the checks'
values, seconds) and then the min / max of every number over the matrix: the margins the
demo's checks may assert. Capabilities the CPU lacks are skipped (PyTorch would fall back
silently). `--parallel 2` runs two single-threaded demos side by side (each pinned to its
thread count, so they do not fight over the cores). Results go to OUT/spread.json as well.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

KEYS = (
    ("ss_vae_heldout", "iou"),
    ("generation_heldout", "yaw_iou"),
    ("generation_heldout", "yaw_iou_uncond"),
    ("slat_vae_heldout", "views_psnr"),
    ("image_to_3d_heldout", "psnr"),
)


def supported_capabilities() -> list[str]:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = ["default"]
    if " avx2" in flags:
        found.append("avx2")
    if " avx512f" in flags and " avx512bw" in flags and " avx512vl" in flags:
        found.append("avx512")
    return found


def run_one(out: Path, capability: str, threads: int, seed: int, full: bool) -> dict:
    folder = out / f"{capability}-t{threads}-seed{seed}"
    env = {
        **os.environ,
        "ATEN_CPU_CAPABILITY": capability,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    cmd = [sys.executable, "-m", "voxforge", "demo", "--seed", str(seed), "--out", str(folder)]
    cmd += [] if full else ["--quick"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (out / f"{folder.name}.log").write_text(proc.stdout + proc.stderr)
    row = {
        "capability": capability,
        "threads": threads,
        "seed": seed,
        "exit": proc.returncode,
        "seconds": seconds,
    }
    report = folder / "report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        for section, key in KEYS:
            row[f"{section}.{key}"] = data.get(section, {}).get(key)
        row["checks"] = {c["name"]: c["value"] for c in data.get("checks", [])}
        row["fallbacks"] = sum(bool(e.get("fallback")) for e in data.get("examples", {}).values())
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/spread")
    parser.add_argument("--full", action="store_true", help="the full demo instead of --quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--capabilities", nargs="+", default=None, help="default: all this CPU supports")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--parallel", type=int, default=1, help="runs at once (only for 1-thread runs)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    capabilities = [
        c for c in (args.capabilities or supported_capabilities()) if c in supported_capabilities()
    ]
    print(f"CPU capabilities run: {capabilities}; threads {args.threads}; seeds {args.seeds}", flush=True)
    rows = []
    for threads in args.threads:
        jobs = list(itertools.product(capabilities, [threads], args.seeds))
        workers = args.parallel if threads == 1 else 1
        with ThreadPoolExecutor(workers) as pool:
            for row in pool.map(lambda job: run_one(out, *job, args.full), jobs):
                rows.append(row)
                values = "  ".join(
                    f"{k.split('.')[-1]}={float('nan') if row.get(k) is None else row[k]:.3f}"
                    for k in map(".".join, KEYS)
                )
                print(
                    f"{row['capability']:>8} t{row['threads']} seed {row['seed']}: exit {row['exit']}  {values}  "
                    f"fallbacks={row.get('fallbacks')}  {row['seconds']:.0f} s",
                    flush=True,
                )
    (out / "spread.json").write_text(json.dumps(rows, indent=1))
    print("\nspread over the matrix (min / max):")
    for key in map(".".join, KEYS):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            print(f"  {key:<34} {min(values):8.3f} {max(values):8.3f}")
    gains = [
        r[f"{KEYS[1][0]}.{KEYS[1][1]}"] - r[f"{KEYS[2][0]}.{KEYS[2][1]}"]
        for r in rows
        if r.get("generation_heldout.yaw_iou") is not None
    ]
    if gains:
        print(f"  {'conditional gain (yaw IoU)':<34} {min(gains):8.3f} {max(gains):8.3f}")
    seconds = [r["seconds"] for r in rows]
    print(f"  {'seconds':<34} {min(seconds):8.0f} {max(seconds):8.0f}")
    failed = [r for r in rows if r["exit"] != 0]
    print(f"{len(rows) - len(failed)} of {len(rows)} runs exited 0")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
