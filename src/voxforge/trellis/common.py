"""Conversion helpers shared by the TRELLIS model specs (`trellis/*.py`).

Small, layout-level pieces that more than one conversion needs:

- **Sparse-conv weights.** TRELLIS's sparse convolutions are spconv 2.x `SubMConv3d`s, whose
  weight is stored `[Cout, kx, ky, kz, Cin]` ("KRSC"). voxforge's `SparseConv3d` keeps
  `nn.Conv3d`'s `[Cout, Cin, kx, ky, kz]` for every backend. Both index the kernel the same
  way — kernel index (a, b, c) reads the neighbour at offset `(a, b, c) - k // 2` along
  (i, j, k), i.e. a cross-correlation as `F.conv3d` computes it (checked against TRELLIS's
  own outputs by the SLat-flow golden) — so the conversion is a pure axis permutation, no
  kernel flip. voxforge's spconv backend applies the inverse permutation for its call.
- **Key renaming.** `rename(state, rules)` maps a state dict through ordered
  `(regex, replacement)` rules (first full match wins) and names every key no rule covers, so
  a spec's conversion is a readable table instead of string surgery.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from torch import Tensor

from voxforge.errors import UserError

__all__ = ["conv3d_to_spconv_weight", "rename", "spconv_to_conv3d_weight", "strip_prefix"]


def spconv_to_conv3d_weight(weight: Tensor, key: str = "weight") -> Tensor:
    """spconv `[Cout, kx, ky, kz, Cin]` -> voxforge/`nn.Conv3d` `[Cout, Cin, kx, ky, kz]`."""
    if weight.ndim != 5 or not (weight.shape[1] == weight.shape[2] == weight.shape[3]):
        raise UserError(
            f"{key}: expected a spconv sparse-conv weight [Cout, k, k, k, Cin], got {tuple(weight.shape)}"
        )
    return weight.permute(0, 4, 1, 2, 3).contiguous()


def conv3d_to_spconv_weight(weight: Tensor) -> Tensor:
    """voxforge/`nn.Conv3d` `[Cout, Cin, kx, ky, kz]` -> spconv `[Cout, kx, ky, kz, Cin]`."""
    if weight.ndim != 5:
        raise ValueError(f"expected a conv weight [Cout, Cin, k, k, k], got {tuple(weight.shape)}")
    return weight.permute(0, 2, 3, 4, 1).contiguous()


def rename(
    state: Mapping[str, Tensor],
    rules: Iterable[tuple[str, str]],
    *,
    drop: Iterable[str] = (),
    source: str = "checkpoint",
) -> dict[str, Tensor]:
    """Rename keys by the first rule whose regex fully matches (`re.sub` replacement syntax).

    Keys matching a `drop` pattern are left out; a key matched by neither raises a
    `UserError` naming it and `source` (the checkpoint file), since silently skipping a
    weight would load a model that computes something else.
    """
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]
    dropped = [re.compile(pattern) for pattern in drop]
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        if any(p.fullmatch(key) for p in dropped):
            continue
        for pattern, repl in compiled:
            if pattern.fullmatch(key):
                out[pattern.sub(repl, key)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        listed = ", ".join(f"'{k}'" for k in unknown[:12]) + (
            f" (+{len(unknown) - 12} more)" if len(unknown) > 12 else ""
        )
        noun = "key" if len(unknown) == 1 else f"keys ({len(unknown)})"
        raise UserError(f"{source}: unexpected {noun} {listed} (no conversion rule covers them)")
    return out


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under `prefix` (e.g. "blocks.0."), with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
