"""Structure flow transformer on CPU: training throughput in fp32 vs bf16, against the matmul peak,
and sampling latency per structure for the tiny recipe.

Measured in one run:
1. the CPU's matmul peak in fp32 and bf16 (square matmuls, best of repeats);
2. training steps (forward + backward + AdamW) of `SSFlowTransformer` at a base-size config
   (DiT-B: width 768, 12 blocks, 12 heads; 8³ latent tokens; 65 condition tokens), fp32 and
   bf16 autocast; FLOPs counted by `torch.utils.flop_counter` on one step; prints tokens/s,
   achieved TFLOP/s and its ratio to the measured peak of the same dtype, and bf16 / fp32;
3. sampling latency of one structure with the tiny recipes (ss_flow_tiny + ss_vae_tiny
   decoder, 25 Euler steps, guidance on t in [0.5, 1], random weights: the cost does not
   depend on them), at batch 1 and amortised over a batch of 16.

    python benchmarks/bench_dit.py [--width 768 --depth 12 --heads 12 --resolution 8 --batch 2]

On a CPU without native bf16 matmul (bf16 peak under a quarter of fp32, e.g. AVX2 only), a bf16
step of the base model would take many minutes: the base model is then measured in fp32 and
the bf16 / fp32 ratio at a small config (`--small-width/--small-depth`); `--force-bf16` insists.
"""

from __future__ import annotations

import argparse
import time

import torch

from voxforge.models.ss_flow import SSFlowConfig, SSFlowTransformer
from voxforge.recipe import load_recipe


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN kernel selection, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(dtype: torch.dtype, n: int, repeats: int) -> tuple[float, int]:  # FLOP/s, size used
    """Best square-matmul rate; the size shrinks (halving) while one product would take over 2 s,
    so a CPU without native bf16 (where bf16 runs at about 1 GFLOP/s) still finishes."""
    while n > 256:
        a = torch.randn(256, 256, dtype=dtype)
        start = time.perf_counter()
        a @ a
        estimate = (time.perf_counter() - start) * (n / 256) ** 3
        if estimate <= 2.0:
            break
        n //= 2
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / best_time(lambda: a @ b, repeats), n


def training_step(cfg: SSFlowConfig, batch: int, context_tokens: int, precision: str):
    torch.manual_seed(0)
    model = SSFlowTransformer(cfg, context_dim=cfg.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    r = cfg.resolution
    x = torch.randn(batch, cfg.in_channels, r, r, r)
    t = torch.rand(batch)
    context = torch.randn(batch, context_tokens, cfg.width)
    target = torch.randn_like(x)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            pred = model(x, t, context)
        loss = (pred.float() - target).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return model, step


def count_flops(step) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def sampling_latency(batch: int, steps: int, repeats: int) -> float:  # seconds per structure
    from voxforge.flow import make_noise, sample
    from voxforge.models.ss_flow import StructureFlowModel
    from voxforge.models.ss_vae import SSVAE

    flow_recipe, vae_recipe = load_recipe("ss_flow_tiny"), load_recipe("ss_vae_tiny")
    torch.manual_seed(0)
    flow = StructureFlowModel(flow_recipe.model, flow_recipe.image_encoder).eval()
    vae = SSVAE(vae_recipe.model).eval()
    cfg = flow_recipe.model
    images = torch.rand(batch, 3, flow_recipe.image_encoder.image_size, flow_recipe.image_encoder.image_size)

    @torch.no_grad()
    def run() -> None:
        context = flow.encode_images(images)
        null = torch.zeros_like(context)
        noise = make_noise((batch, cfg.in_channels, cfg.resolution, cfg.resolution, cfg.resolution), seed=0)
        latents = sample(
            lambda x, t, c: flow(x, t, context=c),
            noise,
            context,
            null,
            steps=steps,
            cfg_scale=3.0,
            guidance_interval=(0.5, 1.0),
            time_shift=3.0,
        )
        vae.decode(latents)

    return best_time(run, repeats) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=8, help="latent grid side (tokens = r^3 / p^3)")
    parser.add_argument("--patch", type=int, default=1)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--context-tokens", type=int, default=65)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--sample-steps", type=int, default=25)
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument(
        "--force-bf16", action="store_true", help="bf16 at base size even without native bf16"
    )
    parser.add_argument("--small-width", type=int, default=256)
    parser.add_argument("--small-depth", type=int, default=4)
    args = parser.parse_args()

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}",
        flush=True,
    )
    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks[name], n = matmul_peak(dtype, args.matmul_size, args.repeats)
        print(f"matmul peak {name}: {peaks[name] / 1e9:.2f} GFLOP/s ({n}^3)", flush=True)
    print(f"matmul peak bf16 / fp32: {peaks['bf16'] / peaks['fp32']:.3f}x", flush=True)

    base = SSFlowConfig(
        resolution=args.resolution,
        in_channels=8,
        patch_size=args.patch,
        width=args.width,
        depth=args.depth,
        heads=args.heads,
        attention_backend="torch",
    )
    configs = [("base", base, ("fp32", "bf16"))]
    native_bf16 = peaks["bf16"] >= 0.25 * peaks["fp32"]
    if not native_bf16 and not args.force_bf16:
        # No native bf16 matmul (no AVX512-BF16 / AMX): a bf16 step of the base model would take
        # many minutes. Measure fp32 at base size, and the fp32-vs-bf16 ratio at a small size.
        small = SSFlowConfig(
            **{
                **base.__dict__,
                "width": args.small_width,
                "depth": args.small_depth,
                "heads": max(1, args.small_width // 64),
            }
        )
        configs = [("base", base, ("fp32",)), ("small", small, ("fp32", "bf16"))]
        print(
            f"bf16 matmul is {peaks['fp32'] / peaks['bf16']:.0f}x slower than fp32 on this CPU: bf16 "
            f"training is measured at width {args.small_width}, depth {args.small_depth} "
            "(--force-bf16 measures it at base size)",
            flush=True,
        )
    for label, cfg, precisions in configs:
        tokens = args.batch * cfg.tokens
        results = {}
        for precision in precisions:
            model, step = training_step(cfg, args.batch, args.context_tokens, precision)
            flops = count_flops(step)
            repeats = args.repeats if precision == "fp32" or native_bf16 else 1
            seconds = best_time(step, repeats)
            results[precision] = seconds
            achieved = flops / seconds
            params = sum(p.numel() for p in model.parameters())
            print(
                f"train {label} (width {cfg.width}, depth {cfg.depth}) {precision}: {params / 1e6:.1f} M params, "
                f"{tokens} tokens/step, {seconds:.3f} s/step, {tokens / seconds:.1f} tokens/s, "
                f"{flops / 1e12:.4f} TFLOP/step, {achieved / 1e12:.4f} TFLOP/s "
                f"= {achieved / peaks[precision]:.1%} of the {precision} matmul peak",
                flush=True,
            )
        if len(results) == 2:
            print(f"train {label} bf16 / fp32 speed: {results['fp32'] / results['bf16']:.3f}x", flush=True)

    if not args.skip_sampling:
        one = sampling_latency(1, args.sample_steps, args.repeats)
        many = sampling_latency(16, args.sample_steps, max(1, args.repeats - 1))
        print(
            f"sampling (ss_flow_tiny + ss_vae_tiny decode, {args.sample_steps} steps): {one:.3f} s/structure at batch 1",
            flush=True,
        )
        print(
            f"sampling at batch 16: {many:.3f} s/structure ({one / many:.1f}x faster per structure)",
            flush=True,
        )


if __name__ == "__main__":
    main()
