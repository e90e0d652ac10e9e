"""Console entry point `voxforge`.

Thin by design: it builds the argument parser from the command modules listed in
`COMMANDS` and dispatches. Each command module exposes
`register(subparsers) -> None`, which adds its sub-parser and sets `func=...` through
`set_defaults`. Command modules import torch and friends inside their handlers, so
`voxforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys

from voxforge import __version__
from voxforge.commands import (
    app,
    checkpoints,
    config_cmd,
    data,
    demo,
    encode,
    generate,
    import_cmd,
    pipeline,
    runs_cmd,
    train,
)
from voxforge.errors import UserError

#: in the order `voxforge --help` lists them
COMMANDS = (train, runs_cmd, config_cmd, checkpoints, data, encode, generate, import_cmd, pipeline, demo, app)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxforge",
        description="Train and run generative models of 3D assets from your own meshes.",
    )
    parser.add_argument("--version", action="version", version=f"voxforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (key=value) may come after options: `train R --out RUN optim.lr=1e-3`.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all(
            "=" in e and not e.startswith("-") for e in extra
        ):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        result = args.func(args)
    except UserError as err:
        print(f"voxforge {args.command}: error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)
