"""CAME: confidence-guided adaptive memory-efficient optimization (Luo et al., ACL 2023).

Sana trains with CAME: AdamW's quality at Adafactor's memory. Per parameter matrix G of
shape [n, m] (a linear weight; a 1x1 convolution's [out, in, 1, 1] as its [out, in] matrix):

    V_t  = G^2 + eps1                                   squared gradient
    r_t  = b2 r + (1 - b2) mean_cols(V_t)    [n]        factored second moment (Adafactor)
    c_t  = b2 c + (1 - b2) mean_rows(V_t)    [m]
    u_t  = G / sqrt(r_t c_t^T / mean(r_t))              preconditioned gradient
    u_t /= max(1, RMS(u_t) / clip_threshold)            update clipping
    m_t  = b1 m + (1 - b1) u_t                          momentum of the update
    U_t  = (u_t - m_t)^2 + eps2                         instability: how far the update
    R_t  = b3 R + (1 - b3) mean_cols(U_t)    [n]        strays from its average, factored
    C_t  = b3 C + (1 - b3) mean_rows(U_t)    [m]        the same way
    p   -= lr (m_t / sqrt(R_t C_t^T / mean(R_t)) + weight_decay p)

so the state of a matrix is one momentum plus four vectors (row and column statistics of the
second moment and of the instability), not two full moments as in Adam. Other shapes
(biases, norm gains, k x k convolutions) keep a full second moment and take the momentum
step m_t / 1, as Sana's CAME does: factoring the last two dimensions of a [C, 1, 3, 3]
depthwise kernel or of a 1x1 kernel, as the authors' package does for every tensor of two
or more dimensions, stores statistics as large as the weight (for Sana 600M the state would
be 1.4x AdamW's instead of about half). The state of a 1x1 convolution is kept in its matrix
view. There is no bias correction. Defaults are the paper's: betas (0.9, 0.999, 0.9999),
eps (1e-30, 1e-16), clip 1.0.

Why not the authors' package (`came-pytorch` 0.1.3 on PyPI, MIT, last released in 2023): its
state is created with `torch.zeros(shape).type_as(grad)` from the global shape, which breaks
for FSDP2's DTensor parameters, it factors 1x1 and k x k convolutions over their kernel
dimensions (above), it stores an unused RMS tensor per parameter, and it reads `p.data`
everywhere. The formulas are a few lines; this implementation writes them with
ordinary tensor ops only (no `.data`, no Python-side shapes), so the same code runs on
DTensor shards: DTensor reduces the row/column means of a sharded matrix across processes.
Its state holds tensors and a float step only, so `state_dict()` loads with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def _rms(tensor: Tensor) -> Tensor:
    return tensor.pow(2).mean().sqrt()


def _factored_inverse_sqrt(row: Tensor, col: Tensor) -> Tensor:
    """1 / sqrt(row col^T / mean(row)): the rank-1 estimate of a [.., n, m] matrix of
    positive values from its row means `row` [.., n] and column means `col` [.., m]."""
    row_factor = (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1)
    return row_factor * col.rsqrt().unsqueeze(-2)


class CAME(torch.optim.Optimizer):
    """CAME with decoupled weight decay; see the module docstring for the update."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-4,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        eps: tuple[float, float] = (1e-30, 1e-16),
        clip_threshold: float = 1.0,
        weight_decay: float = 0.0,
    ):
        if lr <= 0.0:
            raise ValueError(f"CAME: lr must be positive, got {lr}")
        if len(betas) != 3 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"CAME: betas must be three values in [0, 1), got {betas}")
        if len(eps) != 2 or not all(e > 0.0 for e in eps):
            raise ValueError(f"CAME: eps must be two positive values, got {eps}")
        if clip_threshold <= 0.0:
            raise ValueError(f"CAME: clip_threshold must be positive, got {clip_threshold}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=tuple(eps),
            clip_threshold=clip_threshold,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @staticmethod
    def factored(param: Tensor) -> bool:
        """Matrices and 1x1 convolutions ([out, in, 1, 1]) are factored as [out, in]."""
        return param.dim() == 2 or (param.dim() == 4 and param.shape[2] == param.shape[3] == 1)

    def _init_state(self, param: Tensor, grad: Tensor) -> dict:
        state = self.state[param]
        state["step"] = torch.tensor(0.0)
        state["exp_avg"] = torch.zeros_like(grad)
        if self.factored(param):
            # the statistics take their shape (and, for a DTensor, their placement) from
            # reductions of the gradient itself
            row, col = grad.mean(dim=-1), grad.mean(dim=-2)
            state["exp_avg_sq_row"] = torch.zeros_like(row)
            state["exp_avg_sq_col"] = torch.zeros_like(col)
            state["exp_avg_res_row"] = torch.zeros_like(row)
            state["exp_avg_res_col"] = torch.zeros_like(col)
        else:
            state["exp_avg_sq"] = torch.zeros_like(grad)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]
            eps1, eps2 = group["eps"]
            lr, decay = group["lr"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if param.grad.is_sparse:
                    raise RuntimeError("CAME does not support sparse gradients")
                # fp16 / bf16 gradients are promoted; fp64 stays fp64
                grad = param.grad.to(torch.promote_types(param.grad.dtype, torch.float32))
                if self.factored(param):
                    grad = grad.flatten(1)  # [out, in]: a no-op for matrices
                state = self.state[param] or self._init_state(param, grad)
                state["step"] += 1
                square = grad.pow(2) + eps1
                if self.factored(param):
                    row, col = state["exp_avg_sq_row"], state["exp_avg_sq_col"]
                    row.lerp_(square.mean(dim=-1), 1.0 - beta2)
                    col.lerp_(square.mean(dim=-2), 1.0 - beta2)
                    update = grad * _factored_inverse_sqrt(row, col)
                else:
                    second = state["exp_avg_sq"]
                    second.lerp_(square, 1.0 - beta2)
                    update = grad * second.rsqrt()
                update = update / (_rms(update) / group["clip_threshold"]).clamp(min=1.0)
                exp_avg = state["exp_avg"]
                exp_avg.lerp_(update, 1.0 - beta1)
                if self.factored(param):
                    instability = (update - exp_avg).pow(2) + eps2
                    res_row, res_col = state["exp_avg_res_row"], state["exp_avg_res_col"]
                    res_row.lerp_(instability.mean(dim=-1), 1.0 - beta3)
                    res_col.lerp_(instability.mean(dim=-2), 1.0 - beta3)
                    update = exp_avg * _factored_inverse_sqrt(res_row, res_col)
                else:
                    update = exp_avg
                if decay:
                    param.mul_(1.0 - lr * decay)
                param.add_(update.reshape(param.shape).to(param.dtype), alpha=-lr)
        return loss
