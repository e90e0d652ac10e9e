"""The per-asset steps of `voxforge data prepare`, as they run inside a worker process.

A task names one asset and the steps still to do; `run_asset_task` runs them in order and
sends one message per step (`("start", step)` then `("step", step, result)`), so the parent
records each finished step even if a later one times out. Results carry a status, a reason
code on failure, warnings, stats and seconds.

Steps and their files (OUT/assets/<id>/):
- `expand` (archives only): unpack into OUT/archives/<id>/, see `voxforge.data.archive`.
- `ingest`: load, clean, normalize -> mesh.glb.
- `views`: feature views on a Hammersley sphere -> views/NNN.png, views/depth.npz,
  views/cameras.json.
- `cond`: condition views with random FoV and fitted radius -> cond/NNN.png, cond/cameras.json.
- `voxels_<R>`: surface voxels -> voxels_<R>.npz (`coords` [N, 3] uint16).
- `features_<name>_<R>`: occlusion-aware projected features -> features_<name>_<R>.npz
  (`coords` [N, 3] uint16, `features` [N, C] float16).

Every file is written under a temporary name and renamed, and directories are replaced whole,
so a killed worker never leaves a half-written output that a later run would trust.

Each step reads its inputs back from the files the earlier steps wrote, never from what they
left in memory: a run that was interrupted after `views` has only `views/depth.npz` (float16)
and `mesh.glb` (float32 vertices) to go on, so an uninterrupted run must use exactly those too,
or the two would differ (occlusion tests flip where the rendered depth was rounded to float16).
The outputs are therefore the same bytes whichever steps ran in which process.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.data.archive import expand_archive
from voxforge.data.features import aggregate_features, get_extractor
from voxforge.data.gltf import load_glb
from voxforge.data.image_io import read_image
from voxforge.data.ingest import ingest_file
from voxforge.data.safety import Limits
from voxforge.data.voxelize import voxelize
from voxforge.render.cameras import Cameras, condition_views, hammersley_sphere
from voxforge.render.mesh_raster import render_mesh
from voxforge.representations.mesh import AssetError, TexturedMesh

_EXTRACTORS: dict[tuple[str, str], Any] = {}


# ----------------------------------------------------------------------------------------------
# file helpers shared with the dataset readers


def write_bytes_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def replace_dir(target: Path, fill: Callable[[Path], None]) -> None:
    """Build a directory under a temporary name with `fill(tmp)`, then swap it in."""
    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_views(directory: Path, rgba: np.ndarray, depth: np.ndarray | None, cameras: Any) -> None:
    """rgba [V, H, W, 4] uint8, depth [V, H, W] float -> PNGs, depth.npz, cameras.json."""
    from PIL import Image

    def fill(tmp: Path) -> None:
        for index, image in enumerate(rgba):
            Image.fromarray(np.ascontiguousarray(image), "RGBA").save(
                tmp / f"{index:03d}.png", compress_level=1
            )
        if depth is not None:
            np.savez_compressed(tmp / "depth.npz", depth=depth.astype(np.float16))
        (tmp / "cameras.json").write_text(cameras_json(cameras))

    replace_dir(directory, fill)


def cameras_json(cameras: Any) -> str:
    payload = cameras.to_json()
    return payload if isinstance(payload, str) else json.dumps(payload)


def asset_seed(asset_id: str, seed: int) -> int:
    """Per-asset random seed: stable across runs, machines and worker assignment."""
    return int.from_bytes(hashlib.sha256(f"{asset_id}:{seed}".encode()).digest()[:8], "little")


# ----------------------------------------------------------------------------------------------
# cameras, rendering, features: thin adapters over voxforge.render / voxforge.data.features


def feature_cameras(settings: dict[str, Any]) -> Any:

    size = settings["image_size"]
    return hammersley_sphere(settings["views"], radius=2.0, fov_deg=40.0, width=size, height=size)


def condition_cameras(settings: dict[str, Any], asset_id: str) -> Any:

    size = settings["image_size"]
    rng = np.random.default_rng(asset_seed(asset_id, settings["seed"]))
    return condition_views(settings["cond_views"], rng, fov_range=(10.0, 70.0), width=size, height=size)


def render(mesh: TexturedMesh, cameras: Any, settings: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:

    if settings["renderer"] == "blender":
        return render_mesh(mesh, cameras, backend="blender")
    return render_mesh(mesh, cameras, backend=settings["renderer"], device=settings["device"])


def extractor(settings: dict[str, Any]) -> Any:
    """Feature extractor, created once per worker process (DINOv2 loads weights)."""

    key = (settings["features"], settings.get("feature_model") or "", settings["device"])
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = get_extractor(settings["features"], **extractor_options(settings))
    return _EXTRACTORS[key]


def extractor_options(settings: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {"device": settings["device"]}
    if settings["features"] == "dinov2" and settings.get("feature_model"):
        options["model"] = settings["feature_model"]
    return options


def load_views(directory: Path) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """Read views/ back: rgba [V, H, W, 4] uint8, depth [V, H, W] float32 or None, Cameras."""

    # numeric order: "1000.png" sorts before "101.png" as text (views past 999)
    pngs = sorted(directory.glob("[0-9][0-9][0-9]*.png"), key=lambda p: int(p.stem))
    rgba = np.stack([read_image(p, what="view").rgba for p in pngs])
    depth = None
    if (directory / "depth.npz").is_file():
        with np.load(directory / "depth.npz") as data:
            depth = data["depth"].astype(np.float32)
    cameras = Cameras.from_json((directory / "cameras.json").read_text())
    return rgba, depth, cameras


# ----------------------------------------------------------------------------------------------
# the task


def _failure(err: BaseException, step: str) -> dict[str, Any]:
    if isinstance(err, AssetError):
        return {"status": "failed", "reason": err.reason, "error": str(err)}
    if isinstance(err, MemoryError):
        return {"status": "failed", "reason": "out_of_memory", "error": f"{step}: ran out of memory"}
    tail = traceback.format_exc(limit=-3).strip().splitlines()
    return {
        "status": "failed",
        "reason": f"{step.split('_')[0]}_error",
        "error": f"{type(err).__name__}: {err} | {' / '.join(line.strip() for line in tail[-4:])}",
    }


def run_asset_task(task: dict[str, Any], send: Callable[[Any], None]) -> None:
    """Run the pending steps of one asset (or archive). See the module docstring."""
    settings = task["settings"]
    limits = Limits(**settings["limits"])
    out = Path(task["out"])
    if task["kind"] == "archive":
        send(("start", "expand"))
        began = time.perf_counter()
        try:
            members = expand_archive(Path(task["path"]), out / "archives" / task["id"], limits)
            root = out / "archives" / task["id"]
            result = {"status": "done", "stats": {"members": [str(p.relative_to(root)) for p in members]}}
        except Exception as err:  # noqa: BLE001 - recorded as the asset's failure
            result = _failure(err, "expand")
        result["seconds"] = time.perf_counter() - began
        send(("step", "expand", result))
        return

    asset_dir = out / "assets" / task["id"]
    asset_dir.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {}  # only inputs read back from disk (module docstring)

    def mesh() -> TexturedMesh:
        if "mesh" not in state:
            state["mesh"] = load_glb(asset_dir / "mesh.glb")
        return state["mesh"]

    def do_ingest() -> dict[str, Any]:

        result = ingest_file(
            Path(task["path"]),
            Path(task["root"]),
            limits,
            allow_missing_textures=settings["allow_missing_textures"],
        )
        result.mesh.extras["source"] = task["source"]
        result.mesh.save_glb(asset_dir / "mesh.glb")
        state.pop("mesh", None)  # later steps read mesh.glb back, as a resumed run does
        synth = result.mesh.extras.get("voxforge_synth")
        if isinstance(synth, dict) and isinstance(synth.get("class"), str):
            result.stats["label"] = synth["class"]  # built-in dataset: keep the class for evaluation
        return {"stats": result.stats, "warnings": result.warnings, "warning_reasons": result.warning_reasons}

    def do_views() -> dict[str, Any]:
        cameras = feature_cameras(settings)
        rgba, depth = render(mesh(), cameras, settings)
        write_views(asset_dir / "views", rgba, depth, cameras)
        coverage = float((rgba[..., 3] > 0).mean())
        return {"stats": {"views": len(rgba), "coverage": round(coverage, 4)}}

    def do_cond() -> dict[str, Any]:
        cameras = condition_cameras(settings, task["id"])
        rgba, _ = render(mesh(), cameras, settings)
        write_views(asset_dir / "cond", rgba, None, cameras)
        return {"stats": {"views": len(rgba)}}

    def do_voxels(resolution: int) -> dict[str, Any]:

        vertices, faces = mesh().merged()
        if settings["device"] == "cpu":
            coords = voxelize(vertices, faces, resolution)
        else:  # the same exact algorithm on the accelerator
            coords = voxelize(vertices, faces, resolution, backend="torch", device=settings["device"])
        if len(coords) == 0:
            raise AssetError("no_voxels", f"no voxel is occupied at resolution {resolution}")
        save_npz_atomic(asset_dir / f"voxels_{resolution}.npz", coords=coords.astype(np.uint16))
        return {"stats": {"voxels": len(coords)}}

    def do_features(resolution: int) -> dict[str, Any]:

        with np.load(asset_dir / f"voxels_{resolution}.npz") as data:
            coords = data["coords"].astype(np.int64)
        rgba, depth, cameras = load_views(asset_dir / "views")  # float16 depth, as stored
        extract = extractor(settings)
        features = aggregate_features(
            coords, resolution, rgba, depth, cameras, extract, device=settings["device"]
        )
        save_npz_atomic(
            asset_dir / f"features_{extract.name}_{resolution}.npz",
            coords=coords.astype(np.uint16),
            features=np.asarray(features, dtype=np.float16),
        )
        return {"stats": {"voxels": len(coords), "dim": int(np.asarray(features).shape[1])}}

    resolution = settings["resolution"]
    handlers: dict[str, Callable[[], dict[str, Any]]] = {
        "ingest": do_ingest,
        "views": do_views,
        "cond": do_cond,
        f"voxels_{resolution}": lambda: do_voxels(resolution),
        f"features_{settings['features']}_{resolution}": lambda: do_features(resolution),
    }
    failed: set[str] = set()
    for step in task["steps"]:
        needs = DEPENDENCIES.get(step.split("_")[0], ())
        if any(dep in failed for dep in needs) or (
            step != "ingest" and "ingest" in failed
        ):  # a failed step's dependents are simply not attempted
            continue
        send(("start", step))
        began = time.perf_counter()
        try:
            result = {"status": "done", **handlers[step]()}
        except Exception as err:  # noqa: BLE001 - any failure belongs to this asset only
            result = _failure(err, step)
            failed.add(step.split("_")[0])
        result["seconds"] = time.perf_counter() - began
        send(("step", step, result))


DEPENDENCIES = {"features": ("views", "voxels")}
