"""`voxforge pipeline run FILE [--out DIR] [key=value ...]`: every stage, skipping finished ones.

FILE is a pipeline YAML (or the name of a built-in one, e.g. `pipeline_tiny`); see
`voxforge.workflows.pipeline` for its layout and the steps. Re-running the same command
continues where it stopped: finished steps are skipped, a training run resumes from its
newest checkpoint. The output folder is then a model folder for
`voxforge generate --model DIR --image IMG --out OUT`.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run every stage (data -> SS-VAE -> SS-flow -> SLat-VAE -> SLat-flow); finished steps are skipped",
        description="Chain data preparation, training and encoding of both stages from one pipeline file.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    run_p = actions.add_parser("run", help="run (or continue) a pipeline file")
    run_p.add_argument("file", help="pipeline YAML, or a built-in pipeline name (pipeline_tiny)")
    run_p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="e.g. stages.slat_vae.train.max_steps=50"
    )
    run_p.add_argument("--out", help="output folder (default: the file's `out`)")
    run_p.add_argument("--no-progress", action="store_true", help="no progress bars")
    run_p.set_defaults(func=run)
    p.set_defaults(func=lambda args: p.print_help(sys.stderr) or 2)


def run(args: argparse.Namespace) -> int:
    from voxforge.errors import UserError
    from voxforge.workflows.pipeline import load_pipeline, run_pipeline
    from voxforge.workflows.report import write_report

    spec, source = load_pipeline(args.file, args.overrides)
    out = args.out or spec.out
    if not out:
        raise UserError(f"{source}: no output folder; pass --out DIR or set `out:` in the file")
    records = run_pipeline(
        spec,
        out,
        source=source,
        log=lambda message: print(f"voxforge pipeline: {message}", file=sys.stderr),
        progress=not args.no_progress,
    )
    done = sum(r.status == "done" for r in records)
    skipped = sum(r.status == "skipped" for r in records)
    print(
        f"voxforge pipeline: {done} steps run, {skipped} skipped; model folder {out} "
        f"(voxforge generate --model {out} --image IMG --out OUT)",
        file=sys.stderr,
    )
    evaluation = spec.evaluate
    if evaluation.image_to_3d or evaluation.examples or evaluation.checks:
        report = write_report(out)
        failed = [c.name for c in report.checks if not c.passed]
        print(
            f"voxforge pipeline: report {out}/report.md; checks "
            + (f"FAILED: {', '.join(failed)}" if failed else "passed"),
            file=sys.stderr,
        )
        return 1 if failed else 0
    return 0
