"""What the prompt tabs share: text → image (`text_to_image`) and text / image → video
(`text_to_video`).

Both take a prompt and a negative prompt, a size, sampler steps, guidance, a seed and a
sampler; both pick a model folder the tab was given, load its pipeline on first use and keep
it; both write their files and `generation.json` into one job folder per request. Those
steps live here once:

- finding models: `read_run_config` (a run's config.yaml, or None without one) and
  `discover_models` (the folder itself, else the runs `train.monitor.find_runs` lists);
- loading: `PipelineCache`, one pipeline per key, loaded under a lock;
- the request: `check_prompt_request` (prompt lengths, steps, guidance, seed, sampler: in
  that order, with the messages of `requests`), `check_side` (a width or height, the
  model's default for None or 0), `step_progress` (the sampler's callback → the page);
- the page: `prompt_boxes`, `size_sliders`, `sampling_controls` (each creates its
  components in the order the tabs show them) and `progress_reporter` (gradio's bar);
- the output: `write_generation` (the record's seed, seconds and files, then
  `generation.json`).

What differs stays with each tab: which folders are its models (LoRA runs, export folders),
extra inputs (the first frame, the frame count), the files written and the record's other
fields. No pipeline is imported here.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import gradio as gr

from voxforge.app.requests import RequestError, RequestLimits, check_choice, check_float, check_int
from voxforge.app.ui import slider
from voxforge.config.core import load_yaml
from voxforge.errors import UserError
from voxforge.train.monitor import find_runs

__all__ = [
    "PipelineCache",
    "PromptRequest",
    "check_prompt_request",
    "check_side",
    "discover_models",
    "progress_reporter",
    "prompt_boxes",
    "read_run_config",
    "sampling_controls",
    "size_sliders",
    "step_progress",
    "write_generation",
]

Pipeline = TypeVar("Pipeline")
#: a tab's progress: (sampler steps done, steps)
Progress = Callable[[int, int], None]


def read_run_config(path: Path) -> dict[str, Any] | None:
    """A run folder's config.yaml; {} when it cannot be read, None when there is none."""
    config = path / "config.yaml"
    if not config.is_file():
        return None
    try:
        return load_yaml(config)
    except (UserError, OSError, ValueError):
        return {}


def discover_models(folder: Path, claims: Callable[[Path], bool]) -> list[Path]:
    """`folder` when it is a model of the tab, else the runs under it (`train.monitor.find_runs`:
    a pipeline folder's runs/) that are."""
    if claims(folder):
        return [folder]
    return [run for run in find_runs(folder) if claims(run)]


class PipelineCache(Generic[Pipeline]):
    """Pipelines loaded on first use and kept, one per key; one load at a time."""

    def __init__(self) -> None:
        self._loaded: dict[Any, Pipeline] = {}
        self._lock = threading.Lock()

    def get(self, key: Any, load: Callable[[], Pipeline]) -> Pipeline:
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = load()
            return self._loaded[key]


@dataclass(frozen=True)
class PromptRequest:
    """A prompt request's checked parameters (`check_prompt_request`)."""

    prompt: str
    negative: str  # "" when none was sent
    steps: int
    cfg: float
    seed: int
    sampler: str

    def sampler_record(self, **extra: Any) -> dict[str, Any]:
        """generation.json's "sampler": method, steps, guidance, then the family's `extra`."""
        return {"method": self.sampler, "steps": self.steps, "cfg_scale": self.cfg, **extra}


def check_prompt_request(
    limits: RequestLimits,
    prompt: Any,
    negative: Any,
    *,
    steps: Any,
    cfg: Any,
    seed: Any,
    sampler: Any,
    samplers: Sequence[str],
) -> PromptRequest:
    """The prompts (text, at most `max_prompt_chars` each), steps, guidance, seed and sampler
    of a request, checked before any model loads."""
    if not isinstance(prompt, str) or not isinstance(negative, str | None):
        raise RequestError("prompt and negative prompt must be text")
    if len(prompt) > limits.max_prompt_chars or len(negative or "") > limits.max_prompt_chars:
        raise RequestError(f"prompts are limited to {limits.max_prompt_chars} characters")
    return PromptRequest(
        prompt=prompt,
        negative=negative or "",
        steps=check_int("steps", steps, 1, limits.max_steps),
        cfg=check_float("guidance", cfg, 0.0, limits.max_cfg),
        seed=check_int("seed", seed, 0, limits.max_seed),
        sampler=check_choice("sampler", sampler, samplers),
    )


def check_side(name: str, value: Any, default: int, limits: RequestLimits) -> int:
    """A width or height: `default` for None or 0, else a whole number up to `max_side`."""
    return default if value in (None, 0) else check_int(name, value, 1, limits.max_side)


def step_progress(progress: Progress | None, steps: int) -> Callable[[int, float, Any], None] | None:
    """The sampler's step callback (step index, time, state) as (steps done, steps)."""
    return None if progress is None else lambda i, t, x: progress(i + 1, steps)


def write_generation(
    job: Path, record: dict[str, Any], *, seed: int, start: float, files: list[str]
) -> dict[str, Any]:
    """`record` closed by the seed, the seconds since `start` and the files written, saved as
    the job's generation.json."""
    record = {**record, "seed": seed, "seconds": round(time.perf_counter() - start, 3), "files": files}
    (job / "generation.json").write_text(json.dumps(record, indent=1))
    return record


# ---------------------------------------------------------------- the page


def prompt_boxes(limits: RequestLimits) -> tuple[gr.Textbox, gr.Textbox]:
    """(prompt, negative prompt), each limited to `max_prompt_chars`."""
    prompt_box = gr.Textbox(label="Prompt", lines=2, max_length=limits.max_prompt_chars)
    negative_box = gr.Textbox(label="Negative prompt", max_length=limits.max_prompt_chars)
    return prompt_box, negative_box


def size_sliders(factor: int, limits: RequestLimits, width: int, height: int) -> tuple[gr.Slider, gr.Slider]:
    """A row of (width, height) sliders in steps of the model's `factor`, up to `max_side`."""
    with gr.Row():
        width_box = slider(factor, limits.max_side, width, step=factor, label="width")
        height_box = slider(factor, limits.max_side, height, step=factor, label="height")
    return width_box, height_box


def sampling_controls(
    limits: RequestLimits, *, steps: int, cfg: float, samplers: Sequence[str], sampler: str
) -> tuple[gr.Slider, gr.Slider, gr.Number, gr.Radio]:
    """(steps, guidance, seed, sampler) in two rows, with the tab's defaults."""
    with gr.Row():
        steps_box = slider(1, limits.max_steps, steps, step=1, label="steps")
        cfg_box = slider(0, limits.max_cfg, cfg, step=0.1, label="guidance")
    with gr.Row():
        seed_box = gr.Number(0, label="Seed", precision=0)
        sampler_box = gr.Radio(list(samplers), value=sampler, label="Sampler")
    return steps_box, cfg_box, seed_box, sampler_box


def progress_reporter(progress: gr.Progress) -> Progress:
    """(steps done, steps) → gradio's progress bar, "sampling: step i/n"."""
    return lambda step, total: progress((step, total), desc=f"sampling: step {step}/{total}")
