"""Blender Cycles backend of `render_mesh`: high fidelity, and TRELLIS's own renderer.

    rgba, depth = render_mesh(mesh, cameras, backend="blender", samples=128)
    rgba = render_blender_rgba(mesh, cameras, samples=128)   # the colours alone

How it runs: the mesh is written as a GLB and the cameras as Blender camera-to-world
matrices plus lens lengths (`Cameras.to_blender`), then `blender_script.py` renders them in
a separate Python process that imports `bpy` (Blender keeps global state, is not
fork-safe, and its wheel pins numpy < 2). That process is, in order of preference:

- `python=` / the environment variable VOXFORGE_BLENDER_PYTHON: an interpreter with bpy;
- the current interpreter, with VOXFORGE_BPY_PATH (if set) prepended to its PYTHONPATH --
  e.g. a directory made with `pip install --target DIR bpy` when bpy cannot live in the
  main environment.

Install: `pip install 'voxforge[blender]'` (the `bpy` wheel, ~370 MB, Python 3.11).

Colours come from Cycles with TRELLIS's lights and render settings and the "Standard"
view transform (so sRGB albedo stays sRGB under even light). This module renders colours
only: `render_mesh` (`voxforge.render.mesh_raster`, the one place that dispatches between
backends and imports both) adds depth from the torch rasterizer for the same cameras -- the
geometry is identical and Cycles' Z pass would add nothing but another file format. Cameras
must have a centred principal point (Blender's lens shift is not mapped).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.errors import MissingDependencyError, UserError
from voxforge.render.cameras import Cameras
from voxforge.representations.mesh import TexturedMesh

__all__ = ["BlenderError", "blender_available", "render_blender_rgba"]

SCRIPT = Path(__file__).with_name("blender_script.py")


class BlenderError(UserError):
    """Blender failed or its inputs cannot be rendered."""


def _command_env(python: str | None) -> tuple[str, dict[str, str]]:
    env = dict(os.environ)
    python = python or os.environ.get("VOXFORGE_BLENDER_PYTHON") or sys.executable
    extra = os.environ.get("VOXFORGE_BPY_PATH")
    if extra:
        env["PYTHONPATH"] = extra + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return python, env


@functools.cache
def _probe(python: str, bpy_path: str) -> bool:
    del bpy_path  # part of the cache key only
    exe, env = _command_env(python)
    try:
        result = subprocess.run(
            [exe, "-c", "import bpy"], env=env, capture_output=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def blender_available(python: str | None = None) -> bool:
    """Whether a bpy-capable interpreter is reachable (the answer is cached)."""
    exe, _ = _command_env(python)
    return _probe(exe, os.environ.get("VOXFORGE_BPY_PATH", ""))


def _camera_payload(cameras: Cameras) -> dict[str, Any]:
    centre = np.array([cameras.width / 2, cameras.height / 2])
    if np.abs(cameras.K[:, :2, 2] - centre).max() > 1e-3:
        raise BlenderError("the Blender backend needs cameras with a centred principal point")
    if np.abs(cameras.K[:, 0, 0] - cameras.K[:, 1, 1]).max() > 1e-3 * cameras.K[:, 0, 0].max():
        raise BlenderError("the Blender backend needs square pixels (fx == fy)")
    side = max(cameras.width, cameras.height)
    lens = cameras.K[:, 0, 0].astype(np.float64) / side * 32.0  # 32 mm sensor across the larger side
    return {
        "width": cameras.width,
        "height": cameras.height,
        "cam_to_world": cameras.to_blender().tolist(),
        "lens": lens.tolist(),
    }


def render_blender_rgba(
    mesh: TexturedMesh,
    cameras: Cameras,
    *,
    samples: int = 128,
    device: str = "CPU",
    denoise: bool = True,
    threads: int = 0,
    python: str | None = None,
    timeout: float | None = None,
) -> np.ndarray:  # rgba [V, H, W, 4] uint8, sRGB, straight alpha
    """Colours rendered with Blender Cycles in a subprocess (see the module docstring)."""
    from PIL import Image

    if not blender_available(python):
        raise MissingDependencyError("bpy", "blender", "Rendering with Blender (--renderer blender)")
    if device not in ("CPU", "GPU"):
        raise BlenderError(f"device must be 'CPU' or 'GPU', got {device!r}")
    payload = _camera_payload(cameras)
    exe, env = _command_env(python)
    with tempfile.TemporaryDirectory(prefix="voxforge_blender_") as tmp:
        root = Path(tmp)
        mesh.save_glb(root / "mesh.glb")
        (root / "cameras.json").write_text(json.dumps(payload))
        out = root / "views"
        out.mkdir()
        command = [
            exe,
            str(SCRIPT),
            "--mesh", str(root / "mesh.glb"),
            "--cameras", str(root / "cameras.json"),
            "--out", str(out),
            "--samples", str(int(samples)),
            "--device", device,
            "--denoise", str(int(bool(denoise))),
            "--threads", str(int(threads)),
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise BlenderError(f"Blender did not finish within {timeout} s") from None
        if result.returncode != 0 or not (out / "done.json").is_file():
            tail = (result.stderr or result.stdout or "").strip().splitlines()[-5:]
            raise BlenderError(f"Blender failed (exit {result.returncode}): {' | '.join(tail)}")
        return np.stack(
            [np.asarray(Image.open(out / f"{i:03d}.png").convert("RGBA")) for i in range(len(cameras))]
        )
