"""`voxforge generate TARGET ...`: inference from trained runs.

Parser scheme: the first positional argument names what to generate, each target being a
sub-command with its own options:

    voxforge generate structure --model FLOW_RUN --image IMG [--image IMG2 ...] --out DIR
    voxforge generate asset ...        (stage 2, image → 3D asset: `commands.generate_asset`)

A target's `register(targets)` adds its sub-parser and sets `func=`, exactly like a
top-level command module; `voxforge generate --model ...` without a target runs `asset`.
Sampler option defaults are TRELLIS's (`voxforge.models.sampler_presets`). Handlers import
torch and the pipelines when they run, so `voxforge --help` stays fast.

`generate structure` writes into DIR: `structure.npz` (occupied voxels `coords [N, 3]` in
the DESIGN grid plus `resolution`), the voxel boundary mesh as `structure.glb` and
`structure.ply`, `preview.png` (the condition images, then four views of the voxels), and
`generation.json` (inputs and sampler settings, for reproduction). Several `--image`s are
views of one object, combined by `--mode stochastic` (default) or `multidiffusion`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from voxforge.commands import generate_asset, generate_image, generate_mesh, generate_video
from voxforge.commands.sampler_options import add_fallback_option, add_steps_and_guidance, fallback_message
from voxforge.errors import UserError
from voxforge.models.sampler_presets import STRUCTURE_SAMPLER


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate from trained runs (structure: image(s) -> occupied voxels)",
        description="Generate with trained models. The first argument names the target.",
    )
    targets = p.add_subparsers(dest="target", metavar="TARGET")
    register_structure(targets)
    generate_asset.register(targets)
    generate_image.register(targets)
    generate_video.register(targets)
    generate_mesh.register(targets)
    generate_asset.add_default_target(p)  # `generate --model ...` = `generate asset ...`


def register_structure(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser(
        "structure",
        help="image(s) -> occupied voxels (.npz), voxel mesh (.glb, .ply) and a preview",
        description="Sample the sparse structure of an object from one or more images of it with a trained "
        "ss_flow run (and the ss_vae run it was trained on). Images: RGBA with a transparent background, or "
        "an object on a plain background, which is removed.",
    )
    p.add_argument("--model", required=True, metavar="FLOW_RUN", help="run folder of an ss_flow training")
    p.add_argument(
        "--image", required=True, action="append", metavar="IMG", help="condition image; repeat for views"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    preset = STRUCTURE_SAMPLER
    add_steps_and_guidance(p, preset)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mode", choices=("stochastic", "multidiffusion"), default="stochastic", help="several images"
    )
    p.add_argument("--sampler", choices=("euler", "heun"), default=preset["method"])
    p.add_argument(
        "--guidance-interval",
        type=float,
        nargs=2,
        default=preset["guidance_interval"],
        metavar=("LO", "HI"),
        help="guide only for t in [LO, HI] (default {} {})".format(*preset["guidance_interval"]),
    )
    p.add_argument(
        "--time-shift",
        type=float,
        default=preset["time_shift"],
        help="time-grid shift, > 1 spends more steps at high noise",
    )
    p.add_argument("--vae", metavar="VAE_RUN", help="ss_vae run (default: the one recorded by the flow run)")
    add_fallback_option(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    p.set_defaults(func=run_structure)


def run_structure(args: argparse.Namespace) -> int:
    import torch

    from voxforge.export.structure import write_structure_files
    from voxforge.flow import SamplerConfig
    from voxforge.pipelines.images import load_condition_image
    from voxforge.pipelines.structure import StructurePipeline
    from voxforge.train.distributed import resolve_device

    lo, hi = args.guidance_interval
    problems = [
        (args.steps < 1, f"--steps must be >= 1, got {args.steps}"),
        (args.cfg < 0, f"--cfg must be >= 0, got {args.cfg}"),
        (not 0 <= lo <= hi <= 1, f"--guidance-interval needs 0 <= LO <= HI <= 1, got {lo} {hi}"),
        (args.time_shift <= 0, f"--time-shift must be > 0, got {args.time_shift}"),
        (
            args.fallback_voxels is not None and args.fallback_voxels < 0,
            f"--fallback-voxels must be >= 0, got {args.fallback_voxels}",
        ),
    ]
    for bad, message in problems:
        if bad:
            raise UserError(message)
    sampler = SamplerConfig(
        method=args.sampler,
        steps=args.steps,
        cfg_scale=args.cfg,
        guidance_interval=(lo, hi),
        time_shift=args.time_shift,
    )
    start = time.perf_counter()
    device = resolve_device(args.device)
    pipeline = StructurePipeline.from_run(args.model, vae_run=args.vae, device=device, ema=not args.raw)
    if args.fallback_voxels is not None:
        pipeline.fallback_voxels = args.fallback_voxels
    images = torch.stack([load_condition_image(path, pipeline.image_size) for path in args.image])
    decoded = pipeline.generate_structure(images, seed=args.seed, sampler=sampler, mode=args.mode)
    coords = decoded.coords
    seconds = time.perf_counter() - start

    out = Path(args.out)
    resolution = pipeline.resolution
    written = write_structure_files(out, coords, resolution, images)
    if not len(coords):
        print("voxforge generate: warning: the sampled structure is empty; no mesh written", file=sys.stderr)
    elif decoded.fallback:
        print(fallback_message(True, len(coords)), file=sys.stderr)
    record = {
        "model": str(Path(args.model).resolve()),
        "images": [str(Path(p).resolve()) for p in args.image],
        "mode": args.mode,
        "seed": args.seed,
        "sampler": {
            k: getattr(sampler, k)
            for k in ("method", "steps", "cfg_scale", "guidance_interval", "time_shift")
        },
        "resolution": resolution,
        "voxels": int(len(coords)),
        "fallback": decoded.fallback,
        "seconds": round(seconds, 3),
        "device": str(device),
    }
    (out / "generation.json").write_text(json.dumps(record, indent=1))
    written.append("generation.json")
    print(
        f"voxforge generate: {len(coords)} voxels at {resolution}³ in {seconds:.1f} s -> {out} ({', '.join(written)})",
        file=sys.stderr,
    )
    return 0
