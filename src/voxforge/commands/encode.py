"""`voxforge encode --model VAE_RUN --data PREPARED --out LATENTS`: latents for the next stage.

The VAE run's stage picks the encoder (`ENCODERS`: stage name → "module:function"), so one
command serves the structure VAE (stage 1) and the SLat VAE (stage 2). Every encoder takes
`(vae_run, prepared, out, *, device, ema, log, **options)`, writes `OUT/latents/<id>.npz` and
`OUT/latents.json`, skips assets already encoded by the same checkpoint, and returns a
summary dict with `encoded`, `kept` and `total`.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
from pathlib import Path

ENCODERS = {
    "ss_vae": "voxforge.pipelines.structure:encode_dataset",
    "slat_vae": "voxforge.pipelines.encode_slat:encode_slat_dataset",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode",
        help="encode a prepared dataset with a trained VAE (latents for the flow stage)",
        description="Write the latents of every prepared asset with the newest checkpoint of a VAE run. "
        "Re-running skips assets already encoded by the same checkpoint.",
    )
    p.add_argument(
        "--model", required=True, metavar="VAE_RUN", help="run folder of `voxforge train` (ss_vae, slat_vae)"
    )
    p.add_argument(
        "--data", required=True, metavar="PREPARED", help="folder written by `voxforge data prepare`"
    )
    p.add_argument("--out", required=True, metavar="LATENTS", help="output folder (latents.json + latents/)")
    p.add_argument("--batch-size", type=int, default=16, help="assets per forward pass (dense encoders)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from voxforge.config.recipe import load_recipe
    from voxforge.errors import UserError
    from voxforge.train.distributed import resolve_device

    config = Path(args.model) / "config.yaml"
    if not config.is_file():
        raise UserError(f"{args.model}: not a training run ({config} not found)")
    stage = load_recipe(config).stage
    target = ENCODERS.get(stage)
    if target is None:
        raise UserError(
            f"{args.model}: a '{stage}' run has no encoder; expected one of {', '.join(ENCODERS)}"
        )
    module_name, function_name = target.split(":")
    try:
        encoder = getattr(importlib.import_module(module_name), function_name)
    except ModuleNotFoundError:
        raise UserError(
            f"encoding '{stage}' runs is not available in this installation ({module_name})"
        ) from None
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    options = {"batch_size": args.batch_size} if "batch_size" in inspect.signature(encoder).parameters else {}
    summary = encoder(
        args.model,
        args.data,
        args.out,
        device=resolve_device(args.device),
        ema=not args.raw,
        log=lambda message: print(f"voxforge encode: {message}", file=sys.stderr),
        **options,
    )
    if args.json:
        print(json.dumps(summary, indent=1, default=str))
    else:
        print(
            f"voxforge encode: {summary['total']} assets in {args.out} "
            f"({summary['encoded']} encoded now, {summary['kept']} kept)",
            file=sys.stderr,
        )
    return 0
