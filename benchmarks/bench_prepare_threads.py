"""`voxforge data prepare --workers N`: CPU threads per worker, oversubscribed against shared.

OpenMP (torch) and OpenBLAS (numpy) threads spin-wait for work. When every worker process
runs as many threads as the machine has cores -- what each process gets when nothing limits
it -- N workers run N x cores threads on `cores` cores and spend their time in each other's
barriers. `prepare` now gives each worker `cores // N` threads (processes x threads <=
cores; `--threads` or an explicit OMP_NUM_THREADS override it).

Both settings run here in the same session, each as a fresh `voxforge data prepare` process
on the same synthetic assets, alternating (oversubscribed, shared, oversubscribed, ...) so
that load from other jobs hits both alike; the best wall time of each is compared. The
outputs of the two settings are also compared byte for byte (threads change no result).

    python benchmarks/bench_prepare_threads.py [--num 8] [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def outputs(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not p.name.startswith("manifest")
    }


def run_prepare(src: Path, out: Path, args: argparse.Namespace, threads: int | None) -> float:
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "voxforge", "data", "prepare", str(src), str(out), "--no-progress"]
    command += ["--resolution", str(args.resolution), "--views", str(args.views)]
    command += ["--image-size", str(args.image_size), "--cond-views", str(args.cond_views)]
    command += ["--workers", str(args.workers)]
    if threads is not None:
        command += ["--threads", str(threads)]
    limits = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    env = {k: v for k, v in os.environ.items() if k not in limits}  # the command's own default
    began = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=8, help="synthetic assets")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting (best is kept)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--cond-views", type=int, default=2)
    args = parser.parse_args()

    from voxforge.data.synth import SynthConfig, write_dataset
    from voxforge.data.workers import threads_per_process, usable_cores

    cores = usable_cores()
    saved = os.environ.pop("OMP_NUM_THREADS", None)
    shared = threads_per_process(args.workers)
    if saved is not None:
        os.environ["OMP_NUM_THREADS"] = saved
    settings = {
        f"oversubscribed ({args.workers} workers x {cores} threads)": cores,
        f"shared, the default ({args.workers} workers x {shared} threads)": None,
    }
    print(f"CPU: {cpu_name()}, {cores} usable cores; load average {os.getloadavg()[0]:.1f}")
    print(
        f"{args.num} synthetic assets, --resolution {args.resolution} --views {args.views} "
        f"--image-size {args.image_size} --cond-views {args.cond_views} --workers {args.workers}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        root = Path(tmp)
        write_dataset(root / "src", SynthConfig(num=args.num, seed=0))
        times: dict[str, list[float]] = {name: [] for name in settings}
        files: dict[str, dict[str, bytes]] = {}
        for repeat in range(args.repeats):
            for name, threads in settings.items():
                out = root / "out"
                seconds = run_prepare(root / "src", out, args, threads)
                times[name].append(seconds)
                print(f"  run {repeat + 1} {name}: {seconds:.1f} s")
                files.setdefault(name, outputs(out))
                shutil.rmtree(out, ignore_errors=True)
        (slow, fast) = (min(times[name]) for name in settings)
        print()
        for name in settings:
            best = min(times[name])
            print(f"{name}: best {best:.1f} s, {args.num / best * 3600:.0f} assets/hour")
        print(f"throughput ratio, shared / oversubscribed: {slow / fast:.2f}x")
        first, second = files.values()
        same = first.keys() == second.keys() and all(first[k] == second[k] for k in first)
        print(f"outputs identical across the two settings ({len(first)} files): {same}")
        print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
