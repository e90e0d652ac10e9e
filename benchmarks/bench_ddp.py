"""DDP scaling on CPU: 2 gloo processes against 1 at the same per-process batch.

Runs the `debug_regression` stage through `torchrun` (one thread per process, so the two
processes use the two cores) and reports samples/s and the scaling efficiency
samples/s(2 procs) / (2 x samples/s(1 proc)).

    python benchmarks/bench_ddp.py [--steps 200] [--width 1024] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(nproc: int, args: argparse.Namespace) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [
            f"model.width={args.width}",
            "model.depth=3",
            f"data.size={args.batch * nproc * 8}",
            "data.dim=256",
            f"train.batch_size={args.batch}",
            f"train.max_steps={args.steps}",
            f"train.log_every={args.steps // 4}",
            "train.progress=false",
            "train.tensorboard=false",
            "train.checkpoint_every=1000000000",
        ]
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "-m",
            "voxforge",
            "train",
            "debug_regression",
            "--out",
            tmp,
            *overrides,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, capture_output=True, text=True)
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows if "samples_per_s" in r][1:]
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    one = run(1, args)
    two = run(2, args)
    print(f"MLP width {args.width}, per-process batch {args.batch}, 1 thread per process, gloo")
    print(f"1 process : {one:10.1f} samples/s")
    print(f"2 processes: {two:10.1f} samples/s")
    print(f"speed-up {two / one:.2f}x; scaling efficiency {two / (2 * one):.0%}")


if __name__ == "__main__":
    main()
