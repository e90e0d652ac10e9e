"""Windowed sparse attention against dense padded attention at TRELLIS token counts.

Tokens: the surface voxels of a 64³ grid — a thick spherical shell per sample, about 20k
occupied voxels each (TRELLIS's structured latents live on ~20k surface voxels of 64³), with
a different count per sample so the batch is genuinely variable-length.

Compared, forward only (one attention op, q/k/v given):
- windowed: `sparse_window_attention` with 8³ windows (TRELLIS's SLat VAE uses window 8),
  packed per window, SDPA with padding + key masks;
- dense padded: every sample's voxels padded to the longest sample, SDPA with a key mask
  (`sparse_full_attention`, i.e. what full attention over the voxels costs).
Each runs in its own process, so the peak resident memory (RSS growth over the set-up) is
its own; on CUDA the peak allocated memory is reported instead. Width is scaled down on CPU
(default 256 channels / 4 heads, head dim 64 as TRELLIS's 1024 / 16); pass --width 1024
--heads 16 on a GPU.

    python benchmarks/bench_sparse_attention.py [--tokens 20000] [--batch 2] [--width 256] [--heads 4]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time

import torch


def shell_batch(tokens: int, batch: int, resolution: int = 64, device: str = "cpu"):
    from voxforge.sparse import SparseTensor

    axis = torch.arange(resolution, dtype=torch.float32) + 0.5 - resolution / 2
    dist = torch.sqrt(sum(g**2 for g in torch.meshgrid(axis, axis, axis, indexing="ij")))
    coords = []
    for b in range(batch):
        target = int(tokens * (1 - 0.1 * b))  # samples of different sizes
        radius = resolution * 0.4
        # thickness that gives about `target` voxels: area 4 pi r^2 * thickness
        thickness = target / (4 * torch.pi * radius**2)
        mask = (dist - radius).abs() < thickness / 2
        ijk = torch.nonzero(mask)
        coords.append(torch.cat([torch.full((ijk.shape[0], 1), b), ijk], dim=1))
    coords = torch.cat(coords).int()
    return SparseTensor(coords, torch.zeros(coords.shape[0], 1), spatial_shape=(resolution,) * 3).to(device)


def _run(mode: str, args: argparse.Namespace, queue) -> None:  # type: ignore[no-untyped-def]
    from voxforge.sparse import sparse_full_attention, sparse_window_attention, window_partition

    torch.set_num_threads(args.threads)
    device = "cuda" if args.cuda else "cpu"
    dtype = torch.bfloat16 if args.cuda else torch.float32
    x = shell_batch(args.tokens, args.batch, device=device)
    head_dim = args.width // args.heads
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(x.num_points, args.heads, head_dim, generator=gen, device=device, dtype=dtype)
        for _ in range(3)
    )
    part = window_partition(x, args.window, 0)
    if args.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        if mode == "windowed":
            out = sparse_window_attention(q, k, v, part, backend=args.backend)
        else:
            out = sparse_full_attention(q, k, v, x.varlen, backend=args.backend)
        if args.cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        del out
    if args.cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    queue.put(
        (statistics.median(times), peak, x.seqlens.tolist(), part.layout.batch_size, part.layout.max_len)
    )


def run(mode: str, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(mode, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20000, help="voxels in the largest sample")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "flash_attn"])
    parser.add_argument("--cuda", action="store_true", help="run on CUDA in bf16 (peak = allocated memory)")
    args = parser.parse_args()
    where = "CUDA bf16" if args.cuda else f"CPU fp32, {args.threads} threads"
    print(
        f"torch {torch.__version__}, {where}, width {args.width} / {args.heads} heads, window {args.window}"
    )
    win_t, win_mem, seqlens, windows, max_window = run("windowed", args)
    full_t, full_mem, _, _, _ = run("dense", args)
    print(f"tokens per sample {seqlens} (64^3 shell), {windows} windows of at most {max_window} voxels")
    print(f"windowed attention      {win_t * 1e3:10.1f} ms   peak +{win_mem:8.1f} MiB")
    print(f"dense padded attention  {full_t * 1e3:10.1f} ms   peak +{full_mem:8.1f} MiB")
    print(
        f"ratio dense / windowed: time {full_t / win_t:.1f}x, peak memory {full_mem / max(win_mem, 1e-9):.1f}x"
    )


if __name__ == "__main__":
    main()
