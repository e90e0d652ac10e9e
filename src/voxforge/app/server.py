"""Assemble and serve the app: one tab per family that has a model, the runs tab, one queue.

`build_app(config)` sorts the `--model` folders among the families (`registry.families()`:
each claims its own kind of folder), adds what each finds under the `--runs` folders, and
builds a `gr.Blocks` with a tab per family that has a model, then the runs tab. Every
heavy endpoint shares one queue slot (`concurrency_id="models"`, limit 1): one job runs
at a time and the others wait in order. `serve(config)` launches it.

What the process writes and where it listens, decided here:

- gradio's upload and result cache is `OUT/.gradio` (`GRADIO_TEMP_DIR`, set before a
  `Blocks` exists) and every job writes into `OUT/<tab>/<job>/`; the server may send only
  files under OUT (`allowed_paths`);
- analytics off (`analytics_enabled=False`; `voxforge app` also sets `GRADIO_ANALYTICS_ENABLED=False`
  before gradio is imported), no share link,
  no server-side rendering (no Node process), system fonts (no web fonts): nothing reaches
  the network;
- it binds 127.0.0.1 unless `host` says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from voxforge.app import runs_tab, ui
from voxforge.app.registry import AppContext, Family, families
from voxforge.app.requests import JobFolders, RequestLimits
from voxforge.errors import UserError
from voxforge.train.distributed import resolve_device

__all__ = ["AppConfig", "assign_models", "build_app", "serve"]


@dataclass
class AppConfig:
    models: list[Path] = field(default_factory=list)  # --model folders, any family
    runs: list[Path] = field(default_factory=list)  # --runs folders: models found there + the runs tab
    out: Path = Path("app_outputs")  # everything the app writes
    host: str = "127.0.0.1"
    port: int = 7860
    device: str = "auto"
    limits: RequestLimits = field(default_factory=RequestLimits)
    frames: int = 36  # turntable frames
    size: int = 256  # turntable side in pixels
    texture_size: int = 1024  # TRELLIS models' .glb (AppContext)
    bake_views: int = 24
    simplify: float = 0.95


def assign_models(models: list[Path], runs: list[Path]) -> dict[str, list[Path]]:
    """{family name: its model folders}: each --model claimed by the first family that knows
    it (a UserError names one nobody does), then the models each family finds under --runs."""
    found: dict[str, list[Path]] = {family.name: [] for family in families()}
    for model in models:
        if not Path(model).exists():
            raise UserError(f"--model {model}: not found")
        owner = next((family for family in families() if family.claims(Path(model))), None)
        if owner is None:
            kinds = "; ".join(family.title for family in families())
            raise UserError(f"--model {model}: not a model folder of any tab ({kinds})")
        found[owner.name].append(Path(model))
    for folder in runs:
        if not Path(folder).is_dir():
            raise UserError(f"--runs {folder}: not a folder")
        for family in families():
            known = {p.resolve() for p in found[family.name]}
            found[family.name] += [p for p in family.discover(Path(folder)) if p.resolve() not in known]
    return found


def runs_folders(config: AppConfig, models: dict[str, list[Path]]) -> list[Path]:
    """The folders the runs tab watches: --runs, else the runs/ folders of the 3D models."""
    if config.runs:
        return list(config.runs)
    return [p / "runs" for p in models.get("image_to_3d", []) if (p / "runs").is_dir()]


def build_app(config: AppConfig) -> gr.Blocks:
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["GRADIO_TEMP_DIR"] = str(out / ".gradio")  # gradio's cache (uploads, results): inside OUT

    models = assign_models(config.models, config.runs)
    watched = runs_folders(config, models)
    tabs: list[tuple[Family, list[Path]]] = [(f, models[f.name]) for f in families() if models[f.name]]
    if not tabs and not watched:
        raise UserError("no model to serve: pass --model (a model folder) or --runs (a folder of runs)")
    context = AppContext(
        jobs=JobFolders(out),
        limits=config.limits,
        device=resolve_device(config.device),
        runs_folders=watched,
        frames=config.frames,
        size=config.size,
        texture_size=config.texture_size,
        bake_views=config.bake_views,
        simplify=config.simplify,
    )
    with gr.Blocks(title="voxforge", analytics_enabled=False) as demo:
        gr.Markdown("# voxforge")
        for family, found in tabs:
            with gr.Tab(family.title, id=family.name):
                family.build(context, found)
        if watched:
            with gr.Tab("Runs", id="runs"):
                runs_tab.build(context, demo)
    demo.queue(default_concurrency_limit=1)
    return demo


def serve(config: AppConfig) -> tuple[gr.Blocks, str]:
    """Build and launch the app without blocking; (the Blocks, its local URL). The caller
    waits with `demo.block_thread()` and stops it with `demo.close()`."""
    demo = build_app(config)

    _, url, _ = demo.launch(
        server_name=config.host,
        server_port=config.port,
        share=False,
        prevent_thread_lock=True,
        allowed_paths=[str(Path(config.out).resolve())],
        footer_links=["api"],
        ssr_mode=False,
        quiet=True,
        theme=ui.theme(),
    )
    return demo, url
