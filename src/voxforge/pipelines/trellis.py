"""Image → 3D with TRELLIS's released models (a TRELLIS-image-large folder or its import).

The steps are TRELLIS's own (`voxforge.trellis.compose`): DINOv2 condition tokens of the
518² image, the guided Euler sampler on the structure flow, the structure decoder's
logits > 0, the sampler on the SLat flow over those voxels, the latent statistics of
`pipeline.json`, then the Gaussian and mesh decoders. Noise is drawn from one CPU generator
seeded with `seed` — first the structure's, then the latent's — which is what
`torch.manual_seed(seed)` gives TRELLIS on CPU, so a seed gives the same noise on every
device.

TRELLIS's models work in a Z-up frame (its renders and its GLB export rotate to Y-up);
voxforge's object frame is Y-up (DESIGN.md). `TrellisResult` is already in voxforge's frame:
x stays, y ← z, z ← −y, applied to Gaussian means and rotations, mesh vertices and normals,
and voxel indices (j ← k, k ← R − 1 − j), so the `.ply`, turntable, `.glb` and
`structure.npz` open upright like every other voxforge asset.

Speed on CPU: the condition is encoded once per image; guidance batches the conditional and
unconditional branches into one forward (`trellis.flows.sample`); nothing else is
recomputed per step. `dtype=torch.bfloat16` runs the flows under bf16 autocast where the
CPU has native bf16 (the sampler state stays fp32).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from voxforge.errors import UserError
from voxforge.export.textured import Z_UP_TO_Y_UP as GLTF_Z_UP_TO_Y_UP
from voxforge.representations.gaussians import Gaussians
from voxforge.sparse.tensor import SparseTensor
from voxforge.trellis.compose import sample_slat, sample_structure
from voxforge.trellis.dinov2 import condition_tokens
from voxforge.trellis.importer import load_model_folder
from voxforge.trellis.loading import TrellisModels

__all__ = ["TrellisImageTo3D", "TrellisMesh", "TrellisResult", "voxels_z_up_to_y_up", "z_up_to_y_up"]

#: p_voxforge = Z_UP_TO_Y_UP @ p_trellis: x' = x, y' = z, z' = -y (the export's row-vector matrix, transposed)
Z_UP_TO_Y_UP = torch.from_numpy(GLTF_Z_UP_TO_Y_UP.T.astype(np.float32))


#: the same rotation as a unit quaternion (w, x, y, z): -90° about +x
Z_UP_TO_Y_UP_QUAT = torch.tensor([math.sqrt(0.5), -math.sqrt(0.5), 0.0, 0.0])


def _quat_mul(a: Tensor, b: Tensor) -> Tensor:  # [..., 4] (w, x, y, z) Hamilton product a ⊗ b
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        -1,
    )


def z_up_to_y_up(gaussians: Gaussians) -> Gaussians:
    """Rotate Gaussians from TRELLIS's frame into voxforge's (covariance R Σ Rᵀ)."""
    from dataclasses import replace

    rot = Z_UP_TO_Y_UP.to(gaussians.means)
    q = Z_UP_TO_Y_UP_QUAT.to(gaussians.quats)
    return replace(
        gaussians,
        means=gaussians.means @ rot.T,
        quats=_quat_mul(q.expand_as(gaussians.quats), gaussians.quats),
    )


def voxels_z_up_to_y_up(ijk: np.ndarray, resolution: int) -> np.ndarray:  # [N, 3] -> [N, 3] int64
    """Voxel indices under the same rotation: a voxel's centre maps to the new voxel's centre."""
    ijk = np.asarray(ijk, dtype=np.int64)
    return np.stack([ijk[:, 0], ijk[:, 2], resolution - 1 - ijk[:, 1]], axis=1)


@dataclass
class TrellisMesh:
    """A decoded mesh in voxforge's frame: vertices [V, 3], faces [F, 3], colours and normals [V, 3]."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    normals: np.ndarray


@dataclass
class TrellisResult:
    coords: np.ndarray  # [N, 3] occupied voxels (voxforge frame)
    resolution: int
    gaussians: Gaussians | None
    mesh: TrellisMesh | None
    timings: dict[str, float] = field(default_factory=dict)


def _params(settings: Any, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    params = settings.as_params()
    params.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return params


class TrellisImageTo3D:
    """`generate(image)` with the models of one TRELLIS (or imported) folder."""

    def __init__(
        self, models: TrellisModels, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ):
        if models.image_encoder is None:
            raise UserError(f"{models.config.root}: no image encoder loaded (pass --dinov2 PATH)")
        self.models = models
        self.device = torch.device(device)
        self.dtype = dtype

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        *,
        dinov2: str | Path | None = None,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> TrellisImageTo3D:
        return cls(load_model_folder(path, dinov2=dinov2, device=device), device=device, **kwargs)

    @property
    def resolution(self) -> int:
        """Side of the occupancy grid: the structure latent's side times the decoder's upsampling."""
        flow = self.models.role("sparse_structure_flow_model")
        return int(flow.cfg.resolution) * int(self.models.role("sparse_structure_decoder").cfg.factor)

    @property
    def has_mesh_decoder(self) -> bool:
        return "slat_decoder_mesh" in self.models.roles

    def _autocast(self) -> Any:
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @torch.no_grad()
    def generate(
        self,
        image: Tensor,  # [1, 3, 518, 518] in [0, 1], prepared by voxforge.trellis.dinov2.load_image
        *,
        seed: int = 42,
        structure_params: Mapping[str, Any] | None = None,
        slat_params: Mapping[str, Any] | None = None,
        formats: tuple[str, ...] = ("gaussian", "mesh"),
        progress: Callable[[str, int, int], None] | None = None,  # (stage, step done, steps) per step
    ) -> TrellisResult:
        """`progress` hears "structure" and "latents" after each sampler step, then ("decode", 0, 1)."""
        from voxforge.pipelines.image_to_3d import EmptyStructureError

        config, models = self.models.config, self.models
        timings: dict[str, float] = {}
        structure_params = _params(config.structure_sampler, structure_params)
        slat_params = _params(config.slat_sampler, slat_params)

        def steps(stage: str, params: Mapping[str, Any]) -> Callable[[int, float, Tensor], None] | None:
            total = int(params["steps"])
            return None if progress is None else lambda i, t, x: progress(stage, i + 1, total)

        def timed(name: str, fn: Callable[..., Any], *args: Any) -> Any:
            start = time.perf_counter()
            out = fn(*args)
            timings[name] = time.perf_counter() - start
            return out

        image = image.to(self.device, torch.float32)
        with self._autocast():
            cond = timed("condition", condition_tokens, models.image_encoder, image).float()
        generator = torch.Generator().manual_seed(seed)
        flow = models.role("sparse_structure_flow_model")
        resolution = int(flow.cfg.resolution)
        noise = torch.randn(1, flow.cfg.in_channels, resolution, resolution, resolution, generator=generator)
        with self._autocast():
            _, coords = timed(
                "structure",
                sample_structure,
                flow,
                models.role("sparse_structure_decoder"),
                noise.to(self.device),
                cond,
                structure_params,
                config.structure_sampler.sigma_min,
                steps("structure", structure_params),
            )
        grid = self.resolution
        if not len(coords):
            raise EmptyStructureError("the sampled structure is empty (no voxel with logit > 0)")
        slat_flow = models.role("slat_flow_model")
        slat_noise = torch.randn(len(coords), slat_flow.cfg.in_channels, generator=generator)
        noise_tensor = SparseTensor(
            coords.to(self.device), slat_noise.to(self.device), spatial_shape=(grid,) * 3
        )
        with self._autocast():
            slat = timed(
                "slat",
                sample_slat,
                slat_flow,
                noise_tensor,
                cond,
                slat_params,
                config.slat_mean,
                config.slat_std,
                config.slat_sampler.sigma_min,
                steps("latents", slat_params),
            )
        slat = slat.float()
        if progress is not None:
            progress("decode", 0, 1)
        gaussians = mesh = None
        if "gaussian" in formats:
            (decoded,) = timed("decode_gaussians", models.role("slat_decoder_gs"), slat)
            gaussians = z_up_to_y_up(decoded.detach().to("cpu"))
        if "mesh" in formats and self.has_mesh_decoder:
            mesh = timed("decode_mesh", self._mesh, slat)
        voxels = voxels_z_up_to_y_up(coords[:, 1:].cpu().numpy(), grid)
        return TrellisResult(voxels, grid, gaussians, mesh, timings)

    def _mesh(self, slat: SparseTensor) -> TrellisMesh:
        (extracted,) = self.models.role("slat_decoder_mesh")(slat, resolution=self.resolution)
        rot = Z_UP_TO_Y_UP.numpy()
        vertices = extracted.vertices.detach().cpu().double().numpy() @ rot.T
        attrs = extracted.vertex_attrs.detach().cpu().double().numpy()
        normals = attrs[:, 3:6] @ rot.T if attrs.shape[1] >= 6 else np.zeros_like(vertices)
        return TrellisMesh(
            vertices=vertices.astype(np.float32),
            faces=extracted.faces.detach().cpu().numpy().astype(np.int64),
            colors=np.clip(attrs[:, :3], 0, 1).astype(np.float32),
            normals=normals.astype(np.float32),
        )
