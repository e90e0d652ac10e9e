"""Spread of the demo's numbers over CPU kernels, thread counts and seeds.

    python benchmarks/demo_spread.py --out runs/spread [--family 3d|image] [--full] [--seeds 1 2 3 4 5]
        [--capabilities default avx2 avx512] [--threads 1 2] [--parallel 2]

Runs `voxforge demo FAMILY [--quick] --seed N` once per (ATEN_CPU_CAPABILITY, threads, seed) in a
fresh process, each in its own folder, and prints one row per run (exit code, the checks'
values, wall and CPU seconds) and then the min / max of every number over the matrix: the
margins the demo's checks may assert. Capabilities the CPU lacks are skipped (PyTorch would fall back
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

#: per family, the report.json numbers shown (paths into the report) and the gains (a minus b)
KEYS = {
    "3d": (
        ("ss_vae_heldout", "iou"),
        ("generation_heldout", "yaw_iou"),
        ("generation_heldout", "yaw_iou_uncond"),
        ("slat_vae_heldout", "views_psnr"),
        ("image_to_3d_heldout", "psnr"),
    ),
    "image": (
        ("autoencoder", "psnr"),
        ("judge", "accuracy", "colour"),
        ("modes", "conditional", "mean"),
        ("modes", "unconditional", "mean"),
        ("modes", "shuffled", "mean"),
        ("modes", "conditional", "colour"),
        ("modes", "unconditional", "colour"),
        ("modes", "conditional", "fid"),
        ("held_back", "base", "colour"),
        ("held_back", "lora", "colour"),
    ),
}
GAINS = {
    "3d": {"conditional gain (yaw IoU)": ("generation_heldout.yaw_iou", "generation_heldout.yaw_iou_uncond")},
    "image": {
        "prompt gain (mean accuracy)": ("modes.conditional.mean", "modes.unconditional.mean"),
        "colour gain": ("modes.conditional.colour", "modes.unconditional.colour"),
        "LoRA colour gain": ("held_back.lora.colour", "held_back.base.colour"),
    },
}


def lookup(data: dict, path: tuple[str, ...]):
    for key in path:
        data = data.get(key, {}) if isinstance(data, dict) else {}
    return data if isinstance(data, (int, float)) else None


def supported_capabilities() -> list[str]:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = ["default"]
    if " avx2" in flags:
        found.append("avx2")
    if " avx512f" in flags and " avx512bw" in flags and " avx512vl" in flags:
        found.append("avx512")
    return found


def run_one(out: Path, capability: str, threads: int, seed: int, full: bool, family: str = "3d") -> dict:
    folder = out / f"{family}-{capability}-t{threads}-seed{seed}"
    env = {
        **os.environ,
        "ATEN_CPU_CAPABILITY": capability,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    cmd = [sys.executable, "-m", "voxforge", "demo", family, "--seed", str(seed), "--out", str(folder)]
    cmd += [] if full else ["--quick"]
    start, before = time.perf_counter(), os.times()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds, after = time.perf_counter() - start, os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    (out / f"{folder.name}.log").write_text(proc.stdout + proc.stderr)
    row = {
        "capability": capability,
        "threads": threads,
        "seed": seed,
        "family": family,
        "exit": proc.returncode,
        "seconds": seconds,
        "cpu_seconds": cpu,
    }
    report = folder / "report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        for path in KEYS[family]:
            row[".".join(path)] = lookup(data, path)
        row["checks"] = {c["name"]: c["value"] for c in data.get("checks", [])}
        row["fallbacks"] = sum(bool(e.get("fallback")) for e in data.get("examples", {}).values())
    return row


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="runs/spread")
    parser.add_argument("--family", default="3d", choices=sorted(KEYS), help="which demo (default 3d)")
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
            for row in pool.map(lambda job: run_one(out, *job, args.full, args.family), jobs):
                rows.append(row)
                values = "  ".join(
                    f"{k}={float('nan') if row.get(k) is None else row[k]:.3f}"
                    for k in map(".".join, KEYS[args.family])
                )
                print(
                    f"{row['capability']:>8} t{row['threads']} seed {row['seed']}: exit {row['exit']}  {values}  "
                    f"fallbacks={row.get('fallbacks')}  {row['seconds']:.0f} s (CPU {row['cpu_seconds']:.0f} s)",
                    flush=True,
                )
    (out / "spread.json").write_text(json.dumps(rows, indent=1))
    print("\nspread over the matrix (min / max):")
    for key in map(".".join, KEYS[args.family]):
        values = [r[key] for r in rows if r.get(key) is not None]
        if values:
            print(f"  {key:<34} {min(values):8.3f} {max(values):8.3f}")
    for name, (a, b) in GAINS[args.family].items():
        gains = [r[a] - r[b] for r in rows if r.get(a) is not None and r.get(b) is not None]
        if gains:
            print(f"  {name:<34} {min(gains):8.3f} {max(gains):8.3f}")
    for key in ("seconds", "cpu_seconds"):
        values = [r[key] for r in rows]
        print(f"  {key:<34} {min(values):8.0f} {max(values):8.0f}")
    failed = [r for r in rows if r["exit"] != 0]
    print(f"{len(rows) - len(failed)} of {len(rows)} runs exited 0")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
