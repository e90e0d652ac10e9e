"""TRELLIS's SLat mesh decoder in voxforge: the golden, the conversion, and 256³ extraction cost.

`python tests/trellis/test_mesh.py` prints the 256³ benchmark (seconds, peak RSS).
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest
import torch

from voxforge.errors import UserError
from voxforge.models.slat_mesh import features_to_mesh
from voxforge.representations.flexicubes import CUBE_CORNERS
from voxforge.sparse.tensor import SparseTensor
from voxforge.trellis import mesh as trellis_mesh
from voxforge.trellis.loading import check_state_dict, read_weights
from voxforge.trellis.verify import compare_output

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "trellis"
SPEC = trellis_mesh.SPECS[0]
CHECK = trellis_mesh.GOLDENS[0]


def _checkpoint() -> Path:
    for path in sorted((FIXTURES / "ckpts").glob("*.json")):
        if json.loads(path.read_text())["name"] == "SLatMeshDecoder":
            return path
    pytest.skip(f"no SLatMeshDecoder checkpoint under {FIXTURES}")


@pytest.fixture(scope="module")
def decoder():
    path = _checkpoint()
    args = json.loads(path.read_text())["args"]
    module = SPEC.build(args)
    state = SPEC.convert(args, read_weights(path.with_suffix(".safetensors")))
    check_state_dict(module, state, str(path))
    module.load_state_dict(state, strict=True)
    return module.eval()


def test_golden_head_and_meshes_match_trellis(decoder):
    from safetensors.torch import load_file

    path = FIXTURES / "golden" / CHECK.file
    if not path.is_file():
        pytest.skip(f"{path} not present")
    golden = load_file(str(path))
    outputs = CHECK.run({"SLatMeshDecoder": decoder}, golden)
    comparisons = CHECK.comparisons(golden)
    assert {"head.coords", "head.feats", "0"} <= set(comparisons)
    for key, compare in comparisons.items():
        row = compare_output(CHECK.file, key, outputs, golden, compare)
        assert row.passed, row
    assert torch.equal(outputs["head.coords"], golden["head.coords"])
    err = (outputs["head.feats"] - golden["head.feats"]).abs().max()
    assert float(err) < 2e-5


def test_skip_projection_reads_spconv_buffer_as_cin_by_cout():
    """spconv's 1x1x1 path computes `feats @ buffer.view(Cin, Cout)`; the conversion keeps that."""
    args = {
        "resolution": 4,
        "model_channels": 256,
        "latent_channels": 8,
        "num_blocks": 1,
        "num_heads": 4,
        "representation_config": {"use_color": True},
    }
    module = SPEC.build(args)
    state = {k: torch.randn(shape) for k, shape in _trellis_shapes(module).items()}
    converted = SPEC.convert(args, state)
    module.load_state_dict(converted, strict=True)
    buffer = state["upsample.0.skip_connection.conv.weight"]  # [64, 1, 1, 1, 256]
    feats = torch.randn(5, 256)
    expected = feats @ buffer.reshape(256, 64) + state["upsample.0.skip_connection.conv.bias"]
    x = SparseTensor(torch.tensor([[0, 0, 0, k] for k in range(5)], dtype=torch.int32), feats)
    assert torch.allclose(module.upsample[0].skip(x).feats, expected, atol=1e-4)
    # 3³ kernels are a pure axis permutation
    w = state["upsample.1.out_layers.0.conv.weight"]  # [32, 3, 3, 3, 64]
    assert torch.equal(converted["upsample.1.conv1.weight"], w.permute(0, 4, 1, 2, 3))


def _trellis_shapes(module) -> dict[str, torch.Size]:
    """TRELLIS key -> shape for the voxforge module (inverse of the renaming, for a unit test)."""
    shapes = {}
    for key, value in module.state_dict().items():
        name, shape = key, value.shape
        name = name.replace("stack.input.", "input_layer.")
        name = name.replace(".attn.qkv.", ".attn.to_qkv.").replace(".attn.proj.", ".attn.to_out.")
        name = name.replace(".mlp.fc1.", ".mlp.mlp.0.").replace(".mlp.fc2.", ".mlp.mlp.2.")
        name = name.replace("stack.blocks.", "blocks.")
        name = name.replace(".norm1.", ".act_layers.0.").replace(".norm2.", ".out_layers.1.")
        name = name.replace(".conv1.", ".out_layers.0.conv.").replace(".conv2.", ".out_layers.3.conv.")
        name = name.replace(".skip.", ".skip_connection.conv.").replace("output.", "out_layer.")
        if value.ndim == 5:
            shape = torch.Size([shape[0], *shape[2:], shape[1]])
        elif ".skip_connection." in name and name.endswith("weight"):
            shape = torch.Size([shape[0], 1, 1, 1, shape[1]])
        shapes[name] = shape
    return shapes


def test_unknown_keys_and_widths_are_user_errors():
    args = {"resolution": 4, "model_channels": 128, "latent_channels": 8, "num_blocks": 1, "num_heads": 2}
    with pytest.raises(UserError, match="multiple of 256"):
        SPEC.build(args)
    args["model_channels"] = 256
    with pytest.raises(UserError, match="unexpected key 'upsample.0.mystery'"):
        SPEC.convert(args, {"upsample.0.mystery": torch.zeros(1)})


def test_official_config_builds_without_colour_default():
    with torch.device("meta"):
        module = SPEC.build(
            {"resolution": 64, "model_channels": 768, "latent_channels": 8, "num_blocks": 12, "num_heads": 12}
        )
    assert module.output.out_features == 53  # TRELLIS: use_color defaults to False
    assert module.mesh_resolution == 256


def _decoder_output_on_a_sphere(coarse: int, radius: float) -> tuple[torch.Tensor, torch.Tensor]:
    """What the decoder emits for a sphere: the 64³-style shell, each voxel split into 4³ cubes.

    SDF channels carry the true distance at each cube corner, the rest small noise: the
    fine grid (4·coarse)³ with ~1M cubes at coarse = 64, as TRELLIS decodes at 256³.
    """
    r = torch.arange(coarse)
    grid = torch.stack(torch.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    shell = grid[(((grid.float() + 0.5) / coarse - 0.5).norm(dim=1) - radius).abs() < 1.0 / coarse]
    d = torch.arange(4)
    children = torch.stack(torch.meshgrid(d, d, d, indexing="ij"), -1).reshape(-1, 3)
    cubes = (shell[:, None] * 4 + children).reshape(-1, 3)
    n = 4 * coarse
    torch.manual_seed(0)
    feats = torch.randn(cubes.shape[0], 101) * 0.1
    for c, corner in enumerate(CUBE_CORNERS):
        feats[:, c] = ((cubes + torch.tensor(corner)).float() / n - 0.5).norm(dim=1) - radius
    return cubes, feats


def extraction_benchmark(coarse: int = 64, radius: float = 0.4) -> dict[str, float]:
    """TRELLIS's features -> mesh at (4·coarse)³: seconds, peak RSS (whole process), sizes."""
    cubes, feats = _decoder_output_on_a_sphere(coarse, radius)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    mesh = features_to_mesh(cubes, feats, 4 * coarse)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "seconds": seconds,
        "peak_rss_mb": peak,
        "rss_before_mb": before,
        "cubes": float(cubes.shape[0]),
        "vertices": float(mesh.vertices.shape[0]),
        "faces": float(mesh.faces.shape[0]),
    }


@pytest.mark.slow
def test_extraction_at_256_fits_in_a_few_gigabytes():
    stats = extraction_benchmark(64)  # ~1M cubes on the 256³ grid
    assert stats["faces"] > 500_000
    assert stats["peak_rss_mb"] < 4000, stats


if __name__ == "__main__":
    print(extraction_benchmark())
