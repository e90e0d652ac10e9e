"""`voxforge encode --model VAE_RUN --data PREPARED --out LATENTS`: latents for the next stage.

The VAE run's stage picks the encoder (`voxforge.pipelines.encode`: `encode_ss_latents` for
an ss_vae run, `encode_slat_latents` for a slat_vae run), so one command serves both stages.
Every encoder takes `(vae_run, prepared, out, *, device, ema, log, **options)`, writes
`OUT/latents/<id>.npz` and `OUT/latents.json`, skips assets already encoded by the same
checkpoint, and returns a summary dict with `encoded`, `kept` and `total`.

The encoders (and torch) are imported inside `run`, so `voxforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys

from voxforge.errors import UserError


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
    from voxforge.pipelines.encode import encode_slat_latents, encode_ss_latents
    from voxforge.runs import Run
    from voxforge.train.distributed import resolve_device

    encoders = {"ss_vae": encode_ss_latents, "slat_vae": encode_slat_latents}
    stage = Run.open(args.model).stage
    if stage not in encoders:
        raise UserError(
            f"{args.model}: a '{stage}' run has no encoder; expected one of {', '.join(encoders)}"
        )
    encoder = encoders[stage]
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
