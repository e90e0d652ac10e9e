"""What differs between a module's state dict and weights read from a file.

Loading pretrained weights strictly (`load_state_dict(strict=True)`) stops at the first kind
of problem with a message in PyTorch's terms; a user who points voxforge at the wrong file
needs every missing, unexpected and wrongly shaped key at once, named. `state_mismatch`
says that in a few lines (or returns "" when the weights fit), for every loader of outside
weights (TRELLIS checkpoints, DINOv2) to raise in its own error type.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

__all__ = ["state_mismatch"]

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
