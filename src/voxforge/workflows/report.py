"""The report of a pipeline run: `report.md` + `report.json`, and the checks it met.

Everything here is read back from what the steps recorded (`OUT/pipeline.json`, each run's
`final_metrics.json`, `runs/ss_flow/eval_generation.json`, `OUT/eval/image_to_3d.json`,
`OUT/examples/*/generation.json`), so the report can be rewritten at any time and says
nothing the runs did not measure.

Checks (`evaluate.checks` in the pipeline file: name -> threshold) are what a demo's exit
code means; the report lists each with its value, threshold and outcome:

| check | value | passes when |
| --- | --- | --- |
| `ss_vae_iou` | SS-VAE held-out reconstruction IoU | value >= threshold |
| `generation_iou` | held-out generation IoU (conditional, yaw-aligned) | value >= threshold |
| `conditional_gain` | yaw-aligned IoU, conditional minus unconditional (same noise) | value >= threshold |
| `slat_vae_psnr` | SLat-VAE PSNR on held-out views of training assets (dB) | value >= threshold |
| `image_to_3d_psnr` | image → 3D PSNR on held-out assets (dB) | value >= threshold |
| `structures_decoded` | fraction of generated structures with a voxel above 0.5 (no top-k fallback) | value >= threshold |
| `exports` | fraction of example files that exist | value >= threshold |

A check whose inputs are missing (its step did not run) fails with the value `null`. Scoring
the checks, their table, the steps table and writing the two files are the pieces every
family's report shares (`workflows.report_parts`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxforge.errors import ConfigError
from voxforge.workflows.report_parts import (
    CheckResult,
    Report,
    checks_record,
    checks_table,
    number,
    read_json,
    save_report,
    score_checks,
    steps_table,
)

__all__ = ["CHECKS", "CheckResult", "Report", "build_report", "write_report"]

NAN = float("nan")


def _eval(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_")}


@dataclass
class Inputs:
    """Everything the report reads, loaded once."""

    out: Path
    pipeline: dict[str, Any]
    ss_vae: dict[str, Any]
    generation: dict[str, Any]
    slat_vae: dict[str, Any]
    image_to_3d: dict[str, Any]
    examples: dict[str, dict[str, Any]]

    @classmethod
    def load(cls, out: Path) -> Inputs:
        runs = out / "runs"
        examples = {
            path.parent.name: json.loads(path.read_text())
            for path in sorted((out / "examples").glob("*/generation.json"))
        }
        return cls(
            out=out,
            pipeline=read_json(out / "pipeline.json"),
            ss_vae=_eval(read_json(runs / "ss_vae" / "final_metrics.json")),
            generation=read_json(runs / "ss_flow" / "eval_generation.json"),
            slat_vae=_eval(read_json(runs / "slat_vae" / "final_metrics.json")),
            image_to_3d=read_json(out / "eval" / "image_to_3d.json"),
            examples=examples,
        )


def _decoded(inputs: Inputs) -> float | None:
    flags = [bool(e.get("fallback")) for e in inputs.examples.values()]
    flags += [bool(a.get("fallback")) for a in inputs.image_to_3d.get("per_asset", [])]
    flags += list(inputs.generation.get("fallbacks", []))
    return None if not flags else 1.0 - sum(flags) / len(flags)


def _exports(inputs: Inputs) -> float | None:
    files = [(name, f) for name, e in inputs.examples.items() for f in e.get("files", [])]
    if not files:
        return None
    return sum((inputs.out / "examples" / name / f).is_file() for name, f in files) / len(files)


def _gain(inputs: Inputs) -> float | None:
    g = inputs.generation
    if "yaw_iou" not in g:
        return None
    return float(g["yaw_iou"]) - float(g["yaw_iou_uncond"])


CHECKS: dict[str, tuple[str, Callable[[Inputs], float | None]]] = {
    "ss_vae_iou": ("SS-VAE held-out IoU", lambda i: i.ss_vae.get("iou")),
    "generation_iou": (
        "generation yaw-aligned IoU (held-out, conditional)",
        lambda i: i.generation.get("yaw_iou"),
    ),
    "conditional_gain": ("conditional minus unconditional yaw-aligned IoU", _gain),
    "slat_vae_psnr": ("SLat-VAE PSNR, held-out views (dB)", lambda i: i.slat_vae.get("views_psnr")),
    "image_to_3d_psnr": ("image → 3D PSNR, held-out assets (dB)", lambda i: i.image_to_3d.get("psnr")),
    "structures_decoded": ("structures decoded without the top-k fallback", _decoded),
    "exports": ("example files written", _exports),
}


def run_checks(inputs: Inputs, thresholds: dict[str, float]) -> list[CheckResult]:
    unknown = sorted(set(thresholds) - set(CHECKS))
    if unknown:
        raise ConfigError(
            f"key 'evaluate.checks': unknown checks {unknown}; expected some of {sorted(CHECKS)}"
        )
    return score_checks(CHECKS, thresholds, inputs)


def build_report(out: str | Path) -> Report:
    out = Path(out)
    inputs = Inputs.load(out)
    spec = inputs.pipeline.get("spec", {})
    checks = run_checks(inputs, spec.get("evaluate", {}).get("checks", {}))
    steps = inputs.pipeline.get("steps", [])
    seconds = {s["step"]: round(float(s["seconds"]), 1) for s in steps if s["status"] == "done"}
    data = {
        "spec": spec,
        "ss_vae_heldout": inputs.ss_vae,
        "generation_heldout": {
            k: inputs.generation[k]
            for k in ("iou", "iou_uncond", "yaw_iou", "yaw_iou_uncond", "assets")
            if k in inputs.generation
        },
        "slat_vae_heldout": inputs.slat_vae,
        "image_to_3d_heldout": {
            k: v for k, v in inputs.image_to_3d.items() if k not in ("per_asset", "model_steps")
        },
        "examples": {
            name: {k: e.get(k) for k in ("mode", "voxels", "gaussians", "fallback", "seconds", "files")}
            for name, e in inputs.examples.items()
        },
        "steps": [{k: s[k] for k in ("step", "status", "detail", "seconds")} for s in steps],
        "seconds": seconds,
        "total_seconds": round(sum(seconds.values()), 1),
        **checks_record(checks),
    }
    return Report(data, checks)


def _markdown(report: Report, title: str) -> str:
    d = report.data
    v, g, s, e = d["ss_vae_heldout"], d["generation_heldout"], d["slat_vae_heldout"], d["image_to_3d_heldout"]
    spec = d["spec"]
    stages = spec.get("stages", {})

    def steps_of(stage: str) -> Any:
        return stages.get(stage, {}).get("train", {}).get("max_steps", "recipe default")

    data_spec = spec.get("data", {})
    synth = data_spec.get("synth")
    source = (
        f"{synth['num']} built-in synthetic objects" if synth else f"meshes from {data_spec.get('source')}"
    )
    lines = [
        f"# {title}",
        "",
        f"Data: {source}; held-out assets: {spec.get('holdout')}; seed {spec.get('seed')}. Training steps: "
        f"SS-VAE {steps_of('ss_vae')}, SS-flow "
        f"{steps_of('ss_flow')}, SLat-VAE {steps_of('slat_vae')}, SLat-flow {steps_of('slat_flow')}.",
        "",
        f"## Checks: {'all passed' if report.passed else 'FAILED'}",
        "",
        *checks_table(report.checks),
    ]
    lines += [
        "",
        "## Stage 1: structure",
        "",
        "| SS-VAE held-out | IoU | precision | recall |",
        "| --- | --- | --- | --- |",
        f"| reconstruction | {number(v.get('iou'))} | {number(v.get('precision'))} | {number(v.get('recall'))} |",
        "",
        f"Generation from held-out condition images ({g.get('assets', 0)} assets, mean):",
        "",
        "| samples | IoU | yaw-aligned IoU |",
        "| --- | --- | --- |",
        f"| conditional (image) | {number(g.get('iou'))} | {number(g.get('yaw_iou'))} |",
        f"| unconditional (same noise) | {number(g.get('iou_uncond'))} | {number(g.get('yaw_iou_uncond'))} |",
        "",
        "Yaw-aligned: best IoU over rotations of the sample about +Y (15° steps) and mirror images; a single "
        "view does not reveal an object's yaw in the world frame.",
        "",
        "## Stage 2: structured latents → 3D Gaussians",
        "",
        "| SLat-VAE reconstruction | PSNR (dB) | SSIM |",
        "| --- | --- | --- |",
        f"| held-out views of training assets | {number(s.get('views_psnr'), 2)} | {number(s.get('views_ssim'))} |",
        f"| held-out assets | {number(s.get('assets_psnr'), 2)} | {number(s.get('assets_ssim'))} |",
        "",
        f"Image → 3D on held-out assets ({e.get('assets', 0)} of them, one condition image each):",
        "",
        "| | structure IoU | yaw-aligned IoU | PSNR (dB) | SSIM |",
        "| --- | --- | --- | --- | --- |",
        f"| full pipeline | {number(e.get('iou'))} | {number(e.get('yaw_iou'))} | {number(e.get('psnr'), 2)} | "
        f"{number(e.get('ssim'))} |",
        f"| stage 2 on the true structure | 1 | 1 | {number(e.get('stage2_psnr'), 2)} | {number(e.get('stage2_ssim'))} |",
        "",
        "## Previews",
        "",
    ]
    out = Path(report.data.get("out", "."))
    previews = [
        ("runs/ss_vae/samples/*/reconstructions.png", "SS-VAE: ground truth (top), reconstruction (bottom)"),
        ("runs/ss_flow/samples/*/generations.png", "Condition | ground truth | conditional | unconditional"),
        ("runs/slat_vae/samples/*/heldout_views.png", "SLat-VAE: ground-truth views (top), decoded (bottom)"),
        (
            "eval/image_to_3d.png",
            "Condition | ground-truth view | image → 3D | stage 2 on the true structure",
        ),
    ]
    for pattern, caption in previews:
        found = sorted(out.glob(pattern))
        if found:
            lines += [f"{caption}:", "", f"![]({found[-1].relative_to(out)})", ""]
    for name, example in d["examples"].items():
        note = " (top-k fallback: no voxel above 0.5)" if example.get("fallback") else ""
        lines += [
            f"`examples/{name}`: {example.get('voxels')} voxels{note}, {number(example.get('seconds'), 1)} s",
            "",
        ]
        image = "asset.gif" if (out / "examples" / name / "asset.gif").is_file() else "preview.png"
        lines += [f"![](examples/{name}/{image})", ""]
    lines += steps_table(d["steps"])
    lines += ["", f"Total time of the steps that did work: {d['total_seconds']} s.", ""]
    return "\n".join(lines)


def write_report(out: str | Path, title: str = "voxforge pipeline report") -> Report:
    """Build the report of the pipeline run in `out` and write `report.md` and `report.json`."""
    out = Path(out)
    return save_report(out, build_report(out), lambda report: _markdown(report, title))
