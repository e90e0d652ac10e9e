"""`voxforge pipeline run FILE`: every step from meshes to an evaluated image-to-3D model.

A pipeline file names the data, one recipe per stage and, optionally, what to evaluate
afterwards; each stage entry may carry recipe sections that are merged over the recipe (so
one file says everything, and `key=value` overrides reach any setting:
`stages.slat_vae.train.max_steps=50`):

```yaml
out: runs/pipeline_tiny                  # default output folder (--out overrides)
seed: 0                                  # train.seed of every stage, evaluation noise
holdout: 4                               # data.eval_assets of every stage: one held-out set
data:
  synth: {num: 24, seed: 0}              # the built-in dataset ... or:  source: path/to/meshes
  prepare: {resolution: 32, views: 24, image_size: 96, cond_views: 8, features: rgb}
  stage2: {assets: 0}                    # N > 0: stage 2 trains on the first N non-held-out assets
stages:
  ss_vae:    {recipe: ss_vae_tiny, train: {max_steps: 300}}
  ss_flow:   {recipe: ss_flow_tiny}
  slat_vae:  {recipe: slat_vae_tiny}
  slat_flow: {recipe: slat_flow_tiny}
evaluate:                                # optional; `voxforge demo` reads what it writes
  image_to_3d: {limit: 4, steps: 12}
  examples: {structure_assets: 2, asset: true}
  checks: {ss_vae_iou: 0.5}              # name -> threshold, see voxforge.workflows.report
```

Steps, in order, each skipped when its output is complete:

    synth → prepare → prepare stage 2 → ss_vae → encode ss → ss_flow → slat_vae → encode slat
          → slat_flow → evaluate image to 3D → examples

- synth: skipped when `OUT/synth/labels.json` records the same seed and count;
- prepare: `voxforge.data.prepare` itself skips finished assets and steps;
- prepare stage 2 (only with `data.stage2.assets`): feature views cost most of the data
  time, so stage 2 may use a subset: the held-out assets plus the first `assets` others in
  sorted id order, copied to `OUT/stage2/source` and prepared with `data.prepare` (all
  steps) updated by `data.stage2.prepare` into `OUT/stage2/prepared`. Its first ids are
  the stage-1 held-out ids, so all four models share one held-out set;
- training: the engine resumes from the newest checkpoint and reports `already_complete`
  for finished runs (which takes a second: no data is read);
- encode: the encoders skip assets already encoded by the same checkpoint;
- evaluation and examples: skipped when their record names the same checkpoints.

Paths the stages need are set by the pipeline (`data.path`, `data.latents`), overriding
whatever the recipes hold. A stage missing from `stages` is not run (and the stages after it
that need it fail with a message saying so). Layout: `OUT/synth`, `OUT/prepared`,
`OUT/runs/<stage>`, `OUT/latents/{ss,slat}`, `OUT/eval/`, `OUT/examples/`, and
`OUT/pipeline.json` (what each step did and how long it took, rewritten after every step).
`OUT` is then a model folder for `voxforge generate --model OUT`.

This module orchestrates training (`voxforge.train`) and inference (`voxforge.pipelines`),
so it sits in the layer above both (docs/architecture.md).
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from voxforge.config.core import apply_overrides, from_dict, load_yaml, option
from voxforge.data import PreparedDataset
from voxforge.data.image_io import read_image
from voxforge.data.prepare import ALL_STEPS, PrepareConfig, prepare
from voxforge.data.synth import SynthConfig, write_dataset
from voxforge.errors import ConfigError, UserError
from voxforge.export import ExportConfig, export_asset
from voxforge.export.structure import write_structure_files
from voxforge.models.conditioning import default_slat_sampler, default_structure_sampler
from voxforge.pipelines.encode import encode_slat_latents, encode_ss_latents
from voxforge.pipelines.evaluate import evaluate_image_to_3d
from voxforge.pipelines.image_to_3d import ImageTo3DPipeline
from voxforge.pipelines.images import load_condition_image
from voxforge.pipelines.structure import StructurePipeline
from voxforge.recipe import resolve_recipe_path
from voxforge.representations.voxels import save_voxels
from voxforge.stages import Recipe
from voxforge.train.checkpoint import latest_checkpoint
from voxforge.train.distributed import resolve_device
from voxforge.train.engine import train
from voxforge.workflows import family
from voxforge.workflows.get3d_pipeline import Get3DPipelineSpec, load_get3d_pipeline, run_get3d_pipeline
from voxforge.workflows.image_pipeline import ImagePipelineSpec, load_image_pipeline, run_image_pipeline
from voxforge.workflows.steps import PIPELINE_RECORD, StepRecord, StepRunner, recorded
from voxforge.workflows.video_pipeline import VideoPipelineSpec, load_video_pipeline, run_video_pipeline

__all__ = [
    "PIPELINE_RECORD",
    "STAGE_ORDER",
    "EvaluateSpec",
    "PipelineSpec",
    "StepRecord",
    "load_pipeline",
    "run_pipeline",
    "stage_recipe",
]

STAGE_ORDER = ("ss_vae", "ss_flow", "slat_vae", "slat_flow")


@dataclass
class SynthSpec:
    num: int = option(32, ge=1, help="objects in the built-in procedural dataset")
    seed: int = option(0, ge=0)


@dataclass
class Stage2DataSpec:
    assets: int = option(
        0, ge=0, help="0: stage 2 uses the stage-1 data; N: held-out + first N other assets, re-prepared"
    )
    prepare: dict[str, Any] = option(
        default_factory=dict, help="PrepareConfig settings over data.prepare's (e.g. views, image_size)"
    )


@dataclass
class DataSpec:
    source: str = option("", help="folder of meshes to prepare (instead of synth)")
    synth: SynthSpec | None = option(None, help="write the built-in dataset and prepare it")
    prepare: dict[str, Any] = option(default_factory=dict, help="voxforge.data.PrepareConfig settings")
    stage2: Stage2DataSpec = option(default_factory=Stage2DataSpec)


@dataclass
class ImageTo3DEvalSpec:
    limit: int = option(4, ge=1, help="held-out assets generated from their condition view 0")
    steps: int = option(12, ge=1, help="sampler steps of both stages")
    cfg: float = option(3.0, ge=0.0, help="structure guidance scale")
    views: int = option(4, ge=1, help="feature views each generated asset is scored on")


@dataclass
class ExamplesSpec:
    structure_assets: int = option(
        2, ge=0, help="held-out assets generated as structures (`generate structure`)"
    )
    asset: bool = option(True, help="one held-out image -> .ply, turntable, .glb (`generate`)")
    steps: int = option(25, ge=1, help="sampler steps")
    cfg: float = option(3.0, ge=0.0, help="structure guidance scale")
    frames: int = option(36, ge=1, help="turntable frames of the asset example")
    size: int = option(160, ge=8, help="turntable side in pixels")


@dataclass
class EvaluateSpec:
    image_to_3d: ImageTo3DEvalSpec | None = option(None, help="score image -> 3D on held-out assets")
    examples: ExamplesSpec | None = option(None, help="write example outputs under OUT/examples")
    checks: dict[str, float] = option(
        default_factory=dict, help="check name -> threshold (voxforge.workflows.report.CHECKS)"
    )


@dataclass
class PipelineSpec:
    out: str = option("", help="output folder (the --out option overrides it)")
    data: DataSpec = option(default_factory=DataSpec)
    stages: dict[str, dict[str, Any]] = option(
        default_factory=dict, help="stage -> {recipe: NAME, sections...}"
    )
    device: str = option("auto", help="device of every step (a stage's own train.device wins)")
    seed: int = option(0, ge=0, help="default train.seed of every stage and the evaluation seed")
    holdout: int | None = option(
        None, ge=0, help="held-out assets of every stage (sets data.eval_assets); None: each recipe's own"
    )
    evaluate: EvaluateSpec = option(default_factory=EvaluateSpec)


def load_pipeline(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> tuple[PipelineSpec | ImagePipelineSpec | VideoPipelineSpec, str]:
    """The typed pipeline file with `overrides` applied; `kind: image` files are the image
    family's (`workflows.image_pipeline`), `kind: video` the video family's
    (`workflows.video_pipeline`), any other kind is an error, none is 3D."""
    resolved = resolve_recipe_path(path)
    data = apply_overrides(load_yaml(resolved), overrides)
    source = str(resolved) + (" (with command-line overrides)" if overrides else "")
    kind = data.pop("kind", "3d")
    if kind == "image":
        return load_image_pipeline(data, source), source
    if kind == "video":
        return load_video_pipeline(data, source), source
    if kind == "get3d":
        return load_get3d_pipeline(data, source), source
    if kind != "3d":
        raise ConfigError(
            f"{source}: key 'kind': unknown pipeline kind {kind!r}; expected 3d, image, video or get3d"
        )
    spec = from_dict(PipelineSpec, data, source=source)
    if spec.data.source and spec.data.synth is not None:
        raise ConfigError(f"{source}: key 'data': give either 'source' or 'synth', not both")
    if not spec.data.source and spec.data.synth is None:
        raise ConfigError(
            f"{source}: key 'data': give 'source' (a folder of meshes) or 'synth' (built-in dataset)"
        )
    unknown = sorted(set(spec.stages) - set(STAGE_ORDER))
    if unknown:
        raise ConfigError(
            f"{source}: key 'stages': unknown stages {unknown}; expected some of {list(STAGE_ORDER)}"
        )
    for name, entry in spec.stages.items():
        family.require_recipe(name, entry, source, f" (e.g. {name}_tiny)")
    evaluation = spec.evaluate
    if (evaluation.image_to_3d or evaluation.examples) and not {"ss_flow", "slat_flow"} <= set(spec.stages):
        raise ConfigError(f"{source}: key 'evaluate': needs the stages ss_flow and slat_flow")
    return spec, source


def stage_recipe(spec: PipelineSpec, stage: str, paths: dict[str, Any], source: str = "") -> Recipe:
    """The typed recipe of one stage: its recipe file, the entry's sections, the pipeline's settings."""
    trains = family.recipe_stage(spec.stages[stage])
    if trains != stage:
        recipe_path = resolve_recipe_path(spec.stages[stage]["recipe"])
        raise ConfigError(
            f"{source}: key 'stages.{stage}.recipe': {recipe_path} trains '{trains}', not '{stage}'"
        )
    pipeline_data = dict(paths)
    if spec.holdout is not None:
        pipeline_data["eval_assets"] = spec.holdout
    return family.stage_recipe(spec, stage, {"data": pipeline_data}, source)


class _Run(StepRunner):
    """One `run_pipeline` call: the output layout and the step record."""

    step_width = 18

    def __init__(self, spec: PipelineSpec, out: Path, source: str, log: Callable[[str], None]):
        super().__init__(spec, out, source, log)
        self.prepared = out / "prepared"
        self.runs = out / "runs"
        self.latents = {"ss": out / "latents" / "ss", "slat": out / "latents" / "slat"}
        self.device = resolve_device(spec.device)

    # --- data --------------------------------------------------------------------------
    def synth(self) -> Path:
        synth = self.spec.data.synth
        if synth is None:
            return Path(self.spec.data.source)
        start = time.perf_counter()
        folder = self.out / "synth"
        wanted = {"seed": synth.seed, "num": synth.num}
        if recorded(folder / "labels.json", wanted) is not None:
            self.record(StepRecord("synth", "skipped", f"{folder} already holds {wanted['num']} objects"))
        else:
            write_dataset(folder, SynthConfig(num=synth.num, seed=synth.seed))
            self.record(
                StepRecord(
                    "synth", "done", f"{wanted['num']} objects -> {folder}", time.perf_counter() - start
                )
            )
        return folder

    def prepare(self, step: str, source: Path, target: Path, settings: dict[str, Any], prefix: str) -> None:
        config = from_dict(PrepareConfig, settings, source=self.source, prefix=prefix)
        start = time.perf_counter()
        summary = prepare(source, target, config)
        seconds = time.perf_counter() - start
        status, detail = family.mesh_outcome(summary, source, target)
        self.record(StepRecord(step, status, detail, seconds, {"summary": summary}))

    def stage2_data(self, source: Path, progress: bool) -> Path:
        """The prepared folder of stage 2 (module docstring, "prepare stage 2")."""
        subset = self.spec.data.stage2
        if subset.assets == 0:
            return self.prepared
        held_out = self.holdout("slat_flow")
        records = {
            r.id: r.source for r in PreparedDataset(self.prepared).records() if r.status == "done" and r.id
        }
        chosen = sorted(records)[: held_out + subset.assets]
        copies = self.out / "stage2" / "source"
        for asset in chosen:
            name = records[asset]
            origin, target = source / name, copies / name
            if not origin.is_file():
                raise ConfigError(
                    f"{self.source}: key 'data.stage2.assets': {origin} (asset {asset}) is not a file in the "
                    "source folder; a stage-2 subset needs a plain folder of meshes"
                )
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(origin, target)
        settings = {k: v for k, v in self.spec.data.prepare.items() if k != "steps"}
        settings = {"progress": progress, **settings, "steps": list(ALL_STEPS), **subset.prepare}
        target = self.out / "stage2" / "prepared"
        self.prepare("prepare stage 2", copies, target, settings, "data.stage2.prepare")
        return target

    def holdout(self, stage: str) -> int:
        if self.spec.holdout is not None:
            return self.spec.holdout
        if stage in self.spec.stages:
            return int(stage_recipe(self.spec, stage, {}, self.source).data.eval_assets)
        return 0

    # --- training ----------------------------------------------------------------------
    def train_stage(self, stage: str, recipe: Recipe) -> None:
        run_dir = self.runs / stage
        start = time.perf_counter()
        result = train(recipe, run_dir)
        seconds = time.perf_counter() - start  # a skipped or failed stage's seconds too, unlike the families'
        status, detail, info = family.train_outcome(result, run_dir)
        self.record(StepRecord(stage, status, detail, seconds, info))
        if status == "failed":
            raise UserError(family.STOPPED.format(name=stage, step=result.step, reason=result.reason))

    def encode(self, kind: str, prepared: Path) -> None:
        encoder = encode_ss_latents if kind == "ss" else encode_slat_latents
        vae_run = self.runs / ("ss_vae" if kind == "ss" else "slat_vae")
        out = self.latents[kind]
        start = time.perf_counter()
        summary = encoder(vae_run, prepared, out, device=self.device, log=self.log)
        seconds = time.perf_counter() - start
        status = "skipped" if summary["encoded"] == 0 else "done"
        detail = (
            f"{summary['total']} assets in {out} ({summary['encoded']} encoded now, {summary['kept']} kept)"
        )
        self.record(StepRecord(f"encode_{kind}", status, detail, seconds, {"summary": summary}))

    # --- evaluation --------------------------------------------------------------------
    @functools.cached_property
    def model_steps(self) -> dict[str, int | None]:
        """The flows' newest checkpoint steps; read once, after the last training step."""
        steps = {}
        for stage in ("ss_flow", "slat_flow"):
            ckpt = latest_checkpoint(self.runs / stage)
            steps[stage] = ckpt.step if ckpt else None
        return steps

    def _fresh(self, path: Path) -> dict[str, Any] | None:
        """The record at `path` if it was made by the current checkpoints."""
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return record if record.get("model_steps") == self.model_steps else None

    def held_out_ids(self, prepared: Path) -> list[str]:
        ids = sorted(PreparedDataset(prepared).ids(require=("cond",)))
        return ids[: self.holdout("slat_flow")]

    def evaluate_image_to_3d(self, spec: ImageTo3DEvalSpec, prepared: Path) -> None:
        path = self.out / "eval" / "image_to_3d.json"
        start = time.perf_counter()
        if self._fresh(path) is not None:
            self.record(StepRecord("evaluate image to 3D", "skipped", f"{path} is up to date"))
            return
        ids = self.held_out_ids(prepared)[: spec.limit]
        if not ids:
            raise UserError(f"{self.source}: key 'evaluate.image_to_3d': no held-out assets (set 'holdout')")
        pipeline = ImageTo3DPipeline.from_model_dir(self.out, device=self.device)
        settings = {
            **self.spec.data.prepare,
            **(self.spec.data.stage2.prepare if self.spec.data.stage2.assets else {}),
        }
        image_size = int(settings.get("image_size", PrepareConfig().image_size))  # the views scored against
        result = evaluate_image_to_3d(
            pipeline,
            prepared,
            ids,
            seed=self.spec.seed,
            structure_sampler=default_structure_sampler(steps=spec.steps, cfg_scale=spec.cfg),
            slat_sampler=default_slat_sampler(steps=spec.steps),
            views=spec.views,
            image_size=image_size,
            out_dir=self.out / "eval",
        )
        result["model_steps"] = self.model_steps
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        detail = f"{len(ids)} held-out assets: PSNR {result.get('psnr', float('nan')):.2f} dB -> {path}"
        self.record(StepRecord("evaluate image to 3D", "done", detail, time.perf_counter() - start))

    def examples(self, spec: ExamplesSpec, prepared: Path) -> None:
        start = time.perf_counter()
        ids = self.held_out_ids(prepared)
        data = PreparedDataset(prepared)

        def cond_views(asset: str) -> list[Path]:
            return sorted((data.asset_dir(asset) / "cond").glob("[0-9]*.png"))

        folder = self.out / "examples"
        made, skipped = [], 0
        cases: list[tuple[str, list[Path], str]] = []
        for n, asset in enumerate(ids[: spec.structure_assets]):
            views = cond_views(asset)
            white = folder / "inputs" / f"asset{n}_view0_white.png"
            if not white.is_file():  # an RGB copy on white exercises the plain-background removal
                white.parent.mkdir(parents=True, exist_ok=True)
                rgba = Image.fromarray(read_image(views[0]).rgba)
                canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                canvas.alpha_composite(rgba)
                canvas.convert("RGB").save(white)
            cases.append((f"asset{n}_single_white_background", [white], "stochastic"))
            if n == 0 and len(views) > 1:
                cases.append((f"asset{n}_two_views_stochastic", views[:2], "stochastic"))
                cases.append((f"asset{n}_two_views_multidiffusion", views[:2], "multidiffusion"))
        structure = None
        for name, images, mode in cases:
            target = folder / name
            if self._fresh(target / "generation.json") is not None:
                skipped += 1
                continue
            structure = structure or StructurePipeline.from_run(self.runs / "ss_flow", device=self.device)
            self.structure_example(structure, spec, name, images, mode, target)
            made.append(name)
        if spec.asset and ids:
            target = folder / "image_to_3d"
            if self._fresh(target / "generation.json") is not None:
                skipped += 1
            else:
                self.asset_example(spec, cond_views(ids[0])[:1], target)
                made.append("image_to_3d")
        status = "done" if made else "skipped"
        detail = f"{len(made)} written ({', '.join(made)}), {skipped} up to date -> {folder}"
        self.record(StepRecord("examples", status, detail, time.perf_counter() - start if made else 0.0))

    def structure_example(
        self,
        pipeline: StructurePipeline,
        spec: ExamplesSpec,
        name: str,
        images: list[Path],
        mode: str,
        target: Path,
    ) -> None:
        start = time.perf_counter()
        sampler = default_structure_sampler(steps=spec.steps, cfg_scale=spec.cfg)
        tensors = torch.stack([load_condition_image(path, pipeline.image_size) for path in images])
        decoded = pipeline.generate_structure(tensors, seed=self.spec.seed, sampler=sampler, mode=mode)
        files = write_structure_files(target, decoded.coords, pipeline.resolution, tensors)
        record = {
            "name": name,
            "images": [str(p) for p in images],
            "mode": mode,
            "seed": self.spec.seed,
            "voxels": int(len(decoded.coords)),
            "fallback": decoded.fallback,
            "seconds": round(time.perf_counter() - start, 3),
            "files": files,
            "model_steps": self.model_steps,
        }
        (target / "generation.json").write_text(json.dumps(record, indent=1))

    def asset_example(self, spec: ExamplesSpec, images: list[Path], target: Path) -> None:
        start = time.perf_counter()
        pipeline = ImageTo3DPipeline.from_model_dir(self.out, device=self.device)
        tensors = pipeline.load_images(images)
        result = pipeline.generate(
            tensors,
            seed=self.spec.seed,
            structure_sampler=default_structure_sampler(steps=spec.steps, cfg_scale=spec.cfg),
            slat_sampler=default_slat_sampler(steps=spec.steps),
        )
        target.mkdir(parents=True, exist_ok=True)
        export = ExportConfig(frames=spec.frames, size=spec.size, gif_size=min(spec.size, 160))
        paths = export_asset(
            result.gaussians,
            target,
            coords=result.coords,
            resolution=result.resolution,
            config=export,
            name="asset",
        )
        save_voxels(target / "structure.npz", np.asarray(result.coords), result.resolution)
        record = {
            "images": [str(p) for p in images],
            "seed": self.spec.seed,
            "voxels": int(len(result.coords)),
            "gaussians": int(result.gaussians.num_gaussians),
            "fallback": result.fallback,
            "seconds": round(time.perf_counter() - start, 3),
            "files": sorted(p.name for p in paths.values()) + ["structure.npz"],
            "model_steps": self.model_steps,
        }
        (target / "generation.json").write_text(json.dumps(record, indent=1))


def run_pipeline(
    spec: PipelineSpec | ImagePipelineSpec | VideoPipelineSpec,
    out: str | Path,
    *,
    source: str = "",
    log: Callable[[str], None] = lambda message: None,
    progress: bool = True,
) -> list[StepRecord]:
    """Run every step not yet complete (module docstring); returns what each step did."""
    if isinstance(spec, ImagePipelineSpec):
        return run_image_pipeline(spec, out, source=source, log=log, progress=progress)
    if isinstance(spec, VideoPipelineSpec):
        return run_video_pipeline(spec, out, source=source, log=log, progress=progress)
    if isinstance(spec, Get3DPipelineSpec):
        return run_get3d_pipeline(spec, out, source=source, log=log, progress=progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(spec, out, source, log)
    mesh_source = run.synth()
    run.prepare(
        "prepare", mesh_source, run.prepared, {"progress": progress, **spec.data.prepare}, "data.prepare"
    )
    stage2 = (
        run.stage2_data(mesh_source, progress) if spec.stages.keys() & {"slat_vae", "slat_flow"} else None
    )
    prepared = {"ss_vae": run.prepared, "ss_flow": run.prepared, "slat_vae": stage2, "slat_flow": stage2}
    stage_paths = {
        "ss_vae": {"path": str(run.prepared)},
        "ss_flow": {"latents": str(run.latents["ss"]), "prepared": str(run.prepared)},
        "slat_vae": {"path": str(stage2)},
        "slat_flow": {"latents": str(run.latents["slat"]), "prepared": str(stage2)},
    }
    for stage in STAGE_ORDER:
        if stage not in spec.stages:
            run.record(StepRecord(stage, "skipped", "not in the pipeline file"))
            continue
        run.train_stage(stage, stage_recipe(spec, stage, stage_paths[stage], source))
        if stage in ("ss_vae", "slat_vae"):
            run.encode(stage.removesuffix("_vae"), prepared[stage])
    if spec.evaluate.image_to_3d is not None:
        run.evaluate_image_to_3d(spec.evaluate.image_to_3d, stage2)
    if spec.evaluate.examples is not None:
        run.examples(spec.evaluate.examples, stage2)
    return run.records
