"""`slat_mesh`: train the SLat mesh decoder with rendered mask, depth and normal losses (stage 2).

TRELLIS's third SLat decoder (`voxforge.models.slat_mesh`: sparse transformer trunk, two
subdivisions to 4R, FlexiCubes features per fine voxel) trained on a prepared folder the way
TRELLIS's mesh-decoder trainer does it:

- **Latents.** `model.encoder_from` names a `slat_vae` run: its encoder is loaded and frozen
  (no gradients, posterior mean), and only the mesh decoder trains — TRELLIS fine-tunes the
  mesh decoder on the frozen encoder's latents. With `encoder_from` empty, an encoder of this
  section's shape trains jointly with the decoder (posterior sample + `loss.kl_weight` · KL),
  so a tiny run needs no slat_vae run first. The decoder's backbone fields are this section's
  (SLatVAEConfig's); `resolution` and `latent_channels` must match the encoder's run.
- **Ground truth.** Each asset's normalized mesh (`PREPARED/assets/<id>/mesh.glb`) is rendered
  from every view's camera at `data.image_size` with the same differentiable rasterizer
  (`voxforge.render.diff_raster`: antialiased mask, camera depth, world normals turned to face
  the camera) and cached per asset under `RUN/gt_cache/` (and in memory), so the targets are
  rendered once, not per step.
- **Loss** (per asset, averaged over the batch; all rendering and every term in fp32 with
  autocast off): the extracted mesh (FlexiCubes at 4R) is rendered the same way and compared
  with the targets: `mask_weight · L1(mask) + depth_weight · L1(depth · mask_gt) +
  normal_weight · (L1 + ssim_weight · (1 − SSIM))(normals · mask_gt)` (normals mapped to
  [0, 1]), plus `color_weight · (L1 + ssim_weight · (1 − SSIM))` of the vertex colours
  (FlexiCubes vertex attributes 0..2, antialiased, composited over `data.background`) against
  the views' RGB. Regularisers: `tsdf_weight ·` TRELLIS's truncated pseudo-SDF loss (every
  vertex projected into each view; the ground-truth depth minus its depth, truncated at
  3/(4R), is the SDF it should have; background pixels count as far), `dev_weight ·`
  FlexiCubes's L_dev (the spread of each dual vertex's distances to its edge crossings),
  `flex_weight_reg ·` mean |beta, alpha| raw weights (TRELLIS's weight regulariser), and
  `sign_weight ·` FlexiCubes's SDF sign-change regulariser (binary cross-entropy across every
  cube edge whose ends differ in sign, on the SDF in grid cells). An asset whose mesh comes
  out empty keeps only the regularisers (TRELLIS's success mask); the TSDF term then still
  moves its SDF.
- **Evaluation** (`evaluate`, the sample and final hooks): on the held-out assets (the first
  `data.eval_assets` sorted ids, as every stage), the posterior-mean latents are decoded and
  the mesh scored against the ground-truth mesh (`voxforge.eval.mesh_metrics`: Chamfer
  distance, normal consistency on `evaluation.points` sampled points), and voxelised at R
  (`voxforge.data.voxelize`, the data toolkit's own voxelizer) for IoU against the asset's
  voxels. Every evaluation appends to `RUN/eval_mesh.json`; the untrained model is scored at
  step 0 when the model is first built, so the gain is in one file. The meshes are written to
  `samples/step_*/meshes/<id>.ply`.

Not trained here: TRELLIS's normal-map attributes (channels 3..5; TRELLIS supervises them
with rendered normal maps of textured assets, which the data toolkit does not write).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.config.core import ConfigValueError, option
from voxforge.data.dataset import PreparedDataset
from voxforge.data.views import SLatDataConfig, SLatViewDataset, collate_views
from voxforge.data.voxelize import voxelize
from voxforge.errors import UserError
from voxforge.eval.image_metrics import ssim
from voxforge.eval.mesh_metrics import mesh_scores
from voxforge.eval.voxels import voxel_iou
from voxforge.models.slat_mesh import MeshFields, SLatMeshDecoder, fields_to_mesh, mesh_fields
from voxforge.models.slat_vae import SLatEncoder, SLatVAEConfig
from voxforge.render import diff_raster
from voxforge.render.losses import composite
from voxforge.representations.flexicubes import CUBE_EDGES, ExtractedMesh
from voxforge.representations.voxels import coords_to_grid
from voxforge.runs import load_slat_vae
from voxforge.sparse.tensor import SparseTensor
from voxforge.stages import Recipe
from voxforge.stages.base import Stage
from voxforge.stages.slat_vae import BACKGROUNDS, feature_split

__all__ = [
    "EVAL_FILE",
    "MeshEvalConfig",
    "MeshLossConfig",
    "SLatMeshConfig",
    "SLatMeshDataset",
    "SLatMeshModel",
    "SLatMeshStage",
    "geometry_losses",
    "render_geometry",
    "sign_regulariser",
    "tsdf_loss",
]

EVAL_FILE = "eval_mesh.json"
GT_CACHE = "gt_cache"
NEAR, FAR = 0.1, 10.0  # clip range of the renders: the data's cameras sit ~2 units from the origin


@dataclass
class SLatMeshConfig(SLatVAEConfig):
    """The SLat VAE's backbone fields (the decoder's trunk; `head` is unused) plus the mesh decoder's."""

    encoder_from: str = option(
        "", help="slat_vae run folder whose encoder is loaded and frozen (empty: train an encoder jointly)"
    )
    use_color: bool = option(True, help="predict vertex colours (and TRELLIS's 6 attribute channels)")
    num_groups: int = option(32, ge=1, help="GroupNorm groups of the subdivision blocks (TRELLIS: 32)")

    def __post_init__(self):
        super().__post_init__()
        for width in (self.width // 4, self.width // 8):
            if width < 1 or width % self.num_groups:
                raise ConfigValueError(
                    "num_groups",
                    f"the subdivision widths {self.width // 4} and {self.width // 8} (width/4, width/8) "
                    f"must be multiples of num_groups={self.num_groups}",
                )


@dataclass
class MeshLossConfig:
    mask_weight: float = option(1.0, ge=0.0, help="L1 of the antialiased silhouettes")
    depth_weight: float = option(1.0, ge=0.0, help="L1 of camera depth inside the true mask (TRELLIS: 1)")
    normal_weight: float = option(1.0, ge=0.0, help="L1 + SSIM of the normals inside the true mask")
    color_weight: float = option(0.1, ge=0.0, help="L1 + SSIM of vertex colours vs the views (TRELLIS: 0.1)")
    ssim_weight: float = option(0.2, ge=0.0, help="weight of 1 - SSIM within the normal and colour terms")
    tsdf_weight: float = option(0.01, ge=0.0, help="TRELLIS's truncated pseudo-SDF loss (TRELLIS: 0.01)")
    dev_weight: float = option(0.5, ge=0.0, help="FlexiCubes's L_dev (TRELLIS: 0.5)")
    flex_weight_reg: float = option(0.2, ge=0.0, help="mean |raw beta, alpha| (TRELLIS: 0.2)")
    sign_weight: float = option(0.01, ge=0.0, help="FlexiCubes's SDF sign-change cross-entropy")
    kl_weight: float = option(1e-6, ge=0.0, help="KL of a jointly trained encoder (no encoder_from)")
    raster_backend: Literal["auto", "torch", "nvdiffrast"] = option("auto")


@dataclass
class MeshEvalConfig:
    points: int = option(
        10000, ge=16, help="surface points sampled per mesh for Chamfer / normal consistency"
    )
    seed: int = option(0, help="seed of the surface sampling")
    write_meshes: bool = option(True, help="write the held-out meshes to samples/step_*/meshes/<id>.ply")


# -- rendering -----------------------------------------------------------------------------------


def render_geometry(
    vertices: Tensor,  # [V, 3] world
    faces: Tensor,  # [F, 3]
    viewmats: Tensor,  # [B, 4, 4] world -> camera (OpenCV)
    Ks: Tensor,  # [B, 3, 3]
    size: int,
    attrs: Tensor | None = None,  # [V, A] per-vertex attributes (colours)
    *,
    backend: str = "auto",
) -> dict[str, Tensor]:
    """Antialiased `mask [B, S, S]`, camera `depth [B, S, S]`, world `normal [B, S, S, 3]`
    (flat per face, turned towards the camera, 0 off the mesh) and `attrs [B, S, S, A]`.

    Faces are split into their own vertices (flat normals), welded again for the silhouette
    topology. Differentiable in `vertices` and `attrs`; fp32 with autocast off.
    """
    with torch.autocast(vertices.device.type, enabled=False):
        vertices, viewmats, Ks = vertices.float(), viewmats.float(), Ks.float()
        faces = faces.long()
        corner = vertices[faces]  # [F, 3, 3]
        normal = F.normalize(
            torch.linalg.cross(corner[:, 1] - corner[:, 0], corner[:, 2] - corner[:, 0], dim=1), dim=1
        )
        centre = -(viewmats[:, :3, :3].transpose(1, 2) @ viewmats[:, :3, 3:]).squeeze(-1)  # [B, 3]
        away = ((corner.mean(1)[None] - centre[:, None]) * normal[None]).sum(-1) > 0  # [B, F]
        facing = torch.where(away.detach()[..., None], -normal[None], normal[None])  # [B, F, 3]
        flat = corner.reshape(-1, 3)
        split = torch.arange(len(flat), device=flat.device).view(-1, 3)
        clip = diff_raster.clip_from_cameras(flat, viewmats, Ks, size, size, near=NEAR, far=FAR)
        channels = [
            torch.ones_like(clip[..., :1]),
            clip[..., 3:4],
            facing.repeat_interleave(3, dim=1),
        ]
        if attrs is not None:
            channels.append(attrs.float()[faces].reshape(1, -1, attrs.shape[1]).expand(len(viewmats), -1, -1))
        rast, _ = diff_raster.rasterize(clip, split, (size, size), backend=backend)
        buffers = diff_raster.interpolate(torch.cat(channels, -1), rast, split, backend=backend)
        topology = diff_raster.edge_topology(split, flat)
        buffers = diff_raster.antialias(buffers, rast, clip, split, topology=topology, backend=backend)
        out = {"mask": buffers[..., 0], "depth": buffers[..., 1], "normal": buffers[..., 2:5]}
        if attrs is not None:
            out["attrs"] = buffers[..., 5:]
        return out


def tsdf_loss(
    fields: MeshFields, depth: Tensor, mask: Tensor, viewmats: Tensor, Ks: Tensor
) -> Tensor:  # depth, mask [V, S, S]
    """TRELLIS's truncated pseudo-SDF term: the squared error of every vertex's SDF against the
    true depth minus its own depth in each view, truncated at 3/(4R) (points further behind the
    visible surface are left out; pixels off the mesh count as far)."""
    delta = 3.0 / fields.resolution
    size = depth.shape[-1]
    points = fields.positions.detach()
    cam = points[None] @ viewmats[:, :3, :3].transpose(1, 2) + viewmats[:, None, :3, 3]  # [V, N, 3]
    z = cam[..., 2].clamp(min=1e-6)
    pix = (cam @ Ks.transpose(1, 2))[..., :2] / z[..., None]
    col = pix[..., 0].floor().long().clamp(0, size - 1)
    row = pix[..., 1].floor().long().clamp(0, size - 1)
    view = torch.arange(len(viewmats), device=points.device)[:, None].expand_as(col)
    inside = (pix[..., 0] >= 0) & (pix[..., 0] < size) & (pix[..., 1] >= 0) & (pix[..., 1] < size)
    hit = inside & (mask[view, row, col] > 0.5)
    true_depth = torch.where(hit, depth[view, row, col] / mask[view, row, col].clamp(min=1e-6), FAR)
    pseudo = true_depth - z
    keep = pseudo > -delta
    if not bool(keep.any()):
        return fields.sdf.sum() * 0.0
    target = pseudo.clamp(-delta, delta)
    sdf = fields.sdf[None].expand_as(pseudo)
    return ((sdf[keep] - target[keep]) ** 2).mean()


def sign_regulariser(fields: MeshFields) -> Tensor:
    """FlexiCubes's SDF sign-change loss over the cubes' edges, on the SDF in grid cells."""
    edges = torch.tensor(CUBE_EDGES, device=fields.sdf.device)
    s = fields.sdf[fields.cube_vertices] * fields.resolution  # [N, 8]
    sa, sb = s[:, edges[:, 0]], s[:, edges[:, 1]]
    change = (sa > 0) != (sb > 0)
    if not bool(change.any()):
        return fields.sdf.sum() * 0.0
    sa, sb = sa[change], sb[change]
    return 0.5 * (
        F.binary_cross_entropy_with_logits(sa, (sb > 0).float())
        + F.binary_cross_entropy_with_logits(sb, (sa > 0).float())
    )


def _image_term(pred: Tensor, target: Tensor, ssim_weight: float) -> Tensor:  # [V, S, S, 3] each
    loss = (pred - target).abs().mean()
    if ssim_weight > 0:
        loss = loss + ssim_weight * (1 - ssim(pred, target).mean())
    return loss


def geometry_losses(
    mesh: ExtractedMesh,
    fields: MeshFields,
    targets: Tensor,  # [V, S, S, 5]: mask, depth, normal (the cached ground truth)
    images: Tensor,  # [V, S, S, 4] the views
    background: Tensor,  # [V, 3]
    viewmats: Tensor,
    Ks: Tensor,
    cfg: MeshLossConfig,
) -> tuple[Tensor, dict[str, float]]:
    """The weighted loss of one asset and its terms (the module docstring); fp32, autocast off."""
    with torch.autocast(targets.device.type, enabled=False):
        t_mask, t_depth, t_normal = targets[..., 0], targets[..., 1], targets[..., 2:5]
        terms: dict[str, Tensor] = {}
        if cfg.tsdf_weight > 0:
            terms["tsdf"] = tsdf_loss(fields, t_depth, t_mask, viewmats, Ks)
        if cfg.sign_weight > 0:
            terms["sign"] = sign_regulariser(fields)
        terms["flex_weights"] = fields.weights.float()[:, :20].abs().mean()
        if mesh.success:
            if mesh.deviation is not None and mesh.deviation.numel():
                terms["dev"] = mesh.deviation.mean()
            colors = mesh.vertex_attrs[:, :3] if mesh.vertex_attrs is not None else None
            out = render_geometry(
                mesh.vertices, mesh.faces, viewmats, Ks, targets.shape[-2], colors, backend=cfg.raster_backend
            )
            m = t_mask[..., None]
            terms["mask"] = (out["mask"] - t_mask).abs().mean()
            terms["depth"] = ((out["depth"] - t_depth) * t_mask).abs().mean()
            terms["normal"] = _image_term(
                (out["normal"] * 0.5 + 0.5) * m, (t_normal * 0.5 + 0.5) * m, cfg.ssim_weight
            )
            if colors is not None and cfg.color_weight > 0:
                alpha = out["mask"][..., None]
                pred = out["attrs"] + background[:, None, None, :] * (1 - alpha)
                terms["color"] = _image_term(pred, composite(images.float(), background), cfg.ssim_weight)
        weights = {
            "mask": cfg.mask_weight,
            "depth": cfg.depth_weight,
            "normal": cfg.normal_weight,
            "color": cfg.color_weight,
            "tsdf": cfg.tsdf_weight,
            "dev": cfg.dev_weight,
            "flex_weights": cfg.flex_weight_reg,
            "sign": cfg.sign_weight,
        }
        loss = sum(weights[k] * v for k, v in terms.items())
        metrics = {k: float(v.detach()) for k, v in terms.items()}
        metrics["faces"] = float(len(mesh.faces))
        return loss, metrics


# -- data ------------------------------------------------------------------------------------------


class SLatMeshDataset(SLatViewDataset):
    """`SLatViewDataset` items plus `targets [V, S, S, 5]`: the ground-truth mesh rendered from
    the chosen views (mask, depth, normal), cached per asset in memory and under `cache_dir`."""

    def __init__(self, *args: Any, cache_dir: Path | None = None, backend: str = "torch", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.cache_dir, self.backend = cache_dir, backend
        self._targets: dict[str, np.ndarray] = {}

    def targets(self, asset_id: str) -> np.ndarray:  # [all views, S, S, 5] float32
        if asset_id in self._targets:
            return self._targets[asset_id]
        size = self.cfg.image_size
        path = None if self.cache_dir is None else Path(self.cache_dir) / f"{asset_id}_{size}.npz"
        if path is not None and path.is_file():
            with np.load(path) as stored:
                result = stored["targets"]
        else:
            result = self._render_targets(asset_id)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
                np.savez(tmp, targets=result)
                os.replace(tmp, path)
        self._targets[asset_id] = result
        return result

    def _render_targets(self, asset_id: str) -> np.ndarray:
        vertices, faces = self.features.data.textured_mesh(asset_id).merged()
        if len(faces) == 0:
            raise UserError(f"{self.features.data.asset_dir(asset_id) / 'mesh.glb'}: the mesh has no faces")
        files, cams = self._cameras(asset_id)
        size = self.cfg.image_size
        scale = np.diag([size / cams.width, size / cams.height, 1.0]).astype(np.float32)
        viewmats = torch.from_numpy(cams.world_to_cam.astype(np.float32))
        Ks = torch.from_numpy((scale @ cams.K).astype(np.float32))
        with torch.no_grad():
            out = render_geometry(
                torch.from_numpy(vertices), torch.from_numpy(faces), viewmats, Ks, size, backend=self.backend
            )
        return torch.cat([out["mask"][..., None], out["depth"][..., None], out["normal"]], -1).numpy()

    def chosen_views(self, asset_id: str, index: int) -> list[int]:
        train, held = self.view_indices(asset_id)
        pool = {"train": train, "heldout_views": held, "all_views": train + held}[self.split]
        if not pool:
            raise UserError(
                f"asset {asset_id} has no views for {self.split} (holdout_every={self.cfg.holdout_every})"
            )
        count = self.cfg.views_per_item if self.split == "train" else self.cfg.eval_views
        rng = np.random.default_rng([self.features.seed, self.epoch, index, 7])
        if self.split == "train":
            chosen = rng.choice(len(pool), size=count, replace=len(pool) < count).tolist()
        else:
            chosen = np.linspace(0, len(pool) - 1, min(count, len(pool))).round().astype(int).tolist()
        return [pool[c] for c in chosen]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.features[index]
        indices = self.chosen_views(item["id"], index)
        views = self.load_views(item["id"], indices)
        return {**item, **views, "targets": torch.from_numpy(self.targets(item["id"])[indices]).float()}


def collate_mesh(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch = collate_views(items)
    batch["targets"] = torch.stack([it["targets"] for it in items])
    return batch


# -- model -----------------------------------------------------------------------------------------


class SLatMeshModel(nn.Module):
    """SLat encoder (frozen when loaded from a slat_vae run) + mesh decoder.

    `forward(x)` returns (the decoder's fine feature tensor at 4R, KL of the posterior — 0 when
    the encoder is frozen)."""

    def __init__(self, cfg: SLatMeshConfig, in_channels: int, encoder_cfg: SLatVAEConfig | None = None):
        super().__init__()
        self.frozen = encoder_cfg is not None
        self.encoder = SLatEncoder(encoder_cfg or cfg, in_channels)
        self.decoder = SLatMeshDecoder(cfg, use_color=cfg.use_color, num_groups=cfg.num_groups)
        if self.frozen:
            self.encoder.requires_grad_(False)

    def encode(self, x: SparseTensor) -> SparseTensor:
        """Posterior-mean latents."""
        return self.encoder(x)[0]

    def forward(self, x: SparseTensor) -> tuple[SparseTensor, Tensor]:
        if self.frozen:
            with torch.no_grad():
                z = self.encoder(x)[0]
            return self.decoder.features(z), z.feats.new_zeros(())
        mean, logvar = self.encoder(x)
        z = mean.feats + torch.exp(0.5 * logvar.feats) * torch.randn_like(mean.feats)
        kl = 0.5 * (mean.feats.pow(2) + logvar.feats.exp() - 1.0 - logvar.feats).mean()
        return self.decoder.features(mean.replace(z)), kl


def _per_sample(h: SparseTensor, resolution: int, use_color: bool) -> list[MeshFields]:
    return [
        mesh_fields(h.coords[rows, 1:], h.feats[rows].float(), resolution, use_color) for rows in h.layout
    ]


# -- the stage ------------------------------------------------------------------------------------


class SLatMeshStage(Stage):
    name = "slat_mesh"
    sections = {
        "model": SLatMeshConfig,
        "data": SLatDataConfig,
        "loss": MeshLossConfig,
        "evaluation": MeshEvalConfig,
    }

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        super().__init__(recipe, run_dir, device)
        self._split: tuple[PreparedDataset, list[str], list[str]] | None = None

    def split(self) -> tuple[PreparedDataset, list[str], list[str]]:
        if self._split is None:
            self._split = feature_split(self.recipe.data, self.recipe.model.resolution)
        return self._split

    def build_model(self) -> nn.Module:
        cfg = self.recipe.model
        encoder_cfg, encoder_state = None, None
        if cfg.encoder_from:
            vae, _ = load_slat_vae(cfg.encoder_from, "cpu")
            for key in ("resolution", "latent_channels"):
                if getattr(vae.cfg, key) != getattr(cfg, key):
                    raise UserError(
                        f"model.encoder_from={cfg.encoder_from}: its model.{key} is {getattr(vae.cfg, key)}, "
                        f"this recipe's model.{key} is {getattr(cfg, key)}; they must match"
                    )
            encoder_cfg, in_channels, encoder_state = vae.cfg, vae.in_channels, vae.encoder.state_dict()
        else:
            in_channels = cfg.in_channels
            if in_channels is None:
                data, train_ids, _ = self.split()
                in_channels = int(
                    data.features(train_ids[0], self.recipe.data.extractor, cfg.resolution)[1].shape[1]
                )
        model = SLatMeshModel(cfg, in_channels, encoder_cfg)
        if encoder_state is not None:
            model.encoder.load_state_dict(encoder_state)
        if not self._recorded(0) and self._is_main():
            self._record(0, self.evaluate(model.eval(), self.run_dir / "samples" / "step_00000000"))
            model.train()
        return model

    def build_dataset(self) -> torch.utils.data.Dataset:
        data, train_ids, _ = self.split()
        return self._dataset(data, train_ids, "train")

    def _dataset(self, data: PreparedDataset, ids: list[str], split: str) -> SLatMeshDataset:
        return SLatMeshDataset(
            data,
            ids,
            self.recipe.data,
            self.recipe.model.resolution,
            self.recipe.train.seed,
            split=split,
            cache_dir=self.run_dir / GT_CACHE,
        )

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_mesh(items)

    def batch_size_of(self, batch: dict[str, Any]) -> int:
        return len(batch["ids"])

    def sparse_input(self, batch: dict[str, Any]) -> SparseTensor:
        r = self.recipe.model.resolution
        return SparseTensor(
            batch["coords"], batch["feats"], spatial_shape=(r, r, r), batch_size=len(batch["ids"])
        )

    def _backgrounds(self, batch: dict[str, Any], mode: str) -> Tensor:
        images = batch["images"]
        shape = (*images.shape[:2], 3)
        if mode == "random":
            return torch.rand(shape, device=images.device)
        return torch.tensor(BACKGROUNDS[mode], device=images.device).expand(shape)

    def loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        h, kl = model(self.sparse_input(batch))
        cfg = self.recipe.model
        backgrounds = self._backgrounds(batch, self.recipe.data.background)
        total = backgrounds.new_zeros(())
        sums: dict[str, float] = {}
        with torch.autocast(backgrounds.device.type, enabled=False):
            fields = _per_sample(h, 4 * cfg.resolution, cfg.use_color)
            for b, f in enumerate(fields):
                mesh = fields_to_mesh(f, deviation=self.recipe.loss.dev_weight > 0)
                loss, metrics = geometry_losses(
                    mesh,
                    f,
                    batch["targets"][b],
                    batch["images"][b],
                    backgrounds[b],
                    batch["viewmats"][b],
                    batch["Ks"][b],
                    self.recipe.loss,
                )
                total = total + loss
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v / len(fields)
            total = total / max(len(fields), 1) + self.recipe.loss.kl_weight * kl.float()
        sums["kl"] = float(kl.detach())
        return total, sums

    # --- evaluation -------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, out_dir: Path | None = None) -> dict[str, Any]:
        """Chamfer distance, normal consistency and voxel IoU of the held-out assets' meshes:
        the means, and per asset under `assets`."""
        cfg, ev = self.recipe.model, self.recipe.evaluation
        data, _, eval_ids = self.split()
        device = next(model.parameters()).device
        per_asset: dict[str, dict[str, float]] = {}
        for asset_id in eval_ids[: self.recipe.data.eval_limit]:
            coords, feats = data.features(asset_id, self.recipe.data.extractor, cfg.resolution)
            c = torch.from_numpy(coords)
            x = SparseTensor(
                torch.cat([torch.zeros(len(c), 1, dtype=c.dtype), c], 1).to(device),
                torch.from_numpy(feats).to(device),
                spatial_shape=(cfg.resolution,) * 3,
                batch_size=1,
            )
            with torch.autocast(device.type, enabled=False):
                mesh = model.decoder(model.encode(x))[0]
            true_v, true_f = data.textured_mesh(asset_id).merged()
            scores = mesh_scores(
                mesh.vertices.cpu(),
                mesh.faces.cpu(),
                torch.from_numpy(true_v),
                torch.from_numpy(true_f),
                points=ev.points,
                seed=ev.seed,
            ).to_dict()
            truth = coords_to_grid(data.voxels(asset_id, cfg.resolution), cfg.resolution)
            if mesh.success:
                pred = voxelize(
                    mesh.vertices.double().cpu().numpy(), mesh.faces.cpu().numpy(), cfg.resolution
                )
            else:
                pred = np.zeros((0, 3), np.int64)
            scores["voxel_iou"] = voxel_iou(coords_to_grid(pred, cfg.resolution), truth)
            scores["faces"] = float(len(mesh.faces))
            per_asset[asset_id] = scores
            if out_dir is not None and ev.write_meshes and mesh.success:
                _write_mesh(Path(out_dir) / "meshes" / f"{asset_id}.ply", mesh)
        keys = ("chamfer", "accuracy", "completeness", "normal_consistency", "voxel_iou", "faces")
        means = {k: float(np.mean([s[k] for s in per_asset.values()])) for k in keys} if per_asset else {}
        return {**means, "assets": per_asset}

    def _is_main(self) -> bool:
        return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
            torch.distributed.get_rank() == 0
        )

    def _read_records(self) -> list[dict[str, Any]]:
        path = self.run_dir / EVAL_FILE
        if not path.is_file():
            return []
        return json.loads(path.read_text())["evaluations"]

    def _recorded(self, step: int) -> bool:
        return any(r["step"] == step for r in self._read_records())

    def _record(self, step: int, scores: dict[str, Any]) -> None:
        records = [r for r in self._read_records() if r["step"] != step]
        records.append({"step": step, **scores})
        records.sort(key=lambda r: r["step"])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / EVAL_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"evaluations": records}, indent=1))
        os.replace(tmp, path)

    def _scored(self, model: nn.Module, step: int) -> dict[str, float]:
        scores = self.evaluate_once(model, step)
        self._record(step, scores)
        return {k: v for k, v in scores.items() if k != "assets"}

    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        return {f"heldout_{k}": v for k, v in self._scored(model, step).items()}

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float]:
        scores = self._scored(model, step)
        first = next((r for r in self._read_records() if r["step"] == 0), None)
        result = {f"eval_{k}": v for k, v in scores.items()}
        if first is not None and "chamfer" in first:
            result["eval_chamfer_untrained"] = float(first["chamfer"])
        return result


def _write_mesh(path: Path, mesh: ExtractedMesh) -> None:
    import trimesh  # a dependency of the data toolkit (meshes)

    colors = None
    if mesh.vertex_attrs is not None:
        colors = (mesh.vertex_attrs[:, :3].clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.Trimesh(
        mesh.vertices.cpu().numpy(), mesh.faces.cpu().numpy(), vertex_colors=colors, process=False
    ).export(path)
