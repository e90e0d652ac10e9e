"""The built-in dataset: procedural coloured and textured objects, deterministic by seed.

Each object belongs to one of `CLASSES`, chosen so that classes differ in *shape* (what an
image-conditioned 3D model must learn), while colour and texture vary freely within every
class and so carry no label information. Item i gets class `i % len(classes)` (balanced) and
its own random stream `default_rng([seed, i])`, so any item can be regenerated alone and
`--num 64` is a prefix-stable extension of `--num 16`.

Geometry is built from two exact primitives with UVs: surfaces of revolution of a 2-D profile
(sphere, cylinder, cone, capsule, torus, mushroom cap, ...) and axis-aligned boxes. Every part
gets one of: a plain colour, a vertex-colour gradient, or a procedural texture (checker,
stripes, dots, rings, value noise) drawn at 128x128. Objects stand upright (+Y) with a random
yaw, and are written as GLB with the label in the asset `extras` (`voxforge_synth`) and in
`labels.json` next to them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxforge.config.core import option
from voxforge.representations.mesh import MeshPart, TexturedMesh

TEXTURE_SIZE = 128


@dataclass
class SynthConfig:
    num: int = option(32, ge=1, help="number of objects")
    seed: int = option(0, help="random seed; the same seed gives the same files")
    segments: int = option(48, ge=8, le=512, help="angular resolution of round shapes")


# ----------------------------------------------------------------------------------------------
# primitives


def revolve(
    profile: np.ndarray, segments: int, close_ends: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Surface of revolution about +Y. profile [P, 2] as (radius, height), bottom to top.

    Returns vertices [V, 3], faces [F, 3], uv [V, 2] (u around, v along the profile). Ends with
    radius > 0 are closed with a fan when `close_ends`.
    """
    ring = segments + 1  # duplicate seam column so the texture wraps cleanly
    angles = np.linspace(0.0, 2.0 * math.pi, ring)
    radius, height = profile[:, 0:1], profile[:, 1:2]
    vertices = np.stack(
        [
            radius * np.cos(angles)[None],
            np.broadcast_to(height, (len(profile), ring)),
            -radius * np.sin(angles)[None],
        ],
        axis=-1,
    ).reshape(-1, 3)
    lengths = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(profile, axis=0), axis=1))])
    v = 1.0 - lengths / max(lengths[-1], 1e-9)  # glTF: v = 0 at the top of the image
    uv = np.stack(np.meshgrid(angles / (2 * math.pi), v, indexing="xy"), axis=-1).reshape(-1, 2)
    rows, cols = np.meshgrid(np.arange(len(profile) - 1), np.arange(segments), indexing="ij")
    a = rows * ring + cols
    b, c, d = a + 1, a + ring, a + ring + 1
    faces = np.concatenate([np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)])
    corners = vertices[faces]
    area2 = np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
    faces = faces[area2 > 1e-12]  # rings of radius 0 (poles, cone tips) give collapsed triangles
    vertices_list, faces_list, uv_list = [vertices], [faces], [uv]
    count = len(vertices)
    if close_ends:
        for end, flip in ((0, True), (len(profile) - 1, False)):
            if profile[end, 0] <= 1e-9:
                continue
            centre = np.array([[0.0, profile[end, 1], 0.0]])
            rim = np.arange(segments) + end * ring
            fan = np.stack([np.full(segments, count), rim + 1, rim], axis=1)
            faces_list.append(fan[:, ::-1] if flip else fan)
            vertices_list.append(centre)
            uv_list.append(np.array([[0.5, 0.5]]))
            count += 1
    return np.concatenate(vertices_list), np.concatenate(faces_list), np.concatenate(uv_list)


def box(size: np.ndarray, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Axis-aligned box [3] size around centre [3]; 4 vertices per side so UVs are per side."""
    vertices, faces, uv = [], [], []
    corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u_axis, v_axis = [a for a in range(3) if a != axis]
            quad = np.zeros((4, 3))
            quad[:, axis] = sign * 0.5
            quad[:, u_axis] = corners[:, 0] - 0.5
            quad[:, v_axis] = corners[:, 1] - 0.5
            base = len(vertices) * 4
            order = [0, 1, 2, 0, 2, 3] if sign > 0 else [0, 2, 1, 0, 3, 2]
            if axis == 1:  # keep outward winding for the y sides (cyclic axis order)
                order = [0, 2, 1, 0, 3, 2] if sign > 0 else [0, 1, 2, 0, 2, 3]
            faces.append(np.array(order).reshape(2, 3) + base)
            vertices.append(quad * size + centre)
            uv.append(np.stack([corners[:, 0], 1.0 - corners[:, 1]], axis=1))
    return np.concatenate(vertices), np.concatenate(faces), np.concatenate(uv)


def _arc(start: float, stop: float, n: int, radius: float, cy: float, rx: float = 0.0) -> np.ndarray:
    """Profile points on a circle arc (angles in radians from -pi/2 at the bottom)."""
    theta = np.linspace(start, stop, n)
    return np.stack([rx + radius * np.cos(theta), cy + radius * np.sin(theta)], axis=1)


# ----------------------------------------------------------------------------------------------
# classes: each returns a list of (vertices, faces, uv) in metres-free units, upright along +Y

Shape = tuple[np.ndarray, np.ndarray, np.ndarray]


def _sphere(rng: np.random.Generator, seg: int) -> list[Shape]:
    squash = rng.uniform(0.8, 1.25)
    v, f, uv = revolve(_arc(-math.pi / 2, math.pi / 2, seg // 2 + 1, 0.5, 0.0), seg)
    v[:, 1] *= squash
    return [(v, f, uv)]


def _box(rng: np.random.Generator, seg: int) -> list[Shape]:
    return [box(rng.uniform([0.5, 0.5, 0.5], [1.0, 1.0, 1.0]), np.zeros(3))]


def _cylinder(rng: np.random.Generator, seg: int) -> list[Shape]:
    r, h = rng.uniform(0.2, 0.35), rng.uniform(0.8, 1.2)
    return [revolve(np.array([[r, -h / 2], [r, h / 2]]), seg)]


def _cone(rng: np.random.Generator, seg: int) -> list[Shape]:
    r, h = rng.uniform(0.3, 0.5), rng.uniform(0.8, 1.2)
    return [revolve(np.array([[r, -h / 2], [0.0, h / 2]]), seg)]


def _torus(rng: np.random.Generator, seg: int) -> list[Shape]:
    major, minor = rng.uniform(0.35, 0.45), rng.uniform(0.08, 0.16)
    v, f, uv = revolve(_arc(-math.pi, math.pi, seg // 2 + 1, minor, 0.0, rx=major), seg, close_ends=False)
    return [(v, f, uv)]


def _capsule(rng: np.random.Generator, seg: int) -> list[Shape]:
    r, h = rng.uniform(0.15, 0.25), rng.uniform(0.5, 0.9)
    bottom = _arc(-math.pi / 2, 0.0, seg // 4 + 1, r, -h / 2)
    top = _arc(0.0, math.pi / 2, seg // 4 + 1, r, h / 2)
    return [revolve(np.concatenate([bottom, top]), seg)]


def _table(rng: np.random.Generator, seg: int) -> list[Shape]:
    width, depth = rng.uniform(0.8, 1.0), rng.uniform(0.5, 0.9)
    height, top, leg = rng.uniform(0.45, 0.7), rng.uniform(0.05, 0.09), rng.uniform(0.05, 0.09)
    shapes = [box(np.array([width, top, depth]), np.array([0.0, height - top / 2, 0.0]))]
    for sx in (-1, 1):
        for sz in (-1, 1):
            centre = np.array([sx * (width / 2 - leg), (height - top) / 2, sz * (depth / 2 - leg)])
            shapes.append(box(np.array([leg, height - top, leg]), centre))
    return shapes


def _snowman(rng: np.random.Generator, seg: int) -> list[Shape]:
    radii = np.sort(rng.uniform(0.12, 0.3, size=3))[::-1]
    shapes, y = [], 0.0
    for r in radii:
        v, f, uv = revolve(_arc(-math.pi / 2, math.pi / 2, seg // 2 + 1, r, 0.0), seg)
        v[:, 1] += y + r
        y += 1.7 * r
        shapes.append((v, f, uv))
    return shapes


def _mushroom(rng: np.random.Generator, seg: int) -> list[Shape]:
    stem_r, stem_h = rng.uniform(0.08, 0.14), rng.uniform(0.35, 0.6)
    cap_r = rng.uniform(0.35, 0.5)
    cap_h = rng.uniform(0.2, 0.35)
    stem = revolve(np.array([[stem_r, 0.0], [stem_r, stem_h]]), seg)
    arc = _arc(0.0, math.pi / 2, seg // 4 + 1, 1.0, 0.0)
    cap_profile = np.stack([arc[:, 0] * cap_r, stem_h + arc[:, 1] * cap_h], axis=1)
    cap_profile = np.concatenate([[[stem_r, stem_h]], cap_profile])
    return [stem, revolve(cap_profile, seg)]


def _dumbbell(rng: np.random.Generator, seg: int) -> list[Shape]:
    r, bar_r, length = rng.uniform(0.16, 0.24), rng.uniform(0.04, 0.07), rng.uniform(0.5, 0.7)
    shapes = []
    for side in (-1.0, 1.0):
        v, f, uv = revolve(_arc(-math.pi / 2, math.pi / 2, seg // 2 + 1, r, 0.0), seg)
        v[:, 0] += side * length / 2
        shapes.append((v, f, uv))
    v, f, uv = revolve(np.array([[bar_r, -length / 2], [bar_r, length / 2]]), seg)
    shapes.append((v[:, [1, 0, 2]] * [1, 1, 1], f[:, ::-1], uv))  # lie the bar along x
    return shapes


def _arch(rng: np.random.Generator, seg: int) -> list[Shape]:
    width, height, thick = rng.uniform(0.7, 1.0), rng.uniform(0.5, 0.8), rng.uniform(0.1, 0.16)
    depth = rng.uniform(0.2, 0.4)
    post = np.array([thick, height, depth])
    return [
        box(post, np.array([-(width - thick) / 2, height / 2, 0.0])),
        box(post, np.array([(width - thick) / 2, height / 2, 0.0])),
        box(np.array([width, thick, depth]), np.array([0.0, height + thick / 2, 0.0])),
    ]


CLASSES: dict[str, Callable[[np.random.Generator, int], list[Shape]]] = {
    "box": _box,
    "sphere": _sphere,
    "cylinder": _cylinder,
    "cone": _cone,
    "torus": _torus,
    "capsule": _capsule,
    "table": _table,
    "snowman": _snowman,
    "mushroom": _mushroom,
    "dumbbell": _dumbbell,
    "arch": _arch,
}


# ----------------------------------------------------------------------------------------------
# appearance


def _random_color(rng: np.random.Generator) -> np.ndarray:
    import colorsys

    h, s, v = rng.uniform(), rng.uniform(0.35, 0.95), rng.uniform(0.45, 1.0)
    return np.array([*colorsys.hsv_to_rgb(h, s, v), 1.0], dtype=np.float32)


def procedural_texture(rng: np.random.Generator, size: int = TEXTURE_SIZE) -> np.ndarray:
    """A [size, size, 4] uint8 pattern in two random colours (checker/stripes/dots/rings/noise)."""
    a, b = _random_color(rng), _random_color(rng)
    y, x = np.mgrid[0:size, 0:size] / size
    kind = rng.integers(5)
    freq = int(rng.integers(3, 9))
    if kind == 0:
        mask = ((np.floor(x * freq) + np.floor(y * freq)) % 2).astype(np.float32)
    elif kind == 1:
        mask = (np.sin(2 * math.pi * freq * (x if rng.uniform() < 0.5 else y)) > 0).astype(np.float32)
    elif kind == 2:
        cx, cy = (x * freq) % 1 - 0.5, (y * freq) % 1 - 0.5
        mask = (cx**2 + cy**2 < rng.uniform(0.05, 0.15)).astype(np.float32)
    elif kind == 3:
        mask = (np.sin(2 * math.pi * freq * np.hypot(x - 0.5, y - 0.5)) > 0).astype(np.float32)
    else:
        coarse = rng.uniform(size=(freq + 1, freq + 1))
        gx, gy = x * freq, y * freq
        ix, iy = np.floor(gx).astype(int), np.floor(gy).astype(int)
        fx, fy = gx - ix, gy - iy
        mask = (
            coarse[iy, ix] * (1 - fx) * (1 - fy)
            + coarse[iy, ix + 1] * fx * (1 - fy)
            + coarse[iy + 1, ix] * (1 - fx) * fy
            + coarse[iy + 1, ix + 1] * fx * fy
        ).astype(np.float32)
    image = a[None, None] * (1 - mask[..., None]) + b[None, None] * mask[..., None]
    image[..., 3] = 1.0
    return np.round(image * 255).astype(np.uint8)


def _appearance(
    rng: np.random.Generator, vertices: np.ndarray, uv: np.ndarray, faces: np.ndarray
) -> MeshPart:
    style = rng.integers(3)
    if style == 0:
        return MeshPart(vertices, faces, base_color=_random_color(rng))
    if style == 1:
        low, high = _random_color(rng), _random_color(rng)
        t = (vertices[:, 1] - vertices[:, 1].min()) / max(np.ptp(vertices[:, 1]), 1e-9)
        colors = low[None] * (1 - t[:, None]) + high[None] * t[:, None]
        return MeshPart(vertices, faces, vertex_colors=colors)
    return MeshPart(vertices, faces, uv=uv, texture=procedural_texture(rng))


def make_object(seed: int, index: int, segments: int = 48) -> tuple[str, TexturedMesh]:
    """Object `index` of the dataset with `seed`: (class name, mesh). Deterministic."""
    names = list(CLASSES)
    name = names[index % len(names)]
    rng = np.random.default_rng([seed, index])
    shapes = CLASSES[name](rng, segments)
    yaw = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(yaw), 0, math.sin(yaw)], [0, 1, 0], [-math.sin(yaw), 0, math.cos(yaw)]])
    parts = [_appearance(rng, v @ rotation.T, uv, f) for v, f, uv in shapes]
    extras = {"voxforge_synth": {"class": name, "label": names.index(name), "seed": seed, "index": index}}
    return name, TexturedMesh(parts=parts, extras=extras).normalized()


def write_dataset(out: str | Path, config: SynthConfig) -> dict[str, object]:
    """Write `config.num` GLB files and labels.json into `out`; returns the labels document.

    Files that already exist with the same name are rewritten (they are deterministic).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = {}
    for index in range(config.num):
        name, mesh = make_object(config.seed, index, config.segments)
        filename = f"synth_{index:05d}_{name}.glb"
        mesh.save_glb(out / filename)
        items[filename] = {"class": name, "label": list(CLASSES).index(name)}
    labels = {"seed": config.seed, "num": config.num, "classes": list(CLASSES), "items": items}
    tmp = out / "labels.json.tmp"
    tmp.write_text(json.dumps(labels, indent=1))
    tmp.replace(out / "labels.json")
    return labels
