"""TRELLIS's image → 3D composition on loaded models, and the golden check that traces it.

The steps of TRELLIS's `TrellisImageTo3DPipeline.run`, each a function so that
`voxforge generate` (`pipelines/trellis.py`) and the pipeline golden check run the same
code:

1. condition tokens: layer-normed DINOv2 `x_prenorm` of the 518² image; the negative
   condition is zeros of the same shape;
2. structure: the guided Euler sampler on the SS flow from noise `[B, C, r, r, r]`, then the
   SS decoder; occupied voxels are the logits > 0, as `[N, 4]` (batch, i, j, k) int32 in
   `argwhere` order (batch-major, then i, j, k);
3. structured latent: the sampler on the SLat flow from noise `[N, C]` on those voxels,
   then `slat · std + mean` (`pipeline.json`'s `slat_normalization`);
4. decoders: Gaussians and/or meshes from the latent.

Everything here is in TRELLIS's frame (Z up); `pipelines/trellis.py` turns the outputs into
voxforge's Y-up frame when it writes assets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from voxforge.representations.gaussians import Gaussians
from voxforge.sparse.tensor import SparseTensor
from voxforge.trellis.spec import Compare, GoldenCheck

__all__ = [
    "GOLDENS",
    "SPECS",
    "denormalize_slat",
    "gaussian_outputs",
    "sample_slat",
    "sample_structure",
    "structure_coords",
]

SPECS: list = []


@torch.no_grad()
def structure_coords(decoder: Any, latent: Tensor) -> Tensor:  # [B, C, r, r, r] -> [N, 4] int32
    logits = decoder(latent)  # [B, 1, R, R, R]
    return torch.argwhere(logits > 0)[:, [0, 2, 3, 4]].int()


def sample_structure(
    flow: Any,
    decoder: Any,
    noise: Tensor,
    cond: Tensor,
    params: Mapping[str, Any],
    sigma_min: float = 1e-5,
    callback: Callable[[int, float, Tensor], None] | None = None,  # after each sampler step
) -> tuple[Tensor, Tensor]:
    """noise [B, C, r, r, r] + tokens [B, T, C'] -> (latent [B, C, r, r, r], coords [N, 4])."""
    from voxforge.trellis.flows import sample

    latent = sample(flow, noise, cond, torch.zeros_like(cond), params, sigma_min=sigma_min, callback=callback)
    return latent, structure_coords(decoder, latent)


def denormalize_slat(feats: Tensor, mean: Any, std: Any) -> Tensor:  # [N, C]
    mean_t = torch.as_tensor(mean, dtype=feats.dtype, device=feats.device)[None]
    std_t = torch.as_tensor(std, dtype=feats.dtype, device=feats.device)[None]
    return feats * std_t + mean_t


def sample_slat(
    flow: Any,
    noise: SparseTensor,
    cond: Tensor,
    params: Mapping[str, Any],
    mean: Any,
    std: Any,
    sigma_min: float = 1e-5,
    callback: Callable[[int, float, Tensor], None] | None = None,  # after each sampler step
) -> SparseTensor:
    """Noise on the structure's voxels -> the denormalised structured latent (same voxels)."""
    from voxforge.trellis.flows import sample

    out = sample(flow, noise, cond, torch.zeros_like(cond), params, sigma_min=sigma_min, callback=callback)
    feats = out.feats if isinstance(out, SparseTensor) else out
    return noise.replace(denormalize_slat(feats, mean, std))


def gaussian_outputs(gaussians: Gaussians) -> dict[str, Tensor]:
    """One decoded sample under TRELLIS's attribute names (after its activations)."""
    return {
        "xyz": gaussians.means,  # get_xyz (world)
        "features_dc": gaussians.sh_dc[:, None, :],  # _features_dc [N, 1, 3]
        "scaling": gaussians.scales,  # get_scaling (3-D filter included)
        "rotation": gaussians.rotations,  # get_rotation (normalised)
        "opacity": gaussians.opacities[:, None],  # get_opacity [N, 1]
    }


# ------------------------------------------------------------------ the pipeline golden
def _trace_params(cfg_strength: float) -> dict[str, Any]:  # golden/README.md: 6 steps
    from voxforge.trellis.flows import TRACE_SAMPLER_PARAMS

    return {**TRACE_SAMPLER_PARAMS, "cfg_strength": cfg_strength}


def _run_pipeline(models: Mapping[str, Any], golden: Mapping[str, Tensor]) -> dict[str, Tensor]:
    config = models["pipeline"]
    tokens = models["DINOv2"].condition_tokens(golden["image"])  # the image is ImageNet-normalised
    latent, coords = sample_structure(
        models["SparseStructureFlowModel"],
        models["SparseStructureDecoder"],
        golden["ss_noise"],
        tokens,
        _trace_params(7.5),
        config.structure_sampler.sigma_min,
    )
    outputs: dict[str, Tensor] = {"ss_latent": latent, "coords": coords}
    # the trace's SLat noise was drawn on the reference voxels; run on them when the voxel
    # sets differ so the later outputs still say how far each step is off
    slat_coords = golden["slat_coords"]
    noise = SparseTensor(slat_coords, golden["slat_noise"])
    slat = sample_slat(
        models["SLatFlowModel"],
        noise,
        tokens,
        _trace_params(3.0),
        config.slat_mean,
        config.slat_std,
        config.slat_sampler.sigma_min,
    )
    outputs["slat"], outputs["slat_coords"] = slat.feats, slat.coords
    (gaussians,) = models["SLatGaussianDecoder"](slat)
    outputs.update(gaussian_outputs(gaussians))
    return outputs


_TRACE = Compare("tensor", atol=1e-3, rtol=1e-3)
GOLDENS = [
    GoldenCheck(
        file="pipeline.safetensors",
        needs=(
            "DINOv2",
            "SparseStructureFlowModel",
            "SparseStructureDecoder",
            "SLatFlowModel",
            "SLatGaussianDecoder",
        ),
        run=_run_pipeline,
        compare={
            "ss_latent": _TRACE,
            "coords": Compare("exact"),
            "slat": _TRACE,
            "slat_coords": Compare("exact"),
            **{key: _TRACE for key in ("xyz", "features_dc", "scaling", "rotation", "opacity")},
        },
    )
]
