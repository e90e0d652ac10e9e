"""Training steps per second of video_flow on clips (the frozen autoencoder every step) against
the same stage on a latent cache (`voxforge encode`, `data.latents`), in one run.

Setup (random weights, nothing downloaded): `--num` synthetic captioned clips of `--frames`
frames at `--size` px prepared into one bucket, an autoencoder of `--recipe`'s shape (default
video_ae_conv_tiny: the demos' autoencoder A, 4x4x4, 8 channels) saved as a diffusers folder,
the cache of its latents (`pipelines.video.cache_video_data`), and two VideoFlowStage objects of
the video_flow_tiny recipe (2x2 latent patches, as the demos) that differ only in
`data.latents`. A step is what the engine does per batch: read the batch (the stored clips, or
the shards), the stage's loss (which encodes the clips, or not), backward, an AdamW step. The
two modes alternate in rounds of `--steps` steps; the best round of each is reported (steps/s
of wall time, CPU seconds per step) with the ratios cached / uncached, and the cache's one-off
encode time; all rounds go to `bench_video_cache.json`. The round loop is bench_image_cache's (`compare_modes`).

    python benchmarks/bench_video_cache.py [--size 32] [--frames 9] [--num 64] [--batch 8]
        [--steps 10] [--rounds 3] [--threads 2] [--recipe video_ae_conv_tiny] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from bench_image_cache import compare_modes

from voxforge.config.core import from_dict
from voxforge.data.synth_videos import SynthVideosConfig, write_synth_videos
from voxforge.data.videos import VideoPrepareConfig, prepare_videos
from voxforge.models.video_ae import build_video_autoencoder
from voxforge.pipelines.video import cache_video_data, load_autoencoder
from voxforge.recipe import load_recipe
from voxforge.stages.video_flow import VideoFlowStage


def setup(out: Path, args: argparse.Namespace) -> tuple[Path, Path, Path, float]:
    clips = out / f"clips_{args.size}_{args.frames}"
    if not (clips / "dataset.json").is_file():
        src = out / f"src_{args.size}_{args.frames}"
        write_synth_videos(src, SynthVideosConfig(num=args.num, frames=args.frames, size=args.size, seed=0))
        buckets = {f"{args.size}px": {args.frames: [1.0, args.batch]}}
        config = from_dict(
            VideoPrepareConfig, {"buckets": buckets, "progress": False, "workers": 0}, source="bench"
        )
        prepare_videos([str(src)], clips, config)
    ae = out / f"autoencoder_{args.recipe}"
    if not (ae / "config.json").is_file():
        torch.manual_seed(0)
        build_video_autoencoder(load_recipe(args.recipe).model).save(ae)
    load_autoencoder(ae)  # diffusers' first import is not the cache's time
    cache = out / f"cache_{args.size}_{args.frames}_{args.recipe}"
    began = time.perf_counter()
    cache_video_data(clips, cache, autoencoder=ae, batch_size=16)
    return clips, ae, cache, time.perf_counter() - began


def make_stage(out: Path, name: str, clips: Path, ae: Path, patch: int, extra: list[str]):
    overrides = [
        f"data.path={clips}",
        f"data.autoencoder={ae}",
        "data.eval_clips=0",
        f"model.patch_size={patch}",
        "flow.p_image_cond=0.5",
        *extra,
    ]
    stage = VideoFlowStage(load_recipe("video_flow_tiny", overrides), out / name, torch.device("cpu"))
    model = stage.build_model()
    dataset = stage.build_dataset()
    sampler = stage.batch_sampler(dataset, 0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    return stage, model, dataset, sampler, optimizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--recipe", default="video_ae_conv_tiny", help="the video_ae recipe whose model to build"
    )
    parser.add_argument("--patch", type=int, default=2, help="the denoiser's model.patch_size")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_video_cache"))
    parser.add_argument("--quick", action="store_true", help="16 clips, 3 steps, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.num, args.batch, args.steps, args.rounds = 16, 4, 3, 2
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    clips, ae, cache, encode_s = setup(args.out, args)
    modes = {
        "uncached": make_stage(args.out, "uncached", clips, ae, args.patch, []),
        "cached": make_stage(args.out, "cached", clips, ae, args.patch, [f"data.latents={cache}"]),
    }
    timing = compare_modes(modes, args.rounds, args.steps)
    result = {
        **{
            k: getattr(args, k)
            for k in ("size", "frames", "num", "batch", "steps", "rounds", "threads", "recipe", "patch")
        },
        **timing,
        "cache_encode_s": encode_s,
    }
    (args.out / "bench_video_cache.json").write_text(json.dumps(result, indent=1))
    print(
        f"video_flow_tiny on {args.recipe} latents, {args.frames} frames at {args.size} px, batch {args.batch}, "
        f"{args.threads} threads (best of {args.rounds} x {args.steps} steps)"
    )
    best, best_cpu = timing["steps_per_s"], timing["cpu_s_per_step"]
    for name, what in (("uncached", "autoencoder per step"), ("cached", "data.latents")):
        print(f"  {name} ({what}): {best[name]:.3f} steps/s, {best_cpu[name]:.3f} CPU s/step")
    print(
        f"  ratio cached / uncached: {timing['cached_over_uncached']:.2f}x steps/s, "
        f"{timing['cpu_uncached_over_cached']:.2f}x less CPU per step"
    )
    print(f"  writing the cache took {encode_s:.1f} s for {args.num} clips")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
