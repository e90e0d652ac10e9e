"""`voxforge pipeline run FILE`: every step from meshes to an image-to-3D model, resumable.

A pipeline file names the data and one recipe per stage; each stage entry may carry recipe
sections that are merged over the recipe (so one file says everything, and `key=value`
overrides reach any setting: `stages.slat_vae.train.max_steps=50`):

```yaml
out: runs/pipeline_tiny                  # default output folder (--out overrides)
data:
  synth: {num: 24, seed: 0}              # the built-in dataset ... or:  source: path/to/meshes
  prepare: {resolution: 32, views: 24, image_size: 96, cond_views: 8, features: rgb}
stages:
  ss_vae:    {recipe: ss_vae_tiny, train: {max_steps: 300}}
  ss_flow:   {recipe: ss_flow_tiny}
  slat_vae:  {recipe: slat_vae_tiny}
  slat_flow: {recipe: slat_flow_tiny}
```

Steps, in order, each skipped when its output is complete:

    synth → prepare → ss_vae → encode ss → ss_flow → slat_vae → encode slat → slat_flow

- synth: skipped when `OUT/synth/labels.json` records the same seed and count;
- prepare: `voxforge.data.prepare` itself skips finished assets and steps;
- training: the engine resumes from the newest checkpoint and reports `already_complete`
  for finished runs (which takes a second: no data is read);
- encode: the encoders skip assets already encoded by the same checkpoint.

Paths the stages need are set by the pipeline (`data.path`, `data.latents`), overriding
whatever the recipes hold. A stage missing from `stages` is not run (and the stages after it
that need it fail with a message saying so). Layout: `OUT/synth`, `OUT/prepared`,
`OUT/runs/<stage>`, `OUT/latents/{ss,slat}`, and `OUT/pipeline.json` (what each step did and
how long it took, rewritten after every step). `OUT` is then a model folder for
`voxforge generate --model OUT`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxforge.config.core import apply_overrides, from_dict, load_yaml, option, to_dict
from voxforge.errors import ConfigError, UserError

__all__ = ["STAGE_ORDER", "PipelineSpec", "StepRecord", "load_pipeline", "run_pipeline"]

STAGE_ORDER = ("ss_vae", "ss_flow", "slat_vae", "slat_flow")
PIPELINE_RECORD = "pipeline.json"


@dataclass
class SynthSpec:
    num: int = option(32, ge=1, help="objects in the built-in procedural dataset")
    seed: int = option(0, ge=0)


@dataclass
class DataSpec:
    source: str = option("", help="folder of meshes to prepare (instead of synth)")
    synth: SynthSpec | None = option(None, help="write the built-in dataset and prepare it")
    prepare: dict[str, Any] = option(default_factory=dict, help="voxforge.data.PrepareConfig settings")


@dataclass
class PipelineSpec:
    out: str = option("", help="output folder (the --out option overrides it)")
    data: DataSpec = option(default_factory=DataSpec)
    stages: dict[str, dict[str, Any]] = option(
        default_factory=dict, help="stage -> {recipe: NAME, sections...}"
    )
    device: str = option("auto", help="device of the encode steps (training uses each recipe's train.device)")
    seed: int = option(0, ge=0, help="default train.seed of every stage")


def load_pipeline(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[PipelineSpec, str]:
    from voxforge.config.recipe import resolve_recipe_path

    resolved = resolve_recipe_path(path)
    data = apply_overrides(load_yaml(resolved), overrides)
    source = str(resolved) + (" (with command-line overrides)" if overrides else "")
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
        if not isinstance(entry, dict) or not isinstance(entry.get("recipe"), str):
            raise ConfigError(
                f"{source}: key 'stages.{name}.recipe': required, the recipe to train (e.g. {name}_tiny)"
            )
    return spec, source


@dataclass
class StepRecord:
    step: str
    status: str  # done | skipped | failed
    detail: str = ""
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def stage_recipe(spec: PipelineSpec, stage: str, paths: dict[str, Any], source: str = "") -> Any:
    """The typed recipe of one stage: its recipe file, the entry's sections, the pipeline's paths."""
    from voxforge.config.recipe import recipe_from_data, resolve_recipe_path

    entry = dict(spec.stages[stage])
    recipe_path = resolve_recipe_path(entry.pop("recipe"))
    data = load_yaml(recipe_path)
    if data.get("stage") != stage:
        raise ConfigError(
            f"{source}: key 'stages.{stage}.recipe': {recipe_path} trains '{data.get('stage')}', not '{stage}'"
        )
    data.setdefault("train", {}).setdefault("seed", spec.seed)
    data = _deep_merge(data, entry)
    data = _deep_merge(data, {"data": paths})
    return recipe_from_data(data, source=f"{recipe_path} (stage {stage} of {source or 'the pipeline'})")


def run_pipeline(
    spec: PipelineSpec,
    out: str | Path,
    *,
    source: str = "",
    log: Callable[[str], None] = lambda message: None,
    progress: bool = True,
) -> list[StepRecord]:
    """Run every step not yet complete (module docstring); returns what each step did."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records: list[StepRecord] = []
    prepared = out / "prepared"
    runs = out / "runs"

    def record(rec: StepRecord) -> None:
        records.append(rec)
        log(f"{rec.step:<12} {rec.status:<8} {rec.seconds:7.1f} s  {rec.detail}")
        payload = {"source": source, "spec": to_dict(spec), "steps": [to_dict(r) for r in records]}
        tmp = out / f".{PIPELINE_RECORD}.tmp"
        tmp.write_text(json.dumps(payload, indent=1, default=str))
        tmp.replace(out / PIPELINE_RECORD)

    # --- data ------------------------------------------------------------------------------
    if spec.data.synth is not None:
        from voxforge.data.synth import SynthConfig, write_dataset

        start = time.perf_counter()
        folder = out / "synth"
        labels = folder / "labels.json"
        wanted = {"seed": spec.data.synth.seed, "num": spec.data.synth.num}
        if labels.is_file() and {k: json.loads(labels.read_text()).get(k) for k in wanted} == wanted:
            record(StepRecord("synth", "skipped", f"{folder} already holds {wanted['num']} objects"))
        else:
            write_dataset(folder, SynthConfig(num=spec.data.synth.num, seed=spec.data.synth.seed))
            record(
                StepRecord(
                    "synth", "done", f"{wanted['num']} objects -> {folder}", time.perf_counter() - start
                )
            )
        mesh_source = folder
    else:
        mesh_source = Path(spec.data.source)
    from voxforge.data.prepare import PrepareConfig, prepare

    settings = {"progress": progress, **spec.data.prepare}
    prepare_cfg = from_dict(PrepareConfig, settings, source=source, prefix="data.prepare")
    start = time.perf_counter()
    summary = prepare(mesh_source, prepared, prepare_cfg)
    seconds = time.perf_counter() - start
    tasks = int(summary.get("this_run", {}).get("tasks", 1))
    counts = ", ".join(f"{k} {v.get('done', 0)}" for k, v in summary.get("steps", {}).items())
    status = "skipped" if tasks == 0 else "done"
    record(
        StepRecord(
            "prepare", status, f"{mesh_source} -> {prepared} ({counts})", seconds, {"summary": summary}
        )
    )

    # --- stages ---------------------------------------------------------------------------
    latents = {"ss": out / "latents" / "ss", "slat": out / "latents" / "slat"}
    stage_paths = {
        "ss_vae": {"path": str(prepared)},
        "ss_flow": {"latents": str(latents["ss"]), "prepared": str(prepared)},
        "slat_vae": {"path": str(prepared)},
        "slat_flow": {"latents": str(latents["slat"]), "prepared": str(prepared)},
    }
    encoders = {"ss_vae": ("encode_ss", "ss"), "slat_vae": ("encode_slat", "slat")}
    for stage in STAGE_ORDER:
        if stage not in spec.stages:
            record(StepRecord(stage, "skipped", "not in the pipeline file"))
            continue
        recipe = stage_recipe(spec, stage, stage_paths[stage], source)
        _train_stage(stage, recipe, runs / stage, record)
        if stage in encoders:
            step, kind = encoders[stage]
            _encode(step, runs / stage, prepared, latents[kind], spec.device, record, log)
    return records


def _train_stage(stage: str, recipe: Any, run_dir: Path, record: Callable[[StepRecord], None]) -> None:
    from voxforge.train.engine import train

    start = time.perf_counter()
    result = train(recipe, run_dir)
    seconds = time.perf_counter() - start
    if result.reason == "already_complete":
        record(StepRecord(stage, "skipped", f"{run_dir} already trained to step {result.step}", seconds))
        return
    if result.reason != "max_steps":
        record(StepRecord(stage, "failed", f"stopped at step {result.step} ({result.reason})", seconds))
        raise UserError(
            f"stage {stage} stopped at step {result.step} ({result.reason}); re-run the same command to continue"
        )
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k.startswith("eval_"))
    record(
        StepRecord(
            stage, "done", f"{result.step} steps -> {run_dir} {shown}".rstrip(), seconds, {"metrics": metrics}
        )
    )


def _encode(
    step: str,
    vae_run: Path,
    prepared: Path,
    out: Path,
    device: str,
    record: Callable[[StepRecord], None],
    log: Callable[[str], None],
) -> None:
    from voxforge.train.distributed import resolve_device

    if step == "encode_ss":
        from voxforge.pipelines.structure import encode_dataset as encoder
    else:
        from voxforge.pipelines.encode_slat import encode_slat_dataset as encoder
    start = time.perf_counter()
    summary = encoder(vae_run, prepared, out, device=resolve_device(device), log=log)
    seconds = time.perf_counter() - start
    status = "skipped" if summary["encoded"] == 0 else "done"
    detail = f"{summary['total']} assets in {out} ({summary['encoded']} encoded now, {summary['kept']} kept)"
    record(StepRecord(step, status, detail, seconds, {"summary": summary}))
