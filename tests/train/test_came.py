"""CAME (train/came.py): the update against a hand-written dense reference of the paper's
formulas, convergence on a quadratic, factored state, state_dict round trip and exact resume
through the engine. Under fsdp: tests/train/test_fsdp.py."""

from __future__ import annotations

import io

import pytest
import torch

from tests.train.helpers import final_weights, make_recipe, optimizer_tensors
from voxforge.config.core import ConfigError
from voxforge.train.came import CAME
from voxforge.train.engine import train
from voxforge.train.optim import build_optimizer, build_param_groups

BETAS, EPS = (0.9, 0.999, 0.9999), (1e-30, 1e-16)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return (x * x).sum().div(x.numel()).sqrt()


def _dense_reference(weight, bias, grads, *, lr, decay, clip):
    """Algorithm 1 of the paper with the full matrices written out (float64)."""
    b1, b2, b3 = BETAS
    e1, e2 = EPS
    n, m = weight.shape
    row, col, res_row, res_col = torch.zeros(n), torch.zeros(m), torch.zeros(n), torch.zeros(m)
    row, col, res_row, res_col = (t.double() for t in (row, col, res_row, res_col))
    momentum, bias_momentum = torch.zeros_like(weight), torch.zeros_like(bias)
    bias_second = torch.zeros_like(bias)
    for g, gb in grads:
        square = g * g + e1
        row = b2 * row + (1 - b2) * square.sum(1) / m
        col = b2 * col + (1 - b2) * square.sum(0) / n
        second = torch.outer(row, col) / (row.sum() / n)  # r c^T / (1^T r) with means
        u = g / second.sqrt()
        u = u / max(1.0, float(_rms(u)) / clip)
        momentum = b1 * momentum + (1 - b1) * u
        instability = (u - momentum) ** 2 + e2
        res_row = b3 * res_row + (1 - b3) * instability.sum(1) / m
        res_col = b3 * res_col + (1 - b3) * instability.sum(0) / n
        confidence = torch.outer(res_row, res_col) / (res_row.sum() / n)
        weight = weight - lr * decay * weight - lr * momentum / confidence.sqrt()
        # a vector: full second moment, the momentum is the step
        bias_second = b2 * bias_second + (1 - b2) * (gb * gb + e1)
        ub = gb / bias_second.sqrt()
        ub = ub / max(1.0, float(_rms(ub)) / clip)
        bias_momentum = b1 * bias_momentum + (1 - b1) * ub
        bias = bias - lr * decay * bias - lr * bias_momentum
    return weight, bias


@pytest.mark.parametrize("clip", [1.0, 1e6])  # with and without update clipping
def test_step_matches_dense_reference(clip):
    gen = torch.Generator().manual_seed(0)
    weight0 = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    bias0 = torch.randn(3, generator=gen, dtype=torch.float64)
    grads = [
        (
            torch.randn(5, 3, generator=gen, dtype=torch.float64),
            torch.randn(3, generator=gen, dtype=torch.float64),
        )
        for _ in range(4)
    ]
    weight, bias = torch.nn.Parameter(weight0.clone()), torch.nn.Parameter(bias0.clone())
    optimizer = CAME([weight, bias], lr=0.1, betas=BETAS, eps=EPS, clip_threshold=clip, weight_decay=0.1)
    for g, gb in grads:
        weight.grad, bias.grad = g.clone(), gb.clone()
        optimizer.step()
    ref_weight, ref_bias = _dense_reference(weight0, bias0, grads, lr=0.1, decay=0.1, clip=clip)
    torch.testing.assert_close(weight.detach(), ref_weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bias.detach(), ref_bias, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(weight.detach(), weight0, atol=1e-3)  # it moved


def test_reduces_a_quadratic_loss():
    gen = torch.Generator().manual_seed(1)
    inputs, target = torch.randn(64, 6, generator=gen), torch.randn(64, 8, generator=gen)
    weight = torch.nn.Parameter(torch.zeros(8, 6))
    bias = torch.nn.Parameter(torch.zeros(8))
    optimizer = CAME([weight, bias], lr=2e-2)
    solution = torch.linalg.lstsq(torch.cat([inputs, torch.ones(64, 1)], 1), target).solution
    best = float(((torch.cat([inputs, torch.ones(64, 1)], 1) @ solution - target) ** 2).mean())
    losses = []
    for _ in range(300):
        optimizer.zero_grad()
        loss = ((inputs @ weight.T + bias - target) ** 2).mean()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    # from ~1.0 at zero weights to within 5% of the least-squares optimum
    assert losses[-1] < best * 1.05 + 1e-3 < losses[0]


def test_state_is_factored_for_matrices():
    weight, bias = torch.nn.Parameter(torch.randn(64, 32)), torch.nn.Parameter(torch.randn(32))
    optimizer = CAME([weight, bias], lr=1e-3)
    weight.grad, bias.grad = torch.randn(64, 32), torch.randn(32)
    optimizer.step()
    state = optimizer.state[weight]
    assert {k: tuple(v.shape) for k, v in state.items() if k != "step"} == {
        "exp_avg": (64, 32),
        "exp_avg_sq_row": (64,),
        "exp_avg_sq_col": (32,),
        "exp_avg_res_row": (64,),
        "exp_avg_res_col": (32,),
    }
    # beyond the momentum: row + column statistics (2 x 96 numbers), AdamW keeps 64 x 32 more
    assert sum(v.numel() for k, v in state.items() if k not in ("exp_avg", "step")) == 2 * (64 + 32)
    assert set(optimizer.state[bias]) == {"step", "exp_avg", "exp_avg_sq"}


def test_a_1x1_convolution_steps_as_its_matrix_and_a_3x3_kernel_is_not_factored():
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(6, 4, generator=gen) for _ in range(3)]
    linear = torch.nn.Parameter(torch.randn(6, 4, generator=gen))
    conv = torch.nn.Parameter(linear.detach().clone().view(6, 4, 1, 1))
    kernel = torch.nn.Parameter(torch.randn(6, 1, 3, 3, generator=gen))
    optimizer = CAME([linear, conv, kernel], lr=0.05)
    for g in grads:
        linear.grad, conv.grad = g.clone(), g.clone().view(6, 4, 1, 1)
        kernel.grad = torch.randn(6, 1, 3, 3, generator=gen)
        optimizer.step()
    torch.testing.assert_close(conv.detach().view(6, 4), linear.detach(), rtol=0, atol=0)
    assert optimizer.state[conv]["exp_avg_sq_row"].shape == (6,)
    assert optimizer.state[conv]["exp_avg_sq_col"].shape == (4,)
    assert set(optimizer.state[kernel]) == {"step", "exp_avg", "exp_avg_sq"}  # as Sana's CAME


def test_state_dict_round_trip_continues_identically():
    def run(split: bool) -> torch.Tensor:
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 4)
        optimizer = CAME(model.parameters(), lr=1e-2, weight_decay=0.01)
        data = torch.randn(6, 8, 6, generator=torch.Generator().manual_seed(2))
        for step, x in enumerate(data):
            if split and step == 3:  # through bytes with weights_only, into a new optimizer
                buffer = io.BytesIO()
                torch.save(optimizer.state_dict(), buffer)
                buffer.seek(0)
                optimizer = CAME(model.parameters(), lr=1e-2, weight_decay=0.01)
                optimizer.load_state_dict(torch.load(buffer, weights_only=True))
            optimizer.zero_grad()
            model(x).pow(2).mean().backward()
            optimizer.step()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(False), run(True))


def test_optim_name_builds_came_with_the_recipe_values():
    recipe = make_recipe(optim={"name": "came", "betas": [0.8, 0.99], "came_beta3": 0.995, "came_clip": 2.0})
    model = torch.nn.Linear(3, 3)
    optimizer = build_optimizer(build_param_groups(model, recipe.optim), recipe.optim)
    assert isinstance(optimizer, CAME)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.8, 0.99, 0.995) and group["eps"] == (1e-30, 1e-16)
    assert group["clip_threshold"] == 2.0
    with pytest.raises(ConfigError, match="optim.name"):
        make_recipe(optim={"name": "lion"})


def test_engine_resume_with_came_is_bit_exact(tmp_path):
    recipe = make_recipe(optim={"name": "came", "lr": 3e-3}, train={"max_steps": 8, "ema_rates": [0.9]})
    assert train(recipe, tmp_path / "straight").step == 8
    assert train(recipe, tmp_path / "split", stop_after=4).step == 4
    assert train(recipe, tmp_path / "split").step == 8
    for key in ("model", "ema_0.9"):
        a, b = final_weights(tmp_path / "straight", key), final_weights(tmp_path / "split", key)
        assert all(torch.equal(a[name], b[name]) for name in a)
    straight, split = optimizer_tensors(tmp_path / "straight"), optimizer_tensors(tmp_path / "split")
    assert len(straight) == len(split) > 0
    assert all(torch.equal(a, b) for a, b in zip(straight, split))
