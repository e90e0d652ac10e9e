"""The text / image → video tab (the video family, Open-Sora's row): a prompt (and a first
frame) in, an .mp4 and a .gif out.

`TextToVideoService` runs `pipelines.video.VideoPipeline` — what `voxforge generate video`
runs — on video_flow run folders (or their `export/` folders) given with `--model` or found
under `--runs`. An optional first frame makes it image → video: the upload passes the app's
checks (`requests.check_image_upload`: by content, declared size), is read as a one-frame clip
by `data.video_io.read_image_frame`, resized to cover the clip and centre-cropped
(`cover_crop`), as the command does. The frame count must be one the autoencoder takes
(`VideoPipeline.check_frames` names the valid ones); the size a multiple of its factor.

Endpoint `/text_to_video` (prompt, negative, first frame or None, width, height, frames,
steps, guidance, seed, sampler, model → the .mp4, the .gif, [.mp4, .gif], the record). Each
request writes `video.mp4`, `video.gif` and `generation.json` into its job folder. The
first frame and the frame count are this tab's; the rest of a request goes through
`app.prompt_tabs`, as the image tab's does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import torch
from torch import Tensor

from voxforge.app import prompt_tabs
from voxforge.app.registry import AppContext, Family, model_labels
from voxforge.app.requests import RequestError, check_choice, check_image_upload, check_int
from voxforge.app.ui import endpoint
from voxforge.data.video_io import VideoLimits, cover_crop, read_image_frame
from voxforge.errors import UserError
from voxforge.export.video import write_gif, write_mp4
from voxforge.pipelines.video import DENOISER_INFO, VideoPipeline
from voxforge.representations.mesh import AssetError

__all__ = ["FAMILY", "Clip", "TextToVideoService", "is_video_model"]

SAMPLERS = ("euler", "heun", "dpm")
MAX_FRAMES = 257


def is_video_model(path: Path) -> bool:
    """A video_flow run (with a checkpoint) or the export/ folder of one."""
    path = Path(path)
    config = prompt_tabs.read_run_config(path)
    if config is not None:
        return config.get("stage") == "video_flow" and (path / "checkpoints").is_dir()
    return (path / DENOISER_INFO).is_file()


def discover(folder: Path) -> list[Path]:
    return prompt_tabs.discover_models(folder, is_video_model)


@dataclass
class Clip:
    mp4: Path
    gif: Path
    record: dict[str, Any]


class TextToVideoService:
    def __init__(self, models: list[Path], context: AppContext):
        if not models:
            raise UserError("the video tab needs at least one video model")
        self.models = model_labels(models)
        self.context = context
        self._pipelines: prompt_tabs.PipelineCache[VideoPipeline] = prompt_tabs.PipelineCache()

    @property
    def labels(self) -> list[str]:
        return list(self.models)

    def pipeline(self, label: str | None = None) -> VideoPipeline:
        label = self.labels[0] if label in (None, "") else check_choice("model", label, self.labels)
        return self._pipelines.get(
            label, lambda: VideoPipeline.from_model(self.models[label], device=self.context.device)
        )

    def first_frame(self, upload: Any, size: tuple[int, int]) -> tuple[str, Tensor]:
        """(the upload's name, the frame [1, 3, H, W] in [-1, 1] covering `size` (W, H))."""
        path = check_image_upload(upload, self.context.limits)
        limits = VideoLimits(max_frame_pixels=self.context.limits.max_image_pixels)
        try:
            _, rgb = read_image_frame(path, path.name, limits)
        except AssetError as err:
            raise RequestError(f"{path.name}: {err}") from None
        frame = cover_crop(rgb, (rgb.shape[1], rgb.shape[0]), size)  # [H, W, 3] uint8
        return path.name, torch.from_numpy(frame.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)

    def generate(
        self,
        prompt: Any,
        negative: Any = "",
        *,
        image: Any = None,
        width: Any = None,
        height: Any = None,
        frames: Any = None,
        steps: Any = 30,
        cfg: Any = 5.0,
        seed: Any = 0,
        sampler: Any = "euler",
        model: str | None = None,
        progress: Callable[[int, int], None] | None = None,  # (step, steps)
    ) -> Clip:
        limits = self.context.limits
        request = prompt_tabs.check_prompt_request(
            limits, prompt, negative, steps=steps, cfg=cfg, seed=seed, sampler=sampler, samplers=SAMPLERS
        )
        pipeline = self.pipeline(model)
        default_w, default_h = pipeline.size
        width = prompt_tabs.check_side("width", width, default_w, limits)
        height = prompt_tabs.check_side("height", height, default_h, limits)
        frames = pipeline.frames if frames in (None, 0) else check_int("frames", frames, 1, MAX_FRAMES)
        frames = pipeline.check_frames(frames)
        size = pipeline.check_size((width, height))
        first_name, first = (None, None) if image in (None, "", []) else self.first_frame(image, size)
        start = time.perf_counter()
        shift = pipeline.shift_for(frames, size)
        clip = pipeline.generate(
            request.prompt,
            request.negative,
            steps=request.steps,
            cfg=request.cfg,
            seed=request.seed,
            size=size,
            frames=frames,
            sampler=request.sampler,
            image=first,
            time_shift=shift,
            callback=prompt_tabs.step_progress(progress, request.steps),
        )[0]
        job = self.context.jobs.new("text_to_video")
        fps = max(1, round(pipeline.fps))
        mp4 = write_mp4(clip, job / "video.mp4", fps=fps)
        gif = write_gif(clip, job / "video.gif", fps=fps)
        record = {
            "model": str(self.models[model or self.labels[0]].resolve()),
            "prompt": request.prompt,
            "negative": request.negative,
            "first_frame": first_name,
            "frames": frames,
            "size": list(size),
            "fps": fps,
            "sampler": request.sampler_record(time_shift=shift),
        }
        record = prompt_tabs.write_generation(
            job, record, seed=request.seed, start=start, files=["video.mp4", "video.gif"]
        )
        return Clip(Path(mp4), Path(gif), record)


def build(context: AppContext, models: list[Path]) -> None:
    """The tab's components and its endpoint `/text_to_video`."""
    service = TextToVideoService(models, context)
    limits = context.limits
    first = service.pipeline()
    factor = first.factor
    width0, height0 = first.size
    with gr.Row():
        with gr.Column():
            prompt_box, negative_box = prompt_tabs.prompt_boxes(limits)
            image_box = gr.File(label="First frame (optional: image → video)", file_types=["image"])
            model_box = gr.Dropdown(
                service.labels, value=service.labels[0], label="Model", visible=len(service.labels) > 1
            )
            width_box, height_box = prompt_tabs.size_sliders(factor, limits, width0, height0)
            frames_box = gr.Number(
                first.frames, label="Frames (1 + k × the autoencoder's time compression)", precision=0
            )
            steps_box, cfg_box, seed_box, sampler_box = prompt_tabs.sampling_controls(
                limits, steps=30, cfg=5.0, samplers=SAMPLERS, sampler="euler"
            )
            run_box = gr.Button("Generate", variant="primary", elem_id="generate-video")
        with gr.Column():
            video_box = gr.Video(label="Video", autoplay=True, loop=True)
            gif_box = gr.Image(label="GIF preview", type="filepath")
            downloads_box = gr.File(label="Downloads", file_count="multiple")
            record_box = gr.JSON(label="generation.json")

    @endpoint
    def text_to_video(
        prompt: Any,
        negative: Any,
        image: Any,
        width: Any,
        height: Any,
        frames: Any,
        steps: Any,
        cfg: Any,
        seed: Any,
        sampler: Any,
        model: str | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - how gradio injects its progress tracker
    ) -> tuple[Any, ...]:
        clip = service.generate(
            prompt,
            negative,
            image=image,
            width=width,
            height=height,
            frames=frames,
            steps=steps,
            cfg=cfg,
            seed=seed,
            sampler=sampler,
            model=model,
            progress=prompt_tabs.progress_reporter(progress),
        )
        return str(clip.mp4), str(clip.gif), [str(clip.mp4), str(clip.gif)], clip.record

    run_box.click(
        text_to_video,
        [
            prompt_box,
            negative_box,
            image_box,
            width_box,
            height_box,
            frames_box,
            steps_box,
            cfg_box,
            seed_box,
            sampler_box,
            model_box,
        ],
        [video_box, gif_box, downloads_box, record_box],
        api_name="text_to_video",
        concurrency_id="models",
    )


FAMILY = Family(
    name="text_to_video",
    title="Text / image → video",
    claims=is_video_model,
    discover=discover,
    build=build,
    order=20,
)
