"""`voxforge pipeline run FILE` for `kind: video` files: captioned clips → autoencoder A → flow
stages (text → video at few frames, then image → video) → autoencoder B → the same denoiser
continued on B (the autoencoder swap) → evaluation → report (Open-Sora's staged recipe).

```yaml
kind: video
out: runs/pipeline_video_tiny
seed: 0                                   # train.seed of every stage, data and sampling noise
holdout: 8                                # data.eval_clips of every stage: one held-out set
data:
  synth_videos: {num: 256, frames: 9, size: 32, seed: 0}   # the built-in clips ... or:  source: path/to/videos
  prepare:                                # name -> voxforge data videos settings (one folder each)
    f5: {buckets: {32px: {5: [1.0, 8]}}}
    f9: {buckets: {32px: {9: [1.0, 8]}}}
stages:                                   # trained in this order
  ae_a:  {recipe: video_ae_tiny, data_from: f9}
  t2v:   {recipe: video_flow_tiny, data_from: f5, autoencoder: ae_a, flow: {p_image_cond: 0.0}}
  i2v:   {recipe: video_flow_tiny, data_from: f9, init_from: t2v, flow: {p_image_cond: 0.5}}
  ae_b:  {recipe: video_ae_dc_tiny, data_from: f9}
  swap:  {recipe: video_flow_tiny, data_from: f9, init_from: i2v, autoencoder: ae_b, model: {reinit: changed}}
evaluate:                                 # optional; needs synth_videos (the judge reads its labels)
  judge: {clips: 192, classifier: {steps: 300}}
  prompts: {num: 24}
  sampling: {steps: 12, cfg: 5.0}
  checks: {prompt_gain: 0.1}              # name -> threshold (workflows.video_report)
```

A stage entry is a recipe (`recipe`, whose `stage` must be `video_ae` or `video_flow`) with
sections merged over it, plus keys of the pipeline:

- `data_from: NAME`: the prepared folder it trains on (default: the first of `data.prepare`);
- `autoencoder: STAGE` (flow stages): the `video_ae` stage whose run encodes its clips
  (default: the one of `init_from`'s run, else the last `video_ae` stage before it). Naming
  another autoencoder than the `init_from` stage's is the swap: the flow stage keeps every
  denoiser tensor whose shape still fits and re-initialises the rest (`model.reinit:
  changed | all | none`), writing `RUN/transfer.json` and `RUN/transfer.md`;
- `init_from: STAGE` (flow stages): an earlier flow stage whose EMA weights start this one.

The runner sets `data.path`, `data.autoencoder`, `model.init_from` and, with `holdout`,
`data.eval_clips`; `key=value` overrides reach any setting (`stages.i2v.train.max_steps=50`).
Every prepared folder comes from the same source files, so the held-out clips (the first
sorted ids: a file's id is the hash of its bytes) are the same clips in every stage.

Steps, in order, each skipped when its output is complete:

    synth videos → synth judge clips → prepare <name> ... → prepare judge → each stage
        → evaluate → report

- synth: skipped when the folder's `labels.json` records the same settings; the judge's real
  clips (seed + 2000, `evaluate.judge.clips`) never repeat a training clip;
- prepare: `voxforge.data.videos.prepare_videos` skips clips already stored;
- stages: the engine resumes from the newest checkpoint; a finished run is `skipped`. A flow
  stage's record says what it changed against the stage it started from (resolution, frames,
  autoencoder, conditioning) and, after a swap, how many tensors were kept and re-initialised;
- evaluate (`workflows.video_report.evaluate_videos`): skipped when `OUT/eval/video_eval.json`
  names the same checkpoints and settings;
- report: `report.md` + `report.json` rewritten from what the steps recorded.

Layout: `OUT/synth`, `OUT/synth_judge`, `OUT/videos/<name>`, `OUT/videos_judge`,
`OUT/runs/<stage>`, `OUT/eval/`, `OUT/report.{md,json}` and `OUT/pipeline.json` (each step,
its wall and CPU seconds, what it changed; `workflows.steps`). Each flow run is a model folder
for `voxforge generate video --model OUT/runs/<stage>`.

The entry checks, the recipe merge and the synth / train / evaluate / report steps are the
families' shared ones (`workflows.family`); this module keeps the video family's data (one
prepared folder per `data.prepare` entry), the autoencoder each flow stage encodes with and
what a stage changed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voxforge.config.core import from_dict, option
from voxforge.data.synth_videos import SynthVideosConfig, attribute_values, write_synth_videos
from voxforge.data.videos import VideoPrepareConfig, prepare_videos
from voxforge.errors import ConfigError
from voxforge.stages import Recipe
from voxforge.workflows import family
from voxforge.workflows.steps import StepRecord
from voxforge.workflows.video_report import (
    EVAL_RECORD,
    VideoEvaluateSpec,
    evaluate_videos,
    stage_changes,
    write_video_report,
)

__all__ = [
    "JUDGE_SEED_OFFSET",
    "VideoPipelineSpec",
    "load_video_pipeline",
    "run_video_pipeline",
    "video_stage_recipe",
]

#: the judge's real clips draw from seed + this, so they never repeat a training clip
JUDGE_SEED_OFFSET = 2000
STAGE_KINDS = ("video_ae", "video_flow")
PIPELINE_KEYS = ("recipe", "data_from", "autoencoder", "init_from")


@dataclass
class SynthVideosSpec:
    num: int = option(256, ge=1, help="clips of the training data")
    frames: int = option(9, ge=2, help="frames per clip")
    size: int = option(32, ge=16, le=1024, help="frame side in pixels (even)")
    fps: int = option(8, ge=1, le=120)
    seed: int = option(0, ge=0)
    shapes: list[str] = option(default_factory=list, help="a subset of the shapes (empty: all)")
    colours: list[str] = option(default_factory=list, help="a subset of the shape colours (empty: all)")
    backgrounds: list[str] = option(default_factory=list, help="a subset of the backgrounds (empty: all)")
    motions: list[str] = option(default_factory=list, help="a subset of the motions (empty: all)")
    scale: float = option(1.0, gt=0.0, le=2.5, help="shape size (every radius times this)")

    def __post_init__(self) -> None:
        SynthVideosConfig(
            num=self.num, frames=self.frames, size=self.size, fps=self.fps, **self.config_keys()
        )

    def config_keys(self) -> dict[str, Any]:
        """The SynthVideosConfig keys of the subsets given, and the shape scale."""
        keys = ("shapes", "colours", "backgrounds", "motions")
        return {key: tuple(getattr(self, key)) for key in keys if getattr(self, key)} | {"scale": self.scale}


@dataclass
class VideoDataSpec:
    source: str = option("", help="a folder or archive of captioned videos (instead of synth_videos)")
    synth_videos: SynthVideosSpec | None = option(None, help="the built-in captioned clips")
    prepare: dict[str, dict[str, Any]] = option(
        default_factory=dict,
        help="name -> voxforge.data.videos.VideoPrepareConfig settings: one prepared folder each",
    )


@dataclass
class VideoPipelineSpec:
    kind: str = option("video", choices=("video",), help="the pipeline kind")
    out: str = option("", help="output folder (the --out option overrides it)")
    data: VideoDataSpec = option(default_factory=VideoDataSpec)
    stages: dict[str, dict[str, Any]] = option(
        default_factory=dict,
        help="stage -> {recipe: NAME, data_from: PREPARED, autoencoder: STAGE, init_from: STAGE, ...}",
    )
    device: str = option("auto", help="device of every step (a stage's own train.device wins)")
    seed: int = option(0, ge=0, help="train.seed of every stage; the sampling noise of the evaluation")
    holdout: int | None = option(
        None, ge=0, help="held-out clips of every stage (data.eval_clips); None: each recipe's own"
    )
    evaluate: VideoEvaluateSpec | None = option(None, help="judge, prompts, sampling, checks")


def _resolve_autoencoders(spec: VideoPipelineSpec, kinds: dict[str, str], source: str) -> dict[str, str]:
    """flow stage -> the video_ae stage whose run encodes its clips (module docstring)."""
    chosen: dict[str, str] = {}
    before: list[str] = []
    for name, kind in kinds.items():
        entry = spec.stages[name]
        if kind == "video_flow":
            named = entry.get("autoencoder")
            if named is not None:
                if named not in before or kinds[named] != "video_ae":
                    raise ConfigError(
                        f"{source}: key 'stages.{name}.autoencoder': '{named}' is not a video_ae stage before "
                        f"it ({', '.join(s for s in before if kinds[s] == 'video_ae') or 'none'})"
                    )
                chosen[name] = named
            elif entry.get("init_from") in chosen:
                chosen[name] = chosen[entry["init_from"]]
            else:
                ae_stages = [s for s in before if kinds[s] == "video_ae"]
                if not ae_stages:
                    raise ConfigError(
                        f"{source}: key 'stages.{name}.autoencoder': no video_ae stage before it; a video "
                        "pipeline trains its autoencoder first"
                    )
                chosen[name] = ae_stages[-1]
        elif "autoencoder" in entry or "init_from" in entry:
            raise ConfigError(f"{source}: key 'stages.{name}': autoencoder and init_from are flow stage keys")
        before.append(name)
    return chosen


def load_video_pipeline(data: dict[str, Any], source: str) -> VideoPipelineSpec:
    """The typed `kind: video` pipeline of `data` (the file with its overrides applied)."""
    spec = from_dict(VideoPipelineSpec, {"kind": "video", **data}, source=source)
    family.check_source(spec.data, "synth_videos", "built-in clips", "your videos", source)
    if not spec.data.prepare:
        raise ConfigError(f"{source}: key 'data.prepare': name at least one prepared folder (name: settings)")
    for name, settings in spec.data.prepare.items():
        from_dict(VideoPrepareConfig, dict(settings or {}), source=source, prefix=f"data.prepare.{name}")

    def check_data_from(name: str, entry: dict[str, Any]) -> None:
        data_from = entry.get("data_from", next(iter(spec.data.prepare)))
        if data_from not in spec.data.prepare:
            raise ConfigError(
                f"{source}: key 'stages.{name}.data_from': '{data_from}' is not a prepared folder of "
                f"data.prepare ({', '.join(spec.data.prepare)})"
            )

    kinds = family.check_stages(spec.stages, source, STAGE_KINDS, "a video", check_data_from)
    _resolve_autoencoders(spec, kinds, source)
    family.check_evaluate(spec, kinds, source, "synth_videos", "clips")
    return spec


def stage_kinds(spec: VideoPipelineSpec, source: str = "") -> dict[str, str]:
    return family.kinds_of(spec.stages, source, STAGE_KINDS, "a video")


def video_stage_recipe(spec: VideoPipelineSpec, name: str, paths: dict[str, Any], source: str = "") -> Recipe:
    """The typed recipe of stage `name`: its recipe file, the entry's sections, the runner's paths."""
    return family.stage_recipe(spec, name, paths, source, keys=PIPELINE_KEYS)


def stage_paths(spec: VideoPipelineSpec, out: Path, name: str, kinds: dict[str, str]) -> dict[str, Any]:
    """The sections the runner sets for stage `name` (data.path, data.autoencoder, model.init_from)."""
    entry = spec.stages[name]
    data: dict[str, Any] = {
        "path": str(out / "videos" / entry.get("data_from", next(iter(spec.data.prepare))))
    }
    if spec.holdout is not None:
        data["eval_clips"] = spec.holdout
    paths: dict[str, Any] = {"data": data}
    if kinds[name] == "video_flow":
        data["autoencoder"] = str(out / "runs" / _resolve_autoencoders(spec, kinds, "")[name])
        if entry.get("init_from"):
            paths["model"] = {"init_from": str(out / "runs" / entry["init_from"])}
    return paths


class _VideoRun(family.FamilyRun):
    """One `run_video_pipeline` call: the output layout and the step record."""

    # --- data --------------------------------------------------------------------------
    def synth_videos(self, step: str, folder: Path, config: SynthVideosConfig) -> None:
        wanted = {"num": config.num, "frames": config.frames, "size": config.size, "fps": config.fps}
        wanted["seed"], wanted["scale"] = config.seed, config.scale
        values = attribute_values(config)

        def same_vocabulary(have: dict[str, Any]) -> bool:
            return have.get("attributes") == values

        def write() -> str:
            write_synth_videos(folder, config)
            return f"{config.num} clips of {config.frames} frames at {config.size} px -> {folder}"

        kept = f"{folder} already holds these {config.num} clips"
        self.synth(step, folder / "labels.json", wanted, write, kept, same_vocabulary)

    def prepare(self, step: str, source: Path, target: Path, settings: dict[str, Any], prefix: str) -> None:
        config = from_dict(
            VideoPrepareConfig,
            {"progress": False, "workers": 0, **settings},
            source=self.source,
            prefix=prefix,
        )

        def work() -> tuple[str, str, dict[str, Any]]:
            summary = prepare_videos([source], target, config)
            counts = summary.get("bucket_counts", {})
            buckets = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            status, detail, info = family.captioned_outcome(summary, source, target, "clip", f" ({buckets})")
            return status, detail, {**info, "buckets": counts}

        self.timed(step, work)

    # --- training ----------------------------------------------------------------------
    def changes(self, name: str, recipe: Recipe) -> dict[str, Any]:
        """A flow stage's changes against its `init_from` stage (`video_report.stage_changes`)."""
        if recipe.stage != "video_flow":
            return {}
        entry = self.spec.stages[name]
        return stage_changes(
            self.runs / name, self.runs / entry["init_from"] if entry.get("init_from") else None
        )


def run_video_pipeline(
    spec: VideoPipelineSpec,
    out: str | Path,
    *,
    source: str = "",
    log: Callable[[str], None] = lambda message: None,
    progress: bool = True,
    title: str = "voxforge video pipeline report",
) -> list[StepRecord]:
    """Run every step not yet complete (module docstring); returns what each step did."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = _VideoRun(spec, out, source, log)
    data = spec.data
    base_source = Path(data.source) if data.source else out / "synth"
    synth = data.synth_videos
    judge = spec.evaluate.judge if spec.evaluate is not None else None
    if synth is not None:
        settings = {"frames": synth.frames, "size": synth.size, "fps": synth.fps, **synth.config_keys()}
        run.synth_videos(
            "synth videos", base_source, SynthVideosConfig(num=synth.num, seed=synth.seed, **settings)
        )
        if judge is not None:
            run.synth_videos(
                "synth judge clips",
                out / "synth_judge",
                SynthVideosConfig(num=judge.clips, seed=synth.seed + JUDGE_SEED_OFFSET, **settings),
            )
    for name, settings in data.prepare.items():
        run.prepare(
            f"prepare {name}", base_source, out / "videos" / name, dict(settings), f"data.prepare.{name}"
        )
    if judge is not None:
        judged = spec.stages[spec.evaluate.model]
        judge_from = judge.prepared or judged.get("data_from", next(iter(data.prepare)))
        run.prepare(
            "prepare judge",
            out / "synth_judge",
            out / "videos_judge",
            dict(data.prepare[judge_from]),
            f"data.prepare.{judge_from}",
        )
    kinds = stage_kinds(spec, source)
    for name in spec.stages:
        recipe = video_stage_recipe(spec, name, stage_paths(spec, out, name, kinds), source)
        run.train_stage(name, recipe)
    if spec.evaluate is not None:
        evaluation = spec.evaluate
        # the checks' thresholds are the report's: changing them re-scores nothing
        run.evaluate(
            out / "eval" / EVAL_RECORD,
            lambda: evaluate_videos(evaluation, out, kinds, seed=spec.seed, device=run.device, log=log),
            unscored=("checks",),
        )
    run.report(lambda: write_video_report(out, title))
    return run.records
