"""`voxforge data prepare SRC OUT`: a folder of meshes -> a training-ready dataset.

The parent process never parses an untrusted file. It
1. walks SRC (symlinks are not followed into directories; a file that resolves outside SRC is
   recorded as `path_outside_source` and never opened; OUT is skipped when it lies in SRC),
2. hashes each candidate (sha256 = asset id, cached by size and mtime) and keeps the ones of
   its shard: `int(id) % world_size == rank`, so duplicates always meet on the same rank and
   ranks need no coordination,
3. expands zip archives in workers (their members become sources `a.zip!path/in/zip.obj`),
4. records duplicates (same id as an earlier source) instead of processing them again,
5. plans, per asset, the steps whose manifest row is missing, failed (with `--retry-failed`),
   done with different settings, or whose output file is gone, and
6. runs the plans in worker processes (`voxforge.data.workers`: per-asset time limit, crash
   isolation) with a progress bar, writing each step's result to the manifest as it arrives.

Re-running the same command therefore does only what is left; a different `--resolution`
or `--features` adds new steps next to the old outputs.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxforge.config.core import ConfigValueError, option
from voxforge.data.ingest import ARCHIVE_EXTENSIONS, MESH_EXTENSIONS, RECOVERED_FAILURES, sha256_file
from voxforge.data.manifest import Manifest, ManifestView, manifest_name
from voxforge.data.safety import Limits, is_within
from voxforge.errors import MissingDependencyError, UserError

ALL_STEPS = ("ingest", "views", "cond", "voxels", "features")


@dataclass
class PrepareConfig:
    resolution: int = option(64, ge=4, le=1024, help="voxel grid resolution R")
    views: int = option(150, ge=1, help="feature views on the Hammersley sphere")
    image_size: int = option(512, ge=8, help="rendered image width and height in pixels")
    cond_views: int = option(24, ge=0, help="condition views per asset (random FoV 10-70 degrees)")
    features: str = option("rgb", choices=("rgb", "dinov2"), help="feature extractor")
    feature_model: str | None = option(None, help="dinov2: local directory or hub id of the weights")
    renderer: str = option("auto", choices=("auto", "torch", "blender"), help="mesh renderer backend")
    device: str = option("cpu", help="torch device for rendering, voxelization and features (e.g. cuda)")
    workers: int = option(-1, ge=-1, help="worker processes (-1: half the CPU cores; 0: in-process)")
    threads: int | None = option(
        None, ge=1, help="CPU threads per worker (None: OMP_NUM_THREADS if set, else cores // workers)"
    )
    rank: int = option(0, ge=0, help="this machine's shard index")
    world_size: int = option(1, ge=1, help="number of shards (machines)")
    time_limit: float | None = option(900.0, gt=0, help="seconds allowed per asset (None: unlimited)")
    seed: int = option(0, help="seed for the condition-view cameras")
    steps: tuple[str, ...] = option(ALL_STEPS, help="steps to run (ingest always runs first)")
    retry_failed: bool = option(False, help="run failed steps again")
    allow_missing_textures: bool = option(
        False,
        help="also ingest assets whose texture cannot be decoded, untextured with a warning "
        "(missing .mtl and texture files always are)",
    )
    progress: bool = option(True, help="show a progress bar")
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.rank >= self.world_size:
            raise ConfigValueError(
                "rank", f"rank {self.rank} must be smaller than world_size {self.world_size}"
            )
        if self.feature_model is not None and self.features != "dinov2":
            raise ConfigValueError(
                "feature_model", "only the dinov2 extractor takes a model (--features dinov2)"
            )
        unknown = set(self.steps) - set(ALL_STEPS)
        if unknown:
            raise ConfigValueError("steps", f"unknown steps {sorted(unknown)}; choose from {list(ALL_STEPS)}")

    def step_names(self) -> list[str]:
        wanted = set(self.steps) | {"ingest"}
        if "features" in wanted:
            wanted |= {"views", "voxels"}
        if self.cond_views == 0:
            wanted.discard("cond")
        names = {
            "ingest": "ingest",
            "views": "views",
            "cond": "cond",
            "voxels": f"voxels_{self.resolution}",
            "features": f"features_{self.features}_{self.resolution}",
        }
        return [names[s] for s in ALL_STEPS if s in wanted]

    def step_params(self) -> dict[str, dict[str, Any]]:
        """The settings each step's output depends on (a change re-runs the step)."""
        views = {"views": self.views, "image_size": self.image_size, "renderer": self.renderer}
        return {
            "ingest": {
                "allow_missing_textures": self.allow_missing_textures,
                "limits": dataclasses.asdict(self.limits),
            },
            "views": views,
            "cond": {**views, "views": self.cond_views, "seed": self.seed},
            f"voxels_{self.resolution}": {},
            f"features_{self.features}_{self.resolution}": {"views": views, "model": self.feature_model},
        }

    def worker_settings(self) -> dict[str, Any]:
        settings = dataclasses.asdict(self)
        settings["steps"] = list(self.steps)
        return settings


def step_output(asset_dir: Path, step: str) -> Path:
    """The file or folder whose presence proves that a step's output still exists."""
    if step == "ingest":
        return asset_dir / "mesh.glb"
    if step in ("views", "cond"):
        return asset_dir / step / "cameras.json"
    return asset_dir / f"{step}.npz"


def _shard(asset_id: str, world_size: int) -> int:
    return int(asset_id[:16], 16) % world_size


@dataclass
class _Source:
    source: str  # name relative to SRC
    path: Path  # file to read
    root: Path  # folder its referenced files must stay in
    asset_id: str | None = None


def discover(src: Path, out: Path, manifest: Manifest) -> list[_Source]:
    """Candidate files under SRC, sorted; symlinks leaving SRC are recorded and dropped."""
    src, out_real = src.resolve(), out.resolve()
    found: list[_Source] = []
    extensions = MESH_EXTENSIONS | ARCHIVE_EXTENSIONS
    for directory, dirnames, filenames in os.walk(src, followlinks=False):
        here = Path(directory)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() != out_real)
        for filename in sorted(filenames):
            path = here / filename
            if path.suffix.lower() not in extensions:
                continue
            relative = path.relative_to(src).as_posix()
            if not is_within(path, src):
                manifest.record_source(
                    relative,
                    None,
                    reason="path_outside_source",
                    error=f"{relative} is a symbolic link to {os.path.realpath(path)}, outside {src}",
                )
                continue
            if not path.is_file():
                continue
            found.append(_Source(relative, path, src))
    manifest.commit()
    return found


def _hash(source: _Source, manifest: Manifest) -> str | None:
    """Set and return `source.asset_id`; an unreadable file is recorded and gives None."""
    try:
        stat = source.path.stat()
        cached = manifest.cached_hash(source.source, stat.st_size, stat.st_mtime)
        digest = cached or sha256_file(source.path)
    except OSError as err:
        manifest.record_source(source.source, None, reason="unreadable", error=f"{source.source}: {err}")
        return None
    if not cached:
        manifest.store_hash(source.source, stat.st_size, stat.st_mtime, digest)
    source.asset_id = digest
    return digest


class _Recorder:
    """Parent-side handler of worker messages: manifest rows, stats, progress."""

    def __init__(self, manifest: Manifest, params: dict[str, dict[str, Any]], progress: Any):
        self.manifest, self.params, self.progress = manifest, params, progress
        self.current: dict[str, str] = {}
        self.results: dict[str, dict[str, dict[str, Any]]] = {}
        self.failures = 0

    def message(self, key: str, message: Any) -> None:
        kind, step = message[0], message[1]
        if kind == "start":
            self.current[key] = step
            return
        result = message[2]
        self.results.setdefault(key, {})[step] = result
        self.manifest.record_step(
            key,
            step,
            result["status"],
            params=self.params.get(step, {}),
            seconds=result.get("seconds"),
            stats=result.get("stats"),
            reason=result.get("reason"),
            error=result.get("error"),
            warnings=result.get("warnings"),
            warning_reasons=result.get("warning_reasons"),
        )
        if result["status"] == "failed":
            self.failures += 1
        self.current.pop(key, None)

    def failure(self, key: str, reason: str, detail: str) -> None:
        step = self.current.pop(key, None) or "ingest"
        self.message(key, ("step", step, {"status": "failed", "reason": reason, "error": detail}))

    def finished(self, key: str) -> None:
        if self.progress is not None:
            self.progress.update(1)
            self.progress.set_postfix(failed=self.failures, refresh=False)


def _progress(total: int, enabled: bool, description: str) -> Any:
    if not enabled or total == 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="asset", file=sys.stderr, dynamic_ncols=True)


def prepare(src: str | Path, out: str | Path, config: PrepareConfig | None = None) -> dict[str, Any]:
    """Prepare (or finish preparing) SRC into OUT; returns `ManifestView(OUT).summary()`."""
    # the steps load torch and the renderers: imported here so `voxforge data status` stays light
    from voxforge.data.steps import run_asset_task
    from voxforge.data.workers import default_workers, run_tasks, threads_per_process

    config = config or PrepareConfig()
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist or is not a folder")
    if is_within(src, out) and src.resolve() != out.resolve():
        raise UserError(f"the source folder {src} must not lie inside the output folder {out}")
    if src.resolve() == out.resolve():
        raise UserError("the source and output folders must differ")
    out.mkdir(parents=True, exist_ok=True)
    workers = default_workers() if config.workers < 0 else config.workers
    # processes x threads <= cores unless the user says otherwise (--threads, OMP_NUM_THREADS)
    threads = threads_per_process(workers, config.threads) if workers > 0 else config.threads
    settings = config.worker_settings()
    step_names = config.step_names()
    preflight(config, step_names)
    params = config.step_params()
    params["expand"] = {"limits": dataclasses.asdict(config.limits)}

    with Manifest(out / manifest_name(config.rank, config.world_size)) as manifest:
        manifest.set_meta("settings", settings)
        manifest.set_meta("source_root", str(src.resolve()))
        candidates = [c for c in discover(src, out, manifest) if _hash(c, manifest)]
        manifest.commit()
        mine = [c for c in candidates if _shard(c.asset_id, config.world_size) == config.rank]

        def base_task(item: _Source, kind: str, steps: list[str]) -> dict[str, Any]:
            return {
                "key": item.asset_id,
                "kind": kind,
                "id": item.asset_id,
                "source": item.source,
                "path": str(item.path),
                "root": str(item.root),
                "out": str(out),
                "steps": steps,
                "settings": settings,
            }

        # archives first: their members join the list of sources
        archives = [c for c in mine if c.path.suffix.lower() in ARCHIVE_EXTENSIONS]
        for archive in archives:
            manifest.record_source(archive.source, archive.asset_id, size=archive.path.stat().st_size)
        pending = [
            a
            for a in {a.asset_id: a for a in archives}.values()
            if _needs(manifest, a.asset_id, "expand", params["expand"], out / "archives" / a.asset_id, config)
        ]
        recorder = _Recorder(manifest, params, _progress(len(pending), config.progress, "expanding archives"))
        run_tasks(
            [base_task(a, "archive", ["expand"]) for a in pending],
            run_asset_task,
            workers=workers,
            time_limit=config.time_limit,
            on_message=recorder.message,
            on_failure=recorder.failure,
            on_finished=recorder.finished,
            threads=threads,
        )
        if recorder.progress is not None:
            recorder.progress.close()
        sources = [c for c in mine if c.path.suffix.lower() not in ARCHIVE_EXTENSIONS]
        for archive in archives:
            row = manifest.step(archive.asset_id, "expand")
            if not row or row["status"] != "done":
                continue
            root = out / "archives" / archive.asset_id
            for member in row["stats"].get("members", []):
                item = _Source(f"{archive.source}!{member}", root / member, root)
                if _hash(item, manifest):
                    sources.append(item)

        # duplicates and plans
        owners: dict[str, _Source] = {}
        tasks = []
        for item in sources:
            stat = item.path.stat()
            if item.asset_id in owners:
                manifest.record_source(
                    item.source,
                    item.asset_id,
                    size=stat.st_size,
                    mtime=stat.st_mtime,
                    duplicate_of=owners[item.asset_id].source,
                )
                continue
            owners[item.asset_id] = item
            manifest.record_source(item.source, item.asset_id, size=stat.st_size, mtime=stat.st_mtime)
            asset_dir = out / "assets" / item.asset_id
            ingest = manifest.step(item.asset_id, "ingest")
            if ingest and ingest["status"] == "failed" and not _retry(ingest, "ingest", config):
                continue
            todo = [
                step
                for step in step_names
                if _needs(manifest, item.asset_id, step, params[step], step_output(asset_dir, step), config)
            ]
            if "ingest" in todo:  # a new mesh invalidates everything made from the old one
                todo = list(step_names)
            if todo:
                tasks.append(base_task(item, "asset", todo))
        manifest.commit()

        recorder = _Recorder(manifest, params, _progress(len(tasks), config.progress, "preparing"))
        began = time.perf_counter()
        run_tasks(
            tasks,
            run_asset_task,
            workers=workers,
            time_limit=config.time_limit,
            on_message=recorder.message,
            on_failure=recorder.failure,
            on_finished=recorder.finished,
            threads=threads,
        )
        if recorder.progress is not None:
            recorder.progress.close()
        manifest.set_meta("last_run", {"tasks": len(tasks), "seconds": time.perf_counter() - began})
    summary = ManifestView(out).summary()
    summary["this_run"] = {"tasks": len(tasks), "failed_steps": recorder.failures}
    return summary


def preflight(config: PrepareConfig, step_names: list[str]) -> None:
    """Stop before any work when a setting cannot work for any asset (missing extra, weights).

    Such a problem would otherwise be recorded as the same failure for every asset.
    """
    import importlib.util

    renders = any(step in ("views", "cond") for step in step_names)
    if renders and config.renderer == "blender" and importlib.util.find_spec("bpy") is None:
        raise MissingDependencyError("bpy", "blender", "the Blender renderer (--renderer blender)")
    if config.features == "dinov2" and any(step.startswith("features_") for step in step_names):
        from voxforge.data.features import get_extractor  # torch and transformers: only for dinov2
        from voxforge.data.steps import extractor_options

        get_extractor("dinov2", **extractor_options(config.worker_settings()))  # raises a clear FeatureError


def _needs(
    manifest: Manifest, asset_id: str, step: str, params: dict[str, Any], output: Path, config: PrepareConfig
) -> bool:
    row = manifest.step(asset_id, step)
    if row is None:
        return True
    if row["status"] == "failed":
        return _retry(row, step, config)
    if row["params"] != _jsonable(params):
        return True
    return not output.exists()


def _retry(row: dict[str, Any], step: str, config: PrepareConfig) -> bool:
    """A failed step runs again with --retry-failed, or when its failure is now a warning
    (an older version refused a missing .mtl or texture: RECOVERED_FAILURES)."""
    return config.retry_failed or (step == "ingest" and row["reason"] in RECOVERED_FAILURES)


def _jsonable(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, sort_keys=True))
