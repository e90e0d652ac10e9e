"""`voxforge generate asset --model MODEL --image IMG [--image IMG2 ...] --out DIR`: image(s) → 3D asset.

Runs both stages (`pipelines.image_to_3d.ImageTo3DPipeline`) and writes into DIR:

- `asset.ply`: the Gaussians, standard 3DGS layout (splat viewers; `load_ply` round-trips it);
- `asset.mp4`, `asset.gif`: a turntable (one orbit), `asset_preview.png` its first frame;
- `asset.glb`: a mesh (surface nets on the structure, coloured from the Gaussians);
- `structure.npz`: the occupied voxels; `generation.json`: inputs, sampler settings, seconds
  per stage.

MODEL is a model folder — the output of `voxforge pipeline run` (its `runs/ss_flow` and
`runs/slat_flow`) or any folder with `ss_flow/` and `slat_flow/` runs — or name the runs with
`--structure SS_FLOW_RUN --slat SLAT_FLOW_RUN`. Each flow run records the VAE it was trained
on. Several `--image`s are views of one object (`--mode stochastic` or `multidiffusion`).

MODEL may also be TRELLIS's own: a TRELLIS-image-large download (its `pipeline.json`) or the
folder `voxforge import trellis` made of one; `commands.generate_trellis` runs those, with
the sampler settings of the folder unless `--steps`/`--cfg` are given, and writes a
FlexiCubes mesh with a baked texture as `asset.glb`.

`voxforge generate --model ... --image ... --out ...` without a target runs this one
(`add_default_target`), so the short form of the issue works as written. The pipelines (and
torch) are imported by `run`, so `voxforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxforge.commands.sampler_options import (
    add_fallback_option,
    add_steps_and_guidance,
    fallback_message,
    preset_value,
)
from voxforge.errors import UserError
from voxforge.models.sampler_presets import SLAT_SAMPLER, STRUCTURE_SAMPLER

if TYPE_CHECKING:  # imported by the handler: torch loads only when a command runs
    from voxforge.flow import SamplerConfig

__all__ = ["add_default_target", "register", "run"]


def _add_options(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--model", required=False, metavar="MODEL", help="model folder (see `voxforge generate asset -h`)"
    )
    p.add_argument("--structure", metavar="SS_FLOW_RUN", help="ss_flow run (instead of --model)")
    p.add_argument("--slat", metavar="SLAT_FLOW_RUN", help="slat_flow run (instead of --model)")
    p.add_argument(
        "--image", required=required, action="append", metavar="IMG", help="condition image; repeat for views"
    )
    p.add_argument("--out", required=required, metavar="DIR", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--mode", choices=("stochastic", "multidiffusion"), default="stochastic", help="several images"
    )
    add_steps_and_guidance(p, STRUCTURE_SAMPLER, what="structure ", model_defaults=True)
    add_steps_and_guidance(p, SLAT_SAMPLER, prefix="slat-", what="SLat ", model_defaults=True)
    p.add_argument("--sampler", choices=("euler", "heun"), default=STRUCTURE_SAMPLER["method"])
    p.add_argument(
        "--formats", default="ply,mp4,gif,png,glb", help="comma-separated subset of ply,mp4,gif,png,glb"
    )
    p.add_argument("--frames", type=int, default=60, help="turntable frames (default 60)")
    p.add_argument("--size", type=int, default=256, help="turntable side in pixels (default 256)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--raw", action="store_true", help="raw weights instead of the EMA")
    add_fallback_option(p)
    p.add_argument(
        "--dinov2",
        metavar="PATH",
        help="TRELLIS models: DINOv2 weights (default: a dinov2_*.safetensors beside pipeline.json, the hub cache)",
    )
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="TRELLIS models: bf16 autocast for the networks (auto: where a matmul probe shows bf16 is clearly "
        "faster than fp32, as train.precision=auto)",
    )
    p.add_argument("--texture-size", type=int, default=1024, help="TRELLIS models: side of the .glb texture")
    p.add_argument(
        "--bake-views",
        type=int,
        default=24,
        help="TRELLIS models: renders of the Gaussians the texture is baked from (default 24; each is a "
        "full render, about a minute for 600k Gaussians on a 2-core CPU: use 6-8 there)",
    )
    p.add_argument(
        "--simplify",
        type=float,
        default=0.95,
        help="TRELLIS models: fraction of the mesh's faces removed before texturing (default 0.95, as TRELLIS)",
    )


def register(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser(
        "asset",
        help="image(s) -> 3D Gaussians (.ply), turntable (.mp4, .gif), mesh (.glb)",
        description="Run both stages on one or more images of an object and export the asset: Gaussians "
        "(.ply), turntable (.mp4, .gif, preview .png), mesh (.glb), structure (.npz) and generation.json.",
    )
    _add_options(p, required=True)
    p.set_defaults(func=run)


def add_default_target(parser: argparse.ArgumentParser) -> None:
    """Let `voxforge generate --model M --image I --out D` (no target) run `asset`."""
    _add_options(parser, required=False)

    def run_default(args: argparse.Namespace) -> int:
        if not args.image or not args.out:
            parser.print_help(sys.stderr)
            return 2
        return run(args)

    parser.set_defaults(func=run_default)


def run(args: argparse.Namespace) -> int:

    from voxforge.export import ExportConfig, export_asset
    from voxforge.models.conditioning import default_slat_sampler, default_structure_sampler
    from voxforge.pipelines.image_to_3d import EmptyStructureError, ImageTo3DPipeline
    from voxforge.train.distributed import resolve_device

    if args.model and _is_trellis_model(args.model):
        from voxforge.commands.generate_trellis import run_trellis

        return run_trellis(args)
    args.steps = preset_value(args.steps, STRUCTURE_SAMPLER, "steps")
    args.cfg = preset_value(args.cfg, STRUCTURE_SAMPLER, "cfg_scale")
    args.slat_steps = preset_value(args.slat_steps, SLAT_SAMPLER, "steps")
    args.slat_cfg = preset_value(args.slat_cfg, SLAT_SAMPLER, "cfg_scale")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    for bad, message in (
        (args.steps < 1 or args.slat_steps < 1, "--steps and --slat-steps must be >= 1"),
        (args.cfg < 0 or args.slat_cfg < 0, "--cfg and --slat-cfg must be >= 0"),
        (args.frames < 1 or args.size < 8, "--frames must be >= 1 and --size >= 8"),
        (args.fallback_voxels is not None and args.fallback_voxels < 0, "--fallback-voxels must be >= 0"),
        (
            not args.model and not (args.structure and args.slat),
            "pass --model, or both --structure and --slat",
        ),
    ):
        if bad:
            raise UserError(message)
    try:
        export = ExportConfig(
            formats=formats, frames=args.frames, size=args.size, gif_size=min(args.size, 160)
        )
    except Exception as err:  # ConfigValueError: unknown format
        raise UserError(f"--formats: {err}") from None
    start = time.perf_counter()
    device = resolve_device(args.device)
    if args.structure and args.slat:
        pipeline = ImageTo3DPipeline.from_runs(args.structure, args.slat, device=device, ema=not args.raw)
    else:
        pipeline = ImageTo3DPipeline.from_model_dir(args.model, device=device, ema=not args.raw)
    load_seconds = time.perf_counter() - start
    if args.fallback_voxels is not None:
        pipeline.structure.fallback_voxels = args.fallback_voxels
    images = pipeline.load_images(args.image)
    structure_sampler = default_structure_sampler(steps=args.steps, cfg_scale=args.cfg, method=args.sampler)
    slat_sampler = default_slat_sampler(steps=args.slat_steps, cfg_scale=args.slat_cfg, method=args.sampler)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    inputs = {
        "model": str(Path(args.model).resolve()) if args.model else None,
        "structure_run": str(Path(args.structure).resolve()) if args.structure else None,
        "slat_run": str(Path(args.slat).resolve()) if args.slat else None,
        "images": [str(Path(p).resolve()) for p in args.image],
        "mode": args.mode,
        "seed": args.seed,
        "structure_sampler": _sampler_dict(structure_sampler),
        "slat_sampler": _sampler_dict(slat_sampler),
    }
    try:
        result = pipeline.generate(
            images,
            seed=args.seed,
            structure_sampler=structure_sampler,
            slat_sampler=slat_sampler,
            mode=args.mode,
        )
    except EmptyStructureError as err:  # an outcome, not a crash: record it and write what exists
        return record_empty_structure(out, inputs, pipeline.resolution, args.image[0], err)
    if result.fallback:
        print(fallback_message(True, len(result.coords)), file=sys.stderr)
    export_start = time.perf_counter()
    paths = export_asset(
        result.gaussians, out, coords=result.coords, resolution=result.resolution, config=export, name="asset"
    )
    timings = {"load_models": load_seconds, **result.timings, "export": time.perf_counter() - export_start}
    return record_asset(out, inputs, result, paths, timings, device, extra={"fallback": result.fallback})


def record_empty_structure(
    out: Path, inputs: dict[str, Any], resolution: int, image: str, err: Exception
) -> int:
    """An empty sampled structure is an outcome: write the (empty) voxels and the record; exit 1."""
    import numpy as np

    from voxforge.representations.voxels import save_voxels

    save_voxels(out / "structure.npz", np.zeros((0, 3), np.int64), resolution)
    record = {**inputs, "status": "empty_structure", "voxels": 0, "files": ["structure.npz"]}
    (out / "generation.json").write_text(json.dumps(record, indent=1))
    print(f"voxforge generate: {image}: {err} (wrote {out}/structure.npz, generation.json)", file=sys.stderr)
    return 1


def record_asset(
    out: Path,
    inputs: dict[str, Any],
    result: Any,  # .coords [N, 3], .resolution, .gaussians
    paths: dict[str, Path],
    timings: dict[str, float],
    device: Any,
    *,
    extra: dict[str, Any] | None = None,
) -> int:
    """Write `structure.npz` and `generation.json` of a finished asset and print its summary line."""
    import numpy as np

    from voxforge.representations.voxels import save_voxels

    save_voxels(out / "structure.npz", np.asarray(result.coords), result.resolution)
    record = {
        **inputs,
        "status": "done",
        **(extra or {}),
        "resolution": result.resolution,
        "voxels": int(len(result.coords)),
        "gaussians": int(result.gaussians.num_gaussians),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "device": str(device),
        "files": sorted(p.name for p in paths.values()) + ["structure.npz"],
    }
    (out / "generation.json").write_text(json.dumps(record, indent=1))
    print(
        f"voxforge generate: {len(result.coords)} voxels, {result.gaussians.num_gaussians} Gaussians in "
        f"{sum(timings.values()):.1f} s -> {out} ({', '.join(record['files'] + ['generation.json'])})",
        file=sys.stderr,
    )
    return 0


def _is_trellis_model(model: str) -> bool:
    """A TRELLIS download (pipeline.json) or a folder `voxforge import trellis` wrote."""
    from voxforge.trellis.importer import is_imported_folder
    from voxforge.trellis.loading import is_trellis_folder

    return is_trellis_folder(model) or is_imported_folder(model)


def _sampler_dict(sampler: SamplerConfig) -> dict[str, Any]:
    return {
        k: getattr(sampler, k) for k in ("method", "steps", "cfg_scale", "guidance_interval", "time_shift")
    }
