"""`voxforge app [--model M ...] [--runs FOLDER ...] [--host H] [--port P] [--out DIR]`: the browser app.

A Gradio app (`voxforge.app`, the `app` extra) with a tab per model family that has a
model — image → 3D for `voxforge generate --model` folders (TRELLIS's released models
included: a TRELLIS-image-large download or its `voxforge import trellis` folder), text → image for image_flow runs
and diffusers Sana folders (LoRA runs under `--runs` are its LoRA choice) — and a runs tab
for the training runs under `--runs`. Every action is a named HTTP endpoint (docs/app.md).
It listens on 127.0.0.1 unless `--host` says otherwise and writes only into `--out`. Gradio
and torch are imported by the handler, so `voxforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from voxforge.errors import MissingDependencyError, UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app",
        help="a browser app (Gradio) for the models and runs: image -> 3D, text -> image, runs",
        description="Serve a Gradio app: one tab per model family given with --model or found under --runs, "
        "and a runs tab. Each action is also an HTTP endpoint (gradio_client; see docs/app.md).",
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="M",
        help="a model folder (image -> 3D: the --model of `voxforge generate`, TRELLIS's included; text -> image: an image_flow "
        "run or a diffusers Sana folder); repeat for more",
    )
    p.add_argument(
        "--runs",
        action="append",
        default=[],
        metavar="FOLDER",
        help="a folder of runs: its models join the tabs, its LoRA runs the LoRA choice, its runs the runs "
        "tab (default: the runs/ of each image -> 3D model); repeat for more",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--out", default="app_outputs", metavar="DIR", help="where every result goes (default ./app_outputs)"
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--frames", type=int, default=36, help="turntable frames of the 3D tab (default 36)")
    p.add_argument("--size", type=int, default=256, help="turntable side in pixels (default 256)")
    p.add_argument(
        "--texture-size",
        type=int,
        default=1024,
        help="TRELLIS models: side of the .glb texture (default 1024)",
    )
    p.add_argument(
        "--bake-views",
        type=int,
        default=24,
        help="TRELLIS models: renders of the Gaussians the texture is baked from (default 24; 6-8 on a small CPU)",
    )
    p.add_argument(
        "--simplify",
        type=float,
        default=0.95,
        help="TRELLIS models: fraction of the mesh's faces removed before texturing (default 0.95, as TRELLIS)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # read when gradio is imported: no analytics, and its cache inside --out from the start
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["GRADIO_TEMP_DIR"] = str(Path(args.out).resolve() / ".gradio")
    try:
        import gradio  # noqa: F401 - optional dependency (the `app` extra): say how to install it
    except ImportError:
        raise MissingDependencyError("gradio", "app", "voxforge app") from None
    from voxforge.app.server import AppConfig, serve

    if not 0 < args.port < 65536:
        raise UserError(f"--port must be in 1..65535, got {args.port}")
    if args.frames < 1 or args.size < 8:
        raise UserError("--frames must be >= 1 and --size >= 8")
    if args.texture_size < 16 or not 0 <= args.simplify < 1 or args.bake_views < 1:
        raise UserError("--texture-size must be >= 16, --simplify in [0, 1) and --bake-views >= 1")
    config = AppConfig(
        models=[Path(m) for m in args.model],
        runs=[Path(r) for r in args.runs],
        out=Path(args.out),
        host=args.host,
        port=args.port,
        device=args.device,
        frames=args.frames,
        size=args.size,
        texture_size=args.texture_size,
        bake_views=args.bake_views,
        simplify=args.simplify,
    )
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"voxforge app: warning: listening on {args.host}: anyone who can reach this machine can use the "
            "app (there is no login)",
            file=sys.stderr,
        )
    demo, url = serve(config)
    print(
        f"voxforge app: serving on {url} (results in {config.out.resolve()}); Ctrl-C stops", file=sys.stderr
    )
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
    return 0
