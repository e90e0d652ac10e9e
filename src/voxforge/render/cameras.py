"""Pinhole cameras in the DESIGN.md convention, and the view sets data preparation uses.

Convention (DESIGN.md "Cameras", the one `gsplat.rasterization` takes):

- `world_to_cam [V, 4, 4]`: OpenCV camera axes, x right, y down, z forward (into the scene).
- `K [V, 3, 3]`: pixel intrinsics. Pixel (col, row) covers [col, col + 1] x [row, row + 1]
  in continuous image coordinates, so its centre is (col + 0.5, row + 0.5) and a centred
  principal point is (W / 2, H / 2).
- The field of view spans the larger image side (Blender's sensor fit "AUTO" with a square
  sensor, which is what TRELLIS renders with).

View sets:

- `hammersley_sphere` reproduces TRELLIS's feature views (`dataset_toolkits/render.py`):
  view i has yaw ``2*pi*(radical_inverse_2(i) + offset[1])`` and pitch
  ``arccos(1 - 2*(i + offset[0])/n) - pi/2``, radius 2, FoV 40 deg, looking at the origin
  with +Y up. TRELLIS positions the camera at (r cos(yaw) cos(pitch), r sin(yaw) cos(pitch),
  r sin(pitch)) in Blender's Z-up world after importing the glTF Y-up object (Blender
  (x, y, z) = glTF (x, -z, y)); in our Y-up object frame that is
  (r cos(yaw) cos(pitch), r sin(pitch), -r sin(yaw) cos(pitch)), i.e. the same physical
  cameras around the same object. TRELLIS draws `offset` at random per asset; here it is
  an argument (default (0.5, 0.5): deterministic and away from the poles, where "look at
  the origin with +Y up" is undefined). Pass `rng.random(2)` for TRELLIS's behaviour.
- `condition_views` reproduces TRELLIS's condition renders (`render_cond.py`): Hammersley
  directions with a random offset, and per view ``k ~ U(1/r_max^2, 1/r_min^2)``,
  ``r = 1/sqrt(k)``, ``fov = 2*arcsin(sqrt(3)/2 / r)`` -- the bounding sphere of the unit
  cube exactly fills the view, with FoV in `fov_range` (10-70 deg).

`Cameras.to_json()` / `from_json()` round-trip exactly (float32 values survive JSON as
float64). `to_blender()` / `from_blender()` convert to Blender's camera-to-world matrices
in Blender's Z-up world (camera looks along -Z, +Y up), which the Cycles backend uses.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voxforge.errors import UserError

__all__ = [
    "Cameras",
    "CameraError",
    "look_at",
    "intrinsics",
    "hammersley_sphere",
    "condition_views",
    "sphere_hammersley",
    "GLTF_TO_BLENDER",
]

FORMAT = "voxforge.cameras/1"

# Blender's glTF importer turns Y-up into Z-up: Blender (x, y, z) = glTF (x, -z, y).
GLTF_TO_BLENDER = np.array([[1, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
# OpenCV camera axes (x right, y down, z forward) <-> OpenGL/Blender (x right, y up, z back).
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


class CameraError(UserError):
    """Camera data is malformed (a cameras.json file or arrays with the wrong shape)."""


@dataclass
class Cameras:
    """A batch of V pinhole cameras sharing one image size."""

    world_to_cam: np.ndarray  # [V, 4, 4] float32, OpenCV axes
    K: np.ndarray  # [V, 3, 3] float32 pixel intrinsics
    width: int
    height: int
    extras: dict[str, Any] = field(default_factory=dict)  # JSON metadata (e.g. yaw/pitch/radius/fov)

    def __post_init__(self) -> None:
        self.world_to_cam = np.ascontiguousarray(self.world_to_cam, dtype=np.float32)
        self.K = np.ascontiguousarray(self.K, dtype=np.float32)
        if self.world_to_cam.ndim != 3 or self.world_to_cam.shape[1:] != (4, 4):
            raise CameraError(f"world_to_cam must have shape [V, 4, 4], got {list(self.world_to_cam.shape)}")
        if self.K.shape != (len(self.world_to_cam), 3, 3):
            raise CameraError(f"K must have shape [{len(self.world_to_cam)}, 3, 3], got {list(self.K.shape)}")
        if not (np.isfinite(self.world_to_cam).all() and np.isfinite(self.K).all()):
            raise CameraError("camera matrices contain NaN or Inf")
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 < value <= 65536:
                raise CameraError(f"camera {name} must be an integer in [1, 65536], got {value!r}")
            setattr(self, name, int(value))

    def __len__(self) -> int:
        return len(self.world_to_cam)

    def __getitem__(self, index: Any) -> Cameras:
        index = np.arange(len(self))[index]
        index = np.atleast_1d(index)
        extras = {k: [v[i] for i in index] if _per_view(v, len(self)) else v for k, v in self.extras.items()}
        return Cameras(self.world_to_cam[index], self.K[index], self.width, self.height, extras)

    @property
    def cam_to_world(self) -> np.ndarray:  # [V, 4, 4] float32
        return np.linalg.inv(self.world_to_cam.astype(np.float64)).astype(np.float32)

    @property
    def centers(self) -> np.ndarray:  # [V, 3] camera positions in the world
        return self.cam_to_world[:, :3, 3]

    def scaled(self, factor: int) -> Cameras:
        """The same cameras rendering `factor` times more pixels per side (supersampling)."""
        scale = np.diag([factor, factor, 1.0]).astype(np.float32)
        return Cameras(
            self.world_to_cam, scale @ self.K, self.width * factor, self.height * factor, self.extras
        )

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """points [N, 3] world -> pixel coordinates [V, N, 2] (continuous) and depth z [V, N]."""
        pts = np.asarray(points, dtype=np.float64)
        cam = np.einsum("vij,nj->vni", self.world_to_cam[:, :3, :3].astype(np.float64), pts)
        cam = cam + self.world_to_cam[:, None, :3, 3]
        z = cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            pix = np.einsum("vij,vnj->vni", self.K.astype(np.float64), cam)
            xy = pix[..., :2] / pix[..., 2:3]
        return xy.astype(np.float32), z.astype(np.float32)

    # -- JSON ------------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "convention": "opencv",
                "width": self.width,
                "height": self.height,
                "world_to_cam": self.world_to_cam.astype(np.float64).tolist(),
                "K": self.K.astype(np.float64).tolist(),
                "extras": self.extras,
            }
        )

    @classmethod
    def from_json(cls, data: str | bytes | dict[str, Any], *, source: str = "cameras.json") -> Cameras:
        if isinstance(data, (str, bytes)):
            if len(data) > 64 * 1024 * 1024:
                raise CameraError(f"{source}: file is too large for camera data")
            try:
                data = json.loads(data)
            except json.JSONDecodeError as err:
                raise CameraError(f"{source}: not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise CameraError(f"{source}: expected a JSON object")
        if data.get("format") != FORMAT:
            raise CameraError(f"{source}: key 'format' must be {FORMAT!r}, got {data.get('format')!r}")
        missing = [k for k in ("width", "height", "world_to_cam", "K") if k not in data]
        if missing:
            raise CameraError(f"{source}: missing keys {missing}")
        try:
            w2c = np.asarray(data["world_to_cam"], dtype=np.float64)
            K = np.asarray(data["K"], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise CameraError(f"{source}: camera matrices must be nested lists of numbers ({err})") from None
        extras = data.get("extras") or {}
        if not isinstance(extras, dict):
            raise CameraError(f"{source}: key 'extras' must be an object")
        try:
            return cls(w2c, K, data["width"], data["height"], extras)
        except CameraError as err:
            raise CameraError(f"{source}: {err}") from None

    # -- Blender ---------------------------------------------------------------------------

    def to_blender(self) -> np.ndarray:  # [V, 4, 4] float64
        """Blender camera-to-world matrices in Blender's Z-up world (camera looks along -Z)."""
        c2w_cv = np.linalg.inv(self.world_to_cam.astype(np.float64))
        return GLTF_TO_BLENDER @ c2w_cv @ _CV_TO_GL

    @classmethod
    def from_blender(cls, cam_to_world: np.ndarray, K: np.ndarray, width: int, height: int) -> Cameras:
        """Inverse of `to_blender` (e.g. TRELLIS's transforms.json `transform_matrix`)."""
        c2w_cv = np.linalg.inv(GLTF_TO_BLENDER) @ np.asarray(cam_to_world, np.float64) @ _CV_TO_GL
        return cls(np.linalg.inv(c2w_cv), K, width, height)

    def fov_deg(self) -> np.ndarray:  # [V] field of view across the larger image side
        side = max(self.width, self.height)
        focal = self.K[:, 0, 0] if self.width >= self.height else self.K[:, 1, 1]
        return np.degrees(2 * np.arctan(side / (2 * focal.astype(np.float64))))


def _per_view(value: Any, count: int) -> bool:
    return isinstance(value, list) and len(value) == count


def intrinsics(fov_deg: float, width: int, height: int) -> np.ndarray:
    """Pixel intrinsics [3, 3] with the FoV across the larger side and a centred principal point."""
    if not 0 < fov_deg < 180:
        raise CameraError(f"field of view must lie in (0, 180) degrees, got {fov_deg}")
    focal = max(width, height) / (2 * math.tan(math.radians(fov_deg) / 2))
    return np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=np.float64)


def look_at(eye: np.ndarray, target: np.ndarray = None, up: np.ndarray = None) -> np.ndarray:
    """World-to-camera [V, 4, 4] (OpenCV axes) for cameras at `eye [V, 3]` facing `target`.

    Image "up" follows `up` (default +Y). A camera looking straight along `up` uses the
    world -Z axis as its image up instead (the limit of approaching the pole from +Z).
    """
    eye = np.atleast_2d(np.asarray(eye, np.float64))
    target = np.zeros(3) if target is None else np.asarray(target, np.float64)
    up = np.array([0.0, 1.0, 0.0]) if up is None else np.asarray(up, np.float64)
    forward = target - eye
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    right = np.cross(forward, up)
    norm = np.linalg.norm(right, axis=1, keepdims=True)
    pole = norm[:, 0] < 1e-9
    if pole.any():
        right[pole] = np.cross(forward[pole], np.array([0.0, 0.0, -1.0]))
        norm[pole] = np.linalg.norm(right[pole], axis=1, keepdims=True)
    right /= norm
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward], axis=1)  # rows: camera axes in world coordinates
    w2c = np.tile(np.eye(4), (len(eye), 1, 1))
    w2c[:, :3, :3] = rot
    w2c[:, :3, 3] = -np.einsum("vij,vj->vi", rot, eye)
    return w2c


def _radical_inverse(base: int, n: int) -> float:
    value, scale = 0.0, 1.0 / base
    while n > 0:
        value += (n % base) * scale
        n //= base
        scale /= base
    return value


def sphere_hammersley(n: int, offset: tuple[float, float] = (0.5, 0.5)) -> tuple[np.ndarray, np.ndarray]:
    """TRELLIS's `sphere_hammersley_sequence` for i < n -> (yaw [n], pitch [n]) in radians."""
    i = np.arange(n)
    u = i / n + offset[0] / n
    v = np.array([_radical_inverse(2, int(k)) for k in i]) + offset[1]
    pitch = np.arccos(1 - 2 * u) - np.pi / 2
    yaw = v * 2 * np.pi
    return yaw, pitch


def _orbit_eyes(yaw: np.ndarray, pitch: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Camera positions in our Y-up frame for TRELLIS's Blender (Z-up) yaw/pitch."""
    return np.stack(
        [radius * np.cos(yaw) * np.cos(pitch), radius * np.sin(pitch), -radius * np.sin(yaw) * np.cos(pitch)],
        1,
    )


def _check_count(n: int, what: str) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise CameraError(f"{what}: the number of views must be a positive integer, got {n!r}")


def hammersley_sphere(
    n: int,
    radius: float = 2.0,
    fov_deg: float = 40.0,
    *,
    width: int = 512,
    height: int = 512,
    offset: tuple[float, float] = (0.5, 0.5),
) -> Cameras:
    """TRELLIS's feature views: n cameras on a Hammersley sphere looking at the origin."""
    _check_count(n, "hammersley_sphere")
    yaw, pitch = sphere_hammersley(n, offset)
    w2c = look_at(_orbit_eyes(yaw, pitch, np.full(n, float(radius))))
    K = np.repeat(intrinsics(fov_deg, width, height)[None], n, axis=0)
    extras = {
        "yaw": yaw.tolist(),
        "pitch": pitch.tolist(),
        "radius": [float(radius)] * n,
        "fov_deg": [fov_deg] * n,
    }
    return Cameras(w2c, K, width, height, extras)


def condition_views(
    n: int,
    rng: np.random.Generator,
    fov_range: tuple[float, float] = (10.0, 70.0),
    *,
    width: int = 512,
    height: int = 512,
) -> Cameras:
    """TRELLIS's condition views: random FoV in `fov_range`, radius fitted to the unit cube."""
    _check_count(n, "condition_views")
    fov_min, fov_max = fov_range
    if not 0 < fov_min <= fov_max < 180:
        raise CameraError(f"condition_views: fov_range must satisfy 0 < min <= max < 180, got {fov_range}")
    half_diagonal = math.sqrt(3) / 2  # bounding sphere of [-0.5, 0.5]^3
    radius_min = half_diagonal / math.sin(math.radians(fov_max) / 2)
    radius_max = half_diagonal / math.sin(math.radians(fov_min) / 2)
    yaw, pitch = sphere_hammersley(n, tuple(rng.random(2)))
    k = rng.uniform(1 / radius_max**2, 1 / radius_min**2, n)
    radius = 1 / np.sqrt(k)
    fov = np.degrees(2 * np.arcsin(half_diagonal / radius))
    w2c = look_at(_orbit_eyes(yaw, pitch, radius))
    K = np.stack([intrinsics(f, width, height) for f in fov])
    extras = {
        "yaw": yaw.tolist(),
        "pitch": pitch.tolist(),
        "radius": radius.tolist(),
        "fov_deg": fov.tolist(),
    }
    return Cameras(w2c, K, width, height, extras)
