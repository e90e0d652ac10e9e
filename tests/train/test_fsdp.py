"""`train.parallel: fsdp` (FSDP2 fully_shard) on CPU with gloo.

Fast tests check the pieces in this process (which units are sharded, the meta skeleton of
rank 0's hooks, the optimizer-state layouts, LoRA refused). The `distributed` + `slow` ones
launch 2 gloo processes through torchrun (tests/train/fsdp_worker.py): fsdp at batch B per
process against 1 process at 2B (also with accumulation), exact resume of an fsdp run, CAME
under fsdp, a ddp run resumed under fsdp and back, bf16 and fp16, and the image_flow stage at
toy size (fsdp against ddp).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.train.fsdp_worker import BlocksNet
from tests.train.fsdp_worker import main as run_jobs
from tests.train.helpers import final_weights, optimizer_tensors
from voxforge.errors import UserError
from voxforge.train.checkpoint import latest_checkpoint, load_trainer_state
from voxforge.train.distributed import (
    DistInfo,
    materialize,
    meta_template,
    optimizer_state_by_index,
    resolve_parallel,
    transformer_blocks,
)

WORKER = Path(__file__).with_name("fsdp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _write_jobs(path: Path, jobs: list[dict]) -> Path:
    path.write_text(json.dumps(jobs))
    return path


def _torchrun(jobs: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        + [str(WORKER), str(jobs)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def _assert_same(a: Path, b: Path, key: str = "model", atol: float = 1e-5) -> None:
    wa, wb = final_weights(a, key), final_weights(b, key)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=atol, msg=f"{key}: {name}")


# --- in-process pieces -------------------------------------------------------------------


def test_units_are_the_outermost_module_list_items():
    net = BlocksNet(dim=4, width=8, depth=3)
    units = transformer_blocks(net)
    assert units == list(net.blocks)
    assert transformer_blocks(nn.Sequential(nn.Linear(2, 2))) == []  # root only


def test_parallel_resolution():
    one, two = DistInfo(world_size=1), DistInfo(world_size=2)
    assert resolve_parallel("auto", one) == resolve_parallel("fsdp", one) == "none"
    assert resolve_parallel("auto", two) == "ddp"
    assert resolve_parallel("fsdp", two) == "fsdp"
    assert resolve_parallel("none", two) == "none"
    with pytest.raises(UserError, match="train.parallel"):
        resolve_parallel("zero3", two)


def test_meta_template_takes_no_memory_and_materializes_the_model():
    torch.manual_seed(0)
    net = BlocksNet(dim=4, width=8, depth=2)
    template = meta_template(net)
    assert all(p.is_meta for p in template.parameters())
    assert not any(p.is_meta for p in net.parameters())  # the original is untouched
    rebuilt = materialize(template, net.state_dict(), torch.device("cpu"))
    x = torch.randn(3, 4)
    torch.testing.assert_close(rebuilt(x), net(x), rtol=0, atol=0)
    assert all(p.is_meta for p in template.parameters())  # reusable for the next sample


def test_optimizer_state_keyed_by_name_loads_by_position():
    torch.manual_seed(0)
    net = BlocksNet(dim=4, width=8, depth=2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-2)
    net(torch.randn(5, 4)).pow(2).mean().backward()
    optimizer.step()
    by_position = optimizer.state_dict()
    names = [n for n, _ in net.named_parameters()]
    by_name = {  # torch.distributed.checkpoint's layout (what fsdp checkpoints hold)
        "state": {names[i]: v for i, v in by_position["state"].items()},
        "param_groups": [
            {**g, "params": [names[i] for i in g["params"]]} for g in by_position["param_groups"]
        ],
    }
    converted = optimizer_state_by_index(by_name, net, optimizer)
    assert converted["param_groups"] == by_position["param_groups"]
    assert converted["state"].keys() == by_position["state"].keys()
    for i, values in by_position["state"].items():
        for k, v in values.items():
            assert torch.equal(converted["state"][i][k], v)
    assert optimizer_state_by_index(by_position, net, optimizer) is by_position
    by_name["state"]["missing.weight"] = by_name["state"].pop(names[0])
    with pytest.raises(UserError, match="missing.weight"):
        optimizer_state_by_index(by_name, net, optimizer)


def test_lora_is_refused_under_fsdp():
    from voxforge.models.image import ImageFlowConfig, LoRAConfig, apply_lora, build_transformer
    from voxforge.stages.image_flow import ImageFlowStage

    cfg = ImageFlowConfig(in_channels=4, num_layers=2, heads=2, head_dim=8, cross_heads=2)
    transformer = build_transformer(cfg, caption_channels=16, sample_size=4)
    stage = object.__new__(ImageFlowStage)  # the hook reads nothing of the stage
    assert stage.fsdp_units(transformer) == list(transformer.transformer_blocks)
    with pytest.raises(UserError, match="train.parallel=ddp"):
        stage.fsdp_units(apply_lora(transformer, LoRAConfig()))


# --- two gloo processes --------------------------------------------------------------------

COMMON = {"train.ema_rates": [0.9], "train.grad_clip_norm": 0.5}  # clipping is active (norms ~1)


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_matches_one_process_and_resumes_exactly(tmp_path):
    single, fsdp = (
        {**COMMON, "train.batch_size": 16},
        {**COMMON, "train.batch_size": 8, "train.parallel": "fsdp"},
    )
    came = {"optim.name": "came", "optim.lr": 3e-3}
    run_jobs(
        str(
            _write_jobs(
                tmp_path / "one.json",
                [
                    {"run_dir": str(tmp_path / "one"), "overrides": single},
                    {"run_dir": str(tmp_path / "one_came"), "overrides": {**single, **came}},
                ],
            )
        )
    )
    ddp = {**fsdp, "train.parallel": "ddp"}
    accumulated = {**fsdp, "train.batch_size": 4, "train.grad_accum": 2}
    _torchrun(
        _write_jobs(
            tmp_path / "two.json",
            [
                {"run_dir": str(tmp_path / "fsdp"), "overrides": fsdp},
                {"run_dir": str(tmp_path / "resumed"), "overrides": fsdp, "stop_after": 3},
                {"run_dir": str(tmp_path / "resumed"), "overrides": fsdp},
                {"run_dir": str(tmp_path / "fsdp_came"), "overrides": {**fsdp, **came}},
                {"run_dir": str(tmp_path / "switched"), "overrides": ddp, "stop_after": 3},
                {"run_dir": str(tmp_path / "switched"), "overrides": fsdp},
                {"run_dir": str(tmp_path / "switched_back"), "overrides": fsdp, "stop_after": 3},
                {"run_dir": str(tmp_path / "switched_back"), "overrides": ddp},
                {"run_dir": str(tmp_path / "accumulated"), "overrides": accumulated},
                {"run_dir": str(tmp_path / "bf16"), "overrides": {**fsdp, "train.precision": "bf16"}},
                {"run_dir": str(tmp_path / "fp16"), "overrides": {**fsdp, "train.precision": "fp16"}},
            ],
        )
    )
    # 2 x B under fsdp = 1 x 2B: same samples per step, only reduction order differs
    for key in ("model", "ema_0.9"):
        _assert_same(tmp_path / "one", tmp_path / "fsdp", key)
        _assert_same(tmp_path / "one_came", tmp_path / "fsdp_came", key)
        # interrupted + resumed under fsdp = uninterrupted, bit for bit
        wa, wb = final_weights(tmp_path / "fsdp", key), final_weights(tmp_path / "resumed", key)
        assert all(torch.equal(wa[n], wb[n]) for n in wa)
    assert all(
        torch.equal(a, b)
        for a, b in zip(optimizer_tensors(tmp_path / "fsdp"), optimizer_tensors(tmp_path / "resumed"))
    )
    # checkpoints hold full tensors and the optimizer state keyed by parameter name
    state = load_trainer_state(latest_checkpoint(tmp_path / "fsdp_came"))
    assert state["parallel"] == "fsdp"
    came_state = state["optimizer"]["state"]["blocks.0.up.weight"]
    assert came_state["exp_avg"].shape == (49, 24)
    assert came_state["exp_avg_sq_row"].shape == (49,) and came_state["exp_avg_sq_col"].shape == (24,)
    assert final_weights(tmp_path / "fsdp")["blocks.0.up.weight"].shape == (49, 24)
    # a ddp run resumes under fsdp (its optimizer state is keyed by position), and back
    for key in ("model", "ema_0.9"):
        _assert_same(tmp_path / "fsdp", tmp_path / "switched", key)
        _assert_same(tmp_path / "fsdp", tmp_path / "switched_back", key)
    # gradient accumulation: 2 processes x 2 micro-batches of 4 = 1 process x 16
    _assert_same(tmp_path / "one", tmp_path / "accumulated")
    # bf16 / fp16 (with the scaler) compute through MixedPrecisionPolicy: fp32 weights, no
    # skipped step, close to the fp32 run
    fp32_weights = final_weights(tmp_path / "fsdp")
    for precision in ("bf16", "fp16"):
        weights = final_weights(tmp_path / precision)
        assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
        assert load_trainer_state(latest_checkpoint(tmp_path / precision))["skipped"] == 0
        drift = max(float((weights[n] - fp32_weights[n]).abs().max()) for n in fp32_weights)
        assert drift < 0.05, precision


@pytest.mark.distributed
@pytest.mark.slow
def test_image_flow_under_fsdp_matches_ddp_and_resumes(tmp_path):
    from tests.stages.image_helpers import flow_overrides, image_artefacts

    artefacts = image_artefacts(tmp_path)
    overrides = flow_overrides(
        artefacts, "train.max_steps=4", "train.batch_size=2", "train.checkpoint_every=100"
    )

    def job(name: str, parallel: str, stop_after: int | None = None) -> dict:
        entry = {
            "recipe": "image_flow_tiny",
            "run_dir": str(tmp_path / name),
            "overrides": [*overrides, f"train.parallel={parallel}"],
        }
        return {**entry, "stop_after": stop_after} if stop_after else entry

    _torchrun(
        _write_jobs(
            tmp_path / "jobs.json",
            [job("ddp", "ddp"), job("fsdp", "fsdp"), job("resumed", "fsdp", 2), job("resumed", "fsdp")],
        )
    )
    for key in ("model", "ema_0.9"):
        _assert_same(tmp_path / "ddp", tmp_path / "fsdp", key)
        wa, wb = final_weights(tmp_path / "fsdp", key), final_weights(tmp_path / "resumed", key)
        assert all(torch.equal(wa[n], wb[n]) for n in wa)
    # rank 0's hooks ran on the gathered model: the export loads as a plain diffusers model
    assert (tmp_path / "fsdp" / "export" / "transformer" / "config.json").is_file()
