"""Image → 3D latency of the tiny recipes on CPU, per stage, against one network call.

Stages timed (minimum wall time over `--repeats`, with the process CPU time of that run —
on a shared machine the CPU time with `--threads 1` is the better estimate of an idle
core's wall time): both image encoders, the structure flow sampler,
the structure decoder, the SLat flow sampler, the Gaussian decoder, and the exports (.ply,
turntable rendering, .mp4 + .gif encoding, .glb mesh). The baseline measured in the same run
is one forward call of each flow network on the same inputs, so every sampler line prints
`x calls`: its time divided by one call — about the number of network evaluations the
sampler makes (steps, doubled where guidance is on) if the sampler itself adds nothing.

Models: `--model DIR` times a trained model folder (`voxforge pipeline run` output, or a
demo's `runs`); without it, networks of the tiny recipes' sizes with random weights are
built (latency does not depend on the weights), and the SLat stage runs on the voxels of a
built-in synthetic object (`--object`), so its token count is a real asset's, not whatever
an untrained structure decoder emits.

    python benchmarks/bench_image_to_3d.py [--model DIR] [--steps 25] [--frames 60] [--size 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CPU_SECONDS: dict[float, float] = {}  # wall time of a measurement -> its process CPU time


def best_of(repeats: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Minimum wall time over `repeats` calls (and its CPU time, kept in CPU_SECONDS)."""
    best, best_cpu, out = float("inf"), 0.0, None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if wall < best:
            best, best_cpu = wall, cpu
    CPU_SECONDS[best] = best_cpu
    return best, out


def random_pipeline(resolution: int) -> Any:
    from voxforge.models.slat_flow import SLatFlowModel
    from voxforge.models.slat_vae import SLatVAE
    from voxforge.models.ss_flow import StructureFlowModel
    from voxforge.models.ss_vae import SSVAE
    from voxforge.pipelines.image_to_3d import ImageTo3DPipeline, SLatPipeline
    from voxforge.pipelines.structure import StructurePipeline
    from voxforge.recipe import load_recipe

    torch.manual_seed(0)
    ss_vae_r, ss_flow_r = load_recipe("ss_vae_tiny"), load_recipe("ss_flow_tiny")
    slat_vae_r, slat_flow_r = load_recipe("slat_vae_tiny"), load_recipe("slat_flow_tiny")
    for recipe in (ss_vae_r, slat_vae_r, slat_flow_r):
        assert recipe.model.resolution == resolution
    structure = StructurePipeline(
        StructureFlowModel(ss_flow_r.model, ss_flow_r.image_encoder),
        SSVAE(ss_vae_r.model),
        latent_mean=[0.0] * ss_flow_r.model.in_channels,
        latent_std=[1.0] * ss_flow_r.model.in_channels,
    )
    slat = SLatPipeline(
        SLatFlowModel(slat_flow_r.model, slat_flow_r.image_encoder), SLatVAE(slat_vae_r.model, 3)
    )
    return ImageTo3DPipeline(structure, slat)


def synth_voxels(index: int, resolution: int) -> np.ndarray:
    from voxforge.data.synth import make_object
    from voxforge.data.voxelize import voxelize

    _, mesh = make_object(0, index, 48)
    vertices, faces = mesh.normalized().merged()
    return voxelize(vertices, faces, resolution).astype(np.int64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="trained model folder (default: random tiny networks)")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument(
        "--object", type=int, default=6, help="synth object index for the SLat stage (6: table)"
    )
    parser.add_argument("--steps", type=int, default=25, help="sampler steps of both flows")
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from voxforge.export import export_ply
    from voxforge.export.mesh import mesh_from_structure, write_glb
    from voxforge.export.video import render_turntable, write_gif, write_mp4
    from voxforge.models.conditioning import default_slat_sampler, default_structure_sampler
    from voxforge.pipelines.image_to_3d import ImageTo3DPipeline

    pipeline = (
        ImageTo3DPipeline.from_model_dir(args.model) if args.model else random_pipeline(args.resolution)
    )
    structure, slat = pipeline.structure, pipeline.slat
    image = torch.rand(1, 3, pipeline.image_size, pipeline.image_size)
    ss_sampler = default_structure_sampler(steps=args.steps)
    slat_sampler = default_slat_sampler(steps=args.steps)
    times: dict[str, float] = {}
    with torch.no_grad():
        times["image encoders"], (tokens, slat_tokens) = best_of(
            args.repeats, lambda: (structure.image_tokens(image)[None], slat.image_tokens(image)[None])
        )
        times["structure flow"], latents = best_of(
            args.repeats, lambda: structure.sample_latents(tokens, seed=0, sampler=ss_sampler)
        )
        times["structure decode"], decoded = best_of(args.repeats, lambda: structure.decode(latents)[0])
        coords = decoded if args.model and len(decoded) else synth_voxels(args.object, args.resolution)
        times["SLat flow"], slat_latents = best_of(
            args.repeats, lambda: slat.sample_latents([coords], slat_tokens, seed=1, sampler=slat_sampler)
        )
        times["Gaussian decode"], gaussians = best_of(args.repeats, lambda: slat.decode(slat_latents)[0])
        # baseline: one call of each flow network on the same inputs
        cfg = structure.flow.cfg
        x = torch.randn(1, cfg.in_channels, cfg.resolution, cfg.resolution, cfg.resolution)
        t = torch.full((1,), 0.5)
        ss_call, _ = best_of(args.repeats + 1, lambda: structure.flow(x, t, context=tokens[:, 0]))
        template = slat._structure([coords])
        noise = torch.randn(template.num_points, slat.flow.cfg.in_channels)
        slat_call, _ = best_of(
            args.repeats + 1, lambda: slat.flow(template.replace(noise), t, context=slat_tokens[:, 0])
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        times["export .ply"], _ = best_of(args.repeats, lambda: export_ply(gaussians, out / "a.ply"))
        times["turntable render"], frames = best_of(
            1, lambda: render_turntable(gaussians, args.frames, size=args.size)
        )
        times["mp4 + gif"], _ = best_of(
            args.repeats, lambda: (write_mp4(frames, out / "a.mp4"), write_gif(frames, out / "a.gif"))
        )
        times["glb mesh"], _ = best_of(
            args.repeats,
            lambda: write_glb(mesh_from_structure(coords, args.resolution, gaussians), out / "a.glb"),
        )
    total = sum(times.values())
    total_cpu = sum(CPU_SECONDS[v] for v in times.values())
    calls = {"structure flow": ss_call, "SLat flow": slat_call}
    rows = []
    for name, seconds in times.items():
        ratio = f"{seconds / calls[name]:6.1f} x calls" if name in calls else ""
        cpu = CPU_SECONDS[seconds]
        rows.append(
            {"stage": name, "seconds": seconds, "cpu_seconds": cpu, "share": seconds / total, "ratio": ratio}
        )
    info = {
        "model": args.model or "random tiny networks",
        "voxels": int(len(coords)),
        "gaussians": int(gaussians.num_gaussians),
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "one_call_seconds": {"structure flow": ss_call, "SLat flow": slat_call},
        "total_seconds": total,
        "total_cpu_seconds": total_cpu,
    }
    if args.json:
        print(json.dumps({"rows": rows, **info}, indent=1))
        return
    print(
        f"image -> 3D, {info['model']}: {info['voxels']} voxels, {info['gaussians']} Gaussians, "
        f"{args.steps} sampler steps, {args.frames} frames at {args.size}², {info['threads']} threads"
    )
    print(
        f"baseline: one structure-flow call {ss_call * 1e3:.1f} ms, one SLat-flow call {slat_call * 1e3:.1f} ms"
    )
    print(f"  {'stage':<18} {'wall s':>8}  {'cpu s':>8}  {'share':>6}")
    for row in rows:
        print(
            f"  {row['stage']:<18} {row['seconds']:8.3f}  {row['cpu_seconds']:8.3f}  {100 * row['share']:5.1f} %  "
            f"{row['ratio']}"
        )
    print(f"  {'total':<18} {total:8.3f}  {total_cpu:8.3f}")


if __name__ == "__main__":
    main()
