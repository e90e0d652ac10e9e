"""`voxforge generate --model TRELLIS_DIR --image IMG --out DIR`: TRELLIS's released models.

Called by `generate asset` when MODEL is a TRELLIS-image-large download (`pipeline.json`)
or a folder written by `voxforge import trellis` (`model.json`). Writes into DIR:

- `asset.ply`: the Gaussians (3DGS layout), `asset.mp4`/`asset.gif`/`asset_preview.png`: a
  turntable of them;
- `asset.glb`: TRELLIS's kind of asset — the FlexiCubes mesh of the mesh decoder, simplified,
  UV-unwrapped and textured with colours baked from the Gaussians
  (`export.textured.textured_glb`); for a folder without a mesh decoder, the voxel mesh
  coloured from the Gaussians that every voxforge model writes
  (`pipelines.trellis_export`, which the app's image → 3D tab shares);
- `structure.npz` (the occupied voxels) and `generation.json` (inputs, sampler settings in
  TRELLIS's terms, seconds per stage).

Sampler settings are the folder's (`pipeline.json`) unless `--steps`, `--cfg`,
`--slat-steps`, `--slat-cfg` are given; `--cfg` is voxforge's guidance scale w, which is
TRELLIS's `cfg_strength` + 1. Everything is in voxforge's Y-up frame (`pipelines.trellis`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from voxforge.errors import UserError


def _overrides(steps: int | None, cfg: float | None) -> dict[str, Any]:
    from voxforge.pipelines.trellis_export import sampler_overrides

    if steps is not None and steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    if cfg is not None and cfg < 1:
        raise UserError(f"--cfg must be >= 1 for TRELLIS models (w = cfg_strength + 1), got {cfg}")
    return sampler_overrides(steps, cfg)


def run_trellis(args: argparse.Namespace) -> int:

    from voxforge.commands.generate_asset import record_asset, record_empty_structure
    from voxforge.export import ExportConfig
    from voxforge.pipelines.image_to_3d import EmptyStructureError
    from voxforge.pipelines.trellis import TrellisImageTo3D
    from voxforge.pipelines.trellis_export import GlbOptions, export_trellis_asset, sampler_record
    from voxforge.train.distributed import resolve_device
    from voxforge.train.precision import DTYPES, resolve_precision
    from voxforge.trellis.dinov2 import load_image

    if len(args.image) != 1:
        raise UserError(f"TRELLIS models take one --image here, got {len(args.image)}")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    try:
        export = ExportConfig(
            formats=[f for f in formats if f != "glb"],
            frames=args.frames,
            size=args.size,
            gif_size=min(args.size, 160),
        )
    except Exception as err:  # ConfigValueError: unknown format
        raise UserError(f"--formats: {err}") from None
    if args.texture_size < 16 or not 0 <= args.simplify < 1 or args.bake_views < 1:
        raise UserError("--texture-size must be >= 16, --simplify in [0, 1) and --bake-views >= 1")
    glb = GlbOptions(args.texture_size, args.simplify, args.bake_views) if "glb" in formats else None
    structure = _overrides(args.steps, args.cfg)
    slat = _overrides(args.slat_steps, args.slat_cfg)
    start = time.perf_counter()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)  # auto: the engine's bf16 matmul probe
    dtype = DTYPES[precision.resolved]
    pipeline = TrellisImageTo3D.from_folder(args.model, dinov2=args.dinov2, device=device, dtype=dtype)
    load_seconds = time.perf_counter() - start
    prepared = load_image(args.image[0])
    if prepared.note:
        print(f"voxforge generate: note: {prepared.note}", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = pipeline.models.config
    inputs = {
        "model": str(Path(args.model).resolve()),
        "image": str(Path(args.image[0]).resolve()),
        "seed": args.seed,
        "precision": precision.describe().removeprefix("train.precision="),
        "structure_sampler": sampler_record(config.structure_sampler, structure),
        "slat_sampler": sampler_record(config.slat_sampler, slat),
    }
    try:
        result = pipeline.generate(
            prepared.image[None],
            seed=args.seed,
            structure_params=structure,
            slat_params=slat,
            formats=("gaussian", "mesh") if "glb" in formats else ("gaussian",),
        )
    except EmptyStructureError as err:
        return record_empty_structure(out, inputs, pipeline.resolution, args.image[0], err)
    asset = export_trellis_asset(result, out, export, glb)
    for note in asset.notes:
        print(f"voxforge generate: note: {note}", file=sys.stderr)
    paths, glb_kind = asset.paths, asset.glb_kind
    timings = {"load_models": load_seconds, **result.timings, **asset.timings}
    mesh = (
        None
        if result.mesh is None
        else {"vertices": len(result.mesh.vertices), "faces": len(result.mesh.faces)}
    )
    return record_asset(out, inputs, result, paths, timings, device, extra={"mesh": mesh, "glb": glb_kind})
