"""Per-voxel features projected from rendered views, occlusion-aware.

    extractor = get_extractor("rgb")                    # or "dinov2", model="DIR or hub id"
    feats = aggregate_features(coords, 64, rgba, depth, cameras, extractor)   # [N, C] float32

Extractors turn a batch of views (uint8 RGBA [B, H, W, 4], straight alpha) into feature
maps [B, C, h, w] that cover the image uniformly (align_corners=False):

- `rgb` (built in, offline): the view's RGB in [0, 1] premultiplied onto black, at full
  render resolution by default (`size=` resamples to size x size, e.g. 37 for DINOv2's
  patch grid). C = 3. Colour is what the structured-latent decoders must reproduce, and
  full resolution keeps thin features sharp.
- `dinov2` (transformers): TRELLIS's recipe -- premultiply onto black, resize to the
  model's image size (518 for the released models), ImageNet normalisation, and the
  patch tokens of the last layer *before* the final layer norm (TRELLIS's `x_prenorm`),
  registers and CLS dropped: C = hidden size (1024 for ViT-L), a 37 x 37 grid. Weights
  load from a local directory or a hub id (default `facebook/dinov2-with-registers-large`,
  TRELLIS's `dinov2_vitl14_reg`); without them the error says so and names `--features
  rgb`.

Aggregation (what TRELLIS does, plus occlusion): voxel centres are projected into every
view and the feature map is sampled bilinearly there. TRELLIS averages over all views; here
a view counts only where the voxel is visible in it: its centre projects inside the image
onto a covered pixel whose rendered depth is not nearer than the voxel's own depth minus
`depth_tolerance` (default one voxel diagonal, sqrt(3)/R: the surface crosses the voxel
somewhere within that distance of its centre). A voxel that no view sees (inside a
concavity, or hidden by thin parts) takes the feature of the nearest voxel that some view
sees; if no voxel is visible at all it falls back to TRELLIS's plain all-view average. The
number of fallbacks is reported with `return_info=True`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from voxforge.data.voxelize import voxel_centers
from voxforge.errors import MissingDependencyError, UserError
from voxforge.render.cameras import Cameras

__all__ = [
    "EXTRACTORS",
    "DEFAULT_DINOV2",
    "FeatureError",
    "FeatureExtractor",
    "RGBExtractor",
    "DINOv2Extractor",
    "get_extractor",
    "aggregate_features",
]

EXTRACTORS = ("rgb", "dinov2")
DEFAULT_DINOV2 = "facebook/dinov2-with-registers-large"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureError(UserError):
    """Feature extraction cannot run (unknown extractor, missing weights, bad inputs)."""


class FeatureExtractor(Protocol):
    name: str
    dim: int
    batch_size: int

    def __call__(self, images: np.ndarray) -> torch.Tensor:  # uint8 [B, H, W, 4] -> [B, C, h, w]
        ...


def _premultiplied(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 RGBA [B, H, W, 4] -> float RGB [B, 3, H, W] in [0, 1], composited onto black."""
    rgba = torch.from_numpy(np.ascontiguousarray(images)).to(device).float() / 255.0
    return (rgba[..., :3] * rgba[..., 3:]).permute(0, 3, 1, 2)


@dataclass
class RGBExtractor:
    """Colour as the feature: the view itself (premultiplied RGB), optionally resampled."""

    size: int | None = None
    device: str = "cpu"
    batch_size: int = 16
    name: str = "rgb"
    dim: int = 3

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        rgb = _premultiplied(images, torch.device(self.device))
        if self.size is not None:
            rgb = F.interpolate(rgb, size=(self.size, self.size), mode="area")
        return rgb


class DINOv2Extractor:
    """DINOv2 patch features through transformers, TRELLIS's way (see module docstring)."""

    name = "dinov2"

    def __init__(self, model: str = DEFAULT_DINOV2, *, device: str = "cpu", batch_size: int = 8):
        try:
            import transformers
        except ImportError:
            raise MissingDependencyError(
                "transformers",
                "dino",
                "DINOv2 features (--features dinov2)",
                alternative="use `--features rgb`, the built-in extractor that needs no weights",
            ) from None
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get(
            "TRANSFORMERS_OFFLINE", "0"
        ) not in ("0", "", "false")
        try:
            network = transformers.AutoModel.from_pretrained(model, local_files_only=offline)
        except (OSError, ValueError) as err:
            raise FeatureError(
                f"DINOv2 weights not found: '{model}' is neither a local model directory nor a hub id "
                f"that could be loaded{' offline' if offline else ''} ({type(err).__name__}: "
                f"{str(err).splitlines()[0][:200]}). Download the weights (e.g. `huggingface-cli download "
                f"{DEFAULT_DINOV2}`) and pass the directory with --feature-model, or use `--features rgb`, "
                "the built-in extractor that needs no weights."
            ) from None
        config = network.config
        if getattr(config, "model_type", "") not in ("dinov2", "dinov2_with_registers"):
            raise FeatureError(f"'{model}' is a {config.model_type!r} model, not DINOv2")
        self.network = network.eval().to(device)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.dim = int(config.hidden_size)
        self.patch = int(config.patch_size)
        self.image_size = int(config.image_size)
        self.skip = 1 + int(getattr(config, "num_register_tokens", 0) or 0)  # CLS + registers
        self.mean = torch.tensor(_IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(_IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> torch.Tensor:
        rgb = _premultiplied(images, self.device)
        size = self.image_size
        rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        pixels = (rgb.clamp(0, 1) - self.mean) / self.std
        hidden = self.network(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
        grid = size // self.patch
        tokens = hidden[:, self.skip : self.skip + grid * grid]  # [B, grid*grid, C], pre-final-norm
        return tokens.transpose(1, 2).reshape(len(images), self.dim, grid, grid).float()


def get_extractor(name: str, **options: Any) -> FeatureExtractor:
    """`rgb` (options: size, device, batch_size) or `dinov2` (model, device, batch_size)."""
    if name == "rgb":
        allowed = {"size", "device", "batch_size"}
        factory = RGBExtractor
    elif name == "dinov2":
        allowed = {"model", "device", "batch_size"}
        factory = DINOv2Extractor
    else:
        raise FeatureError(f"unknown feature extractor {name!r}; choose from {', '.join(EXTRACTORS)}")
    unknown = set(options) - allowed
    if unknown:
        raise FeatureError(
            f"feature extractor {name!r} has no options {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    return factory(**options)


def _check(coords: np.ndarray, rgba: np.ndarray, depth: np.ndarray | None, cameras: Cameras) -> None:
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise FeatureError(f"coords must have shape [N, 3], got {list(coords.shape)}")
    if rgba.ndim != 4 or rgba.shape[-1] != 4 or rgba.dtype != np.uint8:
        raise FeatureError(f"rgba must be uint8 [V, H, W, 4], got {rgba.dtype} {list(rgba.shape)}")
    if rgba.shape[:3] != (len(cameras), cameras.height, cameras.width):
        raise FeatureError(
            f"rgba {list(rgba.shape[:3])} does not match the cameras ({len(cameras)} views of "
            f"{cameras.width}x{cameras.height})"
        )
    if depth is not None and depth.shape != rgba.shape[:3]:
        raise FeatureError(f"depth {list(depth.shape)} does not match rgba {list(rgba.shape[:3])}")


def aggregate_features(
    coords: np.ndarray,  # [N, 3] int voxel indices
    resolution: int,
    rgba: np.ndarray,  # [V, H, W, 4] uint8 views
    depth: np.ndarray | None,  # [V, H, W] float camera z, 0 where empty; None: no occlusion test
    cameras: Cameras,
    extractor: FeatureExtractor,
    *,
    depth_tolerance: float | None = None,
    device: str | torch.device = "cpu",
    return_info: bool = False,
) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:  # [N, C] float32 (, info)
    """Average each voxel's feature over the views that see it (module docstring)."""
    coords = np.asarray(coords)
    rgba = np.asarray(rgba)
    _check(coords, rgba, depth, cameras)
    device = torch.device(device)
    count = len(coords)
    tolerance = math.sqrt(3) / resolution if depth_tolerance is None else float(depth_tolerance)
    centres = voxel_centers(coords, resolution).astype(np.float64)
    total = torch.zeros(count, extractor.dim, device=device)
    seen = torch.zeros(count, device=device)
    width, height = cameras.width, cameras.height
    batch = max(1, int(getattr(extractor, "batch_size", 8)))
    for begin in range(0, len(cameras), batch):
        views = slice(begin, min(begin + batch, len(cameras)))
        feats = extractor(rgba[views]).to(device)  # [B, C, h, w]
        pix, z = cameras[views].project(centres)  # [B, N, 2], [B, N]
        pix_t = torch.from_numpy(pix).to(device)
        z_t = torch.from_numpy(z).to(device)
        visible = _visibility(pix_t, z_t, None if depth is None else depth[views], width, height, tolerance)
        total += _sample(feats, pix_t, width, height, visible)
        seen += visible.sum(0)
    features = total / seen.clamp(min=1)[:, None]
    unseen = (seen == 0).cpu().numpy()
    fallback = "none"
    if unseen.all() and count:
        fallback = "all_views"
        features = _all_view_average(coords, resolution, rgba, cameras, extractor, device)
    elif unseen.any():
        from scipy.spatial import cKDTree

        fallback = "nearest_visible"
        _, nearest = cKDTree(coords[~unseen]).query(coords[unseen])
        features[torch.from_numpy(np.nonzero(unseen)[0]).to(device)] = features[
            torch.from_numpy(np.nonzero(~unseen)[0][nearest]).to(device)
        ]
    result = features.cpu().numpy().astype(np.float32)
    if not return_info:
        return result
    info = {
        "views_per_voxel": seen.cpu().numpy().astype(np.int32),
        "unseen": int(unseen.sum()),
        "fallback": fallback,
    }
    return result, info


def _visibility(
    pix: torch.Tensor,  # [B, N, 2]
    z: torch.Tensor,  # [B, N]
    depth: np.ndarray | None,  # [B, H, W]
    width: int,
    height: int,
    tolerance: float,
) -> torch.Tensor:  # [B, N] float 0/1
    x, y = pix[..., 0], pix[..., 1]
    inside = (
        (z > 0) & (x >= 0) & (x < width) & (y >= 0) & (y < height) & torch.isfinite(x) & torch.isfinite(y)
    )
    if depth is not None:
        rendered = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)).to(pix.device)
        col = x.clamp(0, width - 1).long()
        row = y.clamp(0, height - 1).long()
        at = torch.gather(rendered.view(len(rendered), -1), 1, row * width + col)  # [B, N]
        inside &= (at > 0) & (z <= at + tolerance)
    return inside.float()


def _sample(
    feats: torch.Tensor,  # [B, C, h, w]
    pix: torch.Tensor,  # [B, N, 2]
    width: int,
    height: int,
    weight: torch.Tensor,  # [B, N]
) -> torch.Tensor:  # [N, C] weighted sum over views
    grid = torch.stack([pix[..., 0] / width * 2 - 1, pix[..., 1] / height * 2 - 1], -1)
    grid = torch.nan_to_num(grid, nan=0.0, posinf=2.0, neginf=-2.0).float()
    bsz, channels = feats.shape[:2]
    out = torch.zeros(pix.shape[1], channels, device=feats.device)
    # Bound the [B, C, chunk] temporaries (DINOv2 has C = 1024).
    chunk = max(1024, (1 << 25) // max(1, bsz * channels))
    for start in range(0, pix.shape[1], chunk):
        part = slice(start, start + chunk)
        sampled = F.grid_sample(
            feats, grid[:, None, part], mode="bilinear", padding_mode="border", align_corners=False
        )  # [B, C, 1, n]
        out[part] = (sampled[:, :, 0] * weight[:, None, part]).sum(0).T
    return out


def _all_view_average(
    coords: np.ndarray,
    resolution: int,
    rgba: np.ndarray,
    cameras: Cameras,
    extractor: FeatureExtractor,
    device: torch.device,
) -> torch.Tensor:
    """TRELLIS's aggregation: the mean over every view the centre projects into."""
    centres = voxel_centers(coords, resolution).astype(np.float64)
    total = torch.zeros(len(coords), extractor.dim, device=device)
    seen = torch.zeros(len(coords), device=device)
    batch = max(1, int(getattr(extractor, "batch_size", 8)))
    for begin in range(0, len(cameras), batch):
        views = slice(begin, min(begin + batch, len(cameras)))
        pix, z = cameras[views].project(centres)
        pix_t, z_t = torch.from_numpy(pix).to(device), torch.from_numpy(z).to(device)
        inside = _visibility(pix_t, z_t, None, cameras.width, cameras.height, 0.0)
        total += _sample(extractor(rgba[views]).to(device), pix_t, cameras.width, cameras.height, inside)
        seen += inside.sum(0)
    return total / seen.clamp(min=1)[:, None]
