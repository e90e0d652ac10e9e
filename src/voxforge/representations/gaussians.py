"""3D Gaussians: raw parameters, activations, and the standard 3DGS `.ply` format.

Stored parameters are the unconstrained ones an optimiser or a decoder produces, under the
names of the INRIA 3DGS release (and what every splat viewer expects in a `.ply`):
- `means [N, 3]` world positions;
- `log_scales [N, 3]` → `scales = exp(log_scales)` (standard deviations along the axes);
- `quats [N, 4]` (w, x, y, z), any norm → `rotations` normalised;
- `opacity_logits [N]` → `opacities = sigmoid(opacity_logits)`;
- `sh_dc [N, 3]` degree-0 spherical-harmonic coefficients and `sh_rest [N, K-1, 3]` the
  higher bands (K = (degree + 1)²; `None` for degree 0). Colour = SH(direction) + 0.5,
  clamped at 0, as gsplat and the INRIA renderer do; for degree 0, `rgb = C0 * sh_dc + 0.5`.

`.ply` layout (binary little endian, one float32 property per column, in this order):
`x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 … f_rest_{3(K-1)-1} opacity scale_0..2 rot_0..3`.
The normals are zeros (viewers ignore them). `f_rest` is channel-major: all of red's
higher-band coefficients, then green's, then blue's — the INRIA writer transposes
`[N, K-1, 3]` to `[N, 3, K-1]` before flattening, and `load_ply` undoes it. Opacity is stored
as its logit, scales as logs, rotation as the raw quaternion — which is why the container
keeps raw parameters: write and read are exact.

`load_ply` reads the header, accepts the properties in any order (float or double), checks
the file size against the element count before reading, and raises `GaussianPlyError`
(a `UserError`) naming the file and the problem.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import UserError

__all__ = [
    "SH_C0",
    "Gaussians",
    "GaussianPlyError",
    "load_ply",
    "ply_property_names",
    "rgb_to_sh",
    "sh_to_rgb",
]

SH_C0 = 0.28209479177387814  # Y_0^0 = 1 / (2 sqrt(pi))
_MAX_HEADER_BYTES = 1 << 16
_PLY_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8"}


class GaussianPlyError(UserError):
    """A Gaussian `.ply` file is malformed or not in the 3DGS layout."""


def rgb_to_sh(rgb: Tensor) -> Tensor:
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh_dc: Tensor) -> Tensor:
    return sh_dc * SH_C0 + 0.5


def ply_property_names(sh_degree: int) -> list[str]:
    """Column names of a 3DGS `.ply` with SH up to `sh_degree`, in the standard order."""
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return [
        *"x y z nx ny nz".split(),
        *(f"f_dc_{i}" for i in range(3)),
        *(f"f_rest_{i}" for i in range(rest)),
        "opacity",
        *(f"scale_{i}" for i in range(3)),
        *(f"rot_{i}" for i in range(4)),
    ]


@dataclass
class Gaussians:
    """A set of N 3D Gaussians in raw (pre-activation) parameters; see the module docstring."""

    means: Tensor  # [N, 3]
    log_scales: Tensor  # [N, 3]
    quats: Tensor  # [N, 4] (w, x, y, z)
    opacity_logits: Tensor  # [N]
    sh_dc: Tensor  # [N, 3]
    sh_rest: Tensor | None = None  # [N, K-1, 3], K = (sh_degree + 1)^2

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {
            "means": (n, 3),
            "log_scales": (n, 3),
            "quats": (n, 4),
            "opacity_logits": (n,),
            "sh_dc": (n, 3),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"Gaussians.{name} must have shape {list(shape)}, got {list(getattr(self, name).shape)}"
                )
        if self.sh_rest is not None:
            k = self.sh_rest.shape[1] + 1 if self.sh_rest.ndim == 3 else -1
            degree = math.isqrt(k) - 1 if k > 0 else -1
            if (
                self.sh_rest.ndim != 3
                or self.sh_rest.shape[0] != n
                or self.sh_rest.shape[2] != 3
                or (degree + 1) ** 2 != k
            ):
                raise ValueError(
                    f"Gaussians.sh_rest must be [N, (d+1)^2 - 1, 3] for a degree d >= 1, got {list(self.sh_rest.shape)}"
                )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_activated(
        cls,
        means: Tensor,  # [N, 3]
        scales: Tensor,  # [N, 3] > 0
        quats: Tensor,  # [N, 4] wxyz
        opacities: Tensor,  # [N] in (0, 1)
        rgb: Tensor,  # [N, 3]
        sh_rest: Tensor | None = None,
    ) -> Gaussians:
        eps = 1e-6
        return cls(
            means=means,
            log_scales=torch.log(scales),
            quats=quats,
            opacity_logits=torch.logit(opacities.clamp(eps, 1 - eps)),
            sh_dc=rgb_to_sh(rgb),
            sh_rest=sh_rest,
        )

    @classmethod
    def cat(cls, items: Iterable[Gaussians]) -> Gaussians:
        items = list(items)
        if not items:
            raise ValueError("Gaussians.cat needs at least one set")
        degrees = {g.sh_degree for g in items}
        if len(degrees) != 1:
            raise ValueError(f"Gaussians.cat: all sets need the same SH degree, got {sorted(degrees)}")
        values = {f.name: [getattr(g, f.name) for g in items] for f in fields(cls)}
        return cls(**{k: None if v[0] is None else torch.cat(v) for k, v in values.items()})

    # ------------------------------------------------------------------ activated views
    @property
    def num_gaussians(self) -> int:
        return int(self.means.shape[0])

    def __len__(self) -> int:
        return self.num_gaussians

    @property
    def sh_degree(self) -> int:
        return 0 if self.sh_rest is None else math.isqrt(self.sh_rest.shape[1] + 1) - 1

    @property
    def scales(self) -> Tensor:  # [N, 3]
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> Tensor:  # [N]
        return torch.sigmoid(self.opacity_logits)

    @property
    def rotations(self) -> Tensor:  # [N, 4] unit quaternions
        return torch.nn.functional.normalize(self.quats, dim=-1)

    @property
    def rgb(self) -> Tensor:  # [N, 3] view-independent (degree-0) colour
        return sh_to_rgb(self.sh_dc)

    @property
    def sh_coeffs(self) -> Tensor:  # [N, K, 3]
        if self.sh_rest is None:
            return self.sh_dc[:, None]
        return torch.cat([self.sh_dc[:, None], self.sh_rest], dim=1)

    # ------------------------------------------------------------------ tensor plumbing
    def _map(self, fn) -> Gaussians:  # type: ignore[no-untyped-def]
        return replace(
            self,
            **{
                f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                for f in fields(self)
            },
        )

    def to(self, *args, **kwargs) -> Gaussians:  # type: ignore[no-untyped-def]
        return self._map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> Gaussians:
        return self._map(lambda t: t.detach())

    def __getitem__(self, index: Tensor | slice) -> Gaussians:
        return self._map(lambda t: t[index])

    # ------------------------------------------------------------------ .ply
    def save_ply(self, path: str | Path) -> Path:
        """Write the standard 3DGS binary `.ply` (see the module docstring)."""
        path = Path(path)
        g = self.detach().to("cpu", torch.float32)
        n = g.num_gaussians
        rest = (
            g.sh_rest.transpose(1, 2).reshape(n, -1) if g.sh_rest is not None else torch.zeros(n, 0)
        )  # channel-major
        columns = torch.cat(
            [g.means, torch.zeros(n, 3), g.sh_dc, rest, g.opacity_logits[:, None], g.log_scales, g.quats],
            dim=1,
        )
        names = ply_property_names(self.sh_degree)
        header = "ply\nformat binary_little_endian 1.0\n"
        header += f"element vertex {n}\n"
        header += "".join(f"property float {name}\n" for name in names)
        header += "end_header\n"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(columns.numpy().astype("<f4", copy=False).tobytes())
        return path


def _parse_header(path: Path, fh) -> tuple[int, list[tuple[str, str]], int]:  # type: ignore[no-untyped-def]
    head = fh.read(_MAX_HEADER_BYTES)
    end = head.find(b"end_header\n")
    if not head.startswith(b"ply\n") or end < 0:
        raise GaussianPlyError(f"{path}: not a PLY file with a header (missing 'ply' or 'end_header')")
    lines = head[:end].decode("ascii", errors="replace").splitlines()
    count, props, element = None, [], None
    for line in lines[1:]:
        parts = line.split()
        if not parts or parts[0] in ("comment", "obj_info"):
            continue
        if parts[0] == "format":
            if parts[1:2] != ["binary_little_endian"]:
                raise GaussianPlyError(
                    f"{path}: format '{' '.join(parts[1:])}' — 3DGS files are binary_little_endian"
                )
        elif parts[0] == "element":
            element = parts[1]
            if element == "vertex":
                count = int(parts[2])
            elif count is not None:
                raise GaussianPlyError(f"{path}: element '{element}' after 'vertex' is not supported")
        elif parts[0] == "property" and element == "vertex":
            if parts[1] == "list" or parts[1] not in _PLY_TYPES:
                raise GaussianPlyError(
                    f"{path}: vertex property '{' '.join(parts[1:])}' must be float or double"
                )
            props.append((parts[2], _PLY_TYPES[parts[1]]))
    if count is None:
        raise GaussianPlyError(f"{path}: no 'element vertex' in the header")
    return count, props, end + len(b"end_header\n")


def load_ply(path: str | Path, device: torch.device | str = "cpu") -> Gaussians:
    """Read a 3DGS `.ply` written by us, the INRIA code, gsplat, or a splat editor."""
    path = Path(path)
    with open(path, "rb") as fh:
        count, props, data_start = _parse_header(path, fh)
        dtype = np.dtype(props)
        size = path.stat().st_size - data_start
        if size < count * dtype.itemsize:
            raise GaussianPlyError(
                f"{path}: header promises {count} vertices of {dtype.itemsize} bytes, file has {size} bytes of data"
            )
        fh.seek(data_start)
        data = np.frombuffer(fh.read(count * dtype.itemsize), dtype=dtype, count=count)
    names = set(dtype.names or ())
    required = [
        "x",
        "y",
        "z",
        "f_dc_0",
        "f_dc_1",
        "f_dc_2",
        "opacity",
        *(f"scale_{i}" for i in range(3)),
        *(f"rot_{i}" for i in range(4)),
    ]
    missing = [n for n in required if n not in names]
    if missing:
        raise GaussianPlyError(f"{path}: missing 3DGS properties {missing}")
    n_rest = sum(1 for n in names if n.startswith("f_rest_"))
    k = n_rest // 3 + 1
    if n_rest % 3 or math.isqrt(k) ** 2 != k or any(f"f_rest_{i}" not in names for i in range(n_rest)):
        raise GaussianPlyError(
            f"{path}: {n_rest} f_rest_* properties do not form SH bands of 3 colour channels"
        )

    def cols(keys: list[str]) -> Tensor:
        stacked = (
            np.stack([data[key].astype(np.float32) for key in keys], axis=1) if keys else np.zeros((count, 0))
        )
        return torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32)).to(device)

    sh_rest = None
    if n_rest:
        sh_rest = (
            cols([f"f_rest_{i}" for i in range(n_rest)]).view(count, 3, k - 1).transpose(1, 2).contiguous()
        )
    return Gaussians(
        means=cols(["x", "y", "z"]),
        log_scales=cols([f"scale_{i}" for i in range(3)]),
        quats=cols([f"rot_{i}" for i in range(4)]),
        opacity_logits=cols(["opacity"])[:, 0].contiguous(),
        sh_dc=cols([f"f_dc_{i}" for i in range(3)]),
        sh_rest=sh_rest,
    )
