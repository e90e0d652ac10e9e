"""`voxforge pipeline run FILE` for `kind: get3d` files: meshes → rendered views → a GET3D-style
GAN → evaluation against held-out shapes → exported textured meshes → report.

```yaml
kind: get3d
out: runs/pipeline_get3d
seed: 0                                  # train.seed, data seed, evaluation codes
holdout: 8                               # data.eval_assets: the held-out reference shapes
data:
  synth: {num: 48, seed: 0}              # the built-in dataset ... or:  source: path/to/meshes
  prepare: {views: 16, image_size: 64}   # voxforge.data.PrepareConfig (steps ingest + views)
stages:
  get3d: {recipe: get3d_tiny, train: {max_steps: 300}}
evaluate:
  samples: 24                            # generated meshes scored (COV / MMD) and rendered
  views: 4                               # renders per generated mesh (FID / KID)
  points: 2048                           # surface samples per shape (Chamfer)
  classifier: {steps: 200}               # voxforge.eval.image_attributes.AttributeClassifierConfig
  inception: /models/pt_inception.pth    # optional: standard FID too (local weights)
  export: 2                              # trained samples written as .glb / .obj + .mtl + .png
  checks: {cov_gain: 0.0, mmd_gain: 0.0, fid_gain: 0.0, kid_gain: 0.0}
```

Steps, each skipped when its output is complete: synth → prepare → get3d → evaluate → report.

**Evaluation** (`evaluate_get3d`) scores three "models" on the same protocol:

- `trained`: the run's G_ema (`runs.load_get3d`);
- `untrained`: the same architecture initialised with the run's `train.seed` (step 0 of the
  run: the sphere-like start);
- `training_set`: the training assets themselves (their meshes and views), the floor a
  generator of the training distribution would reach against the held-out shapes.

For each: COV and MMD (`voxforge.eval.shape_metrics`, Chamfer on `points` samples) of
`samples` generated meshes (codes of seeds `seed·10⁶ + i`, truncation 1) against the held-out
meshes; FID and KID of their renders (`views` per mesh, cameras drawn from the held-out views,
over white at the model's image size) against every held-out view, in the features of a view
classifier trained on the training views and their shape classes (the synthetic data's
labels; a mesh folder without labels gets seeded random features, noted in the report).
The training set is scored with `samples` of its meshes and as many of its views.

Writes `OUT/eval/get3d_eval.json`, `OUT/eval/grid_{trained,untrained,real}.png` (renders of the
first samples / held-out views), `OUT/eval/curves/get3d.png` (G and D losses), exported meshes
`OUT/examples/sample_NNN.{glb,obj,mtl,png}`, an interpolation turntable
`OUT/examples/interpolation.{mp4,gif}` and `OUT/report.{md,json}`.

**Checks** (`evaluate.checks`, value >= threshold passes): `cov_gain` (trained COV minus
untrained), `mmd_gain` (untrained MMD minus trained), `fid_gain` / `kid_gain` (untrained minus
trained).

The generator helpers here (`seed_codes`, `render_codes`, `interpolation_frames`) are what
`voxforge generate mesh` uses too; they need the model, so they sit in this layer.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from voxforge.config.core import from_dict, option, to_dict
from voxforge.data import PreparedDataset
from voxforge.data.prepare import PrepareConfig, prepare
from voxforge.data.synth import SynthConfig, write_dataset
from voxforge.data.view_images import ViewImageDataset
from voxforge.errors import ConfigError, UserError
from voxforge.eval.image_attributes import AttributeClassifierConfig
from voxforge.eval.shape_metrics import image_distances, shape_set_scores, view_classifier
from voxforge.eval.standard_image import standard_fid
from voxforge.export.generated_mesh import bake_texture_field, write_textured
from voxforge.export.video import orbit_cameras, write_gif, write_mp4
from voxforge.models.get3d import Get3DGAN, Get3DGenerator, render_views
from voxforge.runs import load_get3d
from voxforge.stages import Recipe
from voxforge.workflows import family
from voxforge.workflows.report_parts import (
    CheckResult,
    Report,
    check_result,
    checks_table,
    loss_curve,
    read_json,
    steps_table,
)
from voxforge.workflows.steps import StepRecord

__all__ = [
    "EVAL_RECORD",
    "Get3DEvaluateSpec",
    "Get3DPipelineSpec",
    "Get3DReport",
    "build_get3d_report",
    "evaluate_get3d",
    "export_samples",
    "get3d_stage_recipe",
    "interpolation_frames",
    "load_get3d_pipeline",
    "render_codes",
    "run_get3d_pipeline",
    "seed_codes",
    "write_get3d_report",
]

EVAL_RECORD = "get3d_eval.json"
MODELS = ("trained", "untrained", "training_set")
#: evaluation codes use seeds `seed * EVAL_SEED_STRIDE + i`, apart from `generate mesh`'s small seeds
EVAL_SEED_STRIDE = 1_000_000


# -- generator helpers (also used by `voxforge generate mesh`) ------------------------------------


def seed_codes(z_dim: int, seeds: list[int], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(z_geo [N, z], z_tex [N, z]): sample `seed` draws both codes from its own generator, so one
    seed always gives the same shape whatever else is generated with it."""
    geo, tex = [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        geo.append(torch.randn(z_dim, generator=g))
        tex.append(torch.randn(z_dim, generator=g))
    return torch.stack(geo).to(device), torch.stack(tex).to(device)


@torch.no_grad()
def render_codes(
    generator: Get3DGenerator,
    z_geo: Tensor,  # [B, z]
    z_tex: Tensor,  # [B, z]
    viewmats: Tensor,  # [B, 4, 4] one camera per code
    Ks: Tensor,  # [B, 3, 3] at `size`
    size: int,
    *,
    truncation_psi: float = 1.0,
    batch: int = 8,
) -> np.ndarray:  # uint8 [B, size, size, 3] over white
    """Each code's mesh rendered from its camera by the generator's own renderer, over white."""
    out = []
    for start in range(0, len(z_geo), batch):
        sl = slice(start, start + batch)
        geo, tex = generator.triplanes(z_geo[sl], z_tex[sl], truncation_psi)
        meshes = generator.extract(*generator.grid_fields(geo))
        rgb, mask = render_views(generator, meshes, tex, viewmats[sl].float(), Ks[sl].float(), size)
        image = rgb + (1.0 - mask)  # premultiplied over black -> over white
        out.append((image.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8))
    return np.concatenate(out)


def interpolation_frames(
    generator: Get3DGenerator,
    seed_a: int,
    seed_b: int,
    frames: int,
    *,
    size: int = 128,
    truncation_psi: float = 1.0,
) -> np.ndarray:  # uint8 [F, size, size, 3]
    """A turntable whose shape morphs from seed_a's codes to seed_b's (both codes linearly)."""
    if frames < 2:
        raise UserError(f"--frames must be >= 2 for an interpolation, got {frames}")
    device = next(generator.parameters()).device
    z_geo, z_tex = seed_codes(generator.cfg.z_dim, [seed_a, seed_b], device)
    t = torch.linspace(0, 1, frames, device=device)[:, None]
    geo = (1 - t) * z_geo[:1] + t * z_geo[1:]
    tex = (1 - t) * z_tex[:1] + t * z_tex[1:]
    viewmats, Ks = orbit_cameras(frames, size=size)
    return render_codes(
        generator, geo, tex, viewmats.to(device), Ks.to(device), size, truncation_psi=truncation_psi
    )


def export_samples(
    generator: Get3DGenerator,
    seeds: list[int],
    out_dir: Path,
    *,
    texture_size: int = 512,
    truncation_psi: float = 1.0,
    stem: str = "sample",
) -> list[dict[str, Any]]:
    """One textured mesh per seed: `OUT/{stem}_{seed:03d}.{glb,obj,mtl,png}`; returns a row per sample."""
    device = next(generator.parameters()).device
    z_geo, z_tex = seed_codes(generator.cfg.z_dim, seeds, device)
    rows = []
    for seed, (vertices, faces, texture) in zip(
        seeds, generator.generate(z_geo, z_tex, truncation_psi=truncation_psi), strict=True
    ):
        name = f"{stem}_{seed:03d}"
        if len(faces) == 0:
            rows.append({"seed": seed, "faces": 0, "files": [], "note": "empty mesh: nothing written"})
            continue
        mesh = bake_texture_field(vertices, faces, texture, texture_size=texture_size)
        files = write_textured(mesh, out_dir, name)
        rows.append(
            {
                "seed": seed,
                "faces": int(len(faces)),
                "vertices": int(len(vertices)),
                "files": [p.name for p in files.values()],
            }
        )
    return rows


# -- the pipeline file ------------------------------------------------------------------------


@dataclass
class Get3DSynthSpec:
    num: int = option(48, ge=2, help="objects in the built-in procedural dataset")
    seed: int = option(0, ge=0)


@dataclass
class Get3DDataSpec:
    source: str = option("", help="folder of meshes to prepare (instead of synth)")
    synth: Get3DSynthSpec | None = option(None, help="write the built-in dataset and prepare it")
    prepare: dict[str, Any] = option(
        default_factory=dict, help="voxforge.data.PrepareConfig settings (steps: ingest and views)"
    )


@dataclass
class Get3DEvaluateSpec:
    samples: int = option(24, ge=2, help="generated meshes scored and rendered per model")
    views: int = option(4, ge=1, help="renders per generated mesh for FID / KID")
    points: int = option(2048, ge=16, help="surface samples per shape for Chamfer distance")
    classifier: dict[str, Any] = option(
        default_factory=dict, help="voxforge.eval.image_attributes.AttributeClassifierConfig settings"
    )
    inception: str = option("", help="local pytorch-fid Inception weights: adds standard FID")
    export: int = option(2, ge=0, help="trained samples exported as .glb / .obj (seeds 0..N-1)")
    texture_size: int = option(512, ge=8, le=4096, help="texture side of the exported meshes")
    interpolation_frames: int = option(24, ge=0, help="frames of the seed 0 -> 1 turntable (0: none)")
    grid: int = option(8, ge=1, help="renders per row of the sample grids")
    checks: dict[str, float] = option(default_factory=dict, help="check name -> threshold (see CHECKS)")


@dataclass
class Get3DPipelineSpec:
    kind: str = option("get3d", choices=("get3d",), help="the pipeline kind")
    out: str = option("", help="output folder (the --out option overrides it)")
    data: Get3DDataSpec = option(default_factory=Get3DDataSpec)
    stages: dict[str, dict[str, Any]] = option(
        default_factory=dict, help="get3d -> {recipe: NAME, sections...}"
    )
    device: str = option("auto", help="device of every step (the stage's own train.device wins)")
    seed: int = option(0, ge=0, help="train.seed, the evaluation codes")
    holdout: int | None = option(None, ge=1, help="held-out assets (data.eval_assets); None: the recipe's")
    evaluate: Get3DEvaluateSpec | None = option(None, help="COV / MMD, FID / KID, exports, checks")


def load_get3d_pipeline(data: dict[str, Any], source: str) -> Get3DPipelineSpec:
    """The typed `kind: get3d` pipeline of `data` (the file with its overrides applied)."""
    spec = from_dict(Get3DPipelineSpec, {"kind": "get3d", **data}, source=source)
    family.check_source(spec.data, "synth", "built-in dataset", "meshes", source, one="one")
    if set(spec.stages) != {"get3d"}:
        raise ConfigError(f"{source}: key 'stages': a get3d pipeline trains one stage, 'get3d'")
    entry = spec.stages["get3d"]
    family.require_recipe("get3d", entry, source, " (get3d_tiny)")
    stage = family.recipe_stage(entry)
    if stage != "get3d":
        raise ConfigError(
            f"{source}: key 'stages.get3d.recipe': {entry['recipe']} trains '{stage}', not get3d"
        )
    if spec.evaluate is not None:
        unknown = sorted(set(spec.evaluate.checks) - set(CHECKS))
        if unknown:
            raise ConfigError(
                f"{source}: key 'evaluate.checks': unknown {unknown}; expected some of {list(CHECKS)}"
            )
        from_dict(
            AttributeClassifierConfig, spec.evaluate.classifier, source=source, prefix="evaluate.classifier"
        )
        if spec.evaluate.inception and not Path(spec.evaluate.inception).is_file():
            raise ConfigError(f"{source}: key 'evaluate.inception': {spec.evaluate.inception} is not a file")
    return spec


def get3d_stage_recipe(spec: Get3DPipelineSpec, prepared: Path, source: str = "") -> Recipe:
    """The typed recipe of the get3d stage, trained on `prepared`."""
    paths: dict[str, Any] = {"path": str(prepared)}
    if spec.holdout is not None:
        paths["eval_assets"] = spec.holdout
    return family.stage_recipe(spec, "get3d", {"data": paths}, source)


# -- evaluation -------------------------------------------------------------------------------


def _grid(images: np.ndarray, columns: int) -> Image.Image:  # uint8 [N, S, S, 3]
    count = len(images)
    rows = -(-count // columns)
    side = images.shape[1]
    canvas = np.full((rows * side, min(count, columns) * side, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * side : (r + 1) * side, c * side : (c + 1) * side] = image
    return Image.fromarray(canvas)


def _views_over_white(dataset: ViewImageDataset, indices: list[int]) -> np.ndarray:  # uint8 [N, S, S, 3]
    out = []
    for i in indices:
        rgba = dataset[i]["image"].numpy()
        rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        out.append((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
    return np.stack(out)


def untrained_generator(recipe: Recipe, device: torch.device) -> Get3DGenerator:
    """The run's step-0 generator: the model built under the run's seed, as the engine does."""
    with torch.random.fork_rng(devices=[]):
        random.seed(recipe.train.seed)
        np.random.seed(recipe.train.seed)
        torch.manual_seed(recipe.train.seed)
        gan = Get3DGAN(recipe.model)
    return gan.g_ema.to(device).eval()


def evaluate_get3d(
    evaluation: Get3DEvaluateSpec,
    recipe: Recipe,
    run_dir: Path,
    out: Path,
    *,
    seed: int,
    device: torch.device,
    log: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Score trained, untrained and the training set (module docstring); write grids and exports."""
    data = PreparedDataset(recipe.data.path)
    ids = sorted(r.id for r in data.records() if r.status == "done" and r.id)
    held, train_ids = ids[: recipe.data.eval_assets], ids[recipe.data.eval_assets :]
    if not held or not train_ids:
        raise UserError(
            f"{recipe.data.path}: {len(ids)} assets; the evaluation needs held-out and training ones"
        )
    size = recipe.model.image_size
    eval_dir = out / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    # real views, the judge, the held-out meshes
    held_views = ViewImageDataset(data, held, size)
    train_views = ViewImageDataset(data, train_ids, size)
    real = _views_over_white(held_views, list(range(len(held_views))))
    train_images = _views_over_white(train_views, list(range(len(train_views))))
    labels_by_id = data.labels()
    labels = [labels_by_id.get(asset) for asset, _ in train_views.items]
    labelled = all(label is not None for label in labels) and len(set(labels)) > 1
    cfg = from_dict(
        AttributeClassifierConfig,
        {"image_size": size, "seed": seed, **evaluation.classifier},
        prefix="evaluate.classifier",
    )
    start = time.perf_counter()
    judge = view_classifier(train_images, labels if labelled else None, cfg=cfg, device=device)
    log(
        f"view classifier ({'shape classes' if labelled else 'random features'}) in {time.perf_counter() - start:.1f} s"
    )

    def embed(images: np.ndarray) -> Tensor:
        return judge.embed(images)

    reference = [data.textured_mesh(asset).merged() for asset in held]
    cam_viewmats, cam_Ks = held_views.cameras()
    count, per = evaluation.samples, evaluation.views
    camera_index = torch.from_numpy(rng.integers(0, len(cam_viewmats), count * per))

    results: dict[str, Any] = {}
    spread = np.linspace(0, len(real) - 1, min(len(real), evaluation.grid * 2)).round().astype(int)
    grids: dict[str, np.ndarray] = {"real": real[spread]}  # views of every held-out asset
    generators = {
        "trained": load_get3d(run_dir, device),
        "untrained": untrained_generator(recipe, device),
    }
    seeds = [seed * EVAL_SEED_STRIDE + i for i in range(count)]
    for name, generator in generators.items():
        start = time.perf_counter()
        z_geo, z_tex = seed_codes(generator.cfg.z_dim, seeds, device)
        meshes = generator.generate(z_geo, z_tex)
        shapes = shape_set_scores(
            [(m.vertices.cpu(), m.faces.cpu()) for m in meshes],
            reference,
            points=evaluation.points,
            seed=seed,
        )
        fake = render_codes(
            generator,
            z_geo.repeat_interleave(per, 0),
            z_tex.repeat_interleave(per, 0),
            cam_viewmats[camera_index].to(device),
            cam_Ks[camera_index].to(device),
            size,
        )
        grids[name] = fake[::per][: evaluation.grid * 2]
        results[name] = {
            **shapes.to_dict(),
            **image_distances(real, fake, embed, seed=seed),
            "empty_meshes": sum(len(m.faces) == 0 for m in meshes),
            "faces": float(np.mean([len(m.faces) for m in meshes])),
            "images": len(fake),
        }
        if evaluation.inception:
            results[name]["standard_fid"] = standard_fid(real, fake, evaluation.inception, device=device)
        log(
            f"{name}: COV {shapes.cov:.3f} MMD {shapes.mmd:.4f} FID {results[name]['fid']:.3f} "
            f"({time.perf_counter() - start:.1f} s)"
        )
    # the training set itself: its meshes and views on the same protocol
    picks = rng.choice(len(train_ids), min(count, len(train_ids)), replace=False)
    train_meshes = [data.textured_mesh(train_ids[int(i)]).merged() for i in picks]
    shapes = shape_set_scores(train_meshes, reference, points=evaluation.points, seed=seed)
    view_picks = rng.choice(len(train_images), min(count * per, len(train_images)), replace=False)
    train_fake = train_images[np.sort(view_picks)]
    results["training_set"] = {
        **shapes.to_dict(),
        **image_distances(real, train_fake, embed, seed=seed),
        "images": len(train_fake),
    }
    if evaluation.inception:
        results["training_set"]["standard_fid"] = standard_fid(
            real, train_fake, evaluation.inception, device=device
        )

    for name, images in grids.items():
        _grid(images, evaluation.grid).save(eval_dir / f"grid_{name}.png")
    curves = eval_dir / "curves"
    curves.mkdir(exist_ok=True)
    loss_curve(run_dir / "metrics.jsonl", curves / "get3d.png", "get3d: G loss", key="loss")
    loss_curve(run_dir / "metrics.jsonl", curves / "get3d_d.png", "get3d: D loss", key="d_loss")

    examples = out / "examples"
    exported: list[dict[str, Any]] = []
    if evaluation.export:
        exported = export_samples(
            generators["trained"],
            list(range(evaluation.export)),
            examples,
            texture_size=evaluation.texture_size,
        )
    video: list[str] = []
    if evaluation.interpolation_frames:
        frames = interpolation_frames(
            generators["trained"], 0, 1, evaluation.interpolation_frames, size=size * 2
        )
        examples.mkdir(parents=True, exist_ok=True)
        video = [
            write_mp4(frames, examples / "interpolation.mp4", fps=12).name,
            write_gif(frames, examples / "interpolation.gif", fps=12).name,
        ]
    summary = ", ".join(
        f"{n}: COV {results[n]['cov']:.2f} MMD {results[n]['mmd']:.3f} FID {results[n]['fid']:.2f}"
        for n in MODELS
    )
    return {
        "models": results,
        "judge": {
            "kind": "shape classes" if labelled else "random features",
            "train_images": len(train_images),
        },
        "reference": {"assets": held, "views": len(real)},
        "exports": exported,
        "interpolation": video,
        "summary": summary,
    }


# -- report -----------------------------------------------------------------------------------


def _gain(evaluation: dict[str, Any], key: str, higher_better: bool) -> float | None:
    models = evaluation.get("models", {})
    try:
        trained, untrained = float(models["trained"][key]), float(models["untrained"][key])
    except (KeyError, TypeError):
        return None
    return trained - untrained if higher_better else untrained - trained


CHECKS: dict[str, tuple[str, Callable[[dict[str, Any]], float | None]]] = {
    "cov_gain": ("trained minus untrained coverage (COV)", lambda e: _gain(e, "cov", True)),
    "mmd_gain": ("untrained minus trained MMD (Chamfer)", lambda e: _gain(e, "mmd", False)),
    "fid_gain": ("untrained minus trained FID (view classifier)", lambda e: _gain(e, "fid", False)),
    "kid_gain": ("untrained minus trained KID (view classifier)", lambda e: _gain(e, "kid", False)),
}


class Get3DReport(Report):
    """The report of a GET3D pipeline run (`build_get3d_report`)."""


def build_get3d_report(out: str | Path) -> Get3DReport:
    """The report's content from `OUT/pipeline.json` and `OUT/eval/get3d_eval.json`."""
    out = Path(out)
    pipeline = read_json(out / "pipeline.json")
    evaluation = read_json(out / "eval" / EVAL_RECORD)
    thresholds = (pipeline.get("spec", {}).get("evaluate") or {}).get("checks", {})
    checks: list[CheckResult] = []
    for name, threshold in thresholds.items():
        what, value_of = CHECKS[name]
        checks.append(check_result(name, what, value_of(evaluation), threshold))
    steps = pipeline.get("steps", [])
    data = {
        "steps": steps,
        "seconds": round(sum(s.get("seconds", 0.0) for s in steps), 1),
        "cpu_seconds": round(sum(s.get("info", {}).get("cpu_seconds", 0.0) for s in steps), 1),
        "evaluation": evaluation,
        "checks": [to_dict(c) for c in checks],
    }
    return Get3DReport(data, checks)


def _num(value: Any, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _markdown(report: Get3DReport, title: str) -> str:
    data, evaluation = report.data, report.data["evaluation"]
    lines = [f"# {title}", ""]
    lines += [
        f"**{report.verdict}** — {data['seconds']:.0f} s wall, {data['cpu_seconds']:.0f} s CPU over the steps.",
        "",
    ]
    lines += [*steps_table(data["steps"]), ""]
    models = evaluation.get("models", {})
    if models:
        ref = evaluation.get("reference", {})
        judge = evaluation.get("judge", {})
        lines += [
            "## Evaluation against the held-out shapes",
            "",
            f"{len(ref.get('assets', []))} held-out assets ({ref.get('views', 0)} views). COV (higher is better) "
            "and MMD (lower) with Chamfer distance on sampled surface points; FID / KID (lower) of rendered "
            f"views in the features of a view classifier ({judge.get('kind', '?')}, trained on "
            f"{judge.get('train_images', 0)} training views). `training_set` is the training assets "
            "themselves: the floor.",
            "",
        ]
        standard = any("standard_fid" in m for m in models.values())
        head = "| model | COV | MMD | FID | KID | empty meshes | faces |" + (
            " FID (Inception) |" if standard else ""
        )
        lines += [head, "| --- " * (head.count("|") - 1) + "|"]
        for name in MODELS:
            m = models.get(name)
            if m is None:
                continue
            row = (
                f"| {name} | {_num(m['cov'])} | {_num(m['mmd'], 4)} | {_num(m['fid'])} | {_num(m['kid'], 4)} "
                f"| {m.get('empty_meshes', '—')} | {_num(m.get('faces'), 0)} |"
            )
            if standard:
                row += f" {_num(m.get('standard_fid'), 2)} |"
            lines.append(row)
        lines.append("")
        lines += [
            "Sample grids (first renders): trained `eval/grid_trained.png`, untrained `eval/grid_untrained.png`, "
            "held-out views `eval/grid_real.png`; losses `eval/curves/get3d.png`, `eval/curves/get3d_d.png`.",
            "",
            "![trained](eval/grid_trained.png)",
            "",
            "![untrained](eval/grid_untrained.png)",
            "",
            "![real](eval/grid_real.png)",
            "",
        ]
    exports = evaluation.get("exports", [])
    if exports or evaluation.get("interpolation"):
        lines += ["## Exported meshes", ""]
        for row in exports:
            files = ", ".join(f"`examples/{f}`" for f in row["files"]) or row.get("note", "")
            lines.append(f"- seed {row['seed']}: {row.get('faces', 0)} faces — {files}")
        if evaluation.get("interpolation"):
            lines.append(
                "- interpolation seed 0 → 1: "
                + ", ".join(f"`examples/{f}`" for f in evaluation["interpolation"])
            )
        lines.append("")
    if report.checks:  # NaN reads "nan" here (`_num`)
        lines += ["## Checks", "", *checks_table(report.checks, code=False, value=lambda v: _num(v, 4)), ""]
    return "\n".join(lines)


def write_get3d_report(out: str | Path, title: str = "voxforge GET3D pipeline report") -> Get3DReport:
    """`OUT/report.md` and `OUT/report.json` from what the steps recorded."""
    out = Path(out)
    report = build_get3d_report(out)
    (out / "report.md").write_text(_markdown(report, title))
    (out / "report.json").write_text(json.dumps({**report.data, "passed": report.passed}, indent=1))
    return report


# -- runner -----------------------------------------------------------------------------------


class _Get3DRun(family.FamilyRun):
    """One `run_get3d_pipeline` call (its step names are short)."""

    step_width = 10


def run_get3d_pipeline(
    spec: Get3DPipelineSpec,
    out: str | Path,
    *,
    source: str = "",
    log: Callable[[str], None] = lambda message: None,
    progress: bool = True,
    title: str = "voxforge GET3D pipeline report",
) -> list[StepRecord]:
    """Run every step not yet complete (module docstring); returns what each step did."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = _Get3DRun(spec, out, source, log)
    meshes = Path(spec.data.source) if spec.data.source else out / "synth"
    synth = spec.data.synth
    if synth is not None:

        def write_synth() -> str:
            write_dataset(meshes, SynthConfig(num=synth.num, seed=synth.seed))
            return f"{synth.num} objects -> {meshes}"

        wanted = {"seed": synth.seed, "num": synth.num}
        kept = f"{meshes} already holds {synth.num} objects"
        run.synth("synth", meshes / "labels.json", wanted, write_synth, kept)
    prepared = out / "prepared"
    settings = {"cond_views": 0, "progress": progress, **spec.data.prepare, "steps": ["ingest", "views"]}
    config = from_dict(PrepareConfig, settings, source=source, prefix="data.prepare")

    def prepare_work() -> tuple[str, str, dict[str, Any]]:
        status, detail = family.mesh_outcome(prepare(meshes, prepared, config), meshes, prepared)
        return status, detail, {}

    run.timed("prepare", prepare_work)
    recipe = get3d_stage_recipe(spec, prepared, source)
    run.train_stage(
        "get3d",
        recipe,
        stopped="{name} stopped at step {step} ({reason}); re-run to continue",
        show_eval=False,
    )
    if spec.evaluate is not None:
        evaluation = spec.evaluate
        scored = {k: v for k, v in to_dict(evaluation).items() if k != "checks"}  # thresholds: the report's
        run.evaluate(
            out / "eval" / EVAL_RECORD,
            lambda: evaluate_get3d(
                evaluation, recipe, run.runs / "get3d", out, seed=spec.seed, device=run.device, log=log
            ),
            settings={"evaluate": scored, "seed": spec.seed, "step": run.model_steps()["get3d"]},
        )
    run.report(lambda: write_get3d_report(out, title))
    return run.records
