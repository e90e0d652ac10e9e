"""SLat mesh decoder: structured latents → per-fine-voxel FlexiCubes features → triangle mesh.

TRELLIS's third SLat decoder, in two parts:

- **Network.** The SLat VAE's sparse transformer trunk (`SparseTransformerStack` without its
  output layer) on the R³ structure, then two `SparseSubdivideBlock`s that each split every
  voxel into its 8 children (2R, then 4R) while narrowing the width to 1/4 and 1/8, and a
  linear layer to the FlexiCubes features of each fine voxel. A subdivide block is a
  residual block around the split: GroupNorm + SiLU on the coarse voxels, split, 3³ sparse
  conv, GroupNorm + SiLU, 3³ sparse conv, plus a 1×1 projection of the (split) input. The
  projection is per voxel, so it runs before the split (8× fewer rows, same values). The
  children of a voxel are consecutive rows, (di, dj, dk) in row-major order — TRELLIS's
  order, so the fine tensor's rows equal TRELLIS's.
- **Features → mesh** (`features_to_mesh`, TRELLIS's `SparseFeatures2Mesh`). Each fine voxel
  is one FlexiCubes cube on the `4R` grid and predicts (`MESH_LAYOUT`): an SDF value and a
  deformation for each of its 8 corners, the 21 FlexiCubes weights of the cube, and (with
  colour) 6 attribute channels per corner — RGB and a normal map, both in (0, 1) after a
  sigmoid. Corners shared by several voxels take the mean of their predictions. The SDF is
  biased by `-1/(4R)` (slightly inside: the surface sits on the structure's shell rather
  than outside it); a vertex moves within half a cell, `v/(4R) - 0.5 + tanh(d)·(1-1e-8)/(8R)`,
  so neighbouring vertices can never cross. Vertices and cubes outside the structure read
  what TRELLIS's dense grids start with (SDF 1, no deformation, attributes sigmoid(0), zero
  weights) — `voxforge.representations.flexicubes.flexicubes_extract` handles them without
  ever building the dense `(4R+1)³` grid, so 256³ runs on a CPU in a few hundred MB.

`vertex_attrs` of the result are TRELLIS's 6 channels (colour 3, normal 3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from voxforge.errors import UserError
from voxforge.models.slat_vae import SLatVAEConfig, SparseTransformerStack
from voxforge.representations.flexicubes import CUBE_CORNERS, ExtractedMesh, flexicubes_extract
from voxforge.sparse.conv import SparseConv3d
from voxforge.sparse.nn import SparseGroupNorm32, SparseLinear
from voxforge.sparse.sampling import sparse_subdivide
from voxforge.sparse.tensor import SparseTensor

__all__ = [
    "MESH_LAYOUT",
    "MeshFields",
    "SLatMeshDecoder",
    "SparseSubdivideBlock",
    "features_to_mesh",
    "fields_to_mesh",
    "mesh_feature_channels",
    "mesh_fields",
]

#: channels of a fine voxel's prediction, in order: (name, channels)
MESH_LAYOUT = (("sdf", 8), ("deform", 8 * 3), ("weights", 21), ("color", 8 * 6))


def mesh_feature_channels(use_color: bool = True) -> int:
    """101 with colour, 53 without."""
    return sum(n for name, n in MESH_LAYOUT if use_color or name != "color")


def _split(feats: Tensor, use_color: bool) -> dict[str, Tensor]:  # [N, C] -> named views
    out, start = {}, 0
    for name, n in MESH_LAYOUT:
        if name == "color" and not use_color:
            break
        out[name] = feats[:, start : start + n]
        start += n
    return out


@dataclass
class MeshFields:
    """The per-vertex and per-cube fields `features_to_mesh` extracts from (training reads them).

    `vertices [V, 3]` integer grid vertices of the `resolution`³ cubes, `sdf [V]` (biased),
    `positions [V, 3]` deformed world positions, `attrs [V, 6]` or None, `cube_coords [N, 3]`,
    `weights [N, 21]` raw FlexiCubes weights, `cube_vertices [N, 8]` each cube's corner rows.
    """

    vertices: Tensor
    sdf: Tensor
    positions: Tensor
    attrs: Tensor | None
    cube_coords: Tensor
    weights: Tensor
    cube_vertices: Tensor
    resolution: int


def mesh_fields(
    coords: Tensor,  # [N, 3] fine voxels (cubes) of one sample, in [0, resolution)
    feats: Tensor,  # [N, 101] (53 without colour) per MESH_LAYOUT
    resolution: int,  # the fine grid, 4R
    use_color: bool = True,
) -> MeshFields:
    """Corner predictions averaged over the cubes sharing them (the module docstring)."""
    n = feats.shape[0]
    expected = mesh_feature_channels(use_color)
    if feats.shape[1] != expected:
        raise ValueError(f"features_to_mesh: expected {expected} channels per voxel, got {feats.shape[1]}")
    parts = _split(feats, use_color)
    corner_values = [parts["sdf"].reshape(n, 8, 1), parts["deform"].reshape(n, 8, 3)]
    if use_color:
        corner_values.append(parts["color"].reshape(n, 8, 6))

    # corners shared by neighbouring cubes take the mean of their predictions; int64 keys of
    # the (4R+1)³ vertex grid make the shared corners one sort (1-D unique, not rows)
    rv = resolution + 1
    corners = torch.tensor(CUBE_CORNERS, dtype=torch.long, device=coords.device)  # [8, 3]
    base = coords.long()
    base_key = (base[:, 0] * rv + base[:, 1]) * rv + base[:, 2]  # [N]
    corner_key = (corners[:, 0] * rv + corners[:, 1]) * rv + corners[:, 2]  # [8]
    keys, inverse = torch.unique(base_key[:, None] + corner_key, return_inverse=True)  # [V], [N, 8]
    del base_key
    width = sum(v.shape[-1] for v in corner_values)
    sums = torch.zeros(keys.numel(), width, device=feats.device)
    for c in range(8):  # one corner at a time: no [N·8, C] copy of the features
        sums.index_add_(0, inverse[:, c], torch.cat([v[:, c].float() for v in corner_values], dim=-1))
    counts = torch.bincount(inverse.reshape(-1), minlength=keys.numel()).to(sums.dtype)
    mean = sums.div_(counts[:, None])
    mean[:, 0] -= 1.0 / resolution
    vertices = torch.stack([keys // rv**2, keys // rv % rv, keys % rv], dim=1)  # [V, 3]

    positions = vertices.float() / resolution - 0.5 + (1 - 1e-8) / (2 * resolution) * torch.tanh(mean[:, 1:4])
    attrs = torch.sigmoid(mean[:, 4:]) if use_color else None
    return MeshFields(vertices, mean[:, 0], positions, attrs, coords, parts["weights"], inverse, resolution)


def features_to_mesh(
    coords: Tensor,  # [N, 3] fine voxels (cubes) of one sample, in [0, resolution)
    feats: Tensor,  # [N, 101] (53 without colour) per MESH_LAYOUT
    resolution: int,  # the fine grid, 4R
    use_color: bool = True,
    *,
    deviation: bool = False,
) -> ExtractedMesh:
    """TRELLIS's `SparseFeatures2Mesh(res=resolution)` at inference; see the module docstring.

    `deviation` also returns FlexiCubes's per-crossing deviation (`ExtractedMesh.deviation`),
    the L_dev regulariser of training."""
    return fields_to_mesh(mesh_fields(coords, feats, resolution, use_color), deviation=deviation)


def fields_to_mesh(fields: MeshFields, *, deviation: bool = False) -> ExtractedMesh:
    """FlexiCubes extraction of `mesh_fields`' output (what `features_to_mesh` runs)."""
    return flexicubes_extract(
        fields.vertices,
        fields.sdf,
        fields.positions,
        fields.resolution,
        cube_coords=fields.cube_coords,
        weights=fields.weights,
        vertex_attrs=fields.attrs,
        fill_sdf=1.0,
        fill_attrs=0.5,  # sigmoid(0): TRELLIS's dense colour grid starts at 0 before its sigmoid
        origin=-0.5,
        deviation=deviation,
    )


class SparseSubdivideBlock(nn.Module):
    """Residual block that splits every voxel into its 8 children (module docstring).

    Parameters: `norm1`, `conv1`, `norm2`, `conv2`, `skip` (absent when the width is kept).
    """

    def __init__(
        self,
        channels: int,
        out_channels: int,
        *,
        num_groups: int = 32,
        conv_backend: str = "auto",
    ):
        super().__init__()
        self.norm1 = SparseGroupNorm32(num_groups, channels)
        self.conv1 = SparseConv3d(channels, out_channels, 3, backend=conv_backend)
        self.norm2 = SparseGroupNorm32(num_groups, out_channels)
        self.conv2 = SparseConv3d(out_channels, out_channels, 3, backend=conv_backend)
        self.skip = None if out_channels == channels else SparseLinear(channels, out_channels)
        self.act = nn.SiLU()

    def forward(self, x: SparseTensor) -> SparseTensor:  # [N, C] at r -> [8N, C_out] at 2r
        h = self.norm1(x)
        h = sparse_subdivide(h.replace(self.act(h.feats)))
        h = self.conv1(h)
        h = self.norm2(h)
        h = self.conv2(h.replace(self.act(h.feats)))
        skip = x if self.skip is None else self.skip(x)
        return h.replace(h.feats + skip.feats.repeat_interleave(8, dim=0))


class SLatMeshDecoder(nn.Module):
    """Latents `[N, latent]` on the R³ structure → one `ExtractedMesh` per sample.

    Built from the backbone fields of an `SLatVAEConfig` (`decoder_blocks` blocks, as the
    Gaussian decoder) plus `use_color`. Parameters: `stack.*` (the trunk), `upsample.{0,1}.*`,
    `output`. `features(x)` returns the fine `[8·8·N, 101]` tensor at 4R; `forward` turns it
    into meshes.
    """

    def __init__(
        self,
        cfg: SLatVAEConfig,
        *,
        use_color: bool = True,
        num_groups: int = 32,
        conv_backend: str = "auto",
    ):
        super().__init__()
        self.resolution, self.use_color = cfg.resolution, use_color
        width = cfg.width
        self.stack = SparseTransformerStack(cfg.latent_channels, None, cfg, cfg.decoder_blocks)
        self.upsample = nn.ModuleList(
            [
                SparseSubdivideBlock(width, width // 4, num_groups=num_groups, conv_backend=conv_backend),
                SparseSubdivideBlock(
                    width // 4, width // 8, num_groups=num_groups, conv_backend=conv_backend
                ),
            ]
        )
        self.output = nn.Linear(width // 8, mesh_feature_channels(use_color))
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    @property
    def mesh_resolution(self) -> int:
        return 4 * self.resolution

    def features(self, x: SparseTensor) -> SparseTensor:  # [N, latent] at R -> [64N, 101] at 4R
        h = self.stack(x)
        for block in self.upsample:
            h = block(h)
        return h.replace(self.output(h.feats.float()))

    def to_meshes(self, h: SparseTensor, resolution: int | None = None) -> list[ExtractedMesh]:
        """One mesh per sample of the fine feature tensor.

        `resolution` is the side R of the structure the latents live on (default: the
        decoder's config). A checkpoint's `resolution` is the grid it was trained for; the
        network itself is convolutional and windowed, so a structure of another side decodes
        on a 4R grid of its own (what the fixture folders, with their small mesh decoders on
        64³ structures, need), and a voxel outside the grid is an error naming both sides.
        """
        side = int(resolution or self.resolution)
        if h.num_points and int(h.coords[:, 1:].max()) >= 4 * side:
            raise UserError(
                f"SLatMeshDecoder: the latents lie on a grid larger than {side}³ (the decoder's "
                f"resolution {self.resolution}); pass the structure's resolution"
            )
        return [
            features_to_mesh(h.coords[rows, 1:], h.feats[rows], 4 * side, self.use_color) for rows in h.layout
        ]

    def forward(self, x: SparseTensor, resolution: int | None = None) -> list[ExtractedMesh]:
        return self.to_meshes(self.features(x), resolution)
