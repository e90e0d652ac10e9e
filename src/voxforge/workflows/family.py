"""What the pipeline families share between their files and their runners (`kind: image`:
`workflows.image_pipeline`, `video`, `get3d`; the 3D one, `workflows.pipeline`, uses the
stage recipe, the entry checks and the outcomes of its training and mesh preparation).

Every family's pipeline file has `out`, `data` (a `source` or a built-in synth set), `stages`
(name -> `{recipe: NAME, <pipeline keys>, <recipe sections>}`), `device`, `seed`, `holdout` and
`evaluate`; its spec dataclass is its own (the keys' types and defaults differ), and what
reads those keys the same way lives here:

- the spec side: one source or one synth set (`check_source`), a stage entry's recipe and the
  stage it trains (`require_recipe`, `recipe_stage`, `entry_kind`, `kinds_of`), the stage
  order of `init_from` (`check_stages`), the evaluation's needs (`check_evaluate`), and
  `stage_recipe`: the recipe file, the entry's sections merged over it, the pipeline's seed
  and device as defaults and the runner's paths on top;
- the runner side: `FamilyRun`, a `StepRunner` with the `OUT/runs` folder, the device and the
  steps every family takes alike (synth set, stage training, evaluation once per checkpoint
  set and settings, report), and the outcome of a training call (`train_outcome`) and of a
  data preparation (`captioned_outcome`, `mesh_outcome`).

What differs stays with the family: its pipeline keys (`train_on`, `data_from`,
`autoencoder`), its data and evaluation steps, what its training records add (the video
family's `changes`), its checks and its report.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voxforge.config.core import load_yaml, to_dict
from voxforge.errors import ConfigError, UserError
from voxforge.recipe import recipe_from_data, resolve_recipe_path
from voxforge.stages import Recipe
from voxforge.train.checkpoint import latest_checkpoint
from voxforge.train.distributed import resolve_device
from voxforge.train.engine import TrainResult, train
from voxforge.workflows.report_parts import Report
from voxforge.workflows.steps import StepRecord, StepRunner, deep_merge, recorded

__all__ = [
    "STOPPED",
    "FamilyRun",
    "captioned_outcome",
    "check_evaluate",
    "check_source",
    "check_stages",
    "entry_kind",
    "kinds_of",
    "mesh_outcome",
    "recipe_stage",
    "require_recipe",
    "stage_recipe",
    "train_outcome",
]

#: the error of a stage that stopped before its last step ({name}, {step}, {reason})
STOPPED = "stage {name} stopped at step {step} ({reason}); re-run the same command to continue"


# --- the pipeline file ----------------------------------------------------------------------
def check_source(
    data: Any, synth: str, synth_what: str, source_what: str, source: str, *, one: str = "one of them"
) -> None:
    """`data.source` or the synth set `data.<synth>`, exactly one of them."""
    if bool(data.source) == (getattr(data, synth) is not None):
        raise ConfigError(
            f"{source}: key 'data': give '{synth}' ({synth_what}) or 'source' ({source_what}), {one}"
        )


def require_recipe(name: str, entry: Any, source: str, example: str = "") -> None:
    """A stage entry is a mapping naming its `recipe` (`example`: a hint after the message)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("recipe"), str):
        raise ConfigError(f"{source}: key 'stages.{name}.recipe': required, the recipe to train{example}")


def recipe_stage(entry: dict[str, Any]) -> Any:
    """The `stage` the entry's recipe file trains."""
    return load_yaml(resolve_recipe_path(entry["recipe"])).get("stage")


def entry_kind(name: str, entry: Any, source: str, kinds: tuple[str, ...], family: str) -> str:
    """The stage kind of entry `name`, one of `kinds` (`family`: "an image", "a video")."""
    require_recipe(name, entry, source)
    stage = recipe_stage(entry)
    if stage not in kinds:
        raise ConfigError(
            f"{source}: key 'stages.{name}.recipe': {entry['recipe']} trains '{stage}'; {family} "
            f"pipeline trains {' or '.join(kinds)}"
        )
    return str(stage)


def kinds_of(
    stages: dict[str, dict[str, Any]], source: str, kinds: tuple[str, ...], family: str
) -> dict[str, str]:
    """stage -> its kind (`entry_kind`), in training order."""
    return {name: entry_kind(name, entry, source, kinds, family) for name, entry in stages.items()}


def check_stages(
    stages: dict[str, dict[str, Any]],
    source: str,
    kinds: tuple[str, ...],
    family: str,
    check: Callable[[str, dict[str, Any]], None] = lambda name, entry: None,
) -> dict[str, str]:
    """stage -> its kind, in training order, after checking each entry: its recipe, its
    `init_from` (an earlier stage, both of the flow kind: the last of `kinds`), then `check`."""
    if not stages:
        raise ConfigError(f"{source}: key 'stages': name at least one stage")
    flow = kinds[-1]
    found: dict[str, str] = {}
    for name, entry in stages.items():
        found[name] = entry_kind(name, entry, source, kinds, family)
        init_from = entry.get("init_from")
        if init_from is not None and (init_from not in found or init_from == name):
            raise ConfigError(
                f"{source}: key 'stages.{name}.init_from': '{init_from}' is not a stage before it "
                f"({', '.join(list(found)[:-1]) or 'none'})"
            )
        if init_from is not None and (found[name], found[init_from]) != (flow, flow):
            raise ConfigError(f"{source}: key 'stages.{name}.init_from': both stages must train {flow}")
        check(name, entry)
    return found


def check_evaluate(spec: Any, kinds: dict[str, str], source: str, synth: str, what: str) -> None:
    """An `evaluate` section needs the synth set `data.<synth>` (the judge learns its labels);
    it then names (or defaults) the stages it judges."""
    if spec.evaluate is None:
        return
    if getattr(spec.data, synth) is None:
        raise ConfigError(
            f"{source}: key 'evaluate': the judge learns the attributes of the built-in {what}; "
            f"it needs 'data.{synth}'"
        )
    spec.evaluate.resolve_stages(spec.stages, kinds, source)


def stage_recipe(
    spec: Any, name: str, paths: dict[str, Any], source: str = "", keys: tuple[str, ...] = ("recipe",)
) -> Recipe:
    """The typed recipe of stage `name`: its recipe file, the entry's sections (its pipeline
    `keys` left out), `train.seed` / `train.device` from the pipeline unless set, `paths` on top."""
    entry = spec.stages[name]
    recipe_path = resolve_recipe_path(entry["recipe"])
    data = load_yaml(recipe_path)
    data.setdefault("train", {}).setdefault("seed", spec.seed)
    data = deep_merge(data, {k: v for k, v in entry.items() if k not in keys})
    data["train"].setdefault("device", spec.device)
    return recipe_from_data(
        deep_merge(data, paths), source=f"{recipe_path} (stage {name} of {source or 'the pipeline'})"
    )


# --- outcomes of the shared work ------------------------------------------------------------
def train_outcome(
    result: TrainResult, run_dir: Path, *, show_eval: bool = True
) -> tuple[str, str, dict[str, Any]]:
    """(status, detail, info) of a `train` call; "failed" when it stopped before its last step.
    `show_eval`: the final eval_* metrics in the detail."""
    if result.reason == "already_complete":
        return "skipped", f"{run_dir} already trained to step {result.step}", {}
    if result.reason != "max_steps":
        return "failed", f"stopped at step {result.step} ({result.reason})", {}
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    shown = ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if show_eval and k.startswith("eval_"))
    return "done", f"{result.step} steps -> {run_dir} {shown}".rstrip(), {"metrics": metrics}


def captioned_outcome(
    summary: dict[str, Any], source: Any, target: Path, item: str, note: str = ""
) -> tuple[str, str, dict[str, Any]]:
    """(status, detail, info) of `prepare_images` / `prepare_videos` (`item`: "image", "clip";
    `note` follows the count ready); no usable item is an error."""
    run = summary.get("this_run", {})
    status = "skipped" if not run.get("processed") else "done"
    detail = (
        f"{source} -> {target}: {summary['count']} {item}s ready{note}, {summary['failed']} failed "
        f"({run.get('processed', 0)} processed now)"
    )
    if not summary["count"]:
        raise UserError(f"{source}: no usable {item} (see {target / 'manifest.jsonl'})")
    return status, detail, {"count": summary["count"], "failed": summary["failed"]}


def mesh_outcome(summary: dict[str, Any], source: Path, target: Path) -> tuple[str, str]:
    """(status, detail) of `data.prepare.prepare`: skipped when it had no task left."""
    tasks = int(summary.get("this_run", {}).get("tasks", 1))
    counts = ", ".join(f"{k} {v.get('done', 0)}" for k, v in summary.get("steps", {}).items())
    return ("skipped" if tasks == 0 else "done"), f"{source} -> {target} ({counts})"


# --- the runner -----------------------------------------------------------------------------
class FamilyRun(StepRunner):
    """One pipeline call of a family: `OUT/runs/<stage>`, the device, and the steps every
    family takes alike."""

    def __init__(self, spec: Any, out: Path, source: str, log: Callable[[str], None]):
        super().__init__(spec, out, source, log)
        self.runs = out / "runs"
        self.device = resolve_device(spec.device)

    def synth(
        self,
        step: str,
        record: Path,
        wanted: dict[str, Any],
        write: Callable[[], str],
        kept: str,
        same: Callable[[dict[str, Any]], bool] = lambda have: True,
    ) -> None:
        """Skipped (detail `kept`) when `record` holds `wanted` and `same` agrees; else `write()`,
        whose return is the detail."""

        def work() -> tuple[str, str, dict[str, Any]]:
            have = recorded(record, wanted)
            if have is not None and same(have):
                return "skipped", kept, {}
            return "done", write(), {}

        self.timed(step, work)

    def changes(self, name: str, recipe: Recipe) -> dict[str, Any] | None:
        """What the run of stage `name` changed, read after its training: recorded under
        "changes", its "summary" joins the detail. None (here): nothing to record."""
        return None

    def train_stage(
        self, name: str, recipe: Recipe, *, stopped: str = STOPPED, show_eval: bool = True
    ) -> None:
        """Train stage `name` into `OUT/runs/<name>`; a stage that stops early is recorded as
        failed and raises `stopped`. `show_eval`: the final eval_* metrics in the detail."""
        run_dir = self.runs / name

        def work() -> tuple[str, str, dict[str, Any]]:
            result = train(recipe, run_dir, recipe_name=str(self.spec.stages[name]["recipe"]))
            changes = self.changes(name, recipe)
            extra = {} if changes is None else {"changes": changes}
            status, detail, info = train_outcome(result, run_dir, show_eval=show_eval)
            if status == "failed":
                self.record(StepRecord(name, "failed", detail))
                raise UserError(stopped.format(name=name, step=result.step, reason=result.reason))
            said = extra.get("changes", {}).get("summary", "")
            return status, detail + (f"; {said}" if said else ""), {**info, **extra}

        self.timed(name, work)

    def model_steps(self) -> dict[str, int | None]:
        """stage -> the step of its newest checkpoint (None: none yet)."""
        steps = {}
        for name in self.spec.stages:
            ckpt = latest_checkpoint(self.runs / name)
            steps[name] = ckpt.step if ckpt else None
        return steps

    def evaluate(
        self,
        path: Path,
        evaluate: Callable[[], dict[str, Any]],
        *,
        settings: dict[str, Any] | None = None,
        unscored: tuple[str, ...] = (),
    ) -> None:
        """The `evaluate` step: skipped when `path` records the same `settings` (default: the
        `evaluate` section, the seed and each stage's newest checkpoint step), but for the
        `evaluate` keys in `unscored`, which only the report reads; else `evaluate()`'s record
        (with a one-line "summary") is written with the settings."""
        if settings is None:
            settings = {
                "evaluate": to_dict(self.spec.evaluate),
                "seed": self.spec.seed,
                "model_steps": self.model_steps(),
            }

        def work() -> tuple[str, str, dict[str, Any]]:
            if recorded(path, settings, ignore={"evaluate": unscored}) is not None:
                return "skipped", f"{path} is up to date", {}
            result = evaluate()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**settings, **result}, indent=1))
            return "done", result["summary"], {}

        self.timed("evaluate", work)

    def report(self, write: Callable[[], Report]) -> None:
        """The `report` step: `write()` the report; the detail says whether its checks passed."""

        def work() -> tuple[str, str, dict[str, Any]]:
            written = write()
            return "done", f"{self.out / 'report.md'} ({written.verdict})", {}

        self.timed("report", work)
