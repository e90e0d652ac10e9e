"""The autoencoder swap's throughput gain: tokens per clip and denoiser step time (forward +
backward + AdamW) on the latents of autoencoder A (HunyuanVideo-like, 4x8x8, 8 channels:
video_ae_tiny) and of autoencoder B (LTX-Video-like, 8x32x32, 128 channels: video_ae_dc_tiny),
at the same clip sizes, through video_flow_tiny's denoiser (width 96, depth 4, patch 1).

    python benchmarks/bench_video_swap.py                       # 32px/9, 64px/17, 128px/33, 256px/33
    python benchmarks/bench_video_swap.py --sizes 64:17 --repeats 5 --json runs/bench_video_swap.json

Random weights and latents (the step time does not depend on their values); one thread; the
denoiser only (the frozen encoder's cost is the autoencoders' own). Each step's CPU time
(`time.process_time`) is reported beside the wall time: on a shared machine the CPU time is the
fair number. Ratios are A / B: how many times fewer tokens and how many times faster a step is
after the swap.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from voxforge.models.video_dit import VideoDiT, VideoDiTConfig

AUTOENCODERS = {"A hunyuan 4x8x8": (8, 4, 8), "B ltx 8x32x32": (128, 8, 32)}  # channels, tc, sc
DENOISER = {"patch_size": 1, "width": 96, "depth": 4, "heads": 4}


def step_times(channels: int, latent: tuple[int, int, int], batch: int, repeats: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = VideoDiT(VideoDiTConfig(in_channels=channels, **DENOISER), context_dim=64)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, channels, *latent)
    context = torch.randn(batch, 16, 64)
    walls, cpus = [], []
    for i in range(repeats + 1):  # the first is a warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        loss = model(x, torch.rand(batch), context).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i:
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    return sorted(walls)[len(walls) // 2], sorted(cpus)[len(cpus) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", nargs="+", default=["32:9", "64:17", "128:33", "256:33"], help="SIDE:FRAMES"
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(
        f"{'clip':<10} {'autoencoder':<17} {'latent':<14} {'tokens':>7} {'step ms (CPU)':>14} {'wall ms':>8}"
    )
    for size in args.sizes:
        side, frames = (int(v) for v in size.split(":"))
        found = {}
        for name, (channels, tc, sc) in AUTOENCODERS.items():
            latent = (1 + (frames - 1) // tc, side // sc, side // sc)
            tokens = latent[0] * latent[1] * latent[2]
            wall, cpu = step_times(channels, latent, args.batch, args.repeats)
            found[name] = (tokens, cpu)
            rows.append({"clip": size, "autoencoder": name, "latent": [channels, *latent], "tokens": tokens,
                         "step_cpu_s": cpu, "step_wall_s": wall, "batch": args.batch})  # fmt: skip
            shape = "x".join(str(v) for v in (channels, *latent))
            print(
                f"{side}px/{frames:<5} {name:<17} {shape:<14} {tokens:>7} {cpu * 1e3:>14.1f} {wall * 1e3:>8.1f}"
            )
        (ta, ca), (tb, cb) = found.values()
        print(f"{'':<10} ratio A/B: tokens {ta / tb:.1f}x, step time {ca / cb:.1f}x", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
