"""Differentiable mesh rasterizer vs the forward-only one, on real meshes, same views, same run.

For each mesh (scaled into [-0.5, 0.5]^3) and resolution, 4 views on TRELLIS's Hammersley
sphere (radius 2, FoV 40 deg):

- baseline: `mesh_raster.render_buffers` per view (z-buffer, barycentrics, vertex-colour
  shading) under `torch.no_grad` -- what data preparation renders with;
- differentiable: `clip_from_cameras` -> `rasterize` -> `interpolate` (vertex colours) ->
  `antialias`, a mean loss, and `backward` to the vertex positions and colours, the 4 views
  as one batch (edge topology built inside the timed call, as a mesh whose topology changes
  every step -- GET3D's -- needs).

Each measurement runs in its own spawned process: times are the minimum over repeats (the
machine may be shared; noise only adds time) and memory is the process's peak resident set
(ru_maxrss) above what it held before the first call. Wall and CPU time (process_time, one
thread by default) are both shown: on a shared machine the CPU time is the stabler one.
Prints the time ratio differentiable / baseline (the target is <= 3x) and both peaks.

    python benchmarks/bench_diff_raster.py [--sizes 256 512] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np
import torch

MESHES = Path("/work/shared/data/meshes")
DEFAULT_MESHES = ("plain/bunny.ply", "textured/spot", "plain/fandisk.obj@1", "plain/fandisk.obj@2")


def load(spec: str) -> tuple[torch.Tensor, torch.Tensor]:
    """'path[@k]' under the mesh folder (k: subdivisions) -> vertices [V, 3], faces [F, 3]."""
    import trimesh

    name, _, subdivisions = spec.partition("@")
    path = MESHES / name
    if path.is_dir():
        path = sorted(path.glob("*.obj"))[0]
    mesh = trimesh.load(path, force="mesh", process=False)
    vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    for _ in range(int(subdivisions or 0)):
        vertices, faces = trimesh.remesh.subdivide(vertices, faces)
    low, high = vertices.min(0), vertices.max(0)
    vertices = (vertices - (low + high) / 2) / (high - low).max()
    return torch.from_numpy(vertices).float(), torch.from_numpy(np.asarray(faces, np.int64))


def scene(spec: str, size: int):  # type: ignore[no-untyped-def]
    from voxforge.render.cameras import hammersley_sphere

    vertices, faces = load(spec)
    cams = hammersley_sphere(4, width=size, height=size)
    colors = torch.cat([vertices + 0.5, torch.ones(len(vertices), 1)], 1)
    return vertices, faces, colors, torch.from_numpy(cams.world_to_cam), torch.from_numpy(cams.K)


def _run(spec: str, size: int, mode: str, repeats: int, threads: int, queue) -> None:  # type: ignore[no-untyped-def]
    from voxforge.render import diff_raster, mesh_raster

    torch.set_num_threads(threads)
    vertices, faces, colors, w2c, ks = scene(spec, size)
    buffers = mesh_raster.MeshBuffers(
        vertices=vertices,
        faces=faces,
        face_part=torch.zeros(len(faces), dtype=torch.int64),
        uv=torch.zeros(len(vertices), 2),
        vertex_colors=colors,
        base_color=torch.ones(1, 4),
        textures=[None],
    )

    def baseline() -> float:
        with torch.no_grad():
            return sum(
                float(mesh_raster.render_buffers(buffers, w2c[v], ks[v], size, size)[0][..., 3].sum())
                for v in range(len(w2c))
            )

    def differentiable() -> float:
        verts = vertices.clone().requires_grad_(True)
        attr = colors.clone().requires_grad_(True)
        clip = diff_raster.clip_from_cameras(verts, w2c, ks, size, size)
        rast, _ = diff_raster.rasterize(clip, faces, (size, size), backend="torch")
        image = diff_raster.interpolate(attr, rast, faces, backend="torch")
        image = diff_raster.antialias(image, rast, clip, faces, backend="torch")
        loss = image.mean()
        loss.backward()
        return float(verts.grad.abs().sum())

    call = baseline if mode == "baseline" else differentiable
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    walls, cpus = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    queue.put((min(walls), min(cpus), peak, len(faces)))


def measure(spec: str, size: int, mode: str, repeats: int, threads: int) -> tuple[float, float, float, int]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_run, args=(spec, size, mode, repeats, threads, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--meshes", nargs="+", default=list(DEFAULT_MESHES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(
        f"4 views per mesh, {args.threads} thread(s), min of {args.repeats} repeats; peak = ru_maxrss above start"
    )
    print(
        f"{'mesh':24s} {'faces':>6s} {'size':>4s} | {'forward-only ms':>15s} | {'diff fwd+bwd ms':>15s} | "
        f"{'ratio':>11s} | {'peak MiB':>13s}"
    )
    print(
        f"{'':24s} {'':6s} {'':4s} | {'wall':>7s} {'cpu':>7s} | {'wall':>7s} {'cpu':>7s} | {'wall':>5s} {'cpu':>5s} | {'fwd':>6s} {'diff':>6s}"
    )
    ratios = []
    for spec in args.meshes:
        for size in args.sizes:
            base_wall, base_cpu, base_peak, count = measure(
                spec, size, "baseline", args.repeats, args.threads
            )
            diff_wall, diff_cpu, diff_peak, _ = measure(
                spec, size, "differentiable", args.repeats, args.threads
            )
            ratios.append((diff_wall / base_wall, diff_cpu / base_cpu))
            print(
                f"{spec:24s} {count:6d} {size:4d} | {base_wall * 1e3:7.0f} {base_cpu * 1e3:7.0f} | "
                f"{diff_wall * 1e3:7.0f} {diff_cpu * 1e3:7.0f} | {ratios[-1][0]:4.2f}x {ratios[-1][1]:4.2f}x | "
                f"{base_peak:6.0f} {diff_peak:6.0f}"
            )
    print(
        f"ratio differentiable fwd+bwd / forward-only: max {max(r[0] for r in ratios):.2f}x wall, "
        f"{max(r[1] for r in ratios):.2f}x cpu (target <= 3x)"
    )


if __name__ == "__main__":
    main()
