"""SLat mesh decoder: the features -> mesh step (against TRELLIS's stored head) and the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from voxforge.errors import UserError
from voxforge.models.slat_mesh import (
    SLatMeshDecoder,
    SparseSubdivideBlock,
    features_to_mesh,
    mesh_feature_channels,
)
from voxforge.models.slat_vae import SLatVAEConfig
from voxforge.sparse import SparseTensor

GOLDEN = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "trellis" / "golden"


def _golden() -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = GOLDEN / "slat_dec_mesh.safetensors"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return load_file(str(path))


def _mesh_decoder_args() -> dict:
    for path in sorted((GOLDEN.parent / "ckpts").glob("*.json")):
        meta = json.loads(path.read_text())
        if meta["name"] == "SLatMeshDecoder":
            return meta["args"]
    pytest.skip("no SLatMeshDecoder checkpoint config in the fixtures")


def test_features_to_mesh_reproduces_trellis_meshes_from_the_stored_head():
    g = _golden()
    coords, feats = g["head.coords"], g["head.feats"]
    resolution = 4 * _mesh_decoder_args()["resolution"]  # the fine grid, 4R
    samples = sorted({int(k.split(".")[0]) for k in g if k.split(".")[0].isdigit()})
    assert samples
    for i in samples:
        rows = coords[:, 0] == i
        mesh = features_to_mesh(coords[rows, 1:], feats[rows], resolution)
        ref_v, ref_f, ref_a = g[f"{i}.vertices"], g[f"{i}.faces"].long(), g[f"{i}.vertex_attrs"]
        # same order as TRELLIS (cube and edge keys order the sparse scan like the dense one)
        assert mesh.vertices.shape == ref_v.shape and mesh.faces.shape == ref_f.shape
        assert float((mesh.vertices - ref_v).abs().max()) <= 1e-5
        assert float((mesh.vertex_attrs - ref_a).abs().max()) <= 1e-5
        assert torch.equal(mesh.faces, ref_f)


def test_features_to_mesh_without_colour_and_channel_check():
    assert mesh_feature_channels(True) == 101 and mesh_feature_channels(False) == 53
    coords = torch.tensor([[1, 1, 1], [1, 1, 2]])
    feats = torch.zeros(2, 53)
    feats[:, :8] = -1.0  # all corners inside: the two cubes' neighbours carry the surface
    mesh = features_to_mesh(coords, feats, 4, use_color=False)
    assert mesh.success and mesh.vertex_attrs is None
    with pytest.raises(ValueError, match="101 channels"):
        features_to_mesh(coords, feats, 4, use_color=True)


def _config(**overrides) -> SLatVAEConfig:
    values = dict(
        resolution=8,
        latent_channels=4,
        width=256,
        decoder_blocks=1,
        heads=4,
        window_size=4,
        pos_embedding="sin_cos",
        norm_affine=False,
    )
    values.update(overrides)
    return SLatVAEConfig(**values)


def test_subdivide_block_children_are_consecutive_in_row_major_order():
    torch.manual_seed(0)
    block = SparseSubdivideBlock(32, 32).eval()
    assert block.skip is None
    x = SparseTensor(torch.tensor([[0, 1, 2, 3], [1, 0, 0, 0]]), torch.randn(2, 32), spatial_shape=(4, 4, 4))
    y = block(x)
    assert y.spatial_shape == (8, 8, 8)
    d = torch.tensor([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    assert torch.equal(y.coords[:8, 1:].long(), torch.tensor([2, 4, 6]) + d)
    assert torch.equal(y.coords[:, 0], torch.tensor([0] * 8 + [1] * 8, dtype=y.coords.dtype))


def test_decoder_shapes_and_per_sample_meshes():
    torch.manual_seed(0)
    decoder = SLatMeshDecoder(_config()).eval()
    assert decoder.upsample[0].skip.weight.shape == (64, 256)
    assert decoder.upsample[1].conv2.weight.shape == (32, 32, 3, 3, 3)
    coords = torch.tensor([[0, 3, 3, 3], [0, 3, 3, 4], [1, 5, 5, 5]], dtype=torch.int32)
    x = SparseTensor(coords, torch.randn(3, 4), spatial_shape=(8, 8, 8))
    with torch.no_grad():
        h = decoder.features(x)
        torch.nn.init.normal_(decoder.output.weight, std=0.05)
        torch.nn.init.normal_(decoder.output.bias, std=0.5)
        meshes = decoder(x)
    assert h.feats.shape == (3 * 64, 101) and h.spatial_shape == (32, 32, 32)
    assert float(h.feats.abs().max()) == 0.0  # zero-initialised output layer
    assert len(meshes) == 2 and all(m.resolution == 32 for m in meshes)
    for m in meshes:
        if m.success:
            assert m.vertex_attrs.shape == (m.vertices.shape[0], 6)
            assert float(m.vertices.abs().max()) <= 0.5


def test_structure_larger_than_the_decoder_grid_needs_its_resolution():
    """The network is windowed and convolutional: a structure of another side decodes on a
    4R grid of its own when R is given, and is refused with both sides named otherwise."""
    torch.manual_seed(0)
    decoder = SLatMeshDecoder(_config()).eval()  # resolution 8
    coords = torch.tensor([[0, 3, 3, 3], [0, 12, 12, 12]], dtype=torch.int32)
    x = SparseTensor(coords, torch.randn(2, 4), spatial_shape=(16, 16, 16))
    with torch.no_grad():
        torch.nn.init.normal_(decoder.output.weight, std=0.05)
        with pytest.raises(UserError, match="larger than 8"):
            decoder(x)
        (mesh,) = decoder(x, resolution=16)
    assert mesh.resolution == 64 and (not mesh.success or float(mesh.vertices.abs().max()) <= 0.5)
