"""Training steps per second of image_flow on images (autoencoder + text encoder every step)
against the same stage on a latent cache (`voxforge encode`, `data.latents`), in one run.

Setup (random weights, nothing downloaded): `--num` synthetic captioned images prepared at
`--size` px into one square bucket, a DC-AE of image_ae_tiny's shape (3 levels, 4x, 8 latent
channels) saved as a diffusers folder, the cache of its latents and of the builtin text
encoder's caption embeddings (`pipelines.image_cache.cache_image_data`), and two ImageFlowStage
objects of the image_flow_tiny recipe that differ only in `data.latents`. A step is what the
engine does per batch: read the batch (decode the PNGs, or read the shards), the stage's loss
(which encodes the images and captions, or not), backward, an AdamW step. The two modes
alternate in rounds of `--steps` steps; the best round of each is reported (steps/s of wall
time, and CPU seconds per step, which a busy machine disturbs less), with the ratios cached /
uncached, and the cache's one-off encode time; all rounds go to `bench_image_cache.json`.

    python benchmarks/bench_image_cache.py [--size 64] [--num 64] [--batch 8] [--steps 10]
        [--rounds 3] [--threads 2] [--out runs/bench_image_cache] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from voxforge.data.images import ImagePrepareConfig, prepare_images
from voxforge.data.synth_images import SynthImagesConfig, write_synth_images
from voxforge.models.image import ImageAEConfig, build_autoencoder, load_autoencoder
from voxforge.pipelines.image_cache import cache_image_data
from voxforge.recipe import load_recipe
from voxforge.stages.image_flow import ImageFlowStage


def setup(out: Path, size: int, num: int) -> tuple[Path, Path, Path, float]:
    images = out / f"images_{size}"
    if not (images / "dataset.json").is_file():
        write_synth_images(out / f"src_{size}", SynthImagesConfig(num=num, size=size, seed=0))
        config = ImagePrepareConfig(resolution=size, multiple=8, buckets="square", workers=0, progress=False)
        prepare_images([out / f"src_{size}"], images, config)
    ae = out / "autoencoder"
    if not (ae / "config.json").is_file():
        torch.manual_seed(0)
        build_autoencoder(ImageAEConfig()).save_pretrained(str(ae))
    recipe = load_recipe("image_flow_tiny")
    cache = out / f"cache_{size}"
    load_autoencoder(ae)  # diffusers' first import is not the cache's time
    began = time.perf_counter()
    cache_image_data(images, cache, autoencoder=ae, text_encoder=recipe.text_encoder, batch_size=16)
    return images, ae, cache, time.perf_counter() - began


def make_stage(out: Path, name: str, images: Path, ae: Path, size: int, batch: int, extra: list[str]):
    overrides = [
        f"data.path={images}",
        f"data.autoencoder={ae}",
        f"data.resolution={size}",
        "data.eval_images=0",
        f"train.batch_size={batch}",
        *extra,
    ]
    stage = ImageFlowStage(load_recipe("image_flow_tiny", overrides), out / name, torch.device("cpu"))
    model = stage.build_model()
    dataset = stage.build_dataset()
    sampler = stage.batch_sampler(dataset, batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return stage, model, dataset, sampler, optimizer


def run_round(parts, steps: int) -> tuple[float, float]:
    """(steps per second of wall time, CPU seconds per step: all threads, less sensitive to a busy machine)."""
    stage, model, dataset, sampler, optimizer = parts
    batches = iter(sampler)
    began, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        try:
            indices = next(batches)
        except StopIteration:
            batches = iter(sampler)
            indices = next(batches)
        batch = stage.collate([dataset[i] for i in indices])
        loss, _ = stage.loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - began), (time.process_time() - cpu) / steps


def compare_modes(modes: dict[str, tuple], rounds: int, steps: int) -> dict[str, Any]:
    """Rounds of `steps` steps of each mode ("uncached", "cached") in turn after a one-step
    warm-up (lazy loads, first allocations): the best round of each and the ratios."""
    for parts in modes.values():
        run_round(parts, 1)
    rates: dict[str, list[float]] = {name: [] for name in modes}
    cpu: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(rounds):
        for name, parts in modes.items():
            rate, cpu_s = run_round(parts, steps)
            rates[name].append(rate)
            cpu[name].append(cpu_s)
    best = {name: max(values) for name, values in rates.items()}
    best_cpu = {name: min(values) for name, values in cpu.items()}
    return {
        "steps_per_s": best,
        "all_rounds": rates,
        "cached_over_uncached": best["cached"] / best["uncached"],
        "cpu_s_per_step": best_cpu,
        "all_rounds_cpu": cpu,
        "cpu_uncached_over_cached": best_cpu["uncached"] / best_cpu["cached"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench_image_cache"))
    parser.add_argument("--quick", action="store_true", help="32 px, 16 images, 3 steps, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.size, args.num, args.batch, args.steps, args.rounds = 32, 16, 4, 3, 2
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    images, ae, cache, encode_s = setup(args.out, args.size, args.num)
    modes = {
        "uncached": make_stage(args.out, "uncached", images, ae, args.size, args.batch, []),
        "cached": make_stage(
            args.out, "cached", images, ae, args.size, args.batch, [f"data.latents={cache}"]
        ),
    }
    timing = compare_modes(modes, args.rounds, args.steps)
    result = {
        "size": args.size,
        "images": args.num,
        "batch": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "threads": args.threads,
        **timing,
        "cache_encode_s": encode_s,
    }
    (args.out / "bench_image_cache.json").write_text(json.dumps(result, indent=1))
    print(
        f"image_flow_tiny at {args.size} px, batch {args.batch}, {args.threads} threads (best of {args.rounds} x {args.steps} steps)"
    )
    best, best_cpu = timing["steps_per_s"], timing["cpu_s_per_step"]
    for name, what in (("uncached", "autoencoder + text encoder per step"), ("cached", "data.latents")):
        print(f"  {name} ({what}): {best[name]:.3f} steps/s, {best_cpu[name]:.2f} CPU s/step")
    print(
        f"  ratio cached / uncached: {timing['cached_over_uncached']:.2f}x steps/s, "
        f"{timing['cpu_uncached_over_cached']:.2f}x less CPU per step"
    )
    print(f"  writing the cache took {encode_s:.1f} s for {args.num} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
