"""FlexiCubes on a sparse grid: the derived case tables and the extracted surfaces."""

from __future__ import annotations

import itertools

import pytest
import torch

from voxforge.representations.flexicubes import (
    CUBE_CORNERS,
    CUBE_EDGES,
    case_tables,
    flexicubes_extract,
    normalize_weights,
)


def _crossed(case: int) -> set[int]:
    inside = [case >> i & 1 for i in range(8)]
    return {e for e, (a, b) in enumerate(CUBE_EDGES) if inside[a] != inside[b]}


def _groups(case: int) -> list[list[int]]:
    t = case_tables()
    return [[e for e in row if e >= 0] for row in t.groups[case, : int(t.num_groups[case])].tolist()]


# ------------------------------------------------------------------------- tables
def test_edges_are_the_twelve_unit_edges_of_the_cube():
    pairs = {frozenset(p) for p in CUBE_EDGES}
    assert len(pairs) == 12
    for a, b in CUBE_EDGES:
        diff = [abs(x - y) for x, y in zip(CUBE_CORNERS[a], CUBE_CORNERS[b])]
        assert sorted(diff) == [0, 0, 1]
    # each edge runs low -> high along x and z, high -> low along y (shared edges agree)
    for a, b in CUBE_EDGES:
        axis = next(i for i in range(3) if CUBE_CORNERS[a][i] != CUBE_CORNERS[b][i])
        assert (CUBE_CORNERS[b][axis] > CUBE_CORNERS[a][axis]) == (axis != 1)


def test_every_crossed_edge_is_in_exactly_one_patch():
    t = case_tables()
    for case in range(256):
        groups = _groups(case)
        edges = [e for g in groups for e in g]
        assert sorted(edges) == sorted(_crossed(case)), case
        assert all(3 <= len(g) <= 7 for g in groups), case
        assert all(g == sorted(g) for g in groups)
        for slot, g in enumerate(groups):
            assert all(int(t.edge_group[case, e]) == slot for e in g)
        assert int((t.edge_group[case] >= 0).sum()) == len(edges)
        # padding after the last patch
        assert bool((t.groups[case, len(groups) :] == -1).all())


def test_patch_counts_of_the_classic_configurations():
    t = case_tables()
    assert int(t.num_groups[0]) == int(t.num_groups[255]) == 0
    assert _groups(0b00000001) == [[0, 3, 8]]  # one corner: the three edges at it
    assert _groups(0b00000011) == [[1, 3, 8, 9]]  # an edge: one quad patch
    # two corners diagonal on a face: the ambiguous face separates the inside corners
    assert len(_groups(0b00000110)) == 2
    assert len(_groups(0b10000001)) == 2  # body diagonal: two separate corners
    counts = torch.bincount(t.num_groups, minlength=5).tolist()
    assert sum(counts) == 256 and counts[0] == 2 and counts[4] == 2


def test_a_patch_is_a_closed_loop_on_the_cube_faces():
    """Each patch's edges, walked across the faces they share, form one cycle."""
    faces = []
    for axis, side in itertools.product(range(3), (0, 1)):
        corners = {i for i, c in enumerate(CUBE_CORNERS) if c[axis] == side}
        faces.append({e for e, (a, b) in enumerate(CUBE_EDGES) if a in corners and b in corners})
    for case in range(1, 255):
        for g in _groups(case):
            members = set(g)
            # every edge of a patch touches two faces, on each of which it meets one other
            # edge of the same patch (a face holds 2 crossed edges, or 4 paired by corner)
            for e in g:
                for face in (f for f in faces if e in f):
                    assert len(members & face) in (2, 4), (case, g)


def test_ambiguity_table_marks_single_patch_cases_with_one_ambiguous_face():
    t = case_tables()
    flagged = torch.nonzero(t.ambiguity[:, 0] == 1).squeeze(1).tolist()
    assert len(flagged) == 36
    for case in flagged:
        alt = int(t.ambiguity[case, 4])
        assert alt == 255 - case
        assert int(t.num_groups[case]) == 1 and int(t.num_groups[alt]) == 2
        assert _crossed(case) == _crossed(alt)
        d = t.ambiguity[case, 1:4].tolist()
        assert sorted(abs(x) for x in d) == [0, 0, 1]
        # the face in direction d has its four corners alternating in sign
        axis = next(i for i in range(3) if d[i])
        side = 1 if d[axis] > 0 else 0
        corners = [i for i, c in enumerate(CUBE_CORNERS) if c[axis] == side]
        signs = [case >> i & 1 for i in corners]
        assert sum(signs) == 2 and signs[0] == signs[3]  # diagonal pairs share a sign


# ------------------------------------------------------------------------- extraction
def _grid(n: int) -> torch.Tensor:  # [(n+1)³, 3] every vertex of an n³ grid
    r = torch.arange(n + 1)
    return torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


def _sphere(n: int, radius: float = 0.3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    v = _grid(n)
    pos = v.float() / n - 0.5
    return v, pos.norm(dim=1) - radius, pos


def _edge_use(faces: torch.Tensor) -> dict[tuple[int, int], int]:
    use: dict[tuple[int, int], int] = {}
    for f in faces.tolist():
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            use[(a, b)] = use.get((a, b), 0) + 1
    return use


def test_sphere_is_a_closed_outward_surface_near_the_radius():
    n = 16
    v, sdf, pos = _sphere(n)
    mesh = flexicubes_extract(v, sdf, pos, n)
    assert mesh.success
    radii = mesh.vertices.norm(dim=1)
    assert float((radii - 0.3).abs().max()) < 0.5 / n
    use = _edge_use(mesh.faces)
    # closed and consistently wound: every directed edge once, its reverse once
    assert all(c == 1 for c in use.values())
    assert all((b, a) in use for a, b in use)
    assert len(mesh.vertices) - len(use) // 2 + len(mesh.faces) == 2  # Euler: a sphere
    centre = mesh.vertices[mesh.faces].mean(1)
    assert float((mesh.face_normals() * centre).sum(1).min()) > 0  # outward normals
    v0, v1, v2 = (mesh.vertices[mesh.faces[:, i]] for i in range(3))
    volume = float(torch.linalg.det(torch.stack([v0, v1, v2], 1)).sum() / 6)
    assert volume == pytest.approx(
        4 / 3 * torch.pi * 0.3**3, rel=0.08
    )  # dual vertices sit slightly inside the chords


def test_missing_vertices_read_the_fill_values():
    """Giving only a shell of vertices equals giving the whole grid with fills written out."""
    n = 12
    v, sdf, pos = _sphere(n)
    torch.manual_seed(0)
    pos = pos + (torch.rand_like(pos) - 0.5) * 0.3 / n
    attrs = torch.rand(v.shape[0], 4)
    keep = sdf < 1.5 / n  # inside and the first layer outside
    full_sdf = torch.where(keep, sdf, torch.ones_like(sdf))
    full_pos = torch.where(keep[:, None], pos, v.float() / n - 0.5)
    full_attrs = torch.where(keep[:, None], attrs, torch.full_like(attrs, 0.25))
    dense = flexicubes_extract(v, full_sdf, full_pos, n, vertex_attrs=full_attrs)
    perm = torch.randperm(int(keep.sum()))
    sparse = flexicubes_extract(
        v[keep][perm], sdf[keep][perm], pos[keep][perm], n, vertex_attrs=attrs[keep][perm], fill_attrs=0.25
    )
    assert torch.equal(sparse.vertices, dense.vertices)
    assert torch.equal(sparse.faces, dense.faces)
    assert torch.equal(sparse.vertex_attrs, dense.vertex_attrs)


def test_cubes_without_weights_use_raw_zero_weights():
    n = 10
    v, sdf, pos = _sphere(n)
    cubes = _grid(n - 1)
    torch.manual_seed(1)
    weights = torch.randn(cubes.shape[0], 21)
    some = torch.rand(cubes.shape[0]) < 0.5
    partial = flexicubes_extract(v, sdf, pos, n, cubes[some], weights[some])
    filled = flexicubes_extract(v, sdf, pos, n, cubes, torch.where(some[:, None], weights, 0.0))
    plain = flexicubes_extract(v, sdf, pos, n)
    assert torch.equal(partial.vertices, filled.vertices)
    assert torch.equal(partial.faces, filled.faces)
    assert not torch.equal(partial.vertices, plain.vertices)


def test_weights_move_vertices_within_their_cube():
    n = 8
    v, sdf, pos = _sphere(n)
    cubes = _grid(n - 1)
    torch.manual_seed(2)
    mesh = flexicubes_extract(v, sdf, pos, n, cubes, torch.randn(cubes.shape[0], 21) * 3)
    plain = flexicubes_extract(v, sdf, pos, n)
    assert mesh.vertices.shape == plain.vertices.shape  # topology depends on signs only
    assert float((mesh.vertices - plain.vertices).abs().max()) < 1.0 / n


def test_normalized_weights_ranges():
    w = torch.tensor([[-50.0] * 21, [0.0] * 21, [50.0] * 21])
    beta, alpha, gamma = normalize_weights(w, 0.99)
    assert torch.allclose(beta[1], torch.ones(12)) and torch.allclose(alpha[1], torch.ones(8))
    assert float(gamma[1]) == pytest.approx(0.5)
    assert float(beta.min()) == pytest.approx(0.01) and float(beta.max()) == pytest.approx(1.99)
    assert 0 < float(gamma.min()) < float(gamma.max()) < 1


def test_no_crossing_gives_an_empty_mesh():
    v = _grid(4)
    mesh = flexicubes_extract(
        v, torch.ones(v.shape[0]), v.float() / 4 - 0.5, 4, vertex_attrs=torch.zeros(len(v), 2)
    )
    assert not mesh.success and mesh.vertices.shape == (0, 3) and mesh.vertex_attrs.shape == (0, 2)


def test_duplicate_vertices_are_rejected():
    v = torch.tensor([[0, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="duplicate"):
        flexicubes_extract(v, torch.tensor([-1.0, -1.0]), torch.zeros(2, 3), 4)
    with pytest.raises(ValueError, match="outside"):
        flexicubes_extract(torch.tensor([[0, 0, 5]]), torch.tensor([-1.0]), torch.zeros(1, 3), 4)


def test_vertices_are_differentiable_in_sdf_positions_weights_and_attributes():
    n = 6
    v, sdf, pos = _sphere(n)
    cubes = _grid(n - 1)
    sdf = sdf.clone().requires_grad_()
    pos = pos.clone().requires_grad_()
    weights = torch.zeros(cubes.shape[0], 21, requires_grad=True)
    attrs = torch.rand(v.shape[0], 3, requires_grad=True)
    mesh = flexicubes_extract(v, sdf, pos, n, cubes, weights, attrs)
    (mesh.vertices.sum() + mesh.vertex_attrs.sum()).backward()
    for t in (sdf, pos, weights, attrs):
        assert t.grad is not None and bool(torch.isfinite(t.grad).all()) and float(t.grad.abs().sum()) > 0
