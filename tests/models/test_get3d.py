"""GET3D generator and discriminators: shapes, the sphere at init, gradients through the rasterizer."""

from __future__ import annotations

import numpy as np
import torch

from voxforge.models.get3d import (
    Discriminator,
    GeneratedMesh,
    Get3DConfig,
    Get3DGenerator,
    camera_features,
)
from voxforge.render.cameras import intrinsics, look_at

SIZE = 32


def tiny_config(**extra) -> Get3DConfig:
    values = dict(
        z_dim=16,
        w_dim=16,
        mapping_layers=2,
        triplane_resolution=16,
        triplane_channels=8,
        channel_max=32,
        grid_resolution=12,
        mlp_hidden=16,
        image_size=SIZE,
    )
    values.update(extra)
    cfg = Get3DConfig(**values)
    cfg.discriminator.channel_max = 32
    cfg.discriminator.cmap_dim = 16
    return cfg


def cameras(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    yaw = np.linspace(0, 2 * np.pi, count, endpoint=False)
    eyes = np.stack([1.8 * np.sin(yaw), np.full(count, 0.5), 1.8 * np.cos(yaw)], 1)
    viewmats = torch.tensor(look_at(eyes), dtype=torch.float32)
    Ks = torch.tensor(np.stack([intrinsics(40, SIZE, SIZE)] * count), dtype=torch.float32)
    return viewmats, Ks


def test_shapes_and_discriminator_outputs():
    torch.manual_seed(0)
    cfg = tiny_config(flexicubes_weights=True)
    generator = Get3DGenerator(cfg)
    viewmats, Ks = cameras(2)
    out = generator(torch.randn(2, 16), torch.randn(2, 16), viewmats, Ks)
    assert out.rgb.shape == (2, 3, SIZE, SIZE) and out.mask.shape == (2, 1, SIZE, SIZE)
    assert out.sdf_reg.ndim == 0 and torch.isfinite(out.sdf_reg)
    mask = out.mask.detach()
    assert 0.0 <= float(mask.min()) and float(mask.max()) <= 1.0 + 1e-5
    geo, tex = generator.triplanes(torch.randn(2, 16), torch.randn(2, 16))
    assert geo.shape == tex.shape == (2, 3, 8, 16, 16)
    d_rgb, d_mask = Discriminator(3, SIZE, cfg.discriminator), Discriminator(1, SIZE, cfg.discriminator)
    camera = camera_features(viewmats)
    assert camera.shape == (2, 12)
    assert d_rgb(out.rgb, camera).shape == (2,) and d_mask(out.mask, camera).shape == (2,)
    # projection conditioning: the same image under another camera scores differently
    swapped = d_rgb(out.rgb, camera.flip(0))
    assert not torch.allclose(swapped, d_rgb(out.rgb, camera))


def _edges_shared_twice(faces: torch.Tensor) -> bool:
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).sort(1).values
    _, counts = torch.unique(edges, dim=0, return_counts=True)
    return bool((counts == 2).all())


def test_initial_meshes_are_closed_spheres():
    torch.manual_seed(1)
    cfg = tiny_config()
    generator = Get3DGenerator(cfg).eval()
    meshes = generator.generate(torch.randn(3, 16), torch.randn(3, 16))
    assert len(meshes) == 3
    for mesh in meshes:
        assert isinstance(mesh, GeneratedMesh)
        vertices, faces, texture = mesh  # unpacks as a tuple
        assert len(faces) > 100
        assert _edges_shared_twice(faces), "the initial mesh must be watertight"
        radius = vertices.norm(dim=1)
        assert abs(float(radius.mean()) - cfg.sphere_radius) < 0.06
        assert float(radius.std()) < 0.05
        colors = texture(vertices)
        assert colors.shape == vertices.shape and 0 <= float(colors.min()) and float(colors.max()) <= 1
    # outward winding: face normals point away from the centre
    v, f = meshes[0].vertices, meshes[0].faces
    normals = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=1)
    assert float((normals * v[f].mean(1)).sum(1).gt(0).float().mean()) > 0.95
    # deterministic in the codes
    z = torch.randn(1, 16)
    a, b = generator.generate(z, z)[0], generator.generate(z, z)[0]
    assert torch.equal(a.vertices, b.vertices) and torch.equal(a.faces, b.faces)


def test_discriminator_loss_reaches_geometry_through_the_rasterizer():
    torch.manual_seed(2)
    cfg = tiny_config()
    generator = Get3DGenerator(cfg)
    d_mask = Discriminator(1, SIZE, cfg.discriminator)
    d_rgb = Discriminator(3, SIZE, cfg.discriminator)
    viewmats, Ks = cameras(2)
    out = generator(torch.randn(2, 16), torch.randn(2, 16), viewmats, Ks)
    # silhouette only: gradients reach the SDF / deformation head through antialiased edges
    torch.nn.functional.softplus(-d_mask(out.mask, camera_features(viewmats))).mean().backward(
        retain_graph=True
    )
    geo_grad = generator.geometry.out.weight.grad
    assert geo_grad is not None and float(geo_grad.abs().sum()) > 0
    assert float(generator.synthesis_geo.const.grad.abs().sum()) > 0
    assert (
        generator.texture.out.weight.grad is None or float(generator.texture.out.weight.grad.abs().sum()) == 0
    )
    generator.zero_grad()
    # colour: gradients reach the texture field and the texture triplanes
    torch.nn.functional.softplus(-d_rgb(out.rgb, camera_features(viewmats))).mean().backward()
    assert float(generator.texture.out.weight.grad.abs().sum()) > 0
    assert float(generator.synthesis_tex.const.grad.abs().sum()) > 0
    assert float(generator.mapping_tex.layers[0].weight.grad.abs().sum()) > 0
