"""`voxforge pipeline run FILE [--out DIR] [key=value ...]`: every stage, skipping finished ones.

FILE is a pipeline YAML (or the name of a built-in one, e.g. `pipeline_tiny`,
`pipeline_image_tiny`); see `voxforge.workflows.pipeline` for its layout and the steps
(`kind: image` files: `voxforge.workflows.image_pipeline`). Re-running the same command
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
        help="run every stage of a pipeline file (3D or image); finished steps are skipped",
        description="Chain data preparation, training, encoding and evaluation from one pipeline file: "
        "3D (data -> SS-VAE -> SS-flow -> SLat-VAE -> SLat-flow) or `kind: image` (images -> autoencoder "
        "-> flows -> LoRA -> evaluation -> report).",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    run_p = actions.add_parser("run", help="run (or continue) a pipeline file")
    run_p.add_argument(
        "file", help="pipeline YAML, or a built-in pipeline name (pipeline_tiny, pipeline_image_tiny)"
    )
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
    if getattr(spec, "kind", "3d") in ("image", "video"):
        return _image_summary(spec, out, done, skipped)
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


def _image_summary(spec, out: str, done: int, skipped: int) -> int:
    """An image or video pipeline wrote its report as its last step: say where, and exit by its checks."""
    from voxforge.workflows.image_report import build_image_report
    from voxforge.workflows.video_report import build_video_report

    last = list(spec.stages)[-1]
    print(
        f"voxforge pipeline: {done} steps run, {skipped} skipped; models in {out}/runs "
        f"(voxforge generate {spec.kind} --model {out}/runs/{last} --prompt TEXT --out OUT)",
        file=sys.stderr,
    )
    report = build_video_report(out) if spec.kind == "video" else build_image_report(out)
    failed = [c.name for c in report.checks if not c.passed]
    if report.checks:
        print(
            f"voxforge pipeline: report {out}/report.md; checks "
            + (f"FAILED: {', '.join(failed)}" if failed else "passed"),
            file=sys.stderr,
        )
    return 1 if failed else 0
