"""`voxforge pipeline run FILE` for `kind: image` files: captioned images → autoencoder → flows
at growing resolution → an optional LoRA that learns a held-back colour → evaluation → report.

```yaml
kind: image
out: runs/pipeline_image_tiny
seed: 0                                   # train.seed of every stage, data and sampling noise
holdout: 8                                # data.eval_images of every stage: one held-out set
data:
  synth_images: {num: 512, size: 64, seed: 0}   # the built-in shapes ... or:  source: path/to/images
  images: {resolution: 64, buckets: square}      # voxforge.data.images.ImagePrepareConfig settings
  held_back: {colour: purple, num: 64}           # optional: the base data never shows this colour
stages:                                   # trained in this order
  image_ae: {recipe: image_ae_tiny, train_on: all}   # the codec sees every colour; the flows do not
  flow_32:  {recipe: image_flow_tiny, data: {resolution: 32}}
  flow_64:  {recipe: image_flow_tiny, init_from: flow_32, data: {resolution: 64}, flow: {time_shift: 2.0}}
  lora:     {recipe: image_lora_tiny, init_from: flow_64, train_on: held_back}
evaluate:                                 # optional; needs synth_images (the judge reads its labels)
  judge: {images: 192, classifier: {steps: 300, width: 16}}
  prompts: {num: 24, per_prompt: 1, held_back: 16}
  sampling: {steps: 12, cfg: 4.5, sampler: dpm}
  standard: {inception: /models/pt_inception.pth, clip: /models/clip-vit-large-patch14}  # optional
  checks: {prompt_gain: 0.1, lora_colour_gain: 0.3}   # name -> threshold (workflows.image_report)
```

A stage entry is a recipe (`recipe`, whose `stage` must be `image_ae` or `image_flow`) with
sections merged over it, plus two keys of the pipeline: `init_from: STAGE` (an earlier flow
stage whose weights start this one: `model.init_from`, for progressive resolution and LoRA)
and `train_on: base | held_back | all` (which prepared folder it trains on: `all` is both, for
an autoencoder — a general image codec, as Sana's DC-AE is, which must be able to represent the
held-back colour before a LoRA can teach the flow to draw it). The runner sets
`data.path`, `data.autoencoder` (the `image_ae` stage's run, for every flow stage),
`model.init_from` and, with `holdout`, `data.eval_images`; `key=value` overrides reach any
setting (`stages.flow_64.train.max_steps=50`).

Steps, in order, each skipped when its output is complete:

    synth images → synth held-back → synth judge images → prepare images → prepare held-back
        → prepare all (only for a `train_on: all` stage) → each stage → evaluate → report

- synth: skipped when the folder's `synth.json` records the same settings. The base set
  draws every colour but the held-back one (`exclude_colours`); the held-back set (seed + 1000)
  only that colour (`only_colours`); the judge's real images (seed + 2000, `evaluate.judge.
  images`) every colour, so the judge knows the held-back one too. None of them overlap.
- prepare: `voxforge.data.images.prepare_images` skips images already stored.
- stages: the engine resumes from the newest checkpoint; a finished run is `skipped`.
- evaluate (`workflows.image_report.evaluate_images`): skipped when `OUT/eval/image_eval.json`
  names the same checkpoints and settings.
- report: `report.md` + `report.json` rewritten from what the steps recorded.

Layout: `OUT/synth`, `OUT/synth_held_back`, `OUT/synth_judge`, `OUT/images`,
`OUT/images_held_back`, `OUT/images_all`, `OUT/runs/<stage>`, `OUT/eval/`, `OUT/report.{md,json}` and
`OUT/pipeline.json` (each step, its wall and CPU seconds; `workflows.steps`). Each flow run
is a model folder for `voxforge generate image --model OUT/runs/<stage>`.

The entry checks, the recipe merge and the synth / train / evaluate / report steps are the
families' shared ones (`workflows.family`); this module keeps the image family's data (the
held-back colour, `train_on`) and what each stage is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxforge.config.core import from_dict, option
from voxforge.data.images import ImagePrepareConfig, prepare_images
from voxforge.data.synth_images import COLOURS, SynthImagesConfig, write_synth_images
from voxforge.errors import ConfigError
from voxforge.stages import Recipe
from voxforge.workflows import family
from voxforge.workflows.image_report import (
    EVAL_RECORD,
    ImageEvaluateSpec,
    evaluate_images,
    write_image_report,
)
from voxforge.workflows.steps import StepRecord

__all__ = [
    "HELD_BACK_SEED_OFFSET",
    "JUDGE_SEED_OFFSET",
    "ImagePipelineSpec",
    "image_stage_recipe",
    "load_image_pipeline",
    "run_image_pipeline",
]

#: the held-back and judge sets draw from seed + these, so they never repeat a base image
HELD_BACK_SEED_OFFSET = 1000
JUDGE_SEED_OFFSET = 2000
STAGE_KINDS = ("image_ae", "image_flow")
TRAIN_ON = ("base", "held_back", "all")


@dataclass
class SynthImagesSpec:
    num: int = option(512, ge=1, help="images of the base data")
    size: int = option(64, ge=16, le=1024, help="side in pixels")
    seed: int = option(0, ge=0)


@dataclass
class HeldBackSpec:
    colour: str = option("purple", choices=tuple(COLOURS), help="the colour the base data never shows")
    num: int = option(64, ge=2, help="images of the held-back data (every one shows the colour)")


@dataclass
class ImageDataSpec:
    source: str = option("", help="a folder or archive of captioned images (instead of synth_images)")
    synth_images: SynthImagesSpec | None = option(None, help="the built-in captioned shapes")
    images: dict[str, Any] = option(
        default_factory=dict, help="voxforge.data.images.ImagePrepareConfig settings (voxforge data images)"
    )
    held_back: HeldBackSpec | None = option(None, help="a colour kept out of the base data, for a LoRA stage")


@dataclass
class ImagePipelineSpec:
    kind: str = option("image", choices=("image",), help="the pipeline kind (3d files leave it out)")
    out: str = option("", help="output folder (the --out option overrides it)")
    data: ImageDataSpec = option(default_factory=ImageDataSpec)
    stages: dict[str, dict[str, Any]] = option(
        default_factory=dict, help="stage -> {recipe: NAME, init_from: STAGE, train_on: base|held_back, ...}"
    )
    device: str = option("auto", help="device of every step (a stage's own train.device wins)")
    seed: int = option(0, ge=0, help="train.seed of every stage; the sampling noise of the evaluation")
    holdout: int | None = option(
        None, ge=0, help="held-out images of every stage (data.eval_images); None: each recipe's own"
    )
    evaluate: ImageEvaluateSpec | None = option(None, help="judge, prompts, sampling, checks")


def load_image_pipeline(data: dict[str, Any], source: str) -> ImagePipelineSpec:
    """The typed `kind: image` pipeline of `data` (the file with its overrides applied)."""
    spec = from_dict(ImagePipelineSpec, {"kind": "image", **data}, source=source)
    family.check_source(spec.data, "synth_images", "built-in shapes", "your images", source)
    if spec.data.source and spec.data.held_back is not None:
        raise ConfigError(f"{source}: key 'data.held_back': needs 'synth_images' (it draws the colour)")

    def check_train_on(name: str, entry: dict[str, Any]) -> None:
        train_on = entry.get("train_on", "base")
        if train_on not in TRAIN_ON:
            raise ConfigError(f"{source}: key 'stages.{name}.train_on': expected base, held_back or all")
        if train_on in ("held_back", "all") and spec.data.held_back is None:
            raise ConfigError(f"{source}: key 'stages.{name}.train_on': {train_on} needs 'data.held_back'")

    kinds = family.check_stages(spec.stages, source, STAGE_KINDS, "an image", check_train_on)
    if list(kinds.values()).count("image_ae") > 1:
        raise ConfigError(f"{source}: key 'stages': at most one image_ae stage")
    family.check_evaluate(spec, kinds, source, "synth_images", "shapes")
    return spec


def image_stage_recipe(spec: ImagePipelineSpec, name: str, paths: dict[str, Any], source: str = "") -> Recipe:
    """The typed recipe of stage `name`: its recipe file, the entry's sections, the runner's paths."""
    return family.stage_recipe(spec, name, paths, source, keys=("recipe", "init_from", "train_on"))


class _ImageRun(family.FamilyRun):
    """One `run_image_pipeline` call: the output layout and the step record."""

    # --- data --------------------------------------------------------------------------
    def synth_images(self, step: str, folder: Path, config: SynthImagesConfig) -> None:
        wanted = {
            "num": config.num,
            "size": config.size,
            "seed": config.seed,
            "exclude_colours": list(config.exclude_colours),
            "only_colours": list(config.only_colours),
        }

        def write() -> str:
            write_synth_images(folder, config)
            return f"{config.num} images ({', '.join(config.colours())}) -> {folder}"

        self.synth(
            step, folder / "synth.json", wanted, write, f"{folder} already holds these {config.num} images"
        )

    def prepare(self, step: str, sources: list[Path], target: Path, progress: bool) -> None:
        settings = {"progress": progress, **self.spec.data.images}
        config = from_dict(ImagePrepareConfig, settings, source=self.source, prefix="data.images")
        source = " + ".join(map(str, sources))

        def work() -> tuple[str, str, dict[str, Any]]:
            summary = prepare_images(sources, target, config)
            return family.captioned_outcome(summary, source, target, "image")

        self.timed(step, work)


def _stage_paths(spec: ImagePipelineSpec, out: Path, name: str, kind: str, ae_stage: str | None) -> dict:
    entry = spec.stages[name]
    images = out / {"held_back": "images_held_back", "all": "images_all"}.get(entry.get("train_on"), "images")
    data: dict[str, Any] = {"path": str(images)}
    if spec.holdout is not None:
        data["eval_images"] = spec.holdout
    paths: dict[str, Any] = {"data": data}
    if kind == "image_flow":
        if ae_stage is not None:
            data["autoencoder"] = str(out / "runs" / ae_stage)
        if entry.get("init_from"):
            paths["model"] = {"init_from": str(out / "runs" / entry["init_from"])}
    return paths


def run_image_pipeline(
    spec: ImagePipelineSpec,
    out: str | Path,
    *,
    source: str = "",
    log: Callable[[str], None] = lambda message: None,
    progress: bool = True,
    title: str = "voxforge image pipeline report",
) -> list[StepRecord]:
    """Run every step not yet complete (module docstring); returns what each step did."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = _ImageRun(spec, out, source, log)
    data = spec.data
    held_back = data.held_back
    base_source = Path(data.source) if data.source else out / "synth"
    if data.synth_images is not None:
        synth = data.synth_images
        exclude = (held_back.colour,) if held_back else ()
        run.synth_images(
            "synth images",
            base_source,
            SynthImagesConfig(num=synth.num, size=synth.size, seed=synth.seed, exclude_colours=exclude),
        )
        if held_back is not None:
            run.synth_images(
                "synth held-back",
                out / "synth_held_back",
                SynthImagesConfig(
                    num=held_back.num,
                    size=synth.size,
                    seed=synth.seed + HELD_BACK_SEED_OFFSET,
                    only_colours=(held_back.colour,),
                ),
            )
        if spec.evaluate is not None and spec.evaluate.judge is not None:
            run.synth_images(
                "synth judge images",
                out / "synth_judge",
                SynthImagesConfig(
                    num=spec.evaluate.judge.images, size=synth.size, seed=synth.seed + JUDGE_SEED_OFFSET
                ),
            )
    run.prepare("prepare images", [base_source], out / "images", progress)
    if held_back is not None:
        run.prepare("prepare held-back", [out / "synth_held_back"], out / "images_held_back", progress)
    if any(entry.get("train_on") == "all" for entry in spec.stages.values()):
        run.prepare("prepare all", [base_source, out / "synth_held_back"], out / "images_all", progress)
    kinds = family.kinds_of(spec.stages, source, STAGE_KINDS, "an image")
    ae_stage = next((name for name, kind in kinds.items() if kind == "image_ae"), None)
    for name, kind in kinds.items():
        recipe = image_stage_recipe(spec, name, _stage_paths(spec, out, name, kind, ae_stage), source)
        run.train_stage(name, recipe)
    if spec.evaluate is not None:
        evaluation = spec.evaluate
        run.evaluate(
            out / "eval" / EVAL_RECORD,
            lambda: evaluate_images(
                evaluation,
                out,
                seed=spec.seed,
                held_back=held_back.colour if held_back else None,
                device=run.device,
                log=log,
            ),
        )
    run.report(lambda: write_image_report(out, title))
    return run.records
