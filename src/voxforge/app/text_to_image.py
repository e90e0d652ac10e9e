"""The text → image tab (the image family, Sana's row): a prompt in, a PNG out.

`TextToImageService` runs `pipelines.image.ImagePipeline` — what `voxforge generate image`
runs — on the models of the tab: image_flow run folders and local diffusers Sana folders
given with `--model` or found under `--runs`. LoRA runs (image_flow runs with
`model.finetune: lora`) are the tab's LoRA choice: a LoRA run loads with the base it was
trained on (`runs.load_image_transformer` rebuilds it from the run's `init_from` /
`pretrained`), so choosing one generates with base + adapters. Each pipeline loads on first
use and stays loaded.

Endpoint `/text_to_image` (prompt, negative prompt, width, height, steps, guidance, seed,
sampler, model, LoRA → the image, its .png download, the record). Each request is checked
(prompt length, size a multiple of the model's factor and at most `max_side`, steps, guidance,
seed) before sampling, and writes `image.png` and `generation.json` into its job folder.
The checks, controls, pipeline cache and record it has in common with the video tab come from
`app.prompt_tabs`; the LoRA choice is its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from voxforge.app import prompt_tabs
from voxforge.app.registry import AppContext, Family, model_labels
from voxforge.app.requests import RequestError, check_choice
from voxforge.app.ui import endpoint
from voxforge.errors import UserError
from voxforge.pipelines.image import SAMPLERS, ImagePipeline

__all__ = ["FAMILY", "NO_LORA", "TextToImageService", "is_image_model", "is_lora_run"]

NO_LORA = "none"


def _run_config(path: Path) -> dict[str, Any]:
    return prompt_tabs.read_run_config(path) or {}


def is_lora_run(path: Path) -> bool:
    config = _run_config(path)
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    return config.get("stage") == "image_flow" and model.get("finetune") == "lora"


def is_image_model(path: Path) -> bool:
    """An image_flow run (with a checkpoint) or a local diffusers Sana folder."""
    path = Path(path)
    if _run_config(path).get("stage") == "image_flow":
        return (path / "checkpoints").is_dir()
    return (path / "model_index.json").is_file() and (path / "transformer").is_dir()


def discover(folder: Path) -> list[Path]:
    """The image_flow runs under `folder` (`train.monitor.find_runs`: a pipeline folder's runs/)."""
    return prompt_tabs.discover_models(folder, is_image_model)


@dataclass
class Picture:
    path: Path  # image.png in the job folder
    record: dict[str, Any]


class TextToImageService:
    def __init__(self, models: list[Path], context: AppContext):
        self.models = model_labels([m for m in models if not is_lora_run(m)])
        self.loras = model_labels([m for m in models if is_lora_run(m)])
        if not self.models and not self.loras:
            raise UserError("the text → image tab needs at least one image model")
        self.context = context
        self._pipelines: prompt_tabs.PipelineCache[ImagePipeline] = prompt_tabs.PipelineCache()

    def choose(self, model: str | None, lora: str | None) -> Path:
        """The folder a request runs: the LoRA run when one is chosen, else the model."""
        if lora not in (None, "", NO_LORA):
            return self.loras[check_choice("LoRA", lora, list(self.loras))]
        if not self.models:
            raise RequestError(f"choose a LoRA ({', '.join(self.loras)}): no base model is loaded")
        if model in (None, ""):
            return next(iter(self.models.values()))
        return self.models[check_choice("model", model, list(self.models))]

    def pipeline(self, folder: Path) -> ImagePipeline:
        return self._pipelines.get(
            folder, lambda: ImagePipeline.from_model(folder, device=self.context.device)
        )

    def generate(
        self,
        prompt: Any,
        negative: Any = "",
        *,
        width: Any = None,
        height: Any = None,
        steps: Any = 20,
        cfg: Any = 4.5,
        seed: Any = 0,
        sampler: Any = "dpm",
        model: str | None = None,
        lora: str | None = None,
        progress: Callable[[int, int], None] | None = None,  # (step, steps)
    ) -> Picture:
        limits = self.context.limits
        request = prompt_tabs.check_prompt_request(
            limits, prompt, negative, steps=steps, cfg=cfg, seed=seed, sampler=sampler, samplers=SAMPLERS
        )
        folder = self.choose(model, lora)
        pipeline = self.pipeline(folder)
        default_w, default_h = pipeline.resolution
        width = prompt_tabs.check_side("width", width, default_w, limits)
        height = prompt_tabs.check_side("height", height, default_h, limits)
        size = pipeline.check_size((width, height))
        start = time.perf_counter()
        image = pipeline.generate(
            [request.prompt],
            negative=request.negative,
            steps=request.steps,
            cfg=request.cfg,
            seed=request.seed,
            size=size,
            sampler=request.sampler,
            callback=prompt_tabs.step_progress(progress, request.steps),
        )[0]
        job = self.context.jobs.new("text_to_image")
        path = job / "image.png"
        Image.fromarray(image).save(path)
        record = {
            "model": str(folder.resolve()),
            "lora": lora not in (None, "", NO_LORA),
            "prompt": request.prompt,
            "negative": request.negative,
            "size": list(size),
            "sampler": request.sampler_record(flow_shift=pipeline.flow_shift),
        }
        record = prompt_tabs.write_generation(
            job, record, seed=request.seed, start=start, files=["image.png"]
        )
        return Picture(path, record)


def build(context: AppContext, models: list[Path]) -> None:
    """The tab's components and its endpoint `/text_to_image`."""
    service = TextToImageService(models, context)
    limits = context.limits
    first = service.pipeline(service.choose(None, None if service.models else next(iter(service.loras))))
    factor = first.factor
    width0, height0 = first.resolution
    with gr.Row():
        with gr.Column():
            prompt_box, negative_box = prompt_tabs.prompt_boxes(limits)
            with gr.Row():
                model_box = gr.Dropdown(
                    list(service.models),
                    value=next(iter(service.models), None),
                    label="Model",
                    visible=bool(service.models),
                )
                lora_box = gr.Dropdown(
                    [NO_LORA, *service.loras],
                    value=NO_LORA if service.models else next(iter(service.loras)),
                    label="LoRA (runs found under --runs)",
                )
            width_box, height_box = prompt_tabs.size_sliders(factor, limits, width0, height0)
            steps_box, cfg_box, seed_box, sampler_box = prompt_tabs.sampling_controls(
                limits, steps=20, cfg=4.5, samplers=SAMPLERS, sampler="dpm"
            )
            run_box = gr.Button("Generate", variant="primary", elem_id="generate-image")
        with gr.Column():
            result_box = gr.Image(label="Image", type="filepath", elem_id="image-result")
            download_box = gr.File(label="Download")
            record_box = gr.JSON(label="generation.json")

    @endpoint
    def text_to_image(
        prompt: Any,
        negative: Any,
        width: Any,
        height: Any,
        steps: Any,
        cfg: Any,
        seed: Any,
        sampler: Any,
        model: str | None,
        lora: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - how gradio injects its progress tracker
    ) -> tuple[Any, ...]:
        picture = service.generate(
            prompt,
            negative,
            width=width,
            height=height,
            steps=steps,
            cfg=cfg,
            seed=seed,
            sampler=sampler,
            model=model,
            lora=lora,
            progress=prompt_tabs.progress_reporter(progress),
        )
        return str(picture.path), str(picture.path), picture.record

    run_box.click(
        text_to_image,
        [
            prompt_box,
            negative_box,
            width_box,
            height_box,
            steps_box,
            cfg_box,
            seed_box,
            sampler_box,
            model_box,
            lora_box,
        ],
        [result_box, download_box, record_box],
        api_name="text_to_image",
        concurrency_id="models",
    )


FAMILY = Family(
    name="text_to_image",
    title="Text → image",
    claims=is_image_model,
    discover=discover,
    build=build,
    order=10,
)
