"""CPU precision: bf16 autocast against fp32 for a transformer block's training step.

Measures, in the same run, the CPU's matmul peak in fp32 and bf16 (large square matmuls),
then forward+backward of a transformer block of a few hundred tokens in both precisions,
and prints the step-time ratio and the achieved TFLOP/s against each measured peak.
On CPUs with AMX, bf16 matmuls are several times faster than fp32.

    python benchmarks/bench_precision.py [--tokens 512] [--width 1024] [--batch 4]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN kernel selection)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul_peak(dtype: torch.dtype, n: int = 1024) -> float:
    # F.linear is the path nn.Linear takes (oneDNN for bf16), not the generic matmul kernel
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    seconds = timeit(lambda: torch.nn.functional.linear(a, b), 5)
    return 2 * n**3 / seconds / 1e12


def block_flops(batch: int, tokens: int, width: int) -> float:
    """Forward matmul FLOPs of one pre-norm block (attention + 4x MLP), times 3 for fwd+bwd."""
    linear = 2 * batch * tokens * (4 * width * width + 8 * width * width)
    attention = 2 * 2 * batch * tokens * tokens * width
    return 3 * (linear + attention)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    peak32, peak16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    layer = nn.TransformerEncoderLayer(
        args.width,
        nhead=args.width // 64,
        dim_feedforward=4 * args.width,
        batch_first=True,
        dropout=0.0,
        norm_first=True,
    )
    x = torch.randn(args.batch, args.tokens, args.width)

    def step(precision: str):
        def run():
            layer.zero_grad(set_to_none=True)
            if precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = layer(x)
            else:
                out = layer(x)
            out.float().pow(2).mean().backward()

        return run

    t32 = timeit(step("fp32"), args.repeats)
    t16 = timeit(step("bf16"), args.repeats)
    flops = block_flops(args.batch, args.tokens, args.width)
    print(
        f"threads {torch.get_num_threads()}; matmul peak: fp32 {peak32:.3f} TFLOP/s, bf16 {peak16:.3f} TFLOP/s "
        f"(bf16/fp32 {peak16 / peak32:.2f}x)"
    )
    print(f"transformer block width {args.width}, {args.tokens} tokens, batch {args.batch}, fwd+bwd:")
    print(
        f"  fp32: {t32 * 1000:8.1f} ms  {flops / t32 / 1e12:.3f} TFLOP/s  ({flops / t32 / 1e12 / peak32:.0%} of fp32 peak)"
    )
    print(
        f"  bf16: {t16 * 1000:8.1f} ms  {flops / t16 / 1e12:.3f} TFLOP/s  ({flops / t16 / 1e12 / peak16:.0%} of bf16 peak)"
    )
    print(f"bf16 autocast speed-up over fp32: {t32 / t16:.2f}x")
    print(
        f"CPU capability: {torch.backends.cpu.get_cpu_capability()} (bf16 is fast only with AMX / AVX512-BF16)"
    )


if __name__ == "__main__":
    main()
