"""The comparisons of `voxforge import trellis --verify`: each must fail on what it guards."""

from __future__ import annotations

import torch

from voxforge.trellis.spec import Compare
from voxforge.trellis.verify import compare_output, format_rows, rows_json


def _row(out, ref, c=None):
    return compare_output("f.safetensors", "y", {"y": out}, {"y": ref}, c if c is not None else Compare())


def test_tensor_within_and_outside_tolerance():
    ref = torch.randn(50, 8)
    ok = _row(ref + 1e-5, ref)
    assert ok.passed and abs(ok.max_abs - 1e-5) < 1e-7
    bad = _row(ref + torch.where(torch.arange(8) == 3, 1e-2, 0.0), ref)
    assert not bad.passed and abs(bad.max_abs - 1e-2) < 1e-6
    assert "shape" in _row(ref[:, :4], ref).note and not _row(ref[:, :4], ref).passed
    nan = ref.clone()
    nan[0, 0] = float("nan")
    assert not _row(nan, ref).passed


def test_relative_error_ignores_near_zero_references():
    ref = torch.tensor([1e-9, 2.0])
    row = _row(torch.tensor([2e-5, 2.0002]), ref)
    assert row.passed and abs(row.max_rel - 1e-4) < 1e-6


def test_exact_comparison():
    ref = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 4]], dtype=torch.int32)
    assert _row(ref.clone(), ref, Compare("exact")).passed
    swapped = ref.flip(0)
    assert not _row(swapped, ref, Compare("exact")).passed
    assert not _row(ref[:1], ref, Compare("exact")).passed


def _mesh():
    vertices = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1.0]])
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], dtype=torch.int32)
    attrs = torch.cat([vertices, -vertices], 1)
    return {"0.vertices": vertices, "0.faces": faces, "0.vertex_attrs": attrs}


def _mesh_row(out, ref):
    return compare_output("m.safetensors", "0", out, ref, Compare("mesh", atol=1e-4))


def test_mesh_equal_up_to_vertex_permutation():
    ref = _mesh()
    perm = torch.tensor([2, 0, 3, 1])  # new vertex i = old vertex perm[i]
    inverse = torch.argsort(perm)
    out = {
        "0.vertices": ref["0.vertices"][perm] + 1e-6,
        "0.faces": inverse[ref["0.faces"].long()].roll(1, dims=1),  # same triangles, rotated
        "0.vertex_attrs": ref["0.vertex_attrs"][perm],
    }
    assert _mesh_row(out, ref).passed


def test_mesh_failures():
    ref = _mesh()
    flipped = dict(ref, **{"0.faces": ref["0.faces"].flip(1)})  # winding reversed
    assert not _mesh_row(flipped, ref).passed
    moved = dict(ref, **{"0.vertices": ref["0.vertices"] + torch.tensor([1e-3, 0, 0])})
    assert not _mesh_row(moved, ref).passed
    fewer = dict(ref, **{"0.faces": ref["0.faces"][:3]})
    row = _mesh_row(fewer, ref)
    assert not row.passed and "counts differ" in row.note
    colours = dict(ref, **{"0.vertex_attrs": ref["0.vertex_attrs"] + 1e-2})
    assert not _mesh_row(colours, ref).passed


def test_mesh_chamfer_fallback_only_near_zero_sdf():
    ref = _mesh()
    extra = torch.cat([ref["0.vertices"], torch.tensor([[1e-5, 0, 0]])])
    out = {"0.vertices": extra, "0.faces": torch.cat([ref["0.faces"], ref["0.faces"][:1]])}
    assert not _mesh_row(out, ref).passed
    assert _mesh_row({**out, "0.near_zero_sdf": torch.tensor(True)}, ref).passed


def test_report_lists_failures_and_unknown_files():
    rows = [_row(torch.ones(2), torch.ones(2)), _row(torch.zeros(2), torch.ones(2))]
    text = format_rows(rows, ["other.safetensors"])
    assert "FAIL" in text and "ok" in text and "skipped" in text and "1 of 2" in text
    assert rows_json(rows, [])["passed"] is False
