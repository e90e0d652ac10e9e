"""`voxforge data prepare` throughput against a TRELLIS-equivalent pipeline, same meshes.

voxforge: `voxforge.data.prepare.prepare` (the `voxforge data prepare` command) with the
torch renderer, `--views 150 --image-size 512 --resolution 64 --features rgb
--cond-views 0 --workers 2` (one single-threaded worker per core, the command's own thread
split), in a fresh process; throughput from the wall time, seconds per step from the
manifest, and the largest peak resident memory of a worker.

TRELLIS-equivalent (what `dataset_toolkits/{render,voxelize,extract_feature}.py` do):

- render: Blender Cycles with TRELLIS's settings (128 samples, denoising, its lights) at the
  same view count and resolution, through `voxforge.render.blender_script`. A full
  150-view render takes about an hour per asset on a small CPU, so by default it is
  measured on `--blender-views` views of `--blender-assets` assets and extrapolated:
  seconds = startup (a 0-view run: Python + bpy import + scene) + 150 x per-view time
  (the per-view cost does not depend on the view count). `--blender-views 150` measures
  the real thing.
- voxelize: open3d `create_from_triangle_mesh_within_bounds` + index extraction.
- features: TRELLIS's aggregation (project every voxel into every view, sample, average
  over all views -- no occlusion test), timed with the `rgb` extractor on the same views.
  TRELLIS extracts DINOv2 ViT-L/14 features on a GPU; that network's cost is the same in
  both pipelines (voxforge runs the same model with `--features dinov2`) and is left out.
- peak memory: of the Blender process and of the process that runs open3d + aggregation.

Renderer stress test: a 260k-face mesh (the bunny subdivided twice), 150 views at 512x512,
the torch renderer on one thread (`--skip-stress` leaves it out).

    VOXFORGE_BPY_PATH=/work/bpy_site python benchmarks/bench_prepare.py \\
        [--views 150] [--size 512] [--resolution 64] [--blender-views 2] [--blender-assets 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_MESHES = Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"
# Assets (file, or folder with its textures) chosen to span textures, vertex colours, size.
ASSETS = [
    "textured/Duck.glb",
    "textured/spot",
    "plain/bunny.ply",
    "textured/BoxTextured.glb",
    "vertexcolor/cycloidal.ply",
    "plain/teapot.obj",
]


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0  # ru_maxrss is in KiB on Linux


class _PeakMonitor:
    """Largest VmHWM (peak resident memory) of any descendant process, polled from /proc.

    prepare's workers are started by a forkserver, so they are grandchildren and their
    rusage never reaches this process; /proc sees them while they run.
    """

    def __init__(self, interval: float = 0.2):
        import threading

        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True)

    def __enter__(self) -> _PeakMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self, interval: float) -> None:
        me = os.getpid()
        while not self._stop.wait(interval):
            parents = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        stat = Path(f"/proc/{entry}/stat").read_text()
                        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
                    except (OSError, IndexError, ValueError):
                        continue
            for pid in parents:
                ancestor = parents.get(pid)
                while ancestor and ancestor != me and ancestor in parents:
                    ancestor = parents[ancestor]
                if ancestor != me:
                    continue
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
                except OSError:
                    continue


def _ours(src: str, out: str, args: dict, queue) -> None:  # type: ignore[no-untyped-def]
    from voxforge.data.prepare import PrepareConfig, prepare

    config = PrepareConfig(
        views=args["views"],
        image_size=args["size"],
        resolution=args["resolution"],
        cond_views=0,
        features="rgb",
        renderer="torch",
        workers=args["workers"],
        progress=False,
        time_limit=None,
    )
    began = time.perf_counter()
    with _PeakMonitor() as monitor:
        summary = prepare(src, out, config)
    seconds = time.perf_counter() - began
    peak = monitor.peak_kb / 1024.0 if args["workers"] > 0 else _peak_mb()
    queue.put({"seconds": seconds, "peak_mb": peak, "summary": summary})


def _baseline(asset: str, out: str, args: dict, queue) -> None:  # type: ignore[no-untyped-def]
    """open3d voxelization + TRELLIS-style aggregation on the views voxforge rendered."""
    import open3d as o3d

    from voxforge.data.features import aggregate_features, get_extractor
    from voxforge.data.gltf import load_glb
    from voxforge.data.steps import load_views

    folder = Path(out) / "assets" / asset
    vertices, faces = load_glb(folder / "mesh.glb").merged()
    r = args["resolution"]
    began = time.perf_counter()
    mesh = o3d.geometry.TriangleMesh()
    mesh.vertices = o3d.utility.Vector3dVector(np.clip(vertices.astype(np.float64), -0.5 + 1e-6, 0.5 - 1e-6))
    mesh.triangles = o3d.utility.Vector3iVector(faces.astype(np.int32))
    grid = o3d.geometry.VoxelGrid.create_from_triangle_mesh_within_bounds(
        mesh, voxel_size=1 / r, min_bound=(-0.5, -0.5, -0.5), max_bound=(0.5, 0.5, 0.5)
    )
    coords = np.array([v.grid_index for v in grid.get_voxels()]).reshape(-1, 3)
    voxel_seconds = time.perf_counter() - began
    rgba, _, cameras = load_views(folder / "views")
    began = time.perf_counter()
    aggregate_features(coords, r, rgba, None, cameras, get_extractor("rgb"))
    queue.put(
        {
            "voxelize": voxel_seconds,
            "features": time.perf_counter() - began,
            "peak_mb": _peak_mb(),
        }
    )


def _blender(glb: Path, cameras, samples: int, out: Path) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """Run blender_script on `cameras` (may be empty); returns (wall seconds, peak MB)."""
    from voxforge.render.blender import SCRIPT, _camera_payload, _command_env

    out.mkdir(parents=True, exist_ok=True)
    payload = (
        _camera_payload(cameras)
        if len(cameras)
        else {"width": 8, "height": 8, "cam_to_world": [], "lens": []}
    )
    (out / "cameras.json").write_text(json.dumps(payload))
    exe, env = _command_env(None)
    began = time.perf_counter()
    command = [
        exe,
        str(SCRIPT),
        "--mesh",
        str(glb),
        "--cameras",
        str(out / "cameras.json"),
        "--out",
        str(out),
    ]
    result = subprocess.run(
        [*command, "--samples", str(samples)], env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise RuntimeError(f"Blender failed: {result.stderr[-500:]}")
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def _blender_job(glb: str, views: int, measured: int, size: int, samples: int, queue) -> None:  # type: ignore[no-untyped-def]
    from voxforge.render.cameras import hammersley_sphere

    cams = hammersley_sphere(views, width=size, height=size)
    with tempfile.TemporaryDirectory() as tmp:
        startup, _ = _blender(Path(glb), cams[:0], samples, Path(tmp) / "empty")
        total, peak = _blender(Path(glb), cams[:measured], samples, Path(tmp) / "views")
    per_view = max(total - startup, 0.0) / measured
    queue.put(
        {"startup": startup, "per_view": per_view, "estimate": startup + views * per_view, "peak_mb": peak}
    )


def _stress(path: str, views: int, size: int, queue) -> None:  # type: ignore[no-untyped-def]
    import torch
    import trimesh

    from voxforge.render.cameras import hammersley_sphere
    from voxforge.render.mesh_raster import render_mesh
    from voxforge.representations.mesh import MeshPart, TexturedMesh

    torch.set_num_threads(1)
    mesh = trimesh.load(path, force="mesh")
    vertices, faces = trimesh.remesh.subdivide(mesh.vertices, mesh.faces)
    vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    vertices = vertices - (vertices.max(0) + vertices.min(0)) / 2
    vertices = (vertices / (vertices.max(0) - vertices.min(0)).max()).astype(np.float32)
    colors = np.random.default_rng(0).random((len(vertices), 4)).astype(np.float32)
    part = MeshPart(vertices, faces, vertex_colors=colors)
    began = time.perf_counter()
    rgba, _ = render_mesh(TexturedMesh([part]), hammersley_sphere(views, width=size, height=size))
    queue.put(
        {
            "faces": len(faces),
            "seconds": time.perf_counter() - began,
            "coverage": float((rgba[..., 3] > 0).mean()),
            "peak_mb": _peak_mb(),
        }
    )


def _run(target, *args):  # type: ignore[no-untyped-def]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(*args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--views", type=int, default=150)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--assets", type=int, default=len(ASSETS))
    parser.add_argument("--meshes", type=Path, default=DEFAULT_MESHES)
    parser.add_argument("--blender-views", type=int, default=2)
    parser.add_argument("--blender-assets", type=int, default=3)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--skip-blender", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-stress", action="store_true")
    args = parser.parse_args()
    settings = {
        "views": args.views,
        "size": args.size,
        "resolution": args.resolution,
        "workers": args.workers,
    }
    from voxforge.render.blender import blender_available

    with tempfile.TemporaryDirectory(prefix="voxforge_bench_prepare_") as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "out"
        src.mkdir()
        for name in ASSETS[: args.assets]:
            path = args.meshes / name
            (shutil.copytree if path.is_dir() else shutil.copy)(path, src / path.name)
        print(
            f"{args.assets} assets, {args.views} views at {args.size}x{args.size}, R={args.resolution}, cpus={os.cpu_count()}"
        )

        ours = _run(_ours, str(src), str(out), settings)
        db = sqlite3.connect(out / "manifest.sqlite")
        rows = db.execute("SELECT id, step, status, seconds, stats FROM steps").fetchall()
        sources = dict(db.execute("SELECT id, source FROM sources WHERE id IS NOT NULL").fetchall())
        db.close()
        per_asset: dict[str, dict[str, float]] = {}
        for asset, step, status, seconds, _ in rows:
            if status != "done":
                print(f"  {sources.get(asset, asset)}: {step} {status}")
            per_asset.setdefault(asset, {})[step.split("_")[0]] = seconds or 0.0
        done = len(per_asset)
        print(
            f"\nvoxforge prepare (--workers {args.workers}): {ours['seconds']:.1f} s for {done} assets -> "
            f"{3600 * done / ours['seconds']:.0f} assets/hour; peak RSS of the worker {ours['peak_mb']:.0f} MB"
        )
        print(f"{'asset':28s} {'ingest':>7s} {'views':>7s} {'voxels':>7s} {'features':>8s}   (s)")
        for asset, steps in per_asset.items():
            name = Path(sources.get(asset, asset)).name
            print(
                f"{name:28s} "
                + " ".join(f"{steps.get(k, 0.0):7.2f}" for k in ("ingest", "views", "voxels"))
                + f" {steps.get('features', 0.0):8.2f}"
            )

        base_rows = []
        for asset in per_asset:
            base_rows.append(_run(_baseline, asset, str(out), settings))
        voxel_s = sum(r["voxelize"] for r in base_rows)
        feat_s = sum(r["features"] for r in base_rows)
        ours_vox = sum(s.get("voxels", 0.0) for s in per_asset.values())
        print(f"\nopen3d voxelize (TRELLIS step): {voxel_s:.2f} s total vs voxforge {ours_vox:.2f} s")
        print(
            f"TRELLIS-style aggregation (all views, no occlusion): {feat_s:.2f} s total; "
            f"peak RSS {max(r['peak_mb'] for r in base_rows):.0f} MB"
        )

        if not args.skip_stress:
            stress = _run(_stress, str(args.meshes / "plain" / "bunny.ply"), args.views, args.size)
            print(
                f"\nrenderer stress: {stress['faces']} faces, {args.views} views at {args.size}x{args.size}, "
                f"1 thread: {stress['seconds']:.1f} s ({1e3 * stress['seconds'] / args.views:.0f} ms/view), "
                f"coverage {stress['coverage']:.2f}, peak RSS {stress['peak_mb']:.0f} MB"
            )

        if args.skip_blender or not blender_available():
            print(
                "\nBlender baseline skipped (bpy not available: pip install 'voxforge[blender]' or set VOXFORGE_BPY_PATH)"
            )
            return 0
        estimates = []
        for asset in list(per_asset)[: args.blender_assets]:
            glb = out / "assets" / asset / "mesh.glb"
            res = _run(_blender_job, str(glb), args.views, args.blender_views, args.size, args.samples)
            estimates.append(res)
            print(
                f"Blender Cycles {Path(sources.get(asset, asset)).name}: startup {res['startup']:.1f} s, "
                f"{res['per_view']:.1f} s/view ({args.blender_views} measured) -> {res['estimate']:.0f} s for "
                f"{args.views} views; peak RSS {res['peak_mb']:.0f} MB"
            )
        blender_per_asset = sum(r["estimate"] for r in estimates) / len(estimates)
        trellis_per_asset = blender_per_asset + (voxel_s + feat_s) / len(base_rows)
        ours_per_asset = ours["seconds"] / done
        print(
            f"\nper asset: TRELLIS-equivalent {trellis_per_asset:.0f} s (Blender {blender_per_asset:.0f} s), "
            f"voxforge {ours_per_asset:.1f} s"
        )
        print(
            f"assets/hour: TRELLIS-equivalent {3600 / trellis_per_asset:.2f}, voxforge {3600 / ours_per_asset:.0f} "
            f"-> {trellis_per_asset / ours_per_asset:.0f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
