"""Mesh rasterizer: coverage, depth, perspective-correct attributes, textures, AA, Blender."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxforge.render.cameras import Cameras, hammersley_sphere, intrinsics, look_at
from voxforge.render.mesh_raster import (
    EMPTY_DEPTH,
    RenderError,
    barycentrics,
    interpolate,
    rasterize,
    render_mesh,
    sample_texture_bilinear,
    setup_triangles,
)
from voxforge.representations.mesh import MeshPart, TexturedMesh


def front_camera(width: int = 32, height: int = 32, distance: float = 2.0, fov: float = 40.0) -> Cameras:
    """Camera on +Z looking at the origin: world +X is image right, world +Y is image up."""
    return Cameras(
        look_at(np.array([[0.0, 0.0, distance]])), intrinsics(fov, width, height)[None], width, height
    )


def quad(z: float = 0.0, half: float = 0.3, color=(1.0, 1.0, 1.0, 1.0), **kwargs) -> MeshPart:
    vertices = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]], np.float32)
    return MeshPart(
        vertices, np.array([[0, 1, 2], [0, 2, 3]]), base_color=np.array(color, np.float32), **kwargs
    )


def reference_coverage(pix: np.ndarray, faces: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel centres inside any triangle, in float64, away from edges (returns mask, sure)."""
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    inside = np.zeros((height, width), bool)
    near_edge = np.zeros((height, width), bool)
    for face in faces:
        (x0, y0), (x1, y1), (x2, y2) = pix[face].astype(np.float64)
        area = (x1 - x0) * (y2 - y0) - (y1 - y0) * (x2 - x0)
        b = [
            ((x2 - x1) * (rows - y1) - (y2 - y1) * (cols - x1)) / area,
            ((x0 - x2) * (rows - y2) - (y0 - y2) * (cols - x2)) / area,
            ((x1 - x0) * (rows - y0) - (y1 - y0) * (cols - x0)) / area,
        ]
        low = np.minimum(np.minimum(b[0], b[1]), b[2])
        inside |= low >= 0
        near_edge |= np.abs(low) < 1e-4
    return inside, near_edge


def test_triangle_coverage_matches_float64_reference():
    rng = np.random.default_rng(0)
    pix = torch.from_numpy(rng.uniform(-5, 45, (30, 2)).astype(np.float32))
    z = torch.from_numpy(rng.uniform(1, 3, 30).astype(np.float32))
    faces = torch.arange(30).view(10, 3)
    tri, depth = rasterize(pix, z, faces, 40, 36)
    expected, near_edge = reference_coverage(pix.numpy(), faces.numpy(), 40, 36)
    got = tri.numpy() >= 0
    assert (got == expected)[~near_edge].all()
    assert ((depth.numpy() > 0) == got).all()


def test_depth_is_camera_z_and_background_is_empty():
    mesh = TexturedMesh([quad(z=0.2)])
    rgba, depth = render_mesh(mesh, front_camera())
    covered = rgba[0, ..., 3] == 255
    assert covered.sum() > 50 and (rgba[0, ..., 3][~covered] == 0).all()
    np.testing.assert_allclose(depth[0][covered], 1.8, rtol=1e-5)
    assert (depth[0][~covered] == EMPTY_DEPTH).all()


def test_nearest_surface_wins_regardless_of_order():
    front = quad(z=0.1, half=0.2, color=(1, 0, 0, 1))
    back = quad(z=-0.1, half=0.4, color=(0, 0, 1, 1))
    for parts in ([front, back], [back, front]):
        rgba, depth = render_mesh(TexturedMesh(parts), front_camera())
        centre = rgba[0, 16, 16]
        assert tuple(centre) == (255, 0, 0, 255)
        corner = rgba[0, 16, 9]  # outside the red square, inside the blue one
        assert tuple(corner) == (0, 0, 255, 255)
        assert depth[0, 16, 16] == pytest.approx(1.9, rel=1e-5)


def test_shared_edges_leave_no_cracks():
    # A finely triangulated square (many shared edges, including ones through pixel centres)
    # covers exactly the pixels of the same square drawn as two triangles.
    n = 13
    grid = np.linspace(-0.3, 0.3, n + 1)
    xs, ys = np.meshgrid(grid, grid)
    vertices = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], 1).astype(np.float32)
    faces = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = (
                r * (n + 1) + c,
                r * (n + 1) + c + 1,
                (r + 1) * (n + 1) + c,
                (r + 1) * (n + 1) + c + 1,
            )
            faces += [[a, b, e], [a, e, d]] if (r + c) % 2 else [[a, b, d], [b, e, d]]
    fine = TexturedMesh([MeshPart(vertices, np.array(faces))])
    cams = Cameras(
        look_at(np.array([[0.3, 0.2, 2.0], [0.0, 0.0, 2.0]])),
        np.repeat(intrinsics(35, 64, 64)[None], 2, 0),
        64,
        64,
    )
    fine_alpha = render_mesh(fine, cams)[0][..., 3]
    coarse_alpha = render_mesh(TexturedMesh([quad()]), cams)[0][..., 3]
    np.testing.assert_array_equal(fine_alpha, coarse_alpha)


def test_perspective_correct_interpolation():
    # A plane tilted in depth with vertex colours linear in world x: the red channel at a pixel
    # equals the colour at the world point its ray hits, not the screen-space blend.
    vertices = np.array(
        [[-0.5, -0.5, -0.8], [0.5, -0.5, 0.8], [0.5, 0.5, 0.8], [-0.5, 0.5, -0.8]], np.float32
    )
    colors = np.array([[0, 0, 0, 1], [1, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 1]], np.float32)
    mesh = TexturedMesh([MeshPart(vertices, np.array([[0, 1, 2], [0, 2, 3]]), vertex_colors=colors)])
    cams = front_camera(64, 64, distance=3.0, fov=30)
    rgba, depth = render_mesh(mesh, cams)
    K = cams.K[0].astype(np.float64)
    for col in (20, 25, 32, 40, 52):  # the quad spans columns ~17-58
        ray = np.linalg.solve(K, [col + 0.5, 32.5, 1.0])  # camera frame; camera at z=3 looking -Z
        # Camera frame -> world: x same, y flipped, z = 3 - depth. Plane: z_world = 1.6 * x_world.
        t = 3.0 / (ray[2] + 1.6 * ray[0])
        x_world = t * ray[0]
        assert rgba[0, 32, col, 0] / 255 == pytest.approx(x_world + 0.5, abs=1.5 / 255)
        assert depth[0, 32, col] == pytest.approx(t * ray[2], rel=1e-4)


def test_texture_bilinear_wraps_like_gltf_repeat():
    texture = torch.tensor([[[1.0, 0], [0, 0]], [[0, 0], [0, 1.0]]])  # [2, 2, 2]: corners lit
    uv = torch.tensor([[0.25, 0.25], [0.75, 0.75], [0.5, 0.25], [1.25, 0.25], [0.0, 0.25], [-0.25, 0.75]])
    got = sample_texture_bilinear(texture, uv)
    np.testing.assert_allclose(got[:2].numpy(), [[1, 0], [0, 1]], atol=1e-6)  # texel centres
    np.testing.assert_allclose(got[2].numpy(), [0.5, 0], atol=1e-6)  # halfway between texels
    np.testing.assert_allclose(got[3].numpy(), got[0].numpy(), atol=1e-6)  # u + 1 wraps
    np.testing.assert_allclose(got[4].numpy(), [0.5, 0], atol=1e-6)  # u = 0 blends with the last column
    np.testing.assert_allclose(got[5].numpy(), got[1].numpy(), atol=1e-6)


def test_textured_quad_shows_its_image_upright():
    # glTF UVs: v = 0 is the top row of the image. Top half red, bottom half green.
    texture = np.zeros((8, 8, 4), np.uint8)
    texture[:4] = [255, 0, 0, 255]
    texture[4:] = [0, 255, 0, 255]
    uv = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)  # quad corners: bottom-left first
    part = quad(uv=uv, texture=texture)
    rgba, _ = render_mesh(TexturedMesh([part]), front_camera(32, 32))
    # The quad covers rows ~9.4-22.6; stay away from its top and bottom, where REPEAT
    # blends the first and last texture rows.
    assert tuple(rgba[0, 12, 16, :3]) == (255, 0, 0)  # upper part of the image
    assert tuple(rgba[0, 19, 16, :3]) == (0, 255, 0)


def test_colour_is_base_times_texture_times_vertex_colour():
    texture = np.full((2, 2, 4), 128, np.uint8)
    colors = np.tile(np.array([[1.0, 0.5, 1.0, 1.0]], np.float32), (4, 1))
    part = quad(
        color=(0.5, 1.0, 1.0, 1.0), uv=np.zeros((4, 2), np.float32), texture=texture, vertex_colors=colors
    )
    rgba, _ = render_mesh(TexturedMesh([part]), front_camera())
    np.testing.assert_allclose(
        rgba[0, 16, 16] / 255.0, [0.5 * 128 / 255, 0.5 * 128 / 255, 128 / 255, 128 / 255], atol=1 / 255
    )


def test_supersampling_gives_fractional_coverage():
    # A quad edge through the middle of a pixel column: with 4x4 samples that column is half covered.
    cams = front_camera(32, 32)
    focal = cams.K[0, 0, 0]
    x_edge = (16.5 - 16.0) / focal * 2.0  # world x whose projection is pixel column 16's centre
    vertices = np.array([[x_edge, -0.3, 0], [0.3, -0.3, 0], [0.3, 0.3, 0], [x_edge, 0.3, 0]], np.float32)
    mesh = TexturedMesh([MeshPart(vertices, np.array([[0, 1, 2], [0, 2, 3]]))])
    alpha = render_mesh(mesh, cams, supersample=4)[0][0, ..., 3] / 255.0
    assert alpha[16, 16] == pytest.approx(0.5, abs=0.02)
    assert alpha[16, 20] == 1.0 and alpha[16, 10] == 0.0
    rgba = render_mesh(mesh, cams, supersample=4)[0]
    assert tuple(rgba[0, 16, 16, :3]) == (255, 255, 255)  # straight alpha: colour is not darkened


def test_headlight_darkens_oblique_faces():
    vertices = np.array(
        [[-0.4, -0.4, -0.4], [0.4, -0.4, 0.4], [0.4, 0.4, 0.4], [-0.4, 0.4, -0.4]], np.float32
    )
    mesh = TexturedMesh([MeshPart(vertices, np.array([[0, 1, 2], [0, 2, 3]]))])
    albedo = render_mesh(mesh, front_camera())[0][0, 16, 16]
    lit = render_mesh(mesh, front_camera(), shading="headlight")[0][0, 16, 16]
    assert tuple(albedo[:3]) == (255, 255, 255) and lit[0] < 240 and lit[3] == 255


def test_public_barycentrics_and_interpolate_agree_with_rendered_colours():
    mesh_part = quad(
        vertex_colors=np.eye(4, dtype=np.float32)[[0, 1, 2, 0]] + np.array([0, 0, 0, 1], np.float32)
    )
    cams = front_camera()
    verts = torch.from_numpy(mesh_part.vertices)
    w2c, K = torch.from_numpy(cams.world_to_cam[0]), torch.from_numpy(cams.K[0])
    cam = verts @ w2c[:3, :3].T + w2c[:3, 3]
    pix = (cam @ K.T)[:, :2] / cam[:, 2:]
    faces = torch.from_numpy(mesh_part.faces)
    tri, _ = rasterize(pix, cam[:, 2], faces, 32, 32)
    bary = barycentrics(pix, cam[:, 2], faces, tri)
    covered = tri >= 0
    assert torch.allclose(bary.sum(-1)[covered], torch.ones(()), atol=1e-5) and (bary[~covered] == 0).all()
    colors = interpolate(torch.from_numpy(mesh_part.vertex_colors), faces, tri, bary)
    rendered = render_mesh(TexturedMesh([mesh_part]), cams)[0][0]
    np.testing.assert_allclose(
        colors.numpy()[covered.numpy()], rendered[covered.numpy()] / 255.0, atol=1 / 255
    )


def test_barycentrics_are_differentiable_in_vertex_positions():
    pix = torch.tensor([[2.0, 2.0], [30.0, 4.0], [10.0, 28.0]], requires_grad=True)
    z = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    faces = torch.tensor([[0, 1, 2]])
    setup = setup_triangles(pix, z, faces, 32, 32)
    tri, _ = rasterize(pix.detach(), z.detach(), faces, 32, 32)
    bary = barycentrics(pix, z, faces, tri, setup=setup)
    bary[..., 0].sum().backward()
    assert pix.grad is not None and torch.isfinite(pix.grad).all() and pix.grad.abs().sum() > 0


def test_empty_mesh_and_bad_arguments():
    rgba, depth = render_mesh(TexturedMesh([]), front_camera(8, 8))
    assert rgba.shape == (1, 8, 8, 4) and (rgba == 0).all() and (depth == EMPTY_DEPTH).all()
    with pytest.raises(RenderError, match="backend"):
        render_mesh(TexturedMesh([quad()]), front_camera(), backend="opengl")
    with pytest.raises(RenderError, match="supersample"):
        render_mesh(TexturedMesh([quad()]), front_camera(), supersample=0)
    with pytest.raises(RenderError, match="shading"):
        render_mesh(TexturedMesh([quad()]), front_camera(), shading="pbr")


def test_real_textured_mesh_renders_from_every_side(shared_meshes):
    from voxforge.data.ingest import ingest_file

    path = shared_meshes / "textured" / "Duck.glb"
    mesh = ingest_file(path, path.parent).mesh
    rgba, depth = render_mesh(mesh, hammersley_sphere(6, width=48, height=48))
    coverage = (rgba[..., 3] > 0).mean(axis=(1, 2))
    assert (coverage > 0.05).all() and (coverage < 0.9).all()
    visible = depth > 0
    assert (depth[visible] > 2.0 - 0.87).all() and (depth[visible] < 2.0 + 0.87).all()
    assert rgba[..., :3][rgba[..., 3] == 255].mean(0)[0] > 150  # the duck is yellow: red channel high


@pytest.mark.gpu
def test_cuda_render_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    mesh = TexturedMesh([quad(z=0.1, color=(1, 0, 0, 1)), quad(z=-0.2, half=0.45, color=(0, 1, 0, 1))])
    cams = hammersley_sphere(4, width=64, height=64)
    cpu = render_mesh(mesh, cams)
    gpu = render_mesh(mesh, cams, device="cuda")
    assert (cpu[0] != gpu[0]).any(-1).mean() < 0.002
    np.testing.assert_allclose(cpu[1], gpu[1], atol=1e-4)


def test_blender_backend_agrees_with_torch_silhouettes(shared_meshes):
    from voxforge.render.blender import blender_available

    if not blender_available():
        pytest.skip("bpy is not installed (pip install 'voxforge[blender]' or set VOXFORGE_BPY_PATH)")
    from voxforge.data.ingest import ingest_file

    path = shared_meshes / "textured" / "Duck.glb"
    mesh = ingest_file(path, path.parent).mesh
    cams = hammersley_sphere(2, width=48, height=48)
    blender_rgba, blender_depth = render_mesh(mesh, cams, backend="blender", samples=4, denoise=False)
    torch_rgba, torch_depth = render_mesh(mesh, cams)
    a, b = blender_rgba[..., 3] > 127, torch_rgba[..., 3] > 127
    assert (a & b).sum() / (a | b).sum() > 0.95
    np.testing.assert_array_equal(blender_depth, torch_depth)


def test_blender_dispatch_colours_from_blender_depth_from_torch(monkeypatch):
    """`render_mesh` is the one dispatcher: Blender gives colours, the torch rasterizer depth."""
    from voxforge.errors import MissingDependencyError
    from voxforge.render import blender, mesh_raster

    mesh, cams = TexturedMesh([quad()]), front_camera(16, 16)
    monkeypatch.setattr(blender, "blender_available", lambda python=None: False)
    with pytest.raises(MissingDependencyError, match=r"voxforge\[blender\]"):
        render_mesh(mesh, cams, backend="blender")
    seen = {}

    def fake_blender(mesh_arg, cameras, **options):
        seen.update(options, mesh=mesh_arg)
        return np.full((len(cameras), cameras.height, cameras.width, 4), 7, np.uint8)

    monkeypatch.setattr(mesh_raster, "render_blender_rgba", fake_blender)
    rgba, depth = render_mesh(mesh, cams, backend="blender", samples=4)
    assert (rgba == 7).all() and seen["samples"] == 4 and seen["mesh"] is mesh
    np.testing.assert_array_equal(depth, render_mesh(mesh, cams)[1])
