"""`voxforge checkpoints RUN [--verify] [--json]`: list a run's committed checkpoints.

Each line carries a verification state. By default it is the cheap one (every file of the
manifest present with its committed size: catches truncation and missing files without
reading the weights); `--verify` hashes every file, and loads checkpoints of earlier
versions that have no checksums. Checkpoints that training moved aside are listed last.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoints", help="list the committed checkpoints of a run")
    p.add_argument("run", help="run directory")
    p.add_argument(
        "--verify", action="store_true", help="hash every file (and load old checkpoints without checksums)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def _state(ckpt, full: bool) -> tuple[str, str]:
    """(state, detail): state is ok | sizes-ok | unchecked | damaged."""
    from voxforge.train.checkpoint import CheckpointDamaged, load_checkpoint, verify_checkpoint

    try:
        has_manifest = verify_checkpoint(ckpt, full=full)
        if has_manifest:
            return ("ok", "sha256 verified") if full else ("sizes-ok", "sizes match the manifest")
        if not full:
            return "unchecked", "no checksums (earlier version); --verify loads it"
        load_checkpoint(ckpt, ema_rates=[float(k[4:]) for k in ckpt.weights if k.startswith("ema_")])
        return "ok", "loads (no checksums, earlier version)"
    except CheckpointDamaged as err:
        return "damaged", err.summary


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from voxforge.errors import UserError
    from voxforge.train.checkpoint import list_checkpoints, list_damaged

    if not Path(args.run).is_dir():
        raise UserError(f"{args.run}: run directory not found")
    ckpts = list_checkpoints(args.run)
    states = [_state(c, args.verify) for c in ckpts]
    moved = list_damaged(args.run)
    if args.json:
        listed = [{**c.to_json(), "state": s, "detail": d} for c, (s, d) in zip(ckpts, states, strict=True)]
        listed += [{"path": str(p), "state": "moved-aside", "detail": reason} for p, reason in moved]
        print(json.dumps(listed, indent=1))
        return 0
    if not ckpts:
        print(f"{args.run}: no committed checkpoints")
    for c, (state, detail) in zip(ckpts, states, strict=True):
        info = c.to_json()
        files = "  ".join(f"{k}={v}" for k, v in info["weights"].items())
        flag = f"  DAMAGED: {detail}" if state == "damaged" else f"  [{state}]"
        print(f"step {c.step:>8}  {info['time_iso']}  {files}{flag}")
    for path, reason in moved:
        print(f"moved aside: {path}  ({reason})")
    return 0
