"""Textured .glb export: simplify, unwrap, bake (vertex colours and Gaussians), orientation."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("xatlas")
pytest.importorskip("fast_simplification")
trimesh = pytest.importorskip("trimesh")

from voxforge.data.gltf import read_gltf  # noqa: E402
from voxforge.errors import MissingDependencyError, UserError  # noqa: E402
from voxforge.export import textured  # noqa: E402
from voxforge.export.textured import (  # noqa: E402
    Z_UP_TO_Y_UP,
    bake_vertex_colors,
    closest_points,
    remove_hidden,
    simplify,
    texel_map,
    textured_glb,
    transfer_attributes,
    unwrap,
)
from voxforge.render.cameras import Cameras, intrinsics, look_at  # noqa: E402
from voxforge.render.gaussians import render_gaussians_cameras  # noqa: E402
from voxforge.render.mesh_raster import render_mesh  # noqa: E402
from voxforge.representations.gaussians import Gaussians  # noqa: E402
from voxforge.representations.mesh import encode_glb  # noqa: E402

RED = np.array([0.9, 0.15, 0.1])
BLUE = np.array([0.1, 0.2, 0.85])


def _height_colours(points: np.ndarray, axis: int) -> np.ndarray:
    """A smooth colour gradient along `axis` over [-0.5, 0.5]: [N, 3] in [0, 1]."""
    h = np.clip(points[:, axis] + 0.5, 0, 1)
    return np.stack([h, 0.2 + 0.6 * (1 - h), 1 - 0.8 * h], 1)


def _sphere(subdivisions: int, radius: float = 0.4, stretch=(1.0, 1.0, 1.0)):
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(mesh.vertices) * np.asarray(stretch), np.asarray(mesh.faces, np.int64)


def _reload(mesh) -> trimesh.Trimesh:
    scene = trimesh.load(io.BytesIO(encode_glb(mesh)), file_type="glb", process=False)
    (geometry,) = scene.geometry.values()
    return geometry


def _nearest(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    return cKDTree(reference).query(points)[0]


def _sample_trimesh_texture(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear lookup with trimesh's UV convention (origin bottom-left) -> [N, C] in [0, 1]."""
    height, width = image.shape[:2]
    x = uv[:, 0] * width - 0.5
    y = (1.0 - uv[:, 1]) * height - 0.5
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0c, x1c = np.clip(x0, 0, width - 1), np.clip(x0 + 1, 0, width - 1)
    y0c, y1c = np.clip(y0, 0, height - 1), np.clip(y0 + 1, 0, height - 1)
    img = image.astype(np.float64) / 255.0
    top = img[y0c, x0c] * (1 - fx) + img[y0c, x1c] * fx
    bottom = img[y1c, x0c] * (1 - fx) + img[y1c, x1c] * fx
    return top * (1 - fy) + bottom * fy


def test_glb_reopens_in_trimesh_with_texture_uvs_normals_and_vertex_colours():
    vertices, faces = _sphere(3)
    colours = _height_colours(vertices, axis=2)
    mesh = textured_glb(vertices, faces, colours, up="z", simplify_ratio=0.0, texture_size=256)
    loaded = _reload(mesh)
    assert isinstance(loaded.visual, trimesh.visual.TextureVisuals)
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    assert image.shape == (256, 256, 3)
    uv = np.asarray(loaded.visual.uv)
    assert uv.shape == (len(loaded.vertices), 2) and len(loaded.faces) == len(faces)
    # The texture at each vertex's UV is the vertex's colour (the gradient at its position).
    back = np.asarray(loaded.vertices) @ Z_UP_TO_Y_UP.T  # glTF Y-up -> the input's Z-up frame
    expected = _height_colours(back, axis=2)
    error = np.abs(_sample_trimesh_texture(image, uv) - expected)
    assert error.max() < 0.03, error.max()
    # voxforge's own reader gets the same geometry, UVs and texture back.
    again = read_gltf(encode_glb(mesh)).parts[0]
    np.testing.assert_allclose(again.vertices, mesh.parts[0].vertices, atol=1e-6)
    np.testing.assert_allclose(again.uv, mesh.parts[0].uv, atol=1e-6)
    np.testing.assert_array_equal(again.texture, mesh.parts[0].texture)
    # Smooth outward normals travel as glTF NORMAL.
    normals = np.asarray(loaded.vertex_normals)
    outward = (normals * loaded.vertices).sum(1) / np.linalg.norm(loaded.vertices, axis=1)
    assert outward.min() > 0.95


def test_z_up_input_comes_out_y_up_and_y_up_is_left_alone():
    # A tall ellipsoid along +Z whose top is coloured red.
    vertices, faces = _sphere(2, stretch=(0.5, 0.5, 1.2))
    colours = np.where(vertices[:, 2:3] > 0.2, RED, BLUE)
    mesh = textured_glb(vertices, faces, colours, up="z", simplify_ratio=0.0, texture_size=128)
    loaded = _reload(mesh)
    out = np.asarray(loaded.vertices)
    extent = np.ptp(out, axis=0)
    assert extent.argmax() == 1  # the long axis is now glTF's up
    np.testing.assert_allclose(out[:, 1].max(), vertices[:, 2].max(), atol=1e-6)  # top stays on top
    # (x, y, z) -> (x, z, -y): every output vertex is a rotated input vertex (seams split some)
    assert _nearest(out, vertices @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])).max() < 1e-6
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    top = out[:, 1].argmax()
    np.testing.assert_allclose(
        _sample_trimesh_texture(image, loaded.visual.uv[top : top + 1])[0], RED, atol=0.02
    )

    same = textured_glb(vertices, faces, colours, up="y", simplify_ratio=0.0, texture_size=64)
    assert _nearest(same.parts[0].vertices, vertices).max() < 1e-6


def test_simplify_reaches_the_target_keeps_the_surface_and_carries_colours():
    vertices, faces = _sphere(5)  # 20480 faces
    colours = _height_colours(vertices, axis=1)
    low_v, low_f, low_c = simplify(vertices, faces, target_faces=2000, attrs=colours)
    assert abs(len(low_f) - 2000) <= 100
    assert low_c.shape == (len(low_v), 3) and low_f.max() < len(low_v)
    # Point-to-surface distances both ways (Chamfer mean, Hausdorff max) stay small (radius 0.4).
    high_pts = trimesh.Trimesh(vertices, faces, process=False).sample(5000, seed=0)
    low_pts = trimesh.Trimesh(low_v, low_f, process=False).sample(5000, seed=1)
    d_low = closest_points(low_pts, vertices, faces)[2]
    d_high = closest_points(high_pts, low_v, low_f)[2]
    assert d_low.mean() + d_high.mean() < 0.002 and max(d_low.max(), d_high.max()) < 0.006
    # Colours at the new vertices: the gradient at (nearly) their position.
    np.testing.assert_allclose(low_c, _height_colours(low_v, axis=1), atol=0.01)
    # A reduction removes that fraction of the faces.
    _, half_f, _ = simplify(vertices, faces, reduction=0.5)
    assert abs(len(half_f) - len(faces) // 2) <= 0.02 * len(faces)
    with pytest.raises(UserError):
        simplify(vertices, faces)
    with pytest.raises(UserError):
        simplify(vertices, faces, reduction=1.0)


MESHES = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "meshes"


def test_real_scan_simplified_textured_and_reopened():
    path = MESHES / "plain" / "bunny.ply"
    if not path.exists():
        pytest.skip(f"{path} not found")
    scan = trimesh.load(path, force="mesh", process=False)
    vertices = np.asarray(scan.vertices, np.float64)
    vertices = (vertices - (vertices.min(0) + vertices.max(0)) / 2) / np.ptp(vertices, axis=0).max()
    colours = (_height_colours(vertices, axis=1) * 255).round().astype(np.uint8)  # uint8 input
    mesh = textured_glb(vertices, scan.faces, colours, up="y", target_faces=3000, texture_size=256)
    loaded = _reload(mesh)
    assert abs(len(loaded.faces) - 3000) <= 150
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    error = np.abs(
        _sample_trimesh_texture(image, loaded.visual.uv) - _height_colours(loaded.vertices, axis=1)
    )
    assert error.mean() < 0.01 and error.max() < 0.06, (error.mean(), error.max())
    distance = closest_points(np.asarray(loaded.vertices), vertices, scan.faces)[2]
    assert distance.max() < 0.01  # the simplified vertices stay on the scan (longest side 1)


def test_closest_points_in_every_voronoi_region_of_a_triangle():
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]])
    faces = np.array([[0, 1, 2]])
    points = np.array(
        [[0.2, 0.2, 5], [-1, -1, 3], [3, -1, 0], [-1, 3, 0], [0.5, -2, 1], [-2, 0.5, 0], [2, 2, 1]], float
    )
    expected = np.array(
        [[0.2, 0.2, 0], [0, 0, 0], [1, 0, 0], [0, 1, 0], [0.5, 0, 0], [0, 0.5, 0], [0.5, 0.5, 0]]
    )
    face, bary, dist = closest_points(points, vertices, faces)
    np.testing.assert_allclose(bary @ vertices, expected, atol=1e-12)
    np.testing.assert_allclose(dist, np.linalg.norm(points - expected, axis=1), atol=1e-12)
    assert (face == 0).all()
    values = transfer_attributes(points, vertices, faces, np.array([[0.0], [1.0], [2.0]]))
    np.testing.assert_allclose(values[:, 0], expected[:, 0] + 2 * expected[:, 1], atol=1e-6)


def test_hidden_inner_shell_is_removed_and_visible_parts_kept():
    outer_v, outer_f = _sphere(2, radius=0.4)
    inner_v, inner_f = _sphere(1, radius=0.2)  # sealed inside the outer sphere
    side_v, side_f = _sphere(1, radius=0.05)
    side_v = side_v + [0.46, 0.0, 0.0]  # a small visible part next to it
    parts = [(outer_v, outer_f), (inner_v, inner_f), (side_v, side_f)]
    offsets = np.cumsum([0] + [len(v) for v, _ in parts[:-1]])
    vertices = np.concatenate([v for v, _ in parts])
    faces = np.concatenate([f + o for (_, f), o in zip(parts, offsets)])
    kept_v, kept_f, used = remove_hidden(vertices, faces, views=12, resolution=128)
    assert len(kept_f) == len(outer_f) + len(side_f)
    np.testing.assert_array_equal(kept_v, vertices[used].astype(np.float32))
    assert not np.isin(np.arange(len(outer_v), len(outer_v) + len(inner_v)), used).any()


def test_vertex_colour_bake_fills_the_gutters():
    vertices, faces = _sphere(2)
    atlas = unwrap(vertices, faces, texture_size=128, padding=4)
    assert atlas.uv.shape == (len(atlas.vertices), 2) and len(atlas.faces) == len(faces)
    np.testing.assert_allclose(atlas.vertices, vertices[atlas.vertex_map], atol=1e-6)
    colours = _height_colours(atlas.vertices, axis=1)
    texture = bake_vertex_colors(atlas.faces, atlas.uv, colours, 128, dilate_px=4)
    covered = texel_map(atlas.faces, atlas.uv, 128).mask.numpy()
    assert 0.2 < covered.mean() < 0.95
    # Every texel is filled (dilation, then the mean colour), and the texels right outside a
    # chart continue its colours instead of dropping to black.
    assert texture.shape == (128, 128, 3) and texture.min() > 0.05
    from scipy.ndimage import binary_dilation

    ring = binary_dilation(covered, iterations=2) & ~covered
    inside_mean = texture[covered].mean(0)
    assert np.abs(texture[ring].mean(0) - inside_mean).max() < 0.15
    # Bilinear sampling at the vertex UVs returns the vertex colours.
    from voxforge.render.mesh_raster import sample_texture_bilinear

    sampled = sample_texture_bilinear(torch.from_numpy(texture), torch.from_numpy(atlas.uv)).numpy()
    assert np.abs(sampled - colours).max() < 0.04


def test_view_bake_skips_occluded_and_back_facing_texels():
    # Two squares facing +z: a small one in front (z = 0.2) hides the middle of a larger one
    # behind it (z = -0.2). Each square has its own half of the texture.
    def square(half, z, u0):
        corners = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
        uv = np.array([[u0, 0.95], [u0 + 0.4, 0.95], [u0 + 0.4, 0.05], [u0, 0.05]])
        return corners, uv

    front, front_uv = square(0.25, 0.2, 0.05)
    back, back_uv = square(0.45, -0.2, 0.55)
    vertices = np.concatenate([front, back])
    uv = np.concatenate([front_uv, back_uv])
    faces = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    camera = Cameras(look_at(np.array([[0.0, 0.0, 3.0]])), intrinsics(40.0, 64, 64)[None], 64, 64)
    images = torch.tensor(RED, dtype=torch.float32).expand(1, 64, 64, 3)
    texels = texel_map(faces, uv, 64)
    sums, weights = textured.bake_from_views(vertices, faces, uv, images, camera, 64, texels=texels)
    points = texels.interpolate(vertices, faces).numpy()
    on_front = points[:, 2] > 0
    hidden = ~on_front & (np.abs(points[:, :2]).max(1) < 0.2)
    shown = ~on_front & (np.abs(points[:, :2]).max(1) > 0.35)
    w = weights.numpy()
    assert (w[on_front] > 0.9).all() and (w[shown] > 0.5).all() and (w[hidden] == 0).all()
    np.testing.assert_allclose(
        sums.numpy()[w > 0] / w[w > 0, None], np.broadcast_to(RED, (int((w > 0).sum()), 3)), atol=1e-5
    )
    # Seen from behind, nothing faces the camera.
    behind = Cameras(look_at(np.array([[0.0, 0.0, -3.0]])), intrinsics(40.0, 64, 64)[None], 64, 64)
    _, weights = textured.bake_from_views(vertices, faces, uv, images, behind, 64, texels=texels)
    assert float(weights.max()) == 0.0


def test_a_sliver_that_covers_no_texel_centre_still_gets_its_texels():
    # 10 texels long, 0.3 texel tall, between two rows of texel centres (texture 32).
    uv = np.array([[2.2, 5.55], [12.2, 5.6], [12.2, 5.85]]) / 32
    texels = texel_map(np.array([[0, 1, 2]]), uv, 32)
    rows = (texels.index // 32).numpy()
    assert len(texels.index) >= 10 and (rows == 5).all() and (texels.face == 0).all()
    colours = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    texture = bake_vertex_colors(np.array([[0, 1, 2]]), uv, colours, 32, dilate_px=2)
    assert texture[5, 2, 0] > 0.8 and texture[5, 12, 0] < 0.2  # red end to green/blue end


def _two_colour_gaussians(n: int = 3000, radius: float = 0.3) -> Gaussians:
    gen = torch.Generator().manual_seed(0)
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1) * radius
    rgb = torch.where(means[:, 1:2] > 0, torch.tensor(RED).float(), torch.tensor(BLUE).float())
    return Gaussians.from_activated(
        means=means,
        scales=torch.full((n, 3), 0.02),
        quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
        opacities=torch.full((n,), 0.95),
        rgb=rgb,
    )


def test_gaussian_bake_matches_the_rendered_views():
    gaussians = _two_colour_gaussians()
    vertices, faces = _sphere(3, radius=0.3)
    grey = np.full((len(vertices), 3), 0.5)
    mesh = textured_glb(
        vertices, faces, grey, up="y", gaussians=gaussians, simplify_ratio=0.0, texture_size=128,
        views=8, view_resolution=96, backend="torch",
    )  # fmt: skip
    part = mesh.parts[0]
    texels = texel_map(part.faces, part.uv, 128)
    points = texels.interpolate(part.vertices, part.faces).numpy()
    colour = part.texture.reshape(-1, 4)[texels.index.numpy(), :3] / 255.0
    top, bottom = points[:, 1] > 0.06, points[:, 1] < -0.06
    assert np.abs(colour[top].mean(0) - RED).max() < 0.06
    assert np.abs(colour[bottom].mean(0) - BLUE).max() < 0.06
    assert (np.abs(colour[top] - RED).max(1) < 0.15).mean() > 0.95  # grey survives nowhere
    # A new view of the textured mesh looks like the same view of the Gaussians.
    eye = np.array([[0.9, 0.5, 1.1]])
    camera = Cameras(look_at(eye), intrinsics(40.0, 80, 80)[None], 80, 80)
    rgba, _ = render_mesh(mesh, camera)
    splat = render_gaussians_cameras(gaussians, camera, backend="torch")
    mask = (rgba[0, :, :, 3] == 255) & (splat["alpha"][0, :, :, 0].numpy() > 0.99)
    from scipy.ndimage import binary_erosion

    mask = binary_erosion(mask, iterations=2)
    assert mask.mean() > 0.2
    diff = np.abs(rgba[0, :, :, :3] / 255.0 - splat["rgb"][0].numpy())[mask].max(1)
    # Errors only along the red/blue border (a band of 2-3 pixels: the Gaussians' shell lies
    # outside the mesh, a parallax of its thickness): measured median 0.006, 13% above 0.2.
    assert np.median(diff) < 0.02 and (diff > 0.2).mean() < 0.2, (np.median(diff), (diff > 0.2).mean())


def test_missing_optional_packages_name_the_extra(monkeypatch):
    real = textured.importlib.import_module

    def fake(name, *args):
        if name in ("xatlas", "fast_simplification"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(textured.importlib, "import_module", fake)
    vertices, faces = _sphere(1)
    with pytest.raises(MissingDependencyError, match=r"voxforge\[mesh\]") as info:
        unwrap(vertices, faces)
    assert "xatlas" in str(info.value)
    with pytest.raises(MissingDependencyError, match="fast-simplification"):
        simplify(vertices, faces, reduction=0.5)


def test_bad_inputs_raise_user_errors():
    vertices, faces = _sphere(1)
    with pytest.raises(UserError, match="up must be"):
        textured_glb(vertices, faces, up="x")
    with pytest.raises(UserError, match="face indices"):
        textured_glb(vertices, faces + 1000, up="y")
    with pytest.raises(UserError, match="vertex colours"):
        textured_glb(vertices, faces, np.ones((3, 3)), up="y")
    with pytest.raises(UserError, match="texture size"):
        textured_glb(vertices, faces, up="y", simplify_ratio=0.0, texture_size=4)


@pytest.mark.slow
def test_timing_20k_faces_1024_texture_with_gaussians():
    """The sizes TRELLIS exports (~20k faces, 1024^2): prints the time of each step."""
    vertices, faces = _sphere(6, radius=0.3)  # 81920 faces
    colours = _height_colours(vertices, axis=1)
    gaussians = _two_colour_gaussians(20000)
    start = time.perf_counter()
    mesh = textured_glb(
        vertices, faces, colours, up="y", gaussians=gaussians, target_faces=20000, texture_size=1024,
        views=16, view_resolution=256, backend="torch",
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    print(f"textured_glb: {elapsed:.1f} s for {mesh.num_faces} faces")
    assert mesh.num_faces == 20000 and mesh.parts[0].texture.shape == (1024, 1024, 4)


def test_blender_opens_the_textured_glb_upright(tmp_path):
    """Blender's glTF importer (Z-up) puts the top of a Z-up input on top, with the texture."""
    bpy = pytest.importorskip("bpy")
    vertices, faces = _sphere(2, stretch=(0.5, 0.5, 1.2))
    colours = np.where(vertices[:, 2:3] > 0.2, RED, BLUE)
    path = tmp_path / "upright.glb"
    textured_glb(vertices, faces, colours, up="z", simplify_ratio=0.0, texture_size=64).save_glb(path)
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=str(path))
    (obj,) = [o for o in bpy.context.scene.objects if o.type == "MESH"]
    world = np.array([obj.matrix_world @ v.co for v in obj.data.vertices])
    assert np.ptp(world, axis=0).argmax() == 2  # Blender's up axis is Z: the long axis stands up
    np.testing.assert_allclose(world[:, 2].max(), vertices[:, 2].max(), atol=1e-5)
    nodes = obj.active_material.node_tree.nodes
    images = [n.image for n in nodes if n.type == "TEX_IMAGE" and n.image is not None]
    assert images and tuple(images[0].size) == (64, 64)
