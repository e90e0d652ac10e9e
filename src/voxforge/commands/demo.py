"""`voxforge demo [FAMILY] [--quick] [--seed N]`: a family's whole pipeline on built-in data, with a report.

A demo is a built-in pipeline recipe (`recipes/demo_<family>.yaml`, and `demo_<family>_quick.yaml`
for `--quick`) run by `voxforge.workflows.pipeline.run_pipeline` — the same code as
`voxforge pipeline run` — followed by `voxforge.workflows.report.write_report`, which writes
`report.md` and `report.json` from what the runs recorded. The families offered are the
demo recipes that exist; `3d` (image → 3D) is the default, so `voxforge demo` alone runs it.

`--seed N` drives the data (synthetic objects, condition cameras), every model's
initialisation and the evaluation noise. Re-running the same command resumes (finished
steps are skipped); the same folder with other settings is refused. The exit code says
whether the report's checks passed (0), failed (1), or the demo could not run (2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from voxforge.config.core import to_dict
from voxforge.errors import UserError
from voxforge.recipe import BUILTIN_RECIPES

TITLES = {
    "3d": "voxforge demo — image → 3D",
    "image": "voxforge demo — text → image",
    "video": "voxforge demo — text / image → video",
    "get3d": "voxforge demo — images → textured meshes (GET3D)",
}


def families() -> list[str]:
    """Families with a built-in demo recipe (`demo_<family>.yaml`)."""
    names = [path.stem for path in BUILTIN_RECIPES.glob("demo_*.yaml")]
    return sorted(
        n.removeprefix("demo_") for n in names if n.startswith("demo_") and not n.endswith("_quick")
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="a family's pipeline on built-in data with a report (default: image -> 3D)",
        description="End-to-end demo on built-in data, with a report. 3d: synth -> prepare -> SS-VAE -> "
        "encode -> SS-flow -> SLat-VAE -> SLat-flow -> held-out evaluation and exports (15-21 minutes on 2 "
        "CPU cores; --quick 2-3). image: captioned shapes -> autoencoder -> flow at two resolutions -> a "
        "LoRA that learns a held-back colour -> prompt accuracy by an offline judge, FID/KID in its "
        "features. video: captioned clips -> autoencoder A -> text -> video, then image -> video -> "
        "autoencoder B and the denoiser continued on it (the swap) -> prompt accuracy by an offline clip "
        "judge. get3d: meshes -> views -> a GET3D-style GAN -> COV / MMD and FID / KID against the untrained "
        "generator and the training set, textured .glb / .obj exports. "
        "Re-run the same command to resume after an interruption. "
        "Exit code 0: every check in the report passed; 1: a check failed; 2: the demo could not run.",
    )
    p.add_argument("family", nargs="?", default="3d", choices=families(), help="which family (default 3d)")
    p.add_argument("--out", default=None, help="output folder (default: the recipe's, e.g. runs/demo)")
    p.add_argument("--quick", action="store_true", help="a smaller, faster run for CI (about 2 minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, initialisation and sampling")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument(
        "--inception", metavar="PATH", help="image: local Inception weights, adds standard FID to the report"
    )
    p.add_argument("--clip", metavar="DIR", help="image: a local CLIPModel folder, adds CLIP score")
    p.set_defaults(func=run)


#: per family, the keys of its pipeline file that `--seed` sets
SEED_KEYS = {
    "3d": ("seed", "data.synth.seed", "data.prepare.seed", "stages.ss_flow.data.eval_seed"),
    "image": ("seed", "data.synth_images.seed"),
    "video": ("seed", "data.synth_videos.seed"),
    "get3d": ("seed", "data.synth.seed", "data.prepare.seed"),
}


def seed_overrides(seed: int, family: str = "3d") -> list[str]:
    return [f"{key}={seed}" for key in SEED_KEYS.get(family, ("seed",))]


def standard_overrides(args: argparse.Namespace) -> list[str]:
    """`--inception` / `--clip` as the image pipeline's `evaluate.standard` keys."""
    named = {"inception": getattr(args, "inception", None), "clip": getattr(args, "clip", None)}
    named = {key: value for key, value in named.items() if value}
    if named and args.family != "image":
        raise UserError(f"--{' --'.join(named)}: standard image metrics belong to `voxforge demo image`")
    for key, value in named.items():
        if not Path(value).exists():
            raise UserError(f"--{key} {value}: not found (local weights; nothing is downloaded)")
    return [f"evaluate.standard.{key}={value}" for key, value in named.items()]


def run(args: argparse.Namespace) -> int:
    from voxforge.workflows.get3d_pipeline import write_get3d_report
    from voxforge.workflows.image_report import write_image_report  # torch: lazily
    from voxforge.workflows.pipeline import PIPELINE_RECORD, load_pipeline, run_pipeline
    from voxforge.workflows.report import write_report
    from voxforge.workflows.video_report import write_video_report

    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    name = f"demo_{args.family}" + ("_quick" if args.quick else "")
    overrides = [*seed_overrides(args.seed, args.family), *standard_overrides(args), f"device={args.device}"]
    spec, source = load_pipeline(name, overrides)
    out = Path(args.out or (spec.out + (f"-seed{args.seed}" if args.seed else "")))
    record = out / PIPELINE_RECORD
    if record.is_file():
        previous = json.loads(record.read_text()).get("spec", {})
        current = to_dict(spec)
        if {k: v for k, v in previous.items() if k != "device"} != {
            k: v for k, v in current.items() if k != "device"
        }:
            raise UserError(f"{out} holds a demo with other settings; pass another --out")

    def log(message: str) -> None:
        print(f"voxforge demo: {message}", file=sys.stderr, flush=True)

    run_pipeline(spec, out, source=source, log=log, progress=False)
    title = TITLES.get(args.family, f"voxforge demo — {args.family}")
    writers = {"image": write_image_report, "video": write_video_report, "get3d": write_get3d_report}
    report = writers.get(getattr(spec, "kind", "3d"), write_report)(out, title)
    for check in report.checks:
        value = "missing" if check.value is None else f"{check.value:.3f}"
        log(
            f"check {check.name}: {value} (threshold {check.threshold:g}) {'pass' if check.passed else 'FAIL'}"
        )
    log(f"{'all checks passed' if report.passed else 'a check FAILED'}; report: {out / 'report.md'}")
    return 0 if report.passed else 1
