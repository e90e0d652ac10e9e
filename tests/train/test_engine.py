"""The engine in-process: exact resume, accumulation, non-finite steps, precision, EMA."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from tests.train.helpers import final_weights, make_recipe, optimizer_tensors
from voxforge.train.checkpoint import latest_checkpoint, list_checkpoints, load_trainer_state
from voxforge.train.distributed import DistInfo
from voxforge.train.engine import StepFlags, TrainingDiverged, train
from voxforge.train.optim import lr_factor


def _events(run_dir, name):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("event") == name]


def test_resume_is_bit_exact(tmp_path):
    # dropout draws from the global RNG, adaptive clipping keeps a window, EMA at two rates,
    # 8 batches per epoch so the split falls mid-epoch: all must be restored exactly.
    recipe = make_recipe(
        model={"dropout": 0.2},
        train={"ema_rates": [0.9, 0.99], "grad_clip": "adaptive", "grad_clip_window": 16, "max_steps": 20},
    )
    straight = train(recipe, tmp_path / "straight")
    assert straight.reason == "max_steps" and straight.step == 20
    first = train(recipe, tmp_path / "split", stop_after=10)
    assert first.reason == "stop_after" and first.step == 10
    second = train(recipe, tmp_path / "split")
    assert second.reason == "max_steps" and second.step == 20
    for key in ("model", "ema_0.9", "ema_0.99"):
        a, b = final_weights(tmp_path / "straight", key), final_weights(tmp_path / "split", key)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{key}:{name} differs after resume"
    for a, b in zip(
        optimizer_tensors(tmp_path / "straight"), optimizer_tensors(tmp_path / "split"), strict=True
    ):
        assert torch.equal(a, b)
    assert _events(tmp_path / "split", "resume")
    assert train(recipe, tmp_path / "split").reason == "already_complete"


def test_gradient_accumulation_matches_large_batch(tmp_path):
    big = train(make_recipe(train={"batch_size": 16, "grad_accum": 1}), tmp_path / "big")
    acc = train(make_recipe(train={"batch_size": 8, "grad_accum": 2}), tmp_path / "acc")
    assert big.step == acc.step == 20
    a, b = final_weights(tmp_path / "big"), final_weights(tmp_path / "acc")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_nonfinite_steps_are_skipped_and_do_not_move_the_schedule(tmp_path):
    recipe = make_recipe(data={"corrupt_samples": [3]}, train={"max_steps": 20})
    result = train(recipe, tmp_path / "run")
    events = _events(tmp_path / "run", "nonfinite")
    # sample 3 sits in one of the 8 batches of every epoch; 20 good steps span 3 epochs
    assert result.step == 20 and result.skipped_steps == len(events) == 3
    state = load_trainer_state(latest_checkpoint(tmp_path / "run"))
    assert state["skipped"] == 3 and state["scheduler"]["last_epoch"] == 20
    lr = recipe.optim.lr * lr_factor(20, recipe.optim, recipe.train.max_steps)
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr)
    weights = final_weights(tmp_path / "run")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert json.loads((tmp_path / "run" / "final_metrics.json").read_text())["skipped_steps"] == 3


def test_too_many_nonfinite_steps_stop_with_a_checkpoint(tmp_path):
    recipe = make_recipe(data={"corrupt_samples": list(range(64))}, train={"max_nonfinite_in_row": 4})
    with pytest.raises(TrainingDiverged, match="4 non-finite steps in a row"):
        train(recipe, tmp_path / "run")
    assert [c.step for c in list_checkpoints(tmp_path / "run")] == [0]
    assert _events(tmp_path / "run", "diverged")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(tmp_path, precision):
    result = train(make_recipe(train={"precision": precision, "max_steps": 30}), tmp_path / precision)
    assert result.step == 30
    baseline = train(make_recipe(train={"max_steps": 30}), tmp_path / "fp32")
    assert result.metrics["final_mse"] < 2.0 * baseline.metrics["final_mse"] + 1e-3
    weights = final_weights(tmp_path / precision)
    assert all(w.dtype == torch.float32 for w in weights.values())  # parameters stay fp32


def test_run_directory_contents(tmp_path):
    recipe = make_recipe(
        train={"checkpoint_every": 5, "keep_last": 2, "ema_rates": [0.9], "tensorboard": True}
    )
    train(recipe, tmp_path / "run")
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and "debug_regression" in (run / "config.yaml").read_text()
    assert [c.step for c in list_checkpoints(run)] == [15, 20]  # keep_last
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "loss" in r and "event" not in r]
    assert {r["step"] for r in logged} == {5, 10, 15, 20}
    assert {"lr", "grad_norm", "steps_per_s", "samples_per_s"} <= logged[0].keys()
    if importlib.util.find_spec("tensorboard") is not None:  # the `tensorboard` extra
        assert list((run / "tb").glob("events.out.tfevents.*"))
    assert logged[-1]["loss"] < logged[0]["loss"]


def test_step_flags_round_trip_through_one_tensor():
    flags = StepFlags(nonfinite=1.0, preempted=0.0, past_time_limit=1.0, loss_sum=0.125, samples=16.0)
    tensor = flags.to_tensor(torch.device("cpu"))
    assert tensor.dtype == torch.float64 and tensor.tolist() == [1.0, 0.0, 1.0, 0.125, 16.0]
    assert StepFlags.from_tensor(tensor * 2) == StepFlags(2.0, 0.0, 2.0, 0.25, 32.0)  # a 2-rank sum
    assert flags.all_reduce(DistInfo()) is flags  # one process: nothing to reduce
