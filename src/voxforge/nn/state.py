"""What differs between a module's state dict and weights read from a file.

Loading pretrained weights strictly (`load_state_dict(strict=True)`) stops at the first kind
of problem with a message in PyTorch's terms; a user who points voxforge at the wrong file
needs every missing, unexpected and wrongly shaped key at once, named. `state_mismatch`
says that in a few lines (or returns "" when the weights fit), for every loader of outside
weights (TRELLIS checkpoints, DINOv2) to raise in its own error type.

`transfer_state` is the lenient counterpart for a model whose architecture changed on
purpose — Open-Sora's autoencoder swap: the new latent width changes the denoiser's patch
embedding and output projection, and every other tensor carries over. It loads what fits,
leaves the rest at the new model's initialisation, and returns one row per tensor saying
which (the table a run writes so the user sees what was re-initialised).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["TransferRow", "state_mismatch", "transfer_state", "transfer_table"]

MAX_LISTED = 12


def _listed(title: str, keys: list[str]) -> str:
    more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
    return f"\n  {title} ({len(keys)}): " + ", ".join(keys[:MAX_LISTED]) + more


def state_mismatch(module: nn.Module, state: Mapping[str, Tensor]) -> str:
    """The missing, unexpected and wrongly shaped keys of `state` for `module` ("" if none)."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)
    )
    text = ""
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            text += _listed(title, keys)
    return text


@dataclass(frozen=True)
class TransferRow:
    key: str
    action: Literal["kept", "reinitialised", "new", "dropped"]
    source_shape: tuple[int, ...] | None  # None: not in the source state
    target_shape: tuple[int, ...] | None  # None: not in the module (dropped)

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "action": self.action,
            "source_shape": list(self.source_shape) if self.source_shape is not None else None,
            "target_shape": list(self.target_shape) if self.target_shape is not None else None,
        }


def transfer_state(
    module: nn.Module,
    state: Mapping[str, Tensor],
    *,
    reinit: Literal["changed", "all", "none"] = "changed",
) -> list[TransferRow]:
    """Copy the tensors of `state` that fit into `module`; return what happened to each key.

    - `changed`: every tensor whose key and shape match is kept; a tensor whose shape changed
      is "reinitialised" (it keeps the module's own initialisation); keys only in the module
      are "new", keys only in the state "dropped";
    - `all`: nothing is copied (Open-Sora's "re-initialise everything" variant), every tensor
      of the module is "reinitialised" or "new";
    - `none`: the state must fit exactly (`ValueError` with `state_mismatch`'s report otherwise).
    """
    if reinit not in ("changed", "all", "none"):
        raise ValueError(f"reinit must be changed, all or none, got {reinit!r}")
    if reinit == "none":
        problem = state_mismatch(module, state)
        if problem:
            raise ValueError(f"the weights do not fit the model (reinit: none):{problem}")
    target = module.state_dict()
    rows: list[TransferRow] = []
    keep: dict[str, Tensor] = {}
    for key, tensor in target.items():
        source = state.get(key)
        source_shape = tuple(source.shape) if source is not None else None
        if source is None:
            action = "new"
        elif reinit == "all" or source_shape != tuple(tensor.shape):
            action = "reinitialised"
        else:
            action = "kept"
            keep[key] = source
        rows.append(TransferRow(key, action, source_shape, tuple(tensor.shape)))
    rows += [TransferRow(k, "dropped", tuple(v.shape), None) for k, v in state.items() if k not in target]
    with torch.no_grad():
        for key, tensor in keep.items():
            target[key].copy_(tensor)
    return rows


def transfer_table(rows: list[TransferRow], *, kept: bool = False) -> str:
    """A markdown table of the rows (the kept ones only counted unless `kept`)."""
    counts = {
        action: sum(r.action == action for r in rows)
        for action in ("kept", "reinitialised", "new", "dropped")
    }
    lines = [
        ", ".join(f"{n} {action}" for action, n in counts.items() if n),
        "",
        "| tensor | action | before | after |",
        "| --- | --- | --- | --- |",
    ]
    for row in rows:
        if row.action == "kept" and not kept:
            continue
        before = "x".join(map(str, row.source_shape)) if row.source_shape is not None else "-"
        after = "x".join(map(str, row.target_shape)) if row.target_shape is not None else "-"
        lines.append(f"| `{row.key}` | {row.action} | {before} | {after} |")
    return "\n".join(lines) + "\n"
