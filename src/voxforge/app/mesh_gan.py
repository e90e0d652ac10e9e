"""The mesh GAN tab (the GET3D family): a seed in, a textured mesh (.glb) out.

`MeshGANService` samples a get3d run's generator (`runs.load_get3d`: G_ema by default):
geometry and texture codes drawn from a CPU generator seeded with `seed` (the geometry code
first, then the texture code: a seed gives the same mesh on every device), `truncation_psi`
pulling both towards the average latent, then `Get3DGenerator.generate` → vertices, faces and
the shape's texture field, queried at the vertices for vertex colours. The `.glb` is written
with trimesh (vertex colours as COLOR_0). Models: get3d run folders given with `--model` or
found under `--runs`.

Endpoint `/mesh_gan` (seed, truncation psi, model → the .glb, its download, the record).
Each request writes `mesh.glb` and `generation.json` into its job folder.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

from voxforge.app.registry import AppContext, Family, model_labels
from voxforge.app.requests import RequestError, check_choice, check_float, check_int
from voxforge.app.ui import endpoint, slider
from voxforge.config.core import load_yaml
from voxforge.errors import UserError
from voxforge.models.get3d import Get3DGenerator
from voxforge.runs import load_get3d
from voxforge.train.monitor import find_runs

__all__ = ["FAMILY", "MeshGANService", "Sample", "is_get3d_run"]


def is_get3d_run(path: Path) -> bool:
    config = Path(path) / "config.yaml"
    if not config.is_file():
        return False
    try:
        return load_yaml(config).get("stage") == "get3d" and (Path(path) / "checkpoints").is_dir()
    except (UserError, OSError, ValueError):
        return False


def discover(folder: Path) -> list[Path]:
    if is_get3d_run(folder):
        return [folder]
    return [run for run in find_runs(folder) if is_get3d_run(run)]


@dataclass
class Sample:
    glb: Path
    record: dict[str, Any]


class MeshGANService:
    def __init__(self, models: list[Path], context: AppContext):
        if not models:
            raise UserError("the mesh GAN tab needs at least one get3d run")
        self.models = model_labels(models)
        self.context = context
        self._generators: dict[str, Get3DGenerator] = {}
        self._lock = threading.Lock()

    @property
    def labels(self) -> list[str]:
        return list(self.models)

    def generator(self, label: str | None = None) -> Get3DGenerator:
        label = self.labels[0] if label in (None, "") else check_choice("model", label, self.labels)
        with self._lock:
            if label not in self._generators:
                self._generators[label] = load_get3d(self.models[label], device=self.context.device)
            return self._generators[label]

    def generate(self, *, seed: Any = 0, truncation: Any = 0.7, model: str | None = None) -> Sample:
        import trimesh  # a core dependency; imported here as the export modules do

        seed = check_int("seed", seed, 0, self.context.limits.max_seed)
        truncation = check_float("truncation psi", truncation, 0.0, 1.0)
        generator = self.generator(model)
        start = time.perf_counter()
        noise = torch.Generator().manual_seed(seed)
        z_dim = generator.cfg.z_dim
        z_geo, z_tex = torch.randn(1, z_dim, generator=noise), torch.randn(1, z_dim, generator=noise)
        device = next(generator.parameters()).device
        with torch.no_grad():
            vertices, faces, texture = generator.generate(
                z_geo.to(device), z_tex.to(device), truncation_psi=truncation
            )[0]
            if len(faces) == 0:
                raise RequestError(f"seed {seed}: the generator made an empty mesh; try another seed")
            colours = texture(vertices).clamp(0, 1).cpu().numpy()
        rgba = np.concatenate([colours, np.ones_like(colours[:, :1])], 1)
        mesh = trimesh.Trimesh(
            vertices.cpu().numpy(), faces.cpu().numpy(), vertex_colors=(rgba * 255).round().astype(np.uint8)
        )
        job = self.context.jobs.new("mesh_gan")
        glb = job / "mesh.glb"
        mesh.export(glb)
        record = {
            "model": str(self.models[model or self.labels[0]].resolve()),
            "seed": seed,
            "truncation_psi": truncation,
            "vertices": int(len(vertices)),
            "faces": int(len(faces)),
            "seconds": round(time.perf_counter() - start, 3),
            "files": ["mesh.glb"],
        }
        (job / "generation.json").write_text(json.dumps(record, indent=1))
        return Sample(glb, record)


def build(context: AppContext, models: list[Path]) -> None:
    """The tab's components and its endpoint `/mesh_gan`."""
    service = MeshGANService(models, context)
    service.generator()  # load the first run now: a broken folder fails at start
    with gr.Row():
        with gr.Column():
            model_box = gr.Dropdown(
                service.labels, value=service.labels[0], label="Model", visible=len(service.labels) > 1
            )
            seed_box = gr.Number(0, label="Seed", precision=0)
            truncation_box = slider(0.0, 1.0, 0.7, step=0.05, label="truncation psi")
            run_box = gr.Button("Sample a mesh", variant="primary", elem_id="generate-mesh")
        with gr.Column():
            view_box = gr.Model3D(label="Mesh (.glb)")
            download_box = gr.File(label="Download")
            record_box = gr.JSON(label="generation.json")

    @endpoint
    def mesh_gan(seed: Any, truncation: Any, model: str | None) -> tuple[Any, ...]:
        sample = service.generate(seed=seed, truncation=truncation, model=model)
        return str(sample.glb), str(sample.glb), sample.record

    run_box.click(
        mesh_gan,
        [seed_box, truncation_box, model_box],
        [view_box, download_box, record_box],
        api_name="mesh_gan",
        concurrency_id="models",
    )


FAMILY = Family(
    name="mesh_gan",
    title="Mesh GAN",
    claims=is_get3d_run,
    discover=discover,
    build=build,
    order=30,
)
