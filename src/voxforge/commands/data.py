"""`voxforge data synth | prepare | status | images | synth-images`: build, prepare and inspect datasets."""

from __future__ import annotations

import argparse
import json
from typing import Any

from voxforge.commands import data_videos


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data",
        help="make, prepare and inspect datasets (synth, prepare, status, images, synth-images, videos, "
        "synth-videos)",
    )
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: data.print_help() or 0)

    synth = commands.add_parser(
        "synth",
        help="write the built-in procedural dataset (GLB files + labels.json)",
        description="Write procedurally made, coloured and textured objects as GLB, deterministic by seed, "
        "with class labels in OUT/labels.json.",
    )
    synth.add_argument("out", help="output folder")
    synth.add_argument("--num", type=int, default=32, help="number of objects (default 32)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.set_defaults(func=run_synth)

    prep = commands.add_parser(
        "prepare",
        help="turn a folder of meshes into a training-ready dataset (resumable, shardable)",
        description="Ingest, render, voxelize and extract features for every mesh in SRC (OBJ, GLB/GLTF, PLY, "
        "STL, OFF, zip archives). Re-running skips finished work; failures are recorded in OUT/manifest.sqlite "
        "(see `voxforge data status OUT`).",
    )
    prep.add_argument("src", help="folder of meshes (read only)")
    prep.add_argument("out", help="output folder")
    prep.add_argument("--resolution", type=int, default=64, help="voxel grid resolution (default 64)")
    prep.add_argument("--views", type=int, default=150, help="feature views per asset (default 150)")
    prep.add_argument(
        "--image-size", type=int, default=512, help="rendered image size in pixels (default 512)"
    )
    prep.add_argument("--cond-views", type=int, default=24, help="condition views per asset (default 24)")
    prep.add_argument("--features", default="rgb", choices=("rgb", "dinov2"), help="feature extractor")
    prep.add_argument("--feature-model", default=None, help="dinov2 weights: local directory or hub id")
    prep.add_argument("--renderer", default="auto", choices=("auto", "torch", "blender"))
    prep.add_argument("--device", default="cpu", help="torch device for render/voxelize/features (e.g. cuda)")
    prep.add_argument(
        "--workers", type=int, default=-1, help="worker processes (-1: half the cores, 0: none)"
    )
    prep.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads per worker (default: OMP_NUM_THREADS if set, else cores // workers)",
    )
    prep.add_argument("--rank", type=int, default=0, help="shard index of this machine (default 0)")
    prep.add_argument("--world-size", type=int, default=1, help="number of shards (default 1)")
    prep.add_argument("--time-limit", type=float, default=900.0, help="seconds per asset (default 900)")
    prep.add_argument("--seed", type=int, default=0, help="seed of the condition-view cameras")
    prep.add_argument(
        "--steps",
        default="ingest,views,cond,voxels,features",
        help="comma-separated subset of ingest,views,cond,voxels,features",
    )
    prep.add_argument("--retry-failed", action="store_true", help="run failed steps again")
    prep.add_argument(
        "--allow-missing-textures",
        action="store_true",
        help="also ingest assets whose texture cannot be decoded, untextured with a warning (missing "
        ".mtl and texture files always load with a default material and a warning)",
    )
    prep.add_argument("--max-faces", type=int, default=None, help="face limit per asset (default 2,000,000)")
    prep.add_argument("--no-progress", action="store_true", help="no progress bar")
    prep.add_argument("--json", action="store_true", help="print the final status as JSON")
    prep.set_defaults(func=run_prepare)

    status = commands.add_parser(
        "status",
        help="counts per step, failures and warnings grouped by reason",
        description="Summarize OUT/manifest*.sqlite: per-step counts, failures and warnings by reason, "
        "duplicates.",
    )
    status.add_argument("out", help="a folder written by `voxforge data prepare`")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--all", action="store_true", help="list every failure and warning, not only examples"
    )
    status.set_defaults(func=run_status)

    images = commands.add_parser(
        "images",
        help="validate captioned images into aspect buckets for the image family (resumable)",
        description="Validate every image of SRC (folders, .zip, .tar, .tar.gz), read its caption (a .txt beside "
        "it, or metadata.jsonl / metadata.csv with file_name and text) and its optional mask (<name>_mask.png or "
        "a mask column), and store it resized and centre-cropped to its aspect bucket in OUT/images/. Failures "
        "and warnings go to OUT/manifest.jsonl; re-running skips finished images. See docs/image.md.",
    )
    images.add_argument("paths", nargs="+", metavar="SRC", help="source folders or archives, then OUT")
    images.add_argument("out", metavar="OUT", help="output folder")
    images.add_argument(
        "--resolution", type=int, default=512, help="target side; buckets hold about its square"
    )
    images.add_argument(
        "--multiple", type=int, default=32, help="bucket sides are multiples of this (default 32)"
    )
    images.add_argument(
        "--max-aspect", type=float, default=2.0, help="widest bucket aspect ratio (default 2)"
    )
    images.add_argument("--buckets", default="aspect", choices=("aspect", "square"), help="bucket table")
    images.add_argument(
        "--weights", default=None, help="mixing weight per source, comma-separated (e.g. 1,0.3)"
    )
    images.add_argument(
        "--min-size", type=int, default=0, help="fail images whose shorter side is under this"
    )
    images.add_argument(
        "--small",
        default="warn",
        choices=("warn", "fail"),
        help="an image smaller than its bucket: upscale with a warning (default) or fail",
    )
    images.add_argument("--background", default="255,255,255", help="RGB behind transparent pixels")
    images.add_argument(
        "--max-pixels", type=int, default=None, help="declared pixel limit (decompression bombs)"
    )
    images.add_argument("--workers", type=int, default=-1, help="worker processes (-1: auto, 0: none)")
    images.add_argument("--retry-failed", action="store_true", help="process failed images again")
    images.add_argument("--no-progress", action="store_true", help="no progress bar")
    images.add_argument("--json", action="store_true", help="print the summary as JSON")
    images.set_defaults(func=run_images)

    synth_images = commands.add_parser(
        "synth-images",
        help="write the built-in captioned shapes dataset (PNG + metadata.jsonl)",
        description='Write images of shapes with exact captions ("two small red circles on the left, blue '
        'background") and their attributes in OUT/metadata.jsonl, deterministic by seed; `voxforge data images` '
        "reads the folder as it is.",
    )
    synth_images.add_argument("out", help="output folder")
    synth_images.add_argument("--num", type=int, default=256, help="number of images (default 256)")
    synth_images.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    synth_images.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth_images.add_argument(
        "--exclude-color", "--exclude-colour", default="", help="shape colours to hold back, comma-separated"
    )
    synth_images.add_argument(
        "--only-color", "--only-colour", default="", help="draw shapes only in these colours, comma-separated"
    )
    synth_images.set_defaults(func=run_synth_images)

    data_videos.register(commands)  # videos, synth-videos


def run_synth(args: argparse.Namespace) -> int:
    from voxforge.config.core import from_dict
    from voxforge.data.synth import SynthConfig, write_dataset

    config = from_dict(SynthConfig, {"num": args.num, "seed": args.seed}, source="command line")
    labels = write_dataset(args.out, config)
    counts: dict[str, int] = {}
    for item in labels["items"].values():
        counts[item["class"]] = counts.get(item["class"], 0) + 1
    print(f"wrote {config.num} objects to {args.out} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    return 0


def _numbers(text: str | None, key: str, kind: type) -> list[Any]:
    from voxforge.errors import UserError

    if not text:
        return []
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{key}: expected comma-separated numbers, got {text!r}") from None


def run_images(args: argparse.Namespace) -> int:
    from voxforge.config.core import from_dict
    from voxforge.data.images import ImagePrepareConfig, prepare_images

    values: dict[str, Any] = {
        "resolution": args.resolution,
        "multiple": args.multiple,
        "max_aspect": args.max_aspect,
        "buckets": args.buckets,
        "weights": _numbers(args.weights, "--weights", float),
        "min_size": args.min_size,
        "small": args.small,
        "background": _numbers(args.background, "--background", int),
        "workers": args.workers,
        "retry_failed": args.retry_failed,
        "progress": not args.no_progress,
    }
    if args.max_pixels is not None:
        values["limits"] = {"max_texture_pixels": args.max_pixels}
    config = from_dict(ImagePrepareConfig, values, source="command line")
    summary = prepare_images(args.paths, args.out, config)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    run = summary["this_run"]
    print(
        f"{args.out}: {summary['count']} images ready, {summary['failed']} failed "
        f"({run['processed']} processed now, {run['skipped']} unchanged)"
    )
    for source in summary["sources"]:
        print(
            f"  {source['path']}: {source['done']} done, {source['failed']} failed, weight {source['weight']:g}"
        )
    if summary["bucket_counts"]:
        print("  buckets: " + ", ".join(f"{k}: {v}" for k, v in summary["bucket_counts"].items()))
    for title, groups in (("failures", summary["failures"]), ("warnings", summary["warnings"])):
        if groups:
            print(
                f"  {title}: "
                + ", ".join(f"{k}: {v}" for k, v in sorted(groups.items(), key=lambda kv: -kv[1]))
            )
    for note in summary["notes"][:10]:
        print(f"  note: {note}")
    if summary["failed"] or summary["warnings"]:
        print(f"  details per file: {args.out}/manifest.jsonl")
    return 0


def run_synth_images(args: argparse.Namespace) -> int:
    from voxforge.config.core import from_dict
    from voxforge.data.synth_images import SynthImagesConfig, write_synth_images

    def names(text: str) -> list[str]:
        return [v.strip() for v in text.split(",") if v.strip()]

    values = {
        "num": args.num,
        "size": args.size,
        "seed": args.seed,
        "exclude_colours": names(args.exclude_color),
        "only_colours": names(args.only_color),
    }
    config = from_dict(SynthImagesConfig, values, source="command line")
    rows = write_synth_images(args.out, config)
    colours = sorted({row["colour"] for row in rows})
    print(
        f"wrote {len(rows)} captioned images ({config.size}x{config.size}) to {args.out}; colours: {', '.join(colours)}"
    )
    return 0


def run_prepare(args: argparse.Namespace) -> int:
    from voxforge.config.core import from_dict
    from voxforge.data.prepare import PrepareConfig, prepare

    values: dict[str, Any] = {
        "resolution": args.resolution,
        "views": args.views,
        "image_size": args.image_size,
        "cond_views": args.cond_views,
        "features": args.features,
        "feature_model": args.feature_model,
        "renderer": args.renderer,
        "device": args.device,
        "workers": args.workers,
        "threads": args.threads,
        "rank": args.rank,
        "world_size": args.world_size,
        "time_limit": args.time_limit if args.time_limit > 0 else None,
        "seed": args.seed,
        "steps": [s.strip() for s in args.steps.split(",") if s.strip()],
        "retry_failed": args.retry_failed,
        "allow_missing_textures": args.allow_missing_textures,
        "progress": not args.no_progress,
    }
    if args.max_faces is not None:
        values["limits"] = {"max_faces": args.max_faces}
    config = from_dict(PrepareConfig, values, source="command line")
    summary = prepare(args.src, args.out, config)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(format_status(summary))
    return 0


def run_status(args: argparse.Namespace) -> int:
    from pathlib import Path

    from voxforge.data.manifest import ManifestView, manifest_files
    from voxforge.errors import UserError

    if not manifest_files(Path(args.out)):
        raise UserError(
            f"{args.out} has no manifest*.sqlite; run `voxforge data prepare SRC {args.out}` first"
        )
    view = ManifestView(Path(args.out))
    summary = view.summary()
    if args.all:
        summary["failures_all"] = failures_list(view)
        summary["warnings_all"] = warnings_list(view)
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(
            format_status(
                summary, all_failures=summary.get("failures_all"), all_warnings=summary.get("warnings_all")
            )
        )
    return 0


def _source_names(view: Any) -> dict[str, str]:
    """Asset id -> the first source with that content."""
    by_id: dict[str, str] = {}
    for record in view.sources.values():
        if record["id"] and record["duplicate_of"] is None:
            by_id.setdefault(record["id"], record["source"])
    return by_id


def failures_list(view: Any) -> list[dict[str, Any]]:
    by_id = _source_names(view)
    rows = [
        {"source": r["source"], "step": "discover", "reason": r["reason"], "error": r["error"]}
        for r in view.sources.values()
        if r["reason"]
    ]
    for asset_id, steps in view.steps.items():
        for step, record in steps.items():
            if record["status"] == "failed":
                rows.append(
                    {
                        "source": by_id.get(asset_id, asset_id),
                        "step": step,
                        "reason": record["reason"],
                        "error": record["error"],
                    }
                )
    return sorted(rows, key=lambda r: (r["reason"] or "", r["source"]))


def warnings_list(view: Any) -> list[dict[str, Any]]:
    by_id = _source_names(view)
    rows = []
    for asset_id, steps in view.steps.items():
        for step, record in steps.items():
            if record["status"] == "failed":
                continue
            for reason, message in zip(record["warning_reasons"], record["warnings"]):
                rows.append(
                    {
                        "source": by_id.get(asset_id, asset_id),
                        "step": step,
                        "reason": reason,
                        "warning": message,
                    }
                )
    return sorted(rows, key=lambda r: (r["reason"], r["source"], r["step"]))


def format_status(
    summary: dict[str, Any],
    all_failures: list[dict[str, Any]] | None = None,
    all_warnings: list[dict[str, Any]] | None = None,
) -> str:
    lines = [
        f"{summary['root']}: {summary['sources']} sources, {summary['assets']} unique assets, "
        f"{len(summary['duplicates'])} duplicates"
    ]
    if summary["steps"]:
        width = max(len(s) for s in summary["steps"])
        lines.append("steps:")
        for step, counts in summary["steps"].items():
            lines.append(
                f"  {step:<{width}}  done {counts.get('done', 0):>6}  failed {counts.get('failed', 0):>6}"
            )
    _by_reason(lines, "failures by reason:", "all failures:", summary["failures"], all_failures, "error")
    heading = f"warnings by reason ({summary.get('warned_assets', 0)} assets, used as they are):"
    _by_reason(lines, heading, "all warnings:", summary.get("warnings") or {}, all_warnings, "warning")
    for dup in summary["duplicates"][:10]:
        lines.append(f"  duplicate: {dup['source']} = {dup['duplicate_of']}")
    if len(summary["duplicates"]) > 10:
        lines.append(f"  ... {len(summary['duplicates']) - 10} more duplicates")
    return "\n".join(lines)


def _by_reason(
    lines: list[str],
    heading: str,
    all_heading: str,
    groups: dict[str, Any],
    every: list[dict[str, Any]] | None,
    text: str,  # the row field with the message: "error" or "warning"
) -> None:
    """Grouped failures or warnings (3 examples each), or every row when `every` is given."""
    if groups:
        lines.append(heading)
        for reason, group in groups.items():
            steps = ", ".join(f"{k}: {v}" for k, v in group["steps"].items())
            lines.append(f"  {reason}: {group['count']} ({steps})")
            if every is None:
                for example in group["examples"][:3]:
                    lines.append(f"    {example['source']}: {example[text]}")
    if every:
        lines.append(all_heading)
        for row in every:
            lines.append(f"  [{row['reason']}] {row['source']} ({row['step']}): {row[text]}")
