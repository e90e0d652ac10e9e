"""CPU precision: bf16 autocast against fp32, and what `train.precision: auto` picks.

Measures, in the same run:
1. `--part block`: the CPU's matmul peak in fp32 and bf16 (large square matmuls), then
   forward+backward of a transformer block of a few hundred tokens in both precisions; prints
   the step-time ratio and the achieved TFLOP/s against each measured peak. On CPUs with AMX,
   bf16 matmuls are several times faster than fp32; with AVX2 only, bf16 is emulated and the
   bf16 block takes minutes (use `--part recipes` there).
2. `--part recipes`: what `auto` resolves to on this machine (the probe of
   `voxforge.train.precision`, and its one-time cost), then optimizer steps (forward through the
   stage's own loss, backward, AdamW) of every tiny recipe's model at the recipe's batch size,
   in fp32 and in the precision `auto` chose; prints ms/step and the fp32 / auto ratio.
   Batches are synthetic (random blobs in the recipe's grid, random views and latents of the
   recipe's shapes), so no prepared data is needed; the cost per step does not depend on the
   values. `--bf16` adds forced bf16 (what `auto` spares a CPU without native bf16).

    python benchmarks/bench_precision.py [--part all|block|recipes] [--tokens 512] [--width 1024]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from voxforge.recipe import load_recipe
from voxforge.render.cameras import intrinsics, look_at
from voxforge.stages import get_stage
from voxforge.train.precision import autocast, probe_precision

TINY_RECIPES = ("toy_flow", "ss_vae_tiny", "ss_flow_tiny", "slat_vae_tiny", "slat_flow_tiny")


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


def block_part(args: argparse.Namespace) -> None:
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


# --- the tiny recipes -------------------------------------------------------------------


def _blobs(batch: int, resolution: int, generator: torch.Generator) -> torch.Tensor:
    """A few random balls per item: occupancy [B, 1, R, R, R] of about a tenth of the grid."""
    axis = (torch.arange(resolution) + 0.5) / resolution - 0.5
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)  # [R, R, R, 3]
    out = torch.zeros(batch, 1, resolution, resolution, resolution)
    for b in range(batch):
        for _ in range(3):
            centre = (torch.rand(3, generator=generator) - 0.5) * 0.5
            radius = 0.12 + 0.1 * float(torch.rand((), generator=generator))
            out[b, 0] += ((grid - centre).norm(dim=-1) < radius).float()
    return out.clamp(max=1.0)


def _sparse_items(batch: int, resolution: int, channels: int, generator: torch.Generator) -> list[dict]:
    items = []
    for b, grid in enumerate(_blobs(batch, resolution, generator)):
        coords = grid[0].nonzero().int()  # [N, 3]
        items.append(
            {
                "id": f"a{b}",
                "coords": coords,
                "feats": torch.randn(len(coords), channels, generator=generator),
            }
        )
    return items


def _views(count: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:  # viewmats [V, 4, 4], Ks [V, 3, 3]
    yaw = np.linspace(0, 2 * np.pi, count, endpoint=False)
    eyes = 2.0 * np.stack([np.sin(yaw), np.full(count, 0.3), np.cos(yaw)], axis=1)
    K = np.repeat(intrinsics(40.0, size, size)[None], count, axis=0)
    return torch.from_numpy(look_at(eyes)).float(), torch.from_numpy(K).float()


def tiny_case(name: str, workdir: Path):
    """(recipe, stage, model, batch) for a tiny recipe: the stage's own model and loss, with a
    synthetic batch of the recipe's shapes."""
    generator = torch.Generator().manual_seed(0)
    overrides: list[str] = []
    if name == "slat_vae_tiny":
        overrides = ["model.in_channels=3"]  # rgb features; otherwise read from prepared data
    if name == "slat_flow_tiny":
        latents = workdir / "slat_latents"
        latents.mkdir(parents=True, exist_ok=True)
        manifest = {"kind": "slat", "latent_channels": 8, "resolution": 32, "mean": [0.0] * 8}
        manifest.update(std=[1.0] * 8, vae_run=str(workdir), prepared=str(workdir), ids=[])
        (latents / "latents.json").write_text(json.dumps(manifest))
        overrides = [f"data.latents={latents}"]
    recipe = load_recipe(name, overrides)
    stage = get_stage(recipe.stage)(recipe, workdir / name, torch.device("cpu"))
    bs = recipe.train.batch_size
    if name == "toy_flow":
        dataset = stage.build_dataset()
        return recipe, stage, stage.build_model(), stage.collate([dataset[i] for i in range(bs)])
    if name == "ss_vae_tiny":
        from voxforge.models.ss_vae import SSVAE  # build_model would read the prepared data

        return (
            recipe,
            stage,
            SSVAE(recipe.model),
            {"occupancy": _blobs(bs, recipe.model.resolution, generator)},
        )
    if name == "ss_flow_tiny":
        from voxforge.models.ss_flow import StructureFlowModel  # build_model would read the latents' manifest

        model = StructureFlowModel(recipe.model, recipe.image_encoder, context_dim=None)
        r, size = recipe.model.resolution, recipe.image_encoder.image_size
        batch = {
            "latent": torch.randn(bs, recipe.model.in_channels, r, r, r, generator=generator),
            "cond": torch.rand(bs, 3, size, size, generator=generator),
        }
        return recipe, stage, model, batch
    if name == "slat_vae_tiny":
        from voxforge.data.views import collate_views

        size, views = recipe.data.image_size, recipe.data.views_per_item
        viewmats, Ks = _views(views, size)
        items = _sparse_items(bs, recipe.model.resolution, 3, generator)
        for item in items:
            item.update(
                images=torch.rand(views, size, size, 4, generator=generator), viewmats=viewmats, Ks=Ks
            )
        return recipe, stage, stage.build_model(), collate_views(items)
    if name == "slat_flow_tiny":
        items = _sparse_items(bs, recipe.model.resolution, recipe.model.in_channels, generator)
        size = recipe.image_encoder.image_size
        for item in items:
            item["cond"] = torch.rand(3, size, size, generator=generator)
        return recipe, stage, stage.build_model(), stage.collate(items)
    raise ValueError(name)


def recipe_step(name: str, precision: str, workdir: Path):
    """One optimizer step of the tiny recipe (forward through the stage's loss under `precision`,
    backward, AdamW) as a callable, and the model's parameters in millions."""
    torch.manual_seed(0)
    recipe, stage, model, batch = tiny_case(name, workdir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device = torch.device("cpu")

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss, _ = stage.loss(model, batch)
        loss.float().backward()
        optimizer.step()

    return step, sum(p.numel() for p in model.parameters()) / 1e6


def interleaved_best(steps: dict[str, Any], rounds: int) -> dict[str, float]:
    """Best seconds per call of each step, timed in alternation (A B, B A, A B, ...) after one
    warm-up each, so a busy neighbour or a frequency change hits all of them alike."""
    for fn in steps.values():
        fn()
    best = dict.fromkeys(steps, float("inf"))
    for r in range(rounds):
        for label in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            fn = steps[label]
            start = time.perf_counter()
            fn()
            best[label] = min(best[label], time.perf_counter() - start)
    return best


def recipes_part(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    auto, reason, _ = probe_precision(torch.device("cpu"))
    probe_ms = (time.perf_counter() - start) * 1000
    print(
        f"train.precision=auto on this CPU -> {auto} ({reason}); probe took {probe_ms:.0f} ms, once per process"
    )
    labels = ["fp32", "auto"]
    print(
        f"{'recipe':16s} {'params':>8s} {'fp32 ms/step':>13s} {'auto ms/step':>13s} {'fp32/auto':>10s}",
        end="",
    )
    print(f" {'bf16 ms/step':>13s} {'fp32/bf16':>10s}" if args.bf16 else "")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.recipes:
            steps = {}
            for label in labels:
                steps[label], params = recipe_step(name, auto if label == "auto" else label, Path(tmp))
            best = interleaved_best(steps, args.steps)
            line = (
                f"{name:16s} {params:7.2f}M {best['fp32'] * 1000:13.1f} {best['auto'] * 1000:13.1f} "
                f"{best['fp32'] / best['auto']:9.2f}x"
            )
            if args.bf16:  # one step where bf16 is emulated: it can take minutes
                bf16_step, _ = recipe_step(name, "bf16", Path(tmp))
                bf16 = interleaved_best({"bf16": bf16_step}, args.steps if auto == "bf16" else 1)["bf16"]
                line += f" {bf16 * 1000:13.1f} {best['fp32'] / bf16:9.2f}x"
            print(line, flush=True)
    print(f"threads {torch.get_num_threads()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "block", "recipes"], default="all")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipes", nargs="+", default=list(TINY_RECIPES))
    parser.add_argument(
        "--steps", type=int, default=5, help="timed rounds (one step per precision) per recipe"
    )
    parser.add_argument("--bf16", action="store_true", help="also time forced bf16 (1 step where emulated)")
    args = parser.parse_args()
    if args.part in ("all", "recipes"):
        recipes_part(args)
    if args.part in ("all", "block"):
        block_part(args)


if __name__ == "__main__":
    main()
