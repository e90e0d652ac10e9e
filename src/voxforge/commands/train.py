"""`voxforge train RECIPE --out RUN [key=value ...]` (also under torchrun).

The engine (and torch) is imported by the handler, so `voxforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

from voxforge.recipe import load_recipe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a stage from a recipe (re-run the same command to resume)",
        description="Train a stage from a YAML recipe. Re-running the same command resumes from the newest "
        "committed checkpoint in --out. Under torchrun, every process runs this command.",
    )
    p.add_argument("recipe", help="recipe YAML file, or the name of a built-in recipe (e.g. toy_flow)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4")
    p.add_argument("--out", required=True, help="run directory (created; resumed if it has checkpoints)")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="run at most N optimizer steps in this invocation, then checkpoint and exit",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from voxforge.train.distributed import shutdown_distributed
    from voxforge.train.engine import TrainingDiverged, train

    recipe = load_recipe(args.recipe, args.overrides)
    try:
        result = train(recipe, args.out, stop_after=args.stop_after, recipe_name=args.recipe)
    except TrainingDiverged as err:
        print(f"voxforge train: stopped: {err}", file=sys.stderr)
        shutdown_distributed()
        return 3
    shutdown_distributed()
    if os.environ.get("RANK", "0") != "0":
        return result.exit_code
    if result.reason == "already_complete":
        print(f"voxforge train: {args.out} is already complete at step {result.step}", file=sys.stderr)
    elif result.reason == "max_steps":
        print(
            f"voxforge train: finished {result.step} steps in {args.out} "
            f"({result.skipped_steps} non-finite steps skipped)",
            file=sys.stderr,
        )
    return result.exit_code
