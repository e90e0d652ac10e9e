"""TRELLIS's released models in the image → 3D tab: what `voxforge generate --model TRELLIS_DIR` does.

A TRELLIS-image-large download (recognised by its `pipeline.json`'s content, not its name)
or a folder `voxforge import trellis` wrote runs through `pipelines.trellis.TrellisImageTo3D`,
as in `commands.generate_trellis`: the image prepared as TRELLIS does
(`trellis.dinov2.load_image`: size-checked read, alpha-box crop to 518², premultiplied on
black), the precision `auto` picks (`train.precision`), the sampler settings of the folder's
`pipeline.json` with the request's steps and guidance over them (voxforge's scale w,
`cfg_strength = w - 1`, `pipelines.trellis_export.sampler_overrides`), and the same files
(`pipelines.trellis_export.export_trellis_asset`: `.ply`, turntable, the textured
FlexiCubes `.glb`).

TRELLIS's pipeline conditions on one image, so these models take one image per request
(the multi-image mode is for voxforge's own models); a request with several is answered
with that message. Nothing here imports gradio.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from voxforge.app.registry import AppContext
from voxforge.app.requests import RequestError
from voxforge.errors import UserError

__all__ = ["TrellisModel", "check_trellis_guidance", "is_trellis_model"]


def is_trellis_model(path: Path) -> bool:
    """A TRELLIS download (its pipeline.json) or a folder `voxforge import trellis` wrote."""
    from voxforge.trellis.importer import is_imported_folder
    from voxforge.trellis.loading import is_trellis_folder

    return is_trellis_folder(path) or is_imported_folder(path)


class TrellisModel:
    """One loaded TRELLIS folder: its sampler defaults, image preparation and generation."""

    def __init__(self, path: Path, context: AppContext):
        from voxforge.pipelines.trellis import TrellisImageTo3D
        from voxforge.pipelines.trellis_export import GlbOptions
        from voxforge.train.precision import DTYPES, resolve_precision

        self.path, self.context = path, context
        self.device = torch.device(context.device)
        self.precision = resolve_precision("auto", self.device)  # as `voxforge generate`'s default
        dtype = DTYPES[self.precision.resolved]
        self.pipeline = TrellisImageTo3D.from_folder(path, device=self.device, dtype=dtype)
        self.glb = GlbOptions(context.texture_size, context.simplify, context.bake_views).check("app: ")

    def defaults(self) -> dict[str, float]:
        """The folder's sampler settings as the tab's fields (guidance as voxforge's w = cfg_strength + 1)."""
        config = self.pipeline.models.config
        structure, slat = config.structure_sampler, config.slat_sampler
        return {
            "steps": structure.steps,
            "cfg": structure.cfg_strength + 1.0,
            "slat_steps": slat.steps,
            "slat_cfg": slat.cfg_strength + 1.0,
        }

    def load_images(self, paths: list[Path]) -> tuple[Tensor, list[str]]:
        """([1, 3, 518, 518] in [0, 1], notes on what differs from TRELLIS) for one checked upload."""
        from voxforge.trellis.dinov2 import load_image

        if len(paths) != 1:
            raise RequestError(
                f"TRELLIS models take one image per request (as `voxforge generate`), got {len(paths)}"
            )
        prepared = load_image(paths[0])
        return prepared.image[None], [prepared.note] if prepared.note else []

    def generate(
        self,
        images: Tensor,  # [1, 3, 518, 518] from load_images
        folder: Path,
        *,
        seed: int,
        steps: int,
        cfg: float,
        slat_steps: int,
        slat_cfg: float,
        progress: Callable[[str, int, int], None],  # (stage key, step, steps)
    ) -> tuple[dict[str, Path], dict[str, Any]]:
        """Run both stages and write the asset into `folder`: (format -> file, the record's fields)."""
        from voxforge.export import ExportConfig
        from voxforge.pipelines.trellis_export import export_trellis_asset, sampler_overrides, sampler_record

        config = self.pipeline.models.config
        structure, slat = sampler_overrides(steps, cfg), sampler_overrides(slat_steps, slat_cfg)
        result = self.pipeline.generate(
            images, seed=seed, structure_params=structure, slat_params=slat, progress=progress
        )
        progress("export", 0, 1)
        export = ExportConfig(
            formats=["ply", "mp4", "png"], frames=self.context.frames, size=self.context.size
        )
        asset = export_trellis_asset(result, folder, export, self.glb)
        progress("export", 1, 1)
        mesh = result.mesh
        record = {
            "precision": self.precision.describe().removeprefix("train.precision="),
            "structure_sampler": sampler_record(config.structure_sampler, structure),
            "slat_sampler": sampler_record(config.slat_sampler, slat),
            "resolution": result.resolution,
            "voxels": int(len(result.coords)),
            "gaussians": int(result.gaussians.num_gaussians),
            "mesh": None if mesh is None else {"vertices": len(mesh.vertices), "faces": len(mesh.faces)},
            "glb": asset.glb_kind,
            "notes": asset.notes,
            "seconds": {k: round(v, 3) for k, v in {**result.timings, **asset.timings}.items()},
        }
        return asset.paths, record


def check_trellis_guidance(name: str, value: float) -> float:
    """TRELLIS's guidance is w = cfg_strength + 1 >= 1 (as `voxforge generate --cfg`)."""
    if value < 1:
        raise UserError(f"{name} must be >= 1 for TRELLIS models (w = cfg_strength + 1), got {value:g}")
    return value
