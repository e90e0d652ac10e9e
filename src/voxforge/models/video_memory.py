"""Predicted peak memory of one video_flow training step, per bucket, before anything trains.

A formula, not a dry run: it costs nothing, so the `video_flow` stage checks every bucket of its
data at start (`data.memory_limit_gb`) and refuses the one predicted not to fit, naming it and the
largest batch size that would. Its terms, in bytes, for a bucket of `batch` clips of `tokens`
latent tokens each, through a `VideoDiT` of `params` parameters, width W, depth D, heads h:

    state        = params · 4 · (2 + optimizer_states + ema_copies)          weights, gradients, AdamW, EMA (fp32)
    activations  = batch · tokens · W · 4 · (ACT_PER_BLOCK · D)              no checkpointing
                 = batch · tokens · W · 4 · (KEPT_PER_BLOCK · D + ACT_PER_BLOCK)   activation checkpointing
    attention    = batch · h · tokens² · 4 · ATTN_PER_BLOCK · (D or 1)       the backend's saved scores
    total        = state + activations + attention + STEP_FIXED + BASE

`ACT_PER_BLOCK` counts the W-wide fp32 tensors a DiT block (adaLN, self- and cross-attention,
a 4× MLP) keeps for its backward; with checkpointing a block keeps only its input
and what the recomputation needs (`KEPT_PER_BLOCK`, fitted: more than the input alone) and one
block's activations live at a time during the recomputation.
`ATTN_PER_BLOCK` is 0 for fused attention (PyTorch's flash / memory-efficient SDPA kernels,
flash-attn) and 1 for attention that saves its score matrix. The constants were fitted to
`benchmarks/bench_video_memory.py` (peak resident memory of one step in a fresh process on
CPU, fp32, torch 2.13; docs/benchmarks.md, "Video memory per bucket"), where the prediction is
within 12 % of the measured growth on every bucket measured (a little below it with checkpointing on).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACT_PER_BLOCK",
    "ATTN_PER_BLOCK",
    "KEPT_PER_BLOCK",
    "StepMemory",
    "predict_step_memory",
]

#: W-wide fp32 tensors per token a DiT block keeps for backward (fitted, see the module docstring)
ACT_PER_BLOCK = 40.0
#: with activation checkpointing: what a block and the parts around the blocks still keep per token
KEPT_PER_BLOCK = 11.0
#: saved score matrices per block and head (0: fused attention keeps none)
ATTN_PER_BLOCK = 0.0
#: what one step needs whatever its size (autograd, allocator and thread buffers; fitted)
STEP_FIXED = 75 * 2**20
#: the process: interpreter, torch, the text encoder and autoencoder of a tiny run (bytes)
BASE = 600 * 2**20


@dataclass
class StepMemory:
    state: float  # bytes
    activations: float
    attention: float
    total: float

    @property
    def gib(self) -> float:
        return self.total / 2**30


def predict_step_memory(
    *,
    params: int,
    width: int,
    depth: int,
    heads: int,
    batch: int,
    tokens: int,
    grad_checkpoint: bool,
    optimizer_states: int = 2,
    ema_copies: int = 1,
    fused_attention: bool = True,
    base: float = BASE,
) -> StepMemory:
    """The peak bytes of one training step (module docstring)."""
    state = params * 4.0 * (2 + optimizer_states + ema_copies)
    per_token = batch * tokens * width * 4.0
    if grad_checkpoint:
        activations = per_token * (KEPT_PER_BLOCK * depth + ACT_PER_BLOCK)
    else:
        activations = per_token * ACT_PER_BLOCK * depth
    scores = 1.0 if not fused_attention else ATTN_PER_BLOCK
    attention = batch * heads * float(tokens) ** 2 * 4.0 * scores * (1 if grad_checkpoint else depth)
    total = state + activations + attention + STEP_FIXED + base
    return StepMemory(state, activations, attention, total)
