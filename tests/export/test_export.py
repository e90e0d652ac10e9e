"""Exports: .ply round trip, orbit cameras, turntable .mp4/.gif frame counts, surface nets, .glb."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from voxforge.data.gltf import load_glb, split_glb
from voxforge.export import ExportConfig, export_asset, export_ply
from voxforge.export.mesh import mesh_from_structure, occupancy_field, surface_nets, write_glb
from voxforge.export.video import orbit_cameras, render_turntable, write_gif, write_mp4
from voxforge.representations.gaussians import Gaussians, load_ply


def _two_colour_ball(n: int = 400, seed: int = 0) -> Gaussians:
    """Gaussians on a sphere of radius 0.3: red where x < 0, blue where x >= 0."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1) * 0.3
    rgb = torch.where(means[:, :1] < 0, torch.tensor([[0.9, 0.1, 0.1]]), torch.tensor([[0.1, 0.1, 0.9]]))
    return Gaussians.from_activated(
        means=means,
        scales=torch.full((n, 3), 0.03),
        quats=torch.randn(n, 4, generator=gen),
        opacities=torch.full((n,), 0.9),
        rgb=rgb,
    )


def _ball_voxels(resolution: int, radius: float = 0.3) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(resolution)] * 3, indexing="ij"), -1).reshape(-1, 3)
    dist = np.linalg.norm((grid + 0.5) / resolution - 0.5, axis=1)
    return grid[(dist < radius) & (dist > radius - 1.5 / resolution)]


def test_ply_round_trip_through_export(tmp_path):
    g = _two_colour_ball()
    g.opacity_logits[:10] = -20.0  # below the cut
    path = export_ply(g, tmp_path / "a.ply", min_opacity=1 / 255)
    loaded = load_ply(path)
    kept = g.opacities >= 1 / 255
    assert loaded.num_gaussians == int(kept.sum()) == g.num_gaussians - 10
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh_dc"):
        torch.testing.assert_close(getattr(loaded, name), getattr(g[kept], name), rtol=0, atol=0)
    header = path.read_bytes()[:200].decode("ascii", errors="replace")
    assert header.startswith("ply\nformat binary_little_endian 1.0\n")


def test_orbit_cameras_are_proper_rotations_that_frame_the_origin():
    viewmats, Ks = orbit_cameras(8, size=64, radius=2.0, elevation_deg=30.0)
    assert viewmats.shape == (8, 4, 4) and Ks.shape == (8, 3, 3)
    rot = viewmats[:, :3, :3].double()
    torch.testing.assert_close(
        rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(8, 3, 3), atol=1e-6, rtol=0
    )
    assert torch.allclose(torch.linalg.det(rot), torch.ones(8, dtype=torch.float64), atol=1e-6)
    centres = -(rot.transpose(1, 2) @ viewmats[:, :3, 3:].double())[..., 0]
    torch.testing.assert_close(
        centres.norm(dim=-1), torch.full((8,), 2.0, dtype=torch.float64), atol=1e-5, rtol=0
    )
    assert bool((centres[:, 1] > 0).all())  # above the object (elevation > 0, +Y up)
    # the origin lands in the image centre; world +Y points up in the image (smaller row)
    for point, check in (
        ([0, 0, 0], lambda u, v: abs(u - 32) < 1e-3 and abs(v - 32) < 1e-3),
        ([0, 0.2, 0], lambda u, v: v < 32),
    ):
        cam = viewmats[:, :3, :3] @ torch.tensor(point, dtype=torch.float32) + viewmats[:, :3, 3]
        pix = (Ks @ cam[..., None])[..., 0]
        for u, v in (pix[:, :2] / pix[:, 2:]).tolist():
            assert check(u, v)
    top = orbit_cameras(2, elevation_deg=90.0)[0]
    assert torch.isfinite(top).all()


def test_turntable_mp4_and_gif_have_the_right_frame_count(tmp_path):
    import imageio.v3 as iio

    frames = render_turntable(_two_colour_ball(150), 6, size=32, backend="torch")
    assert frames.shape == (6, 32, 32, 3) and frames.dtype == np.uint8
    assert frames.min() < 200  # the object is visible over the white background
    assert not np.array_equal(frames[0], frames[3])  # the camera moved (red and blue halves swap)
    mp4 = write_mp4(frames, tmp_path / "t.mp4", fps=10)
    gif = write_gif(frames, tmp_path / "t.gif", fps=10)
    assert iio.imread(mp4, index=None, plugin="FFMPEG").shape[0] == 6
    assert iio.imread(gif, index=None).shape[0] == 6
    odd = write_mp4(np.zeros((3, 17, 15, 3), np.uint8), tmp_path / "odd.mp4")
    assert iio.imread(odd, index=None, plugin="FFMPEG").shape[:3] == (3, 18, 16)
    with pytest.raises(ValueError, match="uint8"):
        write_gif(frames.astype(np.float32), tmp_path / "bad.gif")


def test_surface_nets_sphere_is_watertight_outward_and_accurate():
    import trimesh

    n = 40
    axis = np.arange(n) - (n - 1) / 2
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    radius = 12.0
    field = radius - np.sqrt(x**2 + y**2 + z**2)  # > 0 inside
    vertices, faces = surface_nets(field, 0.0)
    mesh = trimesh.Trimesh(vertices, faces, process=True)
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward winding
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)
    dist = np.linalg.norm(vertices - (n - 1) / 2, axis=1)
    assert np.abs(dist - radius).max() < 0.5
    empty_v, empty_f = surface_nets(np.zeros((4, 4, 4)), 0.5)
    assert len(empty_v) == 0 and len(empty_f) == 0
    # a field touching the border still closes (padding)
    v, f = surface_nets(np.ones((3, 3, 3)), 0.5)
    assert trimesh.Trimesh(v, f, process=True).is_watertight


def test_occupancy_field_fills_the_shell():
    shell = _ball_voxels(16)
    field = occupancy_field(shell, 16, upsample=1, smooth=0.0)
    assert field[8, 8, 8] == 1.0  # the centre of the ball is filled
    assert field[0, 0, 0] == 0.0
    with pytest.raises(ValueError, match="outside the grid"):
        occupancy_field(np.array([[16, 0, 0]]), 16)


def test_glb_opens_with_trimesh_and_is_coloured_from_the_gaussians(tmp_path):
    import trimesh

    g = _two_colour_ball(600)
    mesh = mesh_from_structure(_ball_voxels(16), 16, g)
    path = write_glb(mesh, tmp_path / "m.glb")
    (loaded,) = trimesh.load_scene(path).geometry.values()
    assert len(loaded.faces) == mesh.num_faces > 100
    loaded_merged = trimesh.Trimesh(loaded.vertices, loaded.faces, process=True)
    assert loaded_merged.is_watertight
    assert np.abs(loaded.bounds).max() <= 0.5  # in the normalized object frame
    # trimesh keeps COLOR_0 as stored: glTF's linear space
    linear = np.asarray(loaded.visual.vertex_attributes["color"])[:, :3]
    left, right = loaded.vertices[:, 0] < -0.1, loaded.vertices[:, 0] > 0.1
    assert linear[left, 0].mean() > 0.4 and linear[left, 2].mean() < 0.1  # red half
    assert linear[right, 2].mean() > 0.4 and linear[right, 0].mean() < 0.1  # blue half
    # voxforge's reader gives the sRGB colours back (the same writer as prepared assets)
    part = load_glb(path).parts[0]
    np.testing.assert_array_equal(part.vertices, mesh.parts[0].vertices)
    np.testing.assert_allclose(part.vertex_colors, mesh.parts[0].vertex_colors, atol=1e-5)
    srgb = part.vertex_colors[:, :3] * 255
    left, right = part.vertices[:, 0] < -0.1, part.vertices[:, 0] > 0.1
    assert srgb[left, 0].mean() > 150 and srgb[left, 2].mean() < 100  # red half
    assert srgb[right, 2].mean() > 150 and srgb[right, 0].mean() < 100  # blue half
    # without a structure the mesh comes from the Gaussians' centres
    from_gaussians = mesh_from_structure(None, 16, g)
    assert from_gaussians.num_faces > 100
    # an empty structure gives an empty mesh that still writes a valid file
    empty = write_glb(mesh_from_structure(np.zeros((0, 3), np.int64), 8), tmp_path / "empty.glb")
    document, _ = split_glb(empty.read_bytes())  # the container checks pass
    assert document["nodes"] == [] and document["meshes"] == []


def test_glb_opens_in_blender(tmp_path):
    bpy = pytest.importorskip("bpy")
    path = write_glb(mesh_from_structure(_ball_voxels(12), 12, _two_colour_ball(200)), tmp_path / "b.glb")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(path))
    meshes = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    assert meshes and len(meshes[0].data.polygons) > 0


def test_export_asset_writes_every_format(tmp_path):
    cfg = ExportConfig(frames=4, size=32, gif_size=24)
    paths = export_asset(
        _two_colour_ball(150), tmp_path / "out", coords=_ball_voxels(12), resolution=12, config=cfg
    )
    assert set(paths) == {"ply", "mp4", "gif", "png", "glb"}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert not list((tmp_path / "out").glob("*.tmp"))
    only = export_asset(_two_colour_ball(50), tmp_path / "ply_only", config=ExportConfig(formats=["ply"]))
    assert set(only) == {"ply"}
