"""`voxforge checkpoints RUN [--json]`: list a run's committed checkpoints."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoints", help="list the committed checkpoints of a run")
    p.add_argument("run", help="run directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from voxforge.errors import UserError
    from voxforge.train.checkpoint import list_checkpoints

    if not Path(args.run).is_dir():
        raise UserError(f"{args.run}: run directory not found")
    ckpts = list_checkpoints(args.run)
    if args.json:
        print(json.dumps([c.to_json() for c in ckpts], indent=1))
        return 0
    if not ckpts:
        print(f"{args.run}: no committed checkpoints")
        return 0
    for c in ckpts:
        info = c.to_json()
        files = "  ".join(f"{k}={v}" for k, v in info["weights"].items())
        print(f"step {c.step:>8}  {info['time_iso']}  {files}")
    return 0
