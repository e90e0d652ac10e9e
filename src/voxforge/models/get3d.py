"""GET3D-style textured-mesh GAN: generator (triplanes → FlexiCubes mesh + texture field) and
two camera-conditioned StyleGAN2 discriminators (RGB, silhouette).

Follows the design of GET3D (Gao et al., NeurIPS 2022), written from the paper for voxforge's
pieces; sizes are configurable and the defaults are tiny, for CPU:

- **Two mapping networks** (`MappingNetwork`, `mapping_layers` equalised-lr layers with a
  0.01 lr multiplier, as StyleGAN2) turn a geometry code and a texture code into `w_geo` and
  `w_tex`. Each keeps a running mean `w_avg` (a buffer, updated in training forwards) for
  the truncation trick at generation time.
- **Triplane generators** (`TriplaneSynthesis`): StyleGAN2 modulated, demodulated 3×3
  convolutions from a learned constant at `synthesis_base²`, doubling to
  `triplane_resolution²`, with "skip" outputs summed across resolutions, ending in 3 planes
  × `triplane_channels`. The geometry planes are modulated by `w_geo`; the texture planes by
  `w_tex`, and every texture block also sees the geometry block's features (concatenated),
  so texture follows shape as in GET3D. Upsampling is bilinear before the convolution
  (StyleGAN2 uses a transposed convolution with a FIR filter; bilinear is the plain-PyTorch
  equivalent at these sizes). No per-pixel noise inputs: geometry must be a function of the
  codes alone so that a mesh can be regenerated exactly.
- **Geometry head**: the triplanes are sampled at the `(grid_resolution + 1)³` vertices of
  a dense cube grid over [-0.5, 0.5]³ (features of the xy, xz and yz planes summed), and an
  MLP gives each vertex an SDF and a deformation (`tanh`, at most `deform_scale` of a
  cell). The SDF is the MLP output plus a sphere of radius `sphere_radius`: GET3D
  pre-trains its SDF to a sphere; adding the analytic sphere gives the same start without
  a pre-training pass (the last layer starts small, so the first meshes are spheres).
  Vertices on the grid boundary are kept outside (SDF ≥ 1/R) so every extracted surface is
  closed. With `flexicubes_weights`, a second head predicts FlexiCubes' 21 weights per cube
  from the features at the cube centre (GET3D's FlexiCubes variant); without, the weights
  are the neutral ones.
- **Surface**: `voxforge.representations.flexicubes.flexicubes_extract` (differentiable in
  the SDF, positions and weights). FlexiCubes fits a dense-grid GAN at CPU size — it only
  builds cubes around sign changes — so no separate DMTet is needed.
- **Texture field**: an MLP on the texture triplanes, queried at surface points (per
  rendered pixel in training, per vertex or any point at export).
- **Discriminators** (`Discriminator`): StyleGAN2 residual discriminators, one on RGB and
  one on the silhouette, with minibatch standard deviation and projection conditioning on
  the camera: the final feature vector is dotted with an embedding of the flattened
  world→camera pose (`camera_features`).

Rendering lives in `render_views`: `voxforge.render.diff_raster` rasterizes each mesh from
its camera, interpolates the world position per pixel, queries the texture field there and
antialiases colour and silhouette together, so both carry gradients to vertex positions.
Images are premultiplied RGB over black plus a mask, as the data's RGBA views are compared.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.config.core import ConfigValueError, option
from voxforge.render.diff_raster import antialias, clip_from_cameras, interpolate, rasterize
from voxforge.representations.flexicubes import ExtractedMesh, flexicubes_extract

__all__ = [
    "Discriminator",
    "Get3DConfig",
    "Get3DDiscriminatorConfig",
    "Get3DGAN",
    "Get3DGenerator",
    "GeneratedMesh",
    "MappingNetwork",
    "TriplaneSynthesis",
    "camera_features",
    "render_views",
]

CAMERA_DIM = 12  # flattened [3, 4] world→camera pose


# -- configs ----------------------------------------------------------------------------------


@dataclass
class Get3DDiscriminatorConfig:
    channel_base: int = option(
        1024, ge=1, help="channels at resolution r: min(channel_max, channel_base / r)"
    )
    channel_max: int = option(64, ge=1)
    cmap_dim: int = option(64, ge=1, help="width of the camera embedding the output is projected on")
    mapping_layers: int = option(2, ge=1, help="layers of the camera embedding MLP")
    mbstd_group: int = option(4, ge=1, help="minibatch-stddev group size (clipped to the batch)")


@dataclass
class Get3DConfig:
    z_dim: int = option(64, ge=1, help="size of each latent code (geometry, texture)")
    w_dim: int = option(64, ge=1)
    mapping_layers: int = option(8, ge=1, help="layers of each mapping network (GET3D: 8)")
    mapping_lr_mul: float = option(0.01, gt=0.0)
    triplane_resolution: int = option(32, ge=4, help="side of each plane (power of two)")
    triplane_channels: int = option(16, ge=1, help="channels per plane")
    synthesis_base: int = option(4, ge=2, help="side of the learned constant")
    channel_base: int = option(1024, ge=1, help="synthesis channels at r: min(channel_max, channel_base / r)")
    channel_max: int = option(64, ge=1)
    grid_resolution: int = option(32, ge=4, help="cubes per side of the FlexiCubes grid over [-0.5, 0.5]^3")
    flexicubes_weights: bool = option(False, help="predict FlexiCubes' 21 weights per cube")
    deform_scale: float = option(0.45, ge=0.0, lt=0.5, help="largest vertex offset, in cells")
    sphere_radius: float = option(0.3, gt=0.0, lt=0.5, help="the SDF starts as this sphere")
    mlp_hidden: int = option(32, ge=1, help="width of the geometry and texture MLPs")
    mlp_layers: int = option(2, ge=1, help="hidden layers of the geometry and texture MLPs")
    image_size: int = option(64, ge=8, help="side of rendered (and discriminated) images, power of two")
    discriminator: Get3DDiscriminatorConfig = field(default_factory=Get3DDiscriminatorConfig)

    def __post_init__(self):
        for key in ("triplane_resolution", "image_size"):
            value = getattr(self, key)
            if value & (value - 1):
                raise ConfigValueError(key, f"must be a power of two, got {value}")
        if self.synthesis_base & (self.synthesis_base - 1) or self.synthesis_base > self.triplane_resolution:
            raise ConfigValueError(
                "synthesis_base", "must be a power of two no larger than triplane_resolution"
            )


# -- equalised-learning-rate layers (StyleGAN2) -------------------------------------------------


class EqualLinear(nn.Module):
    """Linear layer whose weights are scaled at run time (equalised learning rate)."""

    def __init__(
        self, in_dim: int, out_dim: int, *, lr_mul: float = 1.0, bias_init: float = 0.0, act: bool = False
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_dim], float(bias_init) / lr_mul))
        self.weight_gain = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * math.sqrt(2.0) if self.act else x


class EqualConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, *, bias: bool = True, act: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.gain = 1.0 / math.sqrt(in_ch * kernel * kernel)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)
        return F.leaky_relu(x, 0.2) * math.sqrt(2.0) if self.act else x


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: per-sample input scaling by a style from w, then
    (optionally) weight demodulation; grouped convolution over the batch."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        w_dim: int,
        kernel: int = 3,
        *,
        demodulate: bool = True,
        act: bool = True,
    ):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_ch, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_ch))
        self.demodulate, self.act = demodulate, act
        self.gain = 1.0 / math.sqrt(in_ch * kernel * kernel)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:  # x [B, in, H, W], w [B, w_dim]
        batch, in_ch, height, width = x.shape
        styles = self.affine(w)  # [B, in]
        weight = self.weight[None] * self.gain * styles[:, None, :, None, None]  # [B, out, in, k, k]
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
        out_ch, kernel = weight.shape[1], weight.shape[-1]
        x = F.conv2d(
            x.reshape(1, batch * in_ch, height, width),
            weight.reshape(batch * out_ch, in_ch, kernel, kernel),
            padding=kernel // 2,
            groups=batch,
        ).reshape(batch, out_ch, height, width)
        x = x + self.bias[None, :, None, None]
        return F.leaky_relu(x, 0.2) * math.sqrt(2.0) if self.act else x


# -- generator ------------------------------------------------------------------------------------


class MappingNetwork(nn.Module):
    """z [B, z_dim] → w [B, w_dim]: normalised z through `layers` equalised-lr layers."""

    def __init__(self, z_dim: int, w_dim: int, layers: int, lr_mul: float, w_avg_beta: float = 0.995):
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.layers = nn.Sequential(
            *(EqualLinear(dims[i], dims[i + 1], lr_mul=lr_mul, act=True) for i in range(layers))
        )
        self.w_avg_beta = w_avg_beta
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: Tensor, truncation_psi: float = 1.0) -> Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)
        w = self.layers(z)
        if self.training:
            with torch.no_grad():
                self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if truncation_psi != 1.0:
            w = self.w_avg.lerp(w, truncation_psi)
        return w


def _channels(resolution: int, base: int, maximum: int) -> int:
    return max(1, min(maximum, base // resolution))


class TriplaneSynthesis(nn.Module):
    """w [B, w_dim] → triplanes [B, 3, C, R, R] (StyleGAN2 "skip" synthesis).

    With `cond_channels`, each block also takes conditioning features of its resolution
    (the geometry branch's), concatenated to its input; `forward` returns the per-block
    features so another branch can be conditioned on them.
    """

    def __init__(
        self,
        cfg: Get3DConfig,
        *,
        cond_channels: Callable[[int], int] | None = None,
    ):
        super().__init__()
        self.out_ch = 3 * cfg.triplane_channels
        self.resolutions = []
        res = cfg.synthesis_base
        while res <= cfg.triplane_resolution:
            self.resolutions.append(res)
            res *= 2
        ch = [_channels(r, cfg.channel_base, cfg.channel_max) for r in self.resolutions]
        cond = [cond_channels(r) if cond_channels else 0 for r in self.resolutions]
        self.const = nn.Parameter(torch.randn(ch[0], cfg.synthesis_base, cfg.synthesis_base))
        self.conv0 = nn.ModuleList()
        self.conv1 = nn.ModuleList()
        self.to_plane = nn.ModuleList()
        for i, _res in enumerate(self.resolutions):
            in_ch = (ch[0] if i == 0 else ch[i - 1]) + cond[i]
            self.conv0.append(ModulatedConv2d(in_ch, ch[i], cfg.w_dim))
            self.conv1.append(ModulatedConv2d(ch[i], ch[i], cfg.w_dim))
            self.to_plane.append(
                ModulatedConv2d(ch[i], self.out_ch, cfg.w_dim, 1, demodulate=False, act=False)
            )
        self.block_channels = dict(zip(self.resolutions, ch, strict=True))

    def forward(self, w: Tensor, cond: list[Tensor] | None = None) -> tuple[Tensor, list[Tensor]]:
        batch = w.shape[0]
        x = self.const[None].expand(batch, -1, -1, -1)
        planes = None
        features = []
        for i in range(len(self.resolutions)):
            if i > 0:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if cond is not None:
                x = torch.cat([x, cond[i]], 1)
            x = self.conv1[i](self.conv0[i](x, w), w)
            features.append(x)
            y = self.to_plane[i](x, w)
            if planes is not None:
                planes = F.interpolate(planes, scale_factor=2, mode="bilinear", align_corners=False)
                y = y + planes
            planes = y
        side = planes.shape[-1]
        return planes.reshape(batch, 3, -1, side, side), features


def sample_triplanes(planes: Tensor, points: Tensor) -> Tensor:  # [B, 3, C, R, R], [B, N, 3] → [B, N, C]
    """Bilinear features of the xy, xz and yz planes at `points` in [-0.5, 0.5]³, summed."""
    batch, _, channels, side, _ = planes.shape
    coords = points * 2.0  # [-1, 1]
    pairs = torch.stack([coords[..., [0, 1]], coords[..., [0, 2]], coords[..., [1, 2]]], 1)  # [B, 3, N, 2]
    grid = pairs.reshape(batch * 3, 1, -1, 2)
    sampled = F.grid_sample(
        planes.reshape(batch * 3, channels, side, side).float(),
        grid.float(),
        mode="bilinear",
        padding_mode="border",
        align_corners=False,
    )  # [B*3, C, 1, N]
    return sampled.reshape(batch, 3, channels, -1).sum(1).transpose(1, 2)


class FieldMLP(nn.Module):
    def __init__(self, in_dim: int, hidden: int, layers: int, out_dim: int, last_gain: float = 1.0):
        super().__init__()
        dims = [in_dim] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(layers))
        self.out = nn.Linear(dims[-1], out_dim)
        with torch.no_grad():
            self.out.weight.mul_(last_gain)
            self.out.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.hidden:
            x = F.silu(layer(x))
        return self.out(x)


class GeneratedMesh(NamedTuple):
    """One generated shape: unpacks as `(vertices, faces, texture)`; `texture(points [N, 3])`
    returns linear RGB in [0, 1] `[N, 3]` from the texture field at any surface point."""

    vertices: Tensor  # [V, 3] object frame, in [-0.5, 0.5]^3
    faces: Tensor  # [F, 3] int64, outward winding
    texture: Callable[[Tensor], Tensor]


@dataclass
class GeneratorOutput:
    rgb: Tensor  # [B, 3, S, S] premultiplied over black, antialiased
    mask: Tensor  # [B, 1, S, S] antialiased silhouette
    sdf_reg: Tensor  # [] GET3D's SDF sign regulariser (cross-entropy across sign-changing edges)
    faces: list[int]  # faces per mesh


class Get3DGenerator(nn.Module):
    """Codes (+ cameras) → textured FlexiCubes meshes and their renders."""

    def __init__(self, cfg: Get3DConfig):
        super().__init__()
        self.cfg = cfg
        self.mapping_geo = MappingNetwork(cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_mul)
        self.mapping_tex = MappingNetwork(cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_mul)
        self.synthesis_geo = TriplaneSynthesis(cfg)
        geo_channels = self.synthesis_geo.block_channels
        self.synthesis_tex = TriplaneSynthesis(cfg, cond_channels=lambda r: geo_channels[r])
        c = cfg.triplane_channels
        self.geometry = FieldMLP(c, cfg.mlp_hidden, cfg.mlp_layers, 4, last_gain=0.1)
        self.weights_head = (
            FieldMLP(c, cfg.mlp_hidden, 1, 21, last_gain=0.1) if cfg.flexicubes_weights else None
        )
        self.texture = FieldMLP(c, cfg.mlp_hidden, cfg.mlp_layers, 3)
        r = cfg.grid_resolution
        axis = torch.arange(r + 1)
        ijk = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        cubes = torch.stack(torch.meshgrid(axis[:-1], axis[:-1], axis[:-1], indexing="ij"), -1).reshape(-1, 3)
        self.register_buffer("grid_ijk", ijk, persistent=False)  # [(R+1)^3, 3]
        self.register_buffer("cube_ijk", cubes, persistent=False)  # [R^3, 3]

    # -- codes → planes -----------------------------------------------------------------
    def triplanes(
        self, z_geo: Tensor, z_tex: Tensor, truncation_psi: float = 1.0
    ) -> tuple[Tensor, Tensor]:  # [B, 3, C, R, R] each
        w_geo = self.mapping_geo(z_geo, truncation_psi)
        w_tex = self.mapping_tex(z_tex, truncation_psi)
        geo, features = self.synthesis_geo(w_geo)
        tex, _ = self.synthesis_tex(w_tex, cond=features)
        return geo, tex

    def grid_fields(self, geo_planes: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """(SDF [B, V], deformed positions [B, V, 3], raw FlexiCubes weights [B, C, 21] or None)
        at the dense grid's vertices."""
        cfg = self.cfg
        r = cfg.grid_resolution
        base = self.grid_ijk.float() / r - 0.5  # [V, 3]
        batch = geo_planes.shape[0]
        out = self.geometry(sample_triplanes(geo_planes, base[None].expand(batch, -1, -1)))  # [B, V, 4]
        sphere = base.norm(dim=-1) - cfg.sphere_radius
        sdf = out[..., 0] + sphere
        boundary = ((self.grid_ijk == 0) | (self.grid_ijk == r)).any(-1)
        sdf = torch.where(boundary, sdf.clamp_min(1.0 / r), sdf)
        positions = base + torch.tanh(out[..., 1:]) * (cfg.deform_scale / r)
        weights = None
        if self.weights_head is not None:
            centres = (self.cube_ijk.float() + 0.5) / r - 0.5
            weights = self.weights_head(sample_triplanes(geo_planes, centres[None].expand(batch, -1, -1)))
        return sdf, positions, weights

    def sdf_regularizer(self, sdf: Tensor) -> Tensor:  # [B, V] → []
        """GET3D's SDF regulariser: along every grid edge whose ends differ in sign, binary
        cross-entropy of each end's sigmoid(SDF) against the other end's sign (removes floaters
        and keeps the surface sharp)."""
        n = self.cfg.grid_resolution + 1
        grid = sdf.reshape(-1, n, n, n)
        terms = []
        for dim in (1, 2, 3):
            a = grid.narrow(dim, 0, n - 1).reshape(len(grid), -1)
            b = grid.narrow(dim, 1, n - 1).reshape(len(grid), -1)
            cross = (a > 0) != (b > 0)
            if bool(cross.any()):
                a, b = a[cross], b[cross]
                terms.append(
                    F.binary_cross_entropy_with_logits(a, (b > 0).float(), reduction="sum")
                    + F.binary_cross_entropy_with_logits(b, (a > 0).float(), reduction="sum")
                )
        if not terms:
            return sdf.sum() * 0.0
        return torch.stack(terms).sum() / len(grid) / (n**3)

    def extract(self, sdf: Tensor, positions: Tensor, weights: Tensor | None) -> list[ExtractedMesh]:
        meshes = []
        r = self.cfg.grid_resolution
        for b in range(sdf.shape[0]):
            meshes.append(
                flexicubes_extract(
                    self.grid_ijk,
                    sdf[b],
                    positions[b],
                    r,
                    cube_coords=self.cube_ijk if weights is not None else None,
                    weights=weights[b] if weights is not None else None,
                )
            )
        return meshes

    def colors(self, tex_planes: Tensor, points: Tensor) -> Tensor:  # [B, 3, C, R, R], [B, N, 3] → [B, N, 3]
        return torch.sigmoid(self.texture(sample_triplanes(tex_planes, points)))

    # -- training forward ------------------------------------------------------------------
    def forward(
        self,
        z_geo: Tensor,  # [B, z_dim]
        z_tex: Tensor,  # [B, z_dim]
        viewmats: Tensor,  # [B, 4, 4] world→camera, one camera per sample
        Ks: Tensor,  # [B, 3, 3] pixel intrinsics at image_size
    ) -> GeneratorOutput:
        geo, tex = self.triplanes(z_geo, z_tex)
        sdf, positions, weights = self.grid_fields(geo)
        meshes = self.extract(sdf, positions, weights)
        rgb, mask = render_views(self, meshes, tex, viewmats, Ks, self.cfg.image_size)
        # keep every output connected to the graph (an empty mesh renders zeros)
        anchor = (sdf.sum() + positions.sum() + tex.sum()) * 0.0
        if weights is not None:
            anchor = anchor + weights.sum() * 0.0
        return GeneratorOutput(
            rgb + anchor, mask + anchor, self.sdf_regularizer(sdf), [len(m.faces) for m in meshes]
        )

    # -- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, z_geo: Tensor, z_tex: Tensor, *, truncation_psi: float = 1.0) -> list[GeneratedMesh]:
        """One `GeneratedMesh(vertices, faces, texture)` per code pair (eval mode, no autograd).

        `texture(points [N, 3])` queries that shape's texture field (linear RGB in [0, 1]);
        export bakes it into a texture image or vertex colours.
        """
        geo, tex = self.triplanes(z_geo, z_tex, truncation_psi)
        meshes = self.extract(*self.grid_fields(geo))
        out = []
        for b, mesh in enumerate(meshes):
            planes = tex[b : b + 1]

            def texture(points: Tensor, planes: Tensor = planes) -> Tensor:
                with torch.no_grad():
                    return self.colors(planes, points.to(planes.device, torch.float32)[None])[0]

            out.append(GeneratedMesh(mesh.vertices, mesh.faces, texture))
        return out


class Get3DGAN(nn.Module):
    """What the get3d stage trains and checkpoints: the generator and its frozen EMA copy
    (`g_ema`, updated by the stage after each step; the discriminators belong to the stage)."""

    def __init__(self, cfg: Get3DConfig):
        super().__init__()
        self.generator = Get3DGenerator(cfg)
        self.g_ema = copy.deepcopy(self.generator).requires_grad_(False)

    def forward(self, z_geo: Tensor, z_tex: Tensor, viewmats: Tensor, Ks: Tensor) -> GeneratorOutput:
        return self.generator(z_geo, z_tex, viewmats, Ks)


def render_views(
    generator: Get3DGenerator,
    meshes: list[ExtractedMesh],
    tex_planes: Tensor,  # [B, 3, C, R, R]
    viewmats: Tensor,  # [B, 4, 4]
    Ks: Tensor,  # [B, 3, 3]
    size: int,
) -> tuple[Tensor, Tensor]:  # rgb [B, 3, S, S] (premultiplied, black), mask [B, 1, S, S]
    """Each mesh from its camera: rasterize, texture field at the surface point of every covered
    pixel, antialias colour and silhouette together (fp32, autocast off)."""
    images = []
    with torch.autocast(tex_planes.device.type, enabled=False):
        for b, mesh in enumerate(meshes):
            if not mesh.success:
                images.append(tex_planes.new_zeros(1, size, size, 4))
                continue
            clip = clip_from_cameras(
                mesh.vertices, viewmats[b : b + 1].float(), Ks[b : b + 1].float(), size, size
            )
            rast, _ = rasterize(clip, mesh.faces, (size, size))
            points = interpolate(mesh.vertices, rast, mesh.faces)  # [1, S, S, 3]
            covered = rast[..., 3] > 0  # [1, S, S]
            colour = points.new_zeros(1, size, size, 3)
            if bool(covered.any()):
                rgb = generator.colors(tex_planes[b : b + 1].float(), points[covered][None])[0]
                colour = colour.index_put((covered,), rgb)
            image = torch.cat([colour, covered[..., None].float()], -1)
            images.append(antialias(image, rast, clip, mesh.faces))
    image = torch.cat(images).permute(0, 3, 1, 2)  # [B, 4, S, S]
    return image[:, :3], image[:, 3:]


def camera_features(viewmats: Tensor) -> Tensor:  # [B, 4, 4] → [B, 12]
    """What the discriminators are conditioned on: the world→camera pose's top 3 rows."""
    return viewmats[:, :3, :4].reshape(len(viewmats), CAMERA_DIM).float()


# -- discriminators ----------------------------------------------------------------------------


class DiscriminatorBlock(nn.Module):
    """Residual block: two 3×3 convolutions and a 2× average-pool downsample, skip by 1×1."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv0 = EqualConv2d(in_ch, in_ch, 3)
        self.conv1 = EqualConv2d(in_ch, out_ch, 3)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False, act=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.skip(F.avg_pool2d(x, 2))
        x = F.avg_pool2d(self.conv1(self.conv0(x)), 2)
        return (x + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator on [B, in_ch, S, S] images, projection-conditioned on
    the camera: logits [B] = <features, embed(camera)> / sqrt(cmap_dim)."""

    def __init__(self, in_ch: int, image_size: int, cfg: Get3DDiscriminatorConfig):
        super().__init__()
        self.cfg = cfg
        res = [image_size // 2**i for i in range(int(math.log2(image_size)) - 1)]  # S, S/2, ..., 4
        ch = {r: _channels(r, cfg.channel_base, cfg.channel_max) for r in res}
        self.from_rgb = EqualConv2d(in_ch, ch[res[0]], 1)
        self.blocks = nn.ModuleList(DiscriminatorBlock(ch[r], ch[r // 2]) for r in res[:-1])
        last = ch[4]
        self.epilogue_conv = EqualConv2d(last + 1, last, 3)
        self.fc = EqualLinear(last * 16, last, act=True)
        self.out = EqualLinear(last, cfg.cmap_dim)
        dims = [CAMERA_DIM] + [cfg.cmap_dim] * cfg.mapping_layers
        self.camera_mapping = nn.Sequential(
            *(
                EqualLinear(dims[i], dims[i + 1], act=i < cfg.mapping_layers - 1)
                for i in range(cfg.mapping_layers)
            )
        )

    def minibatch_std(self, x: Tensor) -> Tensor:
        batch, _, height, width = x.shape
        group = math.gcd(min(self.cfg.mbstd_group, batch), batch)
        y = x.reshape(group, -1, *x.shape[1:])  # [G, B/G, C, H, W]
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # [B/G, C, H, W]
        y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1).repeat(group, 1, height, width)
        return torch.cat([x, y], 1)

    def forward(self, images: Tensor, camera: Tensor) -> Tensor:  # [B, in_ch, S, S], [B, 12] → [B]
        x = self.from_rgb(images)
        for block in self.blocks:
            x = block(x)
        x = self.epilogue_conv(self.minibatch_std(x))
        x = self.out(self.fc(x.flatten(1)))
        cmap = self.camera_mapping(camera)
        return (x * cmap).sum(1) / math.sqrt(self.cfg.cmap_dim)
