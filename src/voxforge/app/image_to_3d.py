"""The image → 3D tab: condition images in, Gaussians (.ply), turntable (.mp4) and mesh (.glb) out.

`ImageTo3DService` does the work without gradio's types: it checks a request
(`requests.check_image_uploads`, the parameter ranges), prepares the images exactly as
`voxforge generate` does (`ImageTo3DPipeline.load_images`: size-checked read, plain
background removed, alpha-box crop), runs both stages with a progress callback per sampler
step, and exports through `voxforge.export.export_asset` — the same writer as
`voxforge generate` — into a fresh job folder under the app's output folder, with a
`generation.json` record. `build` lays out the tab and names its endpoints:

- `/preprocess` (uploads → the images as the model will see them), run on upload;
- `/image_to_3d` (uploads, model, seed, steps and guidance of both stages, multi-image
  mode → processed images, turntable .mp4, .glb, [.glb, .ply, .mp4], the record).

Models are the folders `voxforge generate --model` takes: the output of `voxforge pipeline
run` or `voxforge demo`, any folder with `ss_flow/` and `slat_flow/` runs, or TRELLIS's
released models (a TRELLIS-image-large download or its `voxforge import trellis` folder),
which `image_to_3d_trellis.TrellisModel` runs as `voxforge generate` does — one image per
request, the folder's sampler settings as the fields' defaults, a textured FlexiCubes `.glb`.
Each model loads once, on first use, and stays loaded; choosing a model in the page sets
the step and guidance fields to its defaults. gradio is imported by `build`, so the folder
checks (`is_model_folder`, `discover`) run without it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from voxforge.app.image_to_3d_trellis import TrellisModel, check_trellis_guidance, is_trellis_model
from voxforge.app.registry import AppContext, Family, model_labels
from voxforge.app.requests import (
    RequestError,
    check_choice,
    check_float,
    check_image_uploads,
    check_int,
    user_message,
)
from voxforge.errors import UserError
from voxforge.export import ExportConfig, export_asset
from voxforge.models.conditioning import default_slat_sampler, default_structure_sampler
from voxforge.models.sampler_presets import SLAT_SAMPLER, STRUCTURE_SAMPLER
from voxforge.pipelines.image_to_3d import ImageTo3DPipeline, resolve_model_dir

__all__ = ["FAMILY", "Asset", "ImageTo3DService", "discover", "is_model_folder"]

MODES = ("stochastic", "multidiffusion")
FORMATS = ["glb", "ply", "mp4", "png"]
#: (stage key of the pipeline's progress callback) -> what the progress bar says
STAGE_NAMES = {
    "structure": "stage 1/2: structure flow",
    "latents": "stage 2/2: SLat flow",
    "decode": "decoding Gaussians and mesh",
    "export": "export: turntable, .ply, .glb",
}
VOXFORGE_DEFAULTS = {
    "steps": STRUCTURE_SAMPLER["steps"],
    "cfg": STRUCTURE_SAMPLER["cfg_scale"],
    "slat_steps": SLAT_SAMPLER["steps"],
    "slat_cfg": SLAT_SAMPLER["cfg_scale"],
}


def is_model_folder(path: Path) -> bool:
    """A voxforge model folder (ss_flow + slat_flow runs) or a TRELLIS one."""
    if is_trellis_model(path):
        return True
    try:
        resolve_model_dir(path)
    except UserError:
        return False
    return True


def discover(folder: Path, depth: int = 2) -> list[Path]:
    """Model folders at `folder` or up to `depth` levels below it (not inside one another)."""
    if is_model_folder(folder):
        return [folder]
    if depth == 0 or not folder.is_dir() or (folder / "config.yaml").is_file():  # a run: not inside it
        return []
    found = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += discover(child, depth - 1)
    return found


@dataclass
class Asset:
    """What one /image_to_3d request produced (every path inside its job folder)."""

    folder: Path
    processed: list[Path]  # the condition images as the model saw them
    glb: Path
    ply: Path
    mp4: Path
    record: dict[str, Any]


class ImageTo3DService:
    def __init__(self, models: list[Path], context: AppContext):
        if not models:
            raise UserError("the image → 3D tab needs at least one model folder")
        unique: dict[tuple[Path, ...], Path] = {}
        for path in models:  # a model folder and its runs/ name the same two runs: keep the first
            if is_trellis_model(path):
                unique.setdefault((path.resolve(),), path)
                continue
            ss, slat = resolve_model_dir(path)
            unique.setdefault((ss.resolve(), slat.resolve()), path)
        self.models = model_labels(list(unique.values()))
        self.context = context
        self._pipelines: dict[str, ImageTo3DPipeline | TrellisModel] = {}
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.models)

    def _label(self, label: str | None) -> str:
        return self.labels[0] if label in (None, "") else check_choice("model", label, self.labels)

    def is_trellis(self, label: str | None = None) -> bool:
        return is_trellis_model(self.models[self._label(label)])

    def pipeline(self, label: str | None = None) -> ImageTo3DPipeline | TrellisModel:
        label = self._label(label)
        with self._lock:
            if label not in self._pipelines:
                path = self.models[label]
                self._pipelines[label] = (
                    TrellisModel(path, self.context)
                    if is_trellis_model(path)
                    else ImageTo3DPipeline.from_model_dir(path, device=self.context.device)
                )
            return self._pipelines[label]

    def defaults(self, label: str | None = None) -> dict[str, float]:
        """The step and guidance fields' values for a model: TRELLIS's from its folder, else the presets."""
        pipeline = self.pipeline(label)
        return pipeline.defaults() if isinstance(pipeline, TrellisModel) else dict(VOXFORGE_DEFAULTS)

    def _load(self, uploads: Any, model: str | None) -> tuple[list[Path], Tensor, list[str]]:
        """(checked upload paths, condition images [K, 3, S, S] in [0, 1], notes), as `voxforge generate`."""
        paths = check_image_uploads(uploads, self.context.limits)
        pipeline = self.pipeline(model)
        try:
            if isinstance(pipeline, TrellisModel):
                return paths, *pipeline.load_images(paths)
            return paths, pipeline.load_images(paths), []
        except RequestError:
            raise
        except UserError as err:
            raise RequestError(user_message(err, paths)) from None

    def prepare(self, uploads: Any, model: str | None = None) -> np.ndarray:
        """The condition images [K, S, S, 3] uint8 as the model will see them."""
        return _pixels(self._load(uploads, model)[1])

    def _check_guidance(self, model: str | None, name: str, value: float) -> float:
        return check_trellis_guidance(name, value) if self.is_trellis(model) else value

    def generate(
        self,
        uploads: Any,
        *,
        model: str | None = None,
        seed: Any = 0,
        steps: Any = STRUCTURE_SAMPLER["steps"],
        cfg: Any = STRUCTURE_SAMPLER["cfg_scale"],
        slat_steps: Any = SLAT_SAMPLER["steps"],
        slat_cfg: Any = SLAT_SAMPLER["cfg_scale"],
        mode: Any = "stochastic",
        progress: Callable[[str, int, int], None] | None = None,  # (what, step, steps)
    ) -> Asset:
        limits = self.context.limits
        seed = check_int("seed", seed, 0, limits.max_seed)
        steps = check_int("structure steps", steps, 1, limits.max_steps)
        cfg = check_float("structure guidance", cfg, 0.0, limits.max_cfg)
        slat_steps = check_int("SLat steps", slat_steps, 1, limits.max_steps)
        slat_cfg = check_float("SLat guidance", slat_cfg, 0.0, limits.max_cfg)
        mode = check_choice("multi-image mode", mode, MODES)
        cfg = self._check_guidance(model, "structure guidance", cfg)
        slat_cfg = self._check_guidance(model, "SLat guidance", slat_cfg)
        start = time.perf_counter()
        paths, images, notes = self._load(uploads, model)
        pipeline = self.pipeline(model)
        folder = self.context.jobs.new("image_to_3d")
        processed = []
        for k, image in enumerate(_pixels(images)):
            processed.append(folder / f"input_{k}.png")
            Image.fromarray(image).save(processed[-1])

        def report(stage: str, step: int, total: int) -> None:
            if progress is not None:
                progress(STAGE_NAMES.get(stage, stage), step, total)

        if isinstance(pipeline, TrellisModel):
            files, fields = pipeline.generate(
                images,
                folder,
                seed=seed,
                steps=steps,
                cfg=cfg,
                slat_steps=slat_steps,
                slat_cfg=slat_cfg,
                progress=report,
            )
            fields["seconds"]["total"] = round(time.perf_counter() - start, 3)
            record = {
                "model": str(self.models[self._label(model)].resolve()),
                "kind": "trellis",
                "images": [p.name for p in paths],
                "seed": seed,
                **fields,
                "notes": notes + fields["notes"],
                "files": sorted(p.name for p in files.values()),
            }
            (folder / "generation.json").write_text(json.dumps(record, indent=1))
            return Asset(folder, processed, files["glb"], files["ply"], files["mp4"], record)
        result = pipeline.generate(
            images,
            seed=seed,
            structure_sampler=default_structure_sampler(steps=steps, cfg_scale=cfg),
            slat_sampler=default_slat_sampler(steps=slat_steps, cfg_scale=slat_cfg),
            mode=mode,
            progress=report,
        )
        report("export", 0, 1)
        export_start = time.perf_counter()
        config = ExportConfig(formats=FORMATS, frames=self.context.frames, size=self.context.size)
        files = export_asset(
            result.gaussians, folder, coords=result.coords, resolution=result.resolution, config=config
        )
        report("export", 1, 1)
        record = {
            "model": str(self.models[model or self.labels[0]].resolve()),
            "images": [p.name for p in paths],
            "mode": mode,
            "seed": seed,
            "structure_sampler": {"steps": steps, "cfg_scale": cfg},
            "slat_sampler": {"steps": slat_steps, "cfg_scale": slat_cfg},
            "resolution": result.resolution,
            "voxels": int(len(result.coords)),
            "gaussians": int(result.gaussians.num_gaussians),
            "fallback": result.fallback,
            "seconds": {
                **{k: round(v, 3) for k, v in result.timings.items()},
                "export": round(time.perf_counter() - export_start, 3),
                "total": round(time.perf_counter() - start, 3),
            },
            "files": sorted(p.name for p in files.values()),
        }
        (folder / "generation.json").write_text(json.dumps(record, indent=1))
        return Asset(folder, processed, files["glb"], files["ply"], files["mp4"], record)


def _pixels(images: Tensor) -> np.ndarray:  # [K, 3, S, S] in [0, 1] -> [K, S, S, 3] uint8
    return (images.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte().cpu().numpy()


def _display(pixels: np.ndarray, side: int = 256) -> list[np.ndarray]:
    """Condition images scaled up (nearest) so a 32-px model input is visible in the page."""
    shown = []
    for image in pixels:
        scale = max(1, side // max(image.shape[:2]))
        shown.append(image.repeat(scale, 0).repeat(scale, 1))
    return shown


def build(context: AppContext, models: list[Path]) -> None:
    """The tab's components and its endpoints `/preprocess` and `/image_to_3d`."""
    import gradio as gr

    from voxforge.app.ui import endpoint, slider

    service = ImageTo3DService(models, context)
    service.pipeline()  # load the first model now: a broken folder fails at start, not at first request
    defaults = service.defaults()
    limits = context.limits
    with gr.Row():
        with gr.Column():
            uploads_box = gr.File(
                label="Images (one, or several views of one object)",
                file_count="multiple",
                file_types=["image"],
                elem_id="image-upload",
            )
            processed_box = gr.Gallery(
                label="As the model sees them (background removed)",
                columns=4,
                height=200,
                object_fit="contain",
                elem_id="processed",
            )
            model_box = gr.Dropdown(
                service.labels, value=service.labels[0], label="Model", visible=len(service.labels) > 1
            )
            with gr.Row():
                seed_box = gr.Number(0, label="Seed", precision=0)
                mode_box = gr.Radio(list(MODES), value="stochastic", label="Multi-image mode")
            with gr.Accordion("Stage 1: structure", open=False):
                steps_box = slider(1, limits.max_steps, defaults["steps"], step=1, label="structure steps")
                cfg_box = slider(0, limits.max_cfg, defaults["cfg"], step=0.1, label="structure guidance")
            with gr.Accordion("Stage 2: structured latents", open=False):
                slat_steps_box = slider(
                    1, limits.max_steps, defaults["slat_steps"], step=1, label="SLat steps"
                )
                slat_cfg_box = slider(
                    0, limits.max_cfg, defaults["slat_cfg"], step=0.1, label="SLat guidance"
                )
            run_box = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Column():
            turntable_box = gr.Video(label="Turntable", autoplay=True, loop=True, elem_id="turntable")
            view_box = gr.Model3D(label="Mesh (.glb)", elem_id="model3d")
            downloads_box = gr.File(label="Downloads", file_count="multiple", elem_id="downloads")
            record_box = gr.JSON(label="generation.json")

    @endpoint
    def preprocess(files: Any, model: str | None) -> list[np.ndarray]:
        if not files:
            return []
        return _display(service.prepare(files, model))

    @endpoint
    def image_to_3d(
        files: Any,
        model: str | None,
        seed: Any,
        steps: Any,
        cfg: Any,
        slat_steps: Any,
        slat_cfg: Any,
        mode: Any,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 - how gradio injects its progress tracker
    ) -> tuple[Any, ...]:
        def report(what: str, step: int, total: int) -> None:
            progress((step, total), desc=f"{what}: step {step}/{total}" if total > 1 else what, unit="steps")

        asset = service.generate(
            files,
            model=model,
            seed=seed,
            steps=steps,
            cfg=cfg,
            slat_steps=slat_steps,
            slat_cfg=slat_cfg,
            mode=mode,
            progress=report,
        )
        shown = _display(np.stack([np.asarray(Image.open(p)) for p in asset.processed]))
        files_out = [str(asset.glb), str(asset.ply), str(asset.mp4)]
        return shown, str(asset.mp4), str(asset.glb), files_out, asset.record

    @endpoint
    def model_defaults(model: str | None) -> tuple[Any, ...]:
        values = service.defaults(model)
        return values["steps"], values["cfg"], values["slat_steps"], values["slat_cfg"]

    model_box.change(
        model_defaults,
        model_box,
        [steps_box, cfg_box, slat_steps_box, slat_cfg_box],
        api_name="model_defaults",
        concurrency_id="models",
    )
    uploads_box.upload(
        preprocess, [uploads_box, model_box], processed_box, api_name="preprocess", concurrency_id="models"
    )
    run_box.click(
        image_to_3d,
        [uploads_box, model_box, seed_box, steps_box, cfg_box, slat_steps_box, slat_cfg_box, mode_box],
        [processed_box, turntable_box, view_box, downloads_box, record_box],
        api_name="image_to_3d",
        concurrency_id="models",
    )


FAMILY = Family(
    name="image_to_3d",
    title="Image → 3D",
    claims=is_model_folder,
    discover=discover,
    build=build,
    order=0,
)
