"""`voxforge generate mesh --model RUN --seed S [--num N]`: textured meshes from a get3d run.

RUN is a run folder of `voxforge train get3d_*`; its G_ema (`runs.load_get3d`, `--raw`: G)
generates one mesh per seed S, S+1, ..., S+N-1 (each seed draws both codes, so a seed always
gives the same shape, whatever `--num`). Each is UV-unwrapped with xatlas and its texture
field baked into a `--texture-size` image (`voxforge.export.generated_mesh`). Writes into
`--out DIR`:

- `mesh_SSS.glb` (binary glTF, texture embedded) and `mesh_SSS.obj` + `.mtl` + `.png`, which
  trimesh and Blender open with the texture;
- with `--interpolate S2`: `interpolation_S_S2.mp4` and `.gif`, a turntable of `--frames`
  frames whose shape moves from seed S's codes to seed S2's;
- `generation.json`: the inputs, truncation, per-mesh faces and files, seconds.

Torch and the model are imported by `run`, so `voxforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from voxforge.errors import UserError

__all__ = ["register", "run"]


def register(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser(
        "mesh",
        help="textured meshes (.glb, .obj + .mtl + .png) from a get3d run; optional interpolation video",
        description="Generate textured meshes with a trained get3d run: one per seed S..S+N-1, UV-unwrapped "
        "(xatlas), the texture field baked into a PNG; .glb and .obj + .mtl + .png. --interpolate S2 adds a "
        "turntable (.mp4 + .gif) morphing from seed S to S2.",
    )
    p.add_argument("--model", required=True, metavar="RUN", help="run folder of a get3d training")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    p.add_argument("--num", type=int, default=1, help="meshes, seeds S..S+N-1 (default 1)")
    p.add_argument("--out", default="meshes", metavar="DIR", help="output folder (default meshes)")
    p.add_argument("--texture-size", type=int, default=512, help="texture side in texels (default 512)")
    p.add_argument("--truncation", type=float, default=1.0, help="truncation psi in (0, 1] (default 1: none)")
    p.add_argument("--interpolate", type=int, metavar="S2", help="also a turntable from seed S to seed S2")
    p.add_argument("--frames", type=int, default=48, help="frames of the interpolation (default 48)")
    p.add_argument("--size", type=int, default=256, help="interpolation video side in pixels (default 256)")
    p.add_argument("--fps", type=int, default=24, help="interpolation frame rate (default 24)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--raw", action="store_true", help="the raw generator instead of G_ema")
    p.set_defaults(func=run)


def _check(args: argparse.Namespace) -> None:
    for bad, message in (
        (args.seed < 0, f"--seed must be >= 0, got {args.seed}"),
        (args.num < 1, f"--num must be >= 1, got {args.num}"),
        (not 8 <= args.texture_size <= 8192, f"--texture-size must be in [8, 8192], got {args.texture_size}"),
        (not 0 < args.truncation <= 1, f"--truncation must be in (0, 1], got {args.truncation}"),
        (
            args.interpolate is not None and args.interpolate < 0,
            f"--interpolate must be >= 0, got {args.interpolate}",
        ),
        (args.frames < 2, f"--frames must be >= 2, got {args.frames}"),
        (not 16 <= args.size <= 2048, f"--size must be in [16, 2048], got {args.size}"),
        (not 1 <= args.fps <= 120, f"--fps must be in [1, 120], got {args.fps}"),
    ):
        if bad:
            raise UserError(message)
    if not Path(args.model).is_dir():
        raise UserError(f"--model {args.model}: not a folder (a run folder of `voxforge train get3d_tiny`)")


def run(args: argparse.Namespace) -> int:
    _check(args)
    from voxforge.export.video import write_gif, write_mp4
    from voxforge.runs import load_get3d
    from voxforge.train.distributed import resolve_device
    from voxforge.workflows.get3d_pipeline import export_samples, interpolation_frames

    start = time.perf_counter()
    device = resolve_device(args.device)
    generator = load_get3d(args.model, device, ema=not args.raw)
    loaded = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seed, args.seed + args.num))
    rows = export_samples(
        generator, seeds, out, texture_size=args.texture_size, truncation_psi=args.truncation, stem="mesh"
    )
    exported = time.perf_counter()
    video = []
    if args.interpolate is not None:
        frames = interpolation_frames(
            generator,
            args.seed,
            args.interpolate,
            args.frames,
            size=args.size,
            truncation_psi=args.truncation,
        )
        stem = out / f"interpolation_{args.seed}_{args.interpolate}"
        video = [write_mp4(frames, stem.with_suffix(".mp4"), fps=args.fps).name]
        video.append(write_gif(frames, stem.with_suffix(".gif"), fps=min(args.fps, 50)).name)
    done = time.perf_counter()
    record = {
        "model": str(Path(args.model).resolve()),
        "weights": "raw" if args.raw else "ema",
        "seeds": seeds,
        "truncation_psi": args.truncation,
        "texture_size": args.texture_size,
        "meshes": rows,
        "interpolation": {
            "to_seed": args.interpolate,
            "frames": args.frames,
            "size": args.size,
            "files": video,
        }
        if video
        else None,
        "seconds": {
            "load": round(loaded - start, 3),
            "export": round(exported - loaded, 3),
            "interpolation": round(done - exported, 3),
        },
        "device": str(device),
    }
    (out / "generation.json").write_text(json.dumps(record, indent=1))
    empty = [row["seed"] for row in rows if not row["files"]]
    print(
        f"voxforge generate: {len(rows) - len(empty)} textured meshes -> {out}"
        + (f" (empty, not written: seeds {empty})" if empty else "")
        + (f"; interpolation {', '.join(video)}" if video else ""),
        file=sys.stderr,
    )
    return 0
