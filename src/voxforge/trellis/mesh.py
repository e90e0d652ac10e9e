"""TRELLIS's `SLatMeshDecoder` as `voxforge.models.slat_mesh.SLatMeshDecoder`, and its golden.

The trunk is the SLat VAE's sparse transformer (`slat_backbone_config` and
`sparse_transformer_rules` of `trellis/vaes.py`: same options, same key table). The
subdivide blocks rename as

    upsample.i.act_layers.0          -> upsample.i.norm1      (GroupNorm, 32 groups)
    upsample.i.out_layers.0.conv     -> upsample.i.conv1      (spconv 3³ -> Conv3d layout)
    upsample.i.out_layers.1          -> upsample.i.norm2
    upsample.i.out_layers.3.conv     -> upsample.i.conv2
    upsample.i.skip_connection.conv  -> upsample.i.skip       (spconv 1³ -> a linear layer)
    out_layer                        -> output

**spconv's 1×1×1 quirk.** spconv 2.x runs a kernel-size-1 submanifold conv as a plain
matmul, `features @ weight.view(Cin, Cout)`: it re-reads the `[Cout, 1, 1, 1, Cin]` buffer
as if it were `[Cin, Cout]` instead of transposing it. TRELLIS's skip projections were
trained (and its golden outputs computed) through that path, so the matrix they compute is
`buffer.reshape(Cin, Cout)`, and the linear layer's weight is its transpose — not the
buffer permuted as for the 3³ kernels. (Checked against spconv 2.3.8 itself: the permuted
reading misses TRELLIS's outputs by ~10, the re-read matches to float rounding.)

The golden `slat_dec_mesh.safetensors` holds the latents, the fine feature tensor before
FlexiCubes (`head.coords` exact, `head.feats` as tensors) and per sample `i` the mesh
(`i.vertices`, `i.faces`, `i.vertex_attrs`), compared as meshes (up to vertex order).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from voxforge.errors import UserError
from voxforge.models.slat_mesh import SLatMeshDecoder
from voxforge.sparse.tensor import SparseTensor
from voxforge.trellis.common import rename, spconv_to_conv3d_weight
from voxforge.trellis.spec import Compare, GoldenCheck, ModelSpec
from voxforge.trellis.vaes import slat_backbone_config, sparse_transformer_rules

__all__ = ["GOLDENS", "SPECS", "build_mesh_decoder", "convert_mesh_decoder"]

_CLS = "SLatMeshDecoder"
NEAR_ZERO_SDF = 1e-6


def build_mesh_decoder(args: Mapping[str, Any]) -> SLatMeshDecoder:
    """The voxforge module for a TRELLIS `SLatMeshDecoder` checkpoint's `args`."""
    rep = dict(args.get("representation_config") or {})
    cfg = slat_backbone_config(args, _CLS)
    if cfg.width % 8 or (cfg.width // 8) % 32:
        raise UserError(
            f"{_CLS}: model_channels {cfg.width} must be a multiple of 256 "
            "(the subdivide blocks' widths /4 and /8 are GroupNorms of 32 groups)"
        )
    return SLatMeshDecoder(cfg, use_color=bool(rep.get("use_color", False)))


def _rules() -> list[tuple[str, str]]:
    rules = [rule for rule in sparse_transformer_rules("stack.") if not rule[0].startswith(r"out_layer")]
    return [
        *rules,
        (r"upsample\.(\d+)\.act_layers\.0\.(weight|bias)", r"upsample.\1.norm1.\2"),
        (r"upsample\.(\d+)\.out_layers\.0\.conv\.(weight|bias)", r"upsample.\1.conv1.\2"),
        (r"upsample\.(\d+)\.out_layers\.1\.(weight|bias)", r"upsample.\1.norm2.\2"),
        (r"upsample\.(\d+)\.out_layers\.3\.conv\.(weight|bias)", r"upsample.\1.conv2.\2"),
        (r"upsample\.(\d+)\.skip_connection\.conv\.(weight|bias)", r"upsample.\1.skip.\2"),
        (r"out_layer\.(weight|bias)", r"output.\1"),
    ]


def convert_mesh_decoder(args: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """TRELLIS state dict (fp32) -> `SLatMeshDecoder`'s: renamed, conv weights re-laid out."""
    out = rename(state, _rules(), source=_CLS)
    for key, value in list(out.items()):
        if not key.endswith(".weight") or value.ndim != 5:
            continue
        if ".skip." in key:
            if tuple(value.shape[1:4]) != (1, 1, 1):
                raise UserError(f"{_CLS}: {key} should be a 1x1x1 conv, got {tuple(value.shape)}")
            cout, cin = value.shape[0], value.shape[-1]
            out[key] = value.reshape(cin, cout).t().contiguous()  # [Cout, Cin]: spconv's quirk (docstring)
        else:
            out[key] = spconv_to_conv3d_weight(value, key)  # [Cout, Cin, k, k, k]
    return out


SPECS: list[ModelSpec] = [ModelSpec(_CLS, build_mesh_decoder, convert_mesh_decoder)]


def _samples(golden: Mapping[str, Tensor]) -> list[str]:
    return sorted({k.split(".")[0] for k in golden if k.split(".")[0].isdigit()}, key=int)


@torch.no_grad()
def _run(models: Mapping[str, Any], golden: Mapping[str, Tensor]) -> dict[str, Tensor]:
    decoder: SLatMeshDecoder = models[_CLS]
    coords = golden["coords"]
    if bool((coords[1:, 0] < coords[:-1, 0]).any()):
        raise UserError("slat_dec_mesh.safetensors: coords are not grouped by batch index")
    x = SparseTensor(coords, golden["latents"].float(), spatial_shape=(decoder.resolution,) * 3)
    head = decoder.features(x)
    out: dict[str, Tensor] = {"head.coords": head.coords.to(torch.int32), "head.feats": head.feats}
    for i, mesh in enumerate(decoder.to_meshes(head)):
        out[f"{i}.vertices"] = mesh.vertices
        out[f"{i}.faces"] = mesh.faces.to(torch.int32)
        if mesh.vertex_attrs is not None:
            out[f"{i}.vertex_attrs"] = mesh.vertex_attrs
        # an SDF this close to zero may round to the other sign in TRELLIS: verify then
        # accepts a Chamfer distance instead of an exact match
        out[f"{i}.near_zero_sdf"] = torch.tensor(mesh.sdf_margin < NEAR_ZERO_SDF)
    return out


def _compare(golden: Mapping[str, Tensor]) -> dict[str, Compare]:
    compare = {
        "head.coords": Compare("exact"),
        "head.feats": Compare("tensor", atol=2e-4, rtol=1e-4),
    }
    compare.update({i: Compare("mesh", atol=1e-4) for i in _samples(golden)})
    return compare


GOLDENS: list[GoldenCheck] = [GoldenCheck("slat_dec_mesh.safetensors", (_CLS,), _run, compare_for=_compare)]
