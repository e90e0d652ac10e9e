"""`voxforge data videos | synth-videos`: captioned video datasets for the video family (docs/video.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(commands: argparse._SubParsersAction) -> None:
    """Add `videos` and `synth-videos` to the sub-commands of `voxforge data`."""
    videos = commands.add_parser(
        "videos",
        help="probe captioned videos into (resolution, frames) buckets for the video family (resumable)",
        description="Probe every video (mp4, mov, webm, mkv, gif; images are one-frame videos) of SRC (folders, "
        ".zip, .tar, .tar.gz) with PyAV, read its caption (a .txt beside it, or metadata.jsonl / metadata.csv "
        "with file_name and text), assign it a bucket of the bucket table and store its frames at that size in "
        "OUT/clips/<id>.npy. Failures go to OUT/manifest.jsonl; re-running skips finished clips. See docs/video.md.",
    )
    videos.add_argument("paths", nargs="+", metavar="SRC", help="source folders or archives, then OUT")
    videos.add_argument("out", metavar="OUT", help="output folder")
    videos.add_argument(
        "--buckets",
        default=None,
        help="bucket table: a YAML/JSON file or an inline mapping, e.g. '{\"256px\": {1: [1.0, 32], 33: [0.8, 8]}}' "
        "(resolution -> frames -> [probability, batch size]; default: 256px with 1, 17, 33, 65 frames)",
    )
    videos.add_argument(
        "--multiple", type=int, default=16, help="bucket sides are multiples of this (default 16)"
    )
    videos.add_argument(
        "--max-aspect", type=float, default=2.0, help="widest bucket aspect ratio (default 2)"
    )
    videos.add_argument(
        "--approx",
        type=float,
        default=0.8,
        help="a clip reaches resolution N when W*H >= approx*N^2 (default 0.8)",
    )
    videos.add_argument(
        "--frame-sampling",
        default="centre",
        choices=("centre", "start", "spread"),
        help="which T frames of a longer clip: a centred or leading window, or spread over it (default centre)",
    )
    videos.add_argument("--seed", type=int, default=0, help="seed of the bucket draws (default 0)")
    videos.add_argument("--max-frames", type=int, default=None, help="frame limit per file (default 20000)")
    videos.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="pixel limit per frame, checked before decoding (default 4096^2)",
    )
    videos.add_argument(
        "--max-bytes", type=int, default=None, help="file size limit in bytes (default 4 GiB)"
    )
    videos.add_argument("--workers", type=int, default=-1, help="worker processes (-1: auto, 0: none)")
    videos.add_argument(
        "--time-limit",
        type=float,
        default=600.0,
        help="seconds per file in a worker (0: unlimited; default 600)",
    )
    videos.add_argument("--retry-failed", action="store_true", help="process failed files again")
    videos.add_argument("--no-progress", action="store_true", help="no progress bar")
    videos.add_argument("--json", action="store_true", help="print the summary as JSON")
    videos.set_defaults(func=run_videos)

    synth = commands.add_parser(
        "synth-videos",
        help="write the built-in captioned moving-shapes dataset (.mp4 + metadata.jsonl + labels.json)",
        description='Write clips of one shape that moves, grows, shrinks or changes colour with exact captions ("a '
        'red circle moving left on a blue background") as .mp4 files, deterministic by seed, with their '
        "attributes in OUT/metadata.jsonl and OUT/labels.json; `voxforge data videos` reads the folder as it is.",
    )
    synth.add_argument("out", help="output folder")
    synth.add_argument("--num", type=int, default=64, help="number of clips (default 64)")
    synth.add_argument("--frames", type=int, default=16, help="frames per clip (default 16)")
    synth.add_argument("--size", type=int, default=32, help="frame side in pixels, even (default 32)")
    synth.add_argument("--fps", type=int, default=8, help="frames per second (default 8)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument(
        "--motions", default="", help="comma-separated subset of left,right,up,down,grow,shrink,colour"
    )
    synth.add_argument(
        "--shapes", default="", help="comma-separated subset of circle,square,triangle,star,cross"
    )
    synth.add_argument(
        "--colours",
        default="",
        help="comma-separated subset of red,green,blue,yellow,purple,orange,white,black",
    )
    synth.add_argument(
        "--backgrounds", default="", help="comma-separated subset of white,black,grey,blue,green,yellow"
    )
    synth.add_argument(
        "--scale", type=float, default=1.0, help="shape size: every radius times this (default 1)"
    )
    synth.add_argument("--codec", default="auto", choices=("auto", "h264", "mpeg4"), help="video codec")
    synth.set_defaults(func=run_synth_videos)


def bucket_table_argument(text: str) -> Any:
    """--buckets: a YAML/JSON file (the table, or a mapping with a `buckets` key) or an inline mapping."""
    import yaml

    from voxforge.config.core import load_yaml
    from voxforge.errors import UserError

    path = Path(text)
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        data: Any = load_yaml(path)
        where = str(path)
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"--buckets: neither a file nor a valid YAML/JSON mapping ({err})") from None
        where = "--buckets"
    if isinstance(data, dict) and set(data) == {"buckets"}:
        data = data["buckets"]
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of resolution -> {{frames: [probability, batch size]}}")
    return data


def run_videos(args: argparse.Namespace) -> int:
    from voxforge.config.core import from_dict
    from voxforge.data.videos import VideoPrepareConfig, prepare_videos

    values: dict[str, Any] = {
        "multiple": args.multiple,
        "max_aspect": args.max_aspect,
        "approx": args.approx,
        "frame_sampling": args.frame_sampling,
        "seed": args.seed,
        "workers": args.workers,
        "time_limit": args.time_limit if args.time_limit > 0 else None,
        "retry_failed": args.retry_failed,
        "progress": not args.no_progress,
    }
    if args.buckets:
        values["buckets"] = bucket_table_argument(args.buckets)
    limits = {
        key: value
        for key, value in (
            ("max_frames", args.max_frames),
            ("max_frame_pixels", args.max_pixels),
            ("max_file_bytes", args.max_bytes),
        )
        if value is not None
    }
    if limits:
        values["limits"] = limits
    config = from_dict(VideoPrepareConfig, values, source="command line")
    summary = prepare_videos(args.paths, args.out, config)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    run = summary["this_run"]
    print(
        f"{args.out}: {summary['count']} clips ready ({summary['videos']} videos, {summary['images']} images), "
        f"{summary['failed']} failed ({run['processed']} processed now, {run['skipped']} unchanged)"
    )
    for source in summary["sources"]:
        print(f"  {source['path']}: {source['done']} done, {source['failed']} failed")
    if summary["bucket_counts"]:
        print("  buckets: " + ", ".join(f"{k}: {v}" for k, v in summary["bucket_counts"].items()))
    for title, groups in (("failures", summary["failures"]), ("warnings", summary["warnings"])):
        if groups:
            ordered = sorted(groups.items(), key=lambda kv: -kv[1])
            print(f"  {title}: " + ", ".join(f"{k}: {v}" for k, v in ordered))
    for note in summary["notes"][:10]:
        print(f"  note: {note}")
    if summary["failed"] or summary["warnings"]:
        print(f"  details per file: {args.out}/manifest.jsonl")
    return 0


def run_synth_videos(args: argparse.Namespace) -> int:
    from voxforge.config.core import from_dict
    from voxforge.data.synth_videos import SynthVideosConfig, write_synth_videos

    values: dict[str, Any] = {
        "num": args.num,
        "frames": args.frames,
        "size": args.size,
        "fps": args.fps,
        "seed": args.seed,
        "codec": args.codec,
        "scale": args.scale,
    }
    for key in ("motions", "shapes", "colours", "backgrounds"):
        subset = [v.strip() for v in getattr(args, key).split(",") if v.strip()]
        if subset:
            values[key] = subset
    config = from_dict(SynthVideosConfig, values, source="command line")
    rows = write_synth_videos(args.out, config)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["motion"]] = counts.get(row["motion"], 0) + 1
    print(
        f"wrote {len(rows)} captioned clips ({config.frames} frames, {config.size}x{config.size}, {config.fps} fps) "
        f"to {args.out}; motions: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    )
    return 0
