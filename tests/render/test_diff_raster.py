"""Differentiable rasterizer: forward against mesh_raster, perspective-correct interpolation,
gradients against finite differences, silhouette fitting, and the nvdiffrast backend (gpu)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from voxforge.render import mesh_raster
from voxforge.render.cameras import hammersley_sphere, intrinsics
from voxforge.render.diff_raster import (
    DiffRasterError,
    antialias,
    clip_from_cameras,
    depth_from_ndc,
    edge_topology,
    interpolate,
    nvdiffrast_available,
    rasterize,
)

MESHES = Path("/work/shared/data/meshes")


def real_mesh(name: str = "plain/suzanne.obj") -> tuple[torch.Tensor, torch.Tensor]:
    """A real mesh scaled into [-0.5, 0.5]^3: vertices [V, 3] float32, faces [F, 3] int64."""
    import trimesh

    path = MESHES / name
    if not path.exists():
        pytest.skip(f"{path} is not available")
    mesh = trimesh.load(path, force="mesh", process=False)
    vertices = torch.from_numpy(np.asarray(mesh.vertices, np.float64))
    low, high = vertices.min(0).values, vertices.max(0).values
    vertices = (vertices - (low + high) / 2) / (high - low).max()
    return vertices.float(), torch.from_numpy(np.asarray(mesh.faces, np.int64))


def screen_triangle(points, depth: float = 0.0) -> torch.Tensor:
    """Clip positions (w = 1) of NDC points [N, 2], float64."""
    xy = torch.as_tensor(points, dtype=torch.float64)
    return torch.cat([xy, torch.full_like(xy[:, :1], depth), torch.ones_like(xy[:, :1])], 1)


def test_forward_matches_mesh_raster_on_a_real_mesh():
    vertices, faces = real_mesh()
    cams = hammersley_sphere(3, width=64, height=48)
    w2c, ks = torch.from_numpy(cams.world_to_cam), torch.from_numpy(cams.K)
    clip = clip_from_cameras(vertices, w2c, ks, cams.width, cams.height)
    rast, _ = rasterize(clip, faces, (cams.height, cams.width), backend="torch")
    assert rast.shape == (3, 48, 64, 4)
    pix, z = cams.project(vertices.numpy())
    for view in range(3):
        p, d = torch.from_numpy(pix[view]), torch.from_numpy(z[view])
        tri, depth = mesh_raster.rasterize(p, d, faces, cams.width, cams.height)
        bary = mesh_raster.barycentrics(p, d, faces, tri)
        ours = rast[view, ..., 3].long() - 1
        covered = tri >= 0
        assert covered.sum() > 500
        assert torch.equal(ours >= 0, covered)
        same = (ours == tri) & covered
        assert same.sum() >= 0.995 * covered.sum()  # ties between equally near faces may differ
        ours_depth = depth_from_ndc(rast[view, ..., 2].double()).float()
        torch.testing.assert_close(ours_depth[covered], depth[covered], rtol=2e-4, atol=0)
        ours_bary = torch.stack(
            [rast[view, ..., 0], rast[view, ..., 1], 1 - rast[view, ..., 0] - rast[view, ..., 1]], -1
        )
        torch.testing.assert_close(ours_bary[same], bary[same], atol=2e-3, rtol=0)
    assert torch.all(rast[..., :3][rast[..., 3] == 0] == 0)


def test_interpolate_is_perspective_correct():
    # A triangle receding in depth (z from 1.2 to 6): the interpolated camera-space point of a
    # pixel must lie on the pixel's ray and in the triangle's plane (the textbook definition).
    width = height = 40
    cam_points = torch.tensor([[-1.0, -0.8, 1.2], [2.5, -1.5, 6.0], [0.3, 2.0, 3.0]], dtype=torch.float64)
    K = torch.from_numpy(intrinsics(60.0, width, height))
    clip = clip_from_cameras(cam_points, torch.eye(4, dtype=torch.float64)[None], K[None], width, height)
    faces = torch.tensor([[0, 1, 2]])
    rast, _ = rasterize(clip, faces, (height, width))
    point = interpolate(cam_points, rast, faces)[0]  # [H, W, 3]
    covered = rast[0, ..., 3] > 0
    assert covered.sum() > 150
    rows, cols = torch.nonzero(covered, as_tuple=True)
    projected = point[covered] @ K.T
    pixel = projected[:, :2] / projected[:, 2:]
    torch.testing.assert_close(pixel, torch.stack([cols + 0.5, rows + 0.5], 1).double(), atol=1e-6, rtol=0)
    normal = torch.linalg.cross(cam_points[1] - cam_points[0], cam_points[2] - cam_points[0])
    off_plane = (point[covered] - cam_points[0]) @ normal / normal.norm()
    assert off_plane.abs().max() < 1e-9
    # Screen-space (affine) weights would be far off on this triangle: the check can fail.
    ndc = clip[0, :, :2] / clip[0, :, 3:]
    centre = torch.stack([(2 * cols + 1) / width - 1, (2 * rows + 1) / height - 1], 1).double()
    m = torch.stack([ndc[0] - ndc[2], ndc[1] - ndc[2]], 1)
    ab = torch.linalg.solve(m, (centre - ndc[2]).T).T
    affine = (
        ab[:, :1] * cam_points[0] + ab[:, 1:] * cam_points[1] + (1 - ab.sum(1, keepdim=True)) * cam_points[2]
    )
    assert (affine - point[covered]).norm(dim=1).max() > 0.1


def test_rast_db_matches_neighbour_differences():
    width = height = 48
    cam_points = torch.tensor([[-1.0, -0.8, 2.0], [1.5, -1.0, 3.0], [0.2, 1.2, 2.5]], dtype=torch.float64)
    K = torch.from_numpy(intrinsics(60.0, width, height))
    clip = clip_from_cameras(cam_points, torch.eye(4, dtype=torch.float64)[None], K[None], width, height)
    rast, db = rasterize(clip, torch.tensor([[0, 1, 2]]), (height, width), grad_db=True)
    inside = rast[0, ..., 3] > 0
    interior = (
        inside[1:-1, 1:-1] & inside[2:, 1:-1] & inside[:-2, 1:-1] & inside[1:-1, 2:] & inside[1:-1, :-2]
    )
    for channel in (0, 1):
        value = rast[0, ..., channel]
        d_dx = (value[1:-1, 2:] - value[1:-1, :-2]) / 2
        d_dy = (value[2:, 1:-1] - value[:-2, 1:-1]) / 2
        torch.testing.assert_close(
            db[0, 1:-1, 1:-1, 2 * channel][interior], d_dx[interior], atol=2e-5, rtol=2e-3
        )
        torch.testing.assert_close(
            db[0, 1:-1, 1:-1, 2 * channel + 1][interior], d_dy[interior], atol=2e-5, rtol=2e-3
        )


def _perspective_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """Two triangles with varying w, the second partly behind the first; float64."""
    pos = torch.tensor(
        [
            [-0.713, -0.604, 0.11, 1.03],
            [0.812, -0.433, 0.29, 1.31],
            [0.021, 0.917, 0.23, 1.12],
            [-0.237, -0.896, 0.61, 0.97],
            [1.093, 0.118, 0.68, 1.21],
            [0.486, 0.955, 0.52, 0.93],
        ],
        dtype=torch.float64,
    )
    return pos, torch.tensor([[0, 1, 2], [3, 4, 5]])


def test_interpolate_gradients_match_finite_differences():
    pos, faces = _perspective_pair()
    attr = torch.rand(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    weights = torch.randn(1, 10, 12, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def render(p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:  # a random projection of the image
        rast, _ = rasterize(p, faces, (10, 12))
        return (interpolate(a, rast, faces) * weights).sum()

    assert torch.autograd.gradcheck(render, (pos.requires_grad_(True), attr.requires_grad_(True)))


def test_antialias_gradients_match_finite_differences():
    pos, faces = _perspective_pair()
    attr = torch.rand(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    weights = torch.randn(1, 12, 12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def render(p: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        rast, _ = rasterize(p, faces, (12, 12))
        return (antialias(interpolate(a, rast, faces), rast, p, faces) * weights).sum()

    assert torch.autograd.gradcheck(render, (pos.requires_grad_(True), attr.requires_grad_(True)))


def test_mask_gradient_at_a_silhouette_is_correct():
    size = 64
    pos = screen_triangle([[-0.62, -0.51], [0.71, -0.33], [0.09, 0.77]])
    faces = torch.tensor([[0, 1, 2]])
    target = torch.zeros(1, size, size, 1, dtype=torch.float64)
    target[:, 20:50, 10:40] = 1.0

    def loss_of(p: torch.Tensor) -> torch.Tensor:
        rast, _ = rasterize(p, faces, (size, size))
        mask = antialias((rast[..., 3:] > 0).double(), rast, p, faces)
        return ((mask - target) ** 2).sum()

    p = pos.clone().requires_grad_(True)
    loss_of(p).backward()
    grad = p.grad[:, :2]
    assert grad.abs().max() > 1.0  # silhouettes carry gradients to every vertex
    eps = 1e-6
    numeric = torch.zeros(3, 2, dtype=torch.float64)
    for vertex in range(3):
        for axis in range(2):
            step = torch.zeros_like(pos)
            step[vertex, axis] = eps
            numeric[vertex, axis] = (loss_of(pos + step) - loss_of(pos - step)) / (2 * eps)
    torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-6)
    # The antialiased mask's sum follows the triangle's area (in pixels): its gradient too.
    p = pos.clone().requires_grad_(True)
    rast, _ = rasterize(p, faces, (size, size))
    antialias((rast[..., 3:] > 0).double(), rast, p, faces).sum().backward()
    q = (pos[:, :2] + 1) * size / 2
    q.requires_grad_(True)
    area = 0.5 * ((q[1, 0] - q[0, 0]) * (q[2, 1] - q[0, 1]) - (q[1, 1] - q[0, 1]) * (q[2, 0] - q[0, 0]))
    area.backward()
    expected = q.grad * size / 2
    cosine = torch.nn.functional.cosine_similarity(p.grad[:, :2].reshape(1, -1), expected.reshape(1, -1))
    assert cosine > 0.99
    assert (p.grad[:, :2] - expected).norm() < 0.15 * expected.norm()


def test_fitting_a_triangle_to_a_silhouette_through_antialias():
    size = 32
    faces = torch.tensor([[0, 1, 2]])
    target_pos = screen_triangle([[-0.6, -0.5], [0.7, -0.3], [0.0, 0.75]]).float()
    rast, _ = rasterize(target_pos, faces, (size, size))
    target = antialias((rast[..., 3:] > 0).float(), rast, target_pos, faces)
    start = screen_triangle([[-0.35, -0.2], [0.3, -0.35], [-0.1, 0.35]]).float()
    xy = start[:, :2].clone().requires_grad_(True)
    rest = start[:, 2:]
    optimizer = torch.optim.Adam([xy], lr=0.04)

    def error() -> torch.Tensor:
        pos = torch.cat([xy, rest], 1)
        r, _ = rasterize(pos, faces, (size, size))
        return (antialias((r[..., 3:] > 0).float(), r, pos, faces) - target).abs().mean()

    initial = float(error().detach())
    for _ in range(40):
        optimizer.zero_grad()
        loss = error()
        loss.backward()
        optimizer.step()
    final = float(error().detach())
    assert initial > 0.1
    assert final < 0.1 * initial
    assert (xy.detach() - target_pos[:, :2]).abs().max() < 0.05


def test_edge_topology_pairs_shared_edges_and_welds_seams():
    # Two triangles sharing edge (1, 2) of the first / (2, 1) of the second.
    faces = torch.tensor([[0, 1, 2], [2, 1, 3]])
    topo = edge_topology(faces)
    assert topo.tolist() == [[1, -1, -1], [-1, -1, 0]]
    # The same quad with the shared edge's vertices duplicated (a UV seam): welded by position.
    verts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0]])
    seam = torch.tensor([[0, 1, 2], [5, 4, 3]])
    assert edge_topology(seam).eq(-1).all()
    assert edge_topology(seam, verts).tolist() == [[1, -1, -1], [-1, -1, 0]]
    # A closed mesh: every edge has a neighbour, and neighbourhood is symmetric.
    vertices, faces = real_mesh("plain/ballA.off")
    topo = edge_topology(faces, vertices)
    assert (topo >= 0).all()
    back = (topo[topo] == torch.arange(len(faces))[:, None, None]).any(-1)
    assert back.all()


def test_interior_edges_are_not_blended_but_silhouettes_are():
    # A quad of two triangles over a background: the diagonal is shared (no blending along
    # it), the outline is a silhouette (blended pixels only there).
    size = 24
    pos = screen_triangle([[-0.53, -0.61], [0.57, -0.52], [0.49, 0.63], [-0.6, 0.55]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    rast, _ = rasterize(pos, faces, (size, size))
    color = torch.where(rast[..., 3:] == 1, 0.25, 0.75).double() * (rast[..., 3:] > 0)
    out = antialias(color, rast, pos, faces)
    changed = (out - color).abs()[0, ..., 0] > 1e-12
    inside = rast[0, ..., 3] > 0
    border = inside & ~(torch.nn.functional.max_pool2d((~inside).double()[None, None], 3, 1, 1)[0, 0] == 0)
    outside_ring = ~inside & (torch.nn.functional.max_pool2d(inside.double()[None, None], 3, 1, 1)[0, 0] > 0)
    assert changed.any()
    assert not (changed & ~(border | outside_ring)).any()


def test_batches_shared_attributes_and_autocast():
    vertices, faces = real_mesh()
    cams = hammersley_sphere(2, width=32, height=32)
    clip = clip_from_cameras(vertices, torch.from_numpy(cams.world_to_cam), torch.from_numpy(cams.K), 32, 32)
    rast, _ = rasterize(clip, faces, (32, 32))
    single, _ = rasterize(clip[1], faces, (32, 32))
    torch.testing.assert_close(rast[1:], single)
    colors = interpolate(vertices, rast, faces)
    per_view = interpolate(vertices[None].expand(2, -1, -1), rast, faces)
    torch.testing.assert_close(colors, per_view)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fenced = antialias(colors, rast, clip, faces)
    assert fenced.dtype == torch.float32
    torch.testing.assert_close(fenced, antialias(colors, rast, clip, faces))


def test_bad_inputs_are_reported():
    pos = screen_triangle([[0, 0], [1, 0], [0, 1]]).float()
    faces = torch.tensor([[0, 1, 2]])
    with pytest.raises(DiffRasterError, match="backend"):
        rasterize(pos, faces, (8, 8), backend="opengl")
    with pytest.raises(DiffRasterError, match="CUDA|nvdiffrast"):
        rasterize(pos, faces, (8, 8), backend="nvdiffrast")
    with pytest.raises(DiffRasterError, match=r"\[V, 4\]"):
        rasterize(pos[:, :3], faces, (8, 8))
    with pytest.raises(DiffRasterError, match="indices"):
        rasterize(pos, torch.tensor([[0, 1, 3]]), (8, 8))
    rast, _ = rasterize(pos, faces, (8, 8))
    with pytest.raises(DiffRasterError, match="color"):
        antialias(torch.zeros(1, 4, 4, 1), rast, pos, faces)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or not nvdiffrast_available(), reason="needs CUDA and nvdiffrast"
)
def test_nvdiffrast_backend_matches_torch():
    vertices, faces = real_mesh("plain/bunny.ply")
    cams = hammersley_sphere(2, width=128, height=96)
    device = torch.device("cuda")
    clip = clip_from_cameras(
        vertices.to(device),
        torch.from_numpy(cams.world_to_cam).to(device),
        torch.from_numpy(cams.K).to(device),
        128,
        96,
    )
    faces = faces.to(device)
    topo = edge_topology(faces, vertices.to(device))
    outputs = {}
    for backend in ("torch", "nvdiffrast"):
        pos = clip.clone().requires_grad_(True)
        rast, _ = rasterize(pos, faces, (96, 128), backend=backend)
        color = interpolate(vertices.to(device) + 0.5, rast, faces, backend=backend)
        out = antialias(
            color, rast, pos, faces, backend=backend, topology=topo if backend == "torch" else None
        )
        out.sum().backward()
        outputs[backend] = (rast.detach(), color.detach(), out.detach(), pos.grad)
    (r_t, c_t, o_t, g_t), (r_n, c_n, o_n, g_n) = outputs["torch"], outputs["nvdiffrast"]
    covered_t, covered_n = r_t[..., 3] > 0, r_n[..., 3] > 0
    assert (covered_t != covered_n).float().mean() < 0.005
    same = (r_t[..., 3] == r_n[..., 3]) & covered_t
    assert same.float().sum() > 0.98 * covered_t.float().sum()
    torch.testing.assert_close(r_t[same][:, :3], r_n[same][:, :3], atol=1e-3, rtol=0)
    torch.testing.assert_close(c_t[same], c_n[same], atol=1e-3, rtol=0)
    assert (o_t - o_n).abs().mean() < 0.01
    cosine = torch.nn.functional.cosine_similarity(g_t.reshape(1, -1), g_n.reshape(1, -1))
    assert cosine > 0.9
