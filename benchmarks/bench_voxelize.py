"""Voxelizer: voxforge against open3d (TRELLIS's voxelize step) on the real meshes.

For every mesh under ../shared/data/meshes/{plain,textured,vertexcolor}, normalized as
ingest does (bounding-box centre, longest side 1), this runs, in the same process:

- open3d: `VoxelGrid.create_from_triangle_mesh_within_bounds(mesh, 1/R, (-.5,)*3, (.5,)*3)`
  on the vertices clipped to +-(0.5 - 1e-6) -- the C++ call alone ("o3d call"), and TRELLIS's
  whole step, which also turns the voxel objects into an index array
  (`np.array([v.grid_index for v in grid.get_voxels()])`, "o3d step");
- voxforge `voxelize(..., backend="numpy")` (returns the sorted index array);
- voxforge on CUDA (`backend="torch"`) when a GPU is present.

It prints the IoU of the voxel sets per mesh (the goal is exactly 1.0), the best-of-N
wall time of each, and the speed ratios over all meshes (goal >= 2x on CPU).

    python benchmarks/bench_voxelize.py [--resolution 64] [--repeats 5] [--meshes DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

DEFAULT_MESHES = Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"
SUFFIXES = {".obj", ".glb", ".ply", ".stl", ".off"}


def load_meshes(root: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    import trimesh

    out = []
    for folder in ("plain", "textured", "vertexcolor"):
        for path in sorted((root / folder).rglob("*")):
            if path.suffix.lower() not in SUFFIXES:
                continue
            mesh = trimesh.load(path, force="mesh", process=False)
            vertices = np.asarray(mesh.vertices, dtype=np.float32)
            vertices = vertices - (vertices.max(0) + vertices.min(0)) / 2
            vertices = vertices / (vertices.max(0) - vertices.min(0)).max()
            out.append((f"{folder}/{path.name}", vertices, np.asarray(mesh.faces, dtype=np.int64)))
    return out


def best(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - began)
    return min(times), result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--meshes", type=Path, default=DEFAULT_MESHES)
    args = parser.parse_args()
    try:
        import open3d as o3d
    except ImportError:
        print("open3d is not installed: pip install 'voxforge[bench]'", file=sys.stderr)
        return 2
    import torch

    from voxforge.data.voxelize import voxelize

    cuda = torch.cuda.is_available()
    r = args.resolution
    meshes = load_meshes(args.meshes)
    print(f"resolution {r}, {len(meshes)} meshes, best of {args.repeats}; open3d {o3d.__version__}")
    header = f"{'mesh':34s} {'faces':>7s} {'voxels':>7s} {'IoU':>6s} {'o3d call':>9s} {'o3d step':>9s} {'ours':>8s}"
    print(header + (f" {'cuda':>8s}" if cuda else ""))
    totals = {"call": 0.0, "step": 0.0, "ours": 0.0, "cuda": 0.0}
    worst_iou = 1.0
    for name, vertices, faces in meshes:
        mesh = o3d.geometry.TriangleMesh()
        mesh.vertices = o3d.utility.Vector3dVector(
            np.clip(vertices.astype(np.float64), -0.5 + 1e-6, 0.5 - 1e-6)
        )
        mesh.triangles = o3d.utility.Vector3iVector(faces.astype(np.int32))

        def call(mesh=mesh):
            return o3d.geometry.VoxelGrid.create_from_triangle_mesh_within_bounds(
                mesh, voxel_size=1 / r, min_bound=(-0.5, -0.5, -0.5), max_bound=(0.5, 0.5, 0.5)
            )

        def step(call=call):
            return np.array([v.grid_index for v in call().get_voxels()]).reshape(-1, 3)

        t_call, _ = best(call, args.repeats)
        t_step, theirs = best(step, args.repeats)
        t_ours, ours = best(lambda: voxelize(vertices, faces, r), args.repeats)  # noqa: B023
        a, b = set(map(tuple, theirs.tolist())), set(map(tuple, ours.tolist()))
        iou = len(a & b) / max(1, len(a | b))
        worst_iou = min(worst_iou, iou)
        line = (
            f"{name:34s} {len(faces):7d} {len(b):7d} {iou:6.4f} {t_call * 1e3:7.1f}ms {t_step * 1e3:7.1f}ms "
            f"{t_ours * 1e3:6.1f}ms"
        )
        totals["call"] += t_call
        totals["step"] += t_step
        totals["ours"] += t_ours
        if cuda:
            voxelize(vertices, faces, r, backend="torch", device="cuda")  # warm-up
            t_cuda, on_gpu = best(
                lambda: voxelize(vertices, faces, r, backend="torch", device="cuda"),  # noqa: B023
                args.repeats,
            )
            assert np.array_equal(on_gpu, ours), f"{name}: CUDA and numpy voxel sets differ"
            totals["cuda"] += t_cuda
            line += f" {t_cuda * 1e3:6.1f}ms"
        print(line)
    print(
        f"\ntotal: o3d call {totals['call'] * 1e3:.1f} ms, o3d step {totals['step'] * 1e3:.1f} ms, "
        f"ours {totals['ours'] * 1e3:.1f} ms; worst IoU {worst_iou:.4f}"
    )
    print(
        f"speed-up vs TRELLIS's step (call + index extraction): {totals['step'] / totals['ours']:.2f}x; "
        f"vs the bare open3d call: {totals['call'] / totals['ours']:.2f}x"
    )
    if cuda:
        print(
            f"CUDA: {totals['step'] / totals['cuda']:.2f}x vs the step, {totals['call'] / totals['cuda']:.2f}x vs the call"
        )
    return 0 if worst_iou == 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
