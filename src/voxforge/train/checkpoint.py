"""Crash-safe checkpoints.

Layout of a run directory::

    RUN/checkpoints/step_00001000/
        model.safetensors          raw weights (the unwrapped model's state dict)
        ema_0.9999.safetensors     one file per EMA rate (a full state dict, loads like model)
        trainer_state.pt           optimizer, scheduler, scaler, clipper, counters, data position
        rng_rank0.pt ...           RNG states of every rank (torch, cuda, numpy, python)
        meta.json                  step, wall time, world size, file list
        COMMITTED                  written last: the directory counts only with it

Commit protocol (TRELLIS writes checkpoints in place, so a crash during a save corrupts
the resume target; we never do): everything is written into `.tmp-step_XXXXXXXX/`, each
file is fsynced, the `COMMITTED` marker is written and fsynced, then the directory is
renamed to its final name and the parent directory is fsynced. A crash at any point
leaves either the previous committed checkpoint untouched or a `.tmp-*` directory, which
`clean_incomplete` removes on the next start. Nothing is ever unpickled: trainer state
loads with `torch.load(weights_only=True)` and weights with safetensors.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from voxforge.errors import UserError

MARKER = "COMMITTED"
_STEP_DIR = re.compile(r"^step_(\d{8,})$")


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    time: float
    weights: dict[str, Path]  # "model" and "ema_<rate>" -> safetensors file

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "path": str(self.path),
            "time": self.time,
            "time_iso": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(self.time)),
            "weights": {k: str(v) for k, v in self.weights.items()},
        }


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, write: Callable[[Path], None]) -> None:
    write(path)
    _fsync_path(path)


def list_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """Committed checkpoints of a run, oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if not match or not (child / MARKER).is_file():
            continue
        try:
            meta = json.loads((child / "meta.json").read_text())
        except (OSError, json.JSONDecodeError):
            continue
        weights = {"model": child / "model.safetensors"}
        for rate in meta.get("ema_rates", []):
            weights[f"ema_{rate}"] = child / f"ema_{rate}.safetensors"
        found.append(CheckpointInfo(int(match.group(1)), child, float(meta.get("time", 0.0)), weights))
    return sorted(found, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | Path) -> CheckpointInfo | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def clean_incomplete(run_dir: str | Path) -> list[Path]:
    """Remove half-written checkpoints (a crash during a save); returns what was removed."""
    root = checkpoint_root(run_dir)
    removed = []
    if not root.is_dir():
        return removed
    for child in root.iterdir():
        incomplete = child.name.startswith(".tmp-") or (
            _STEP_DIR.match(child.name) and not (child / MARKER).is_file()
        )
        if incomplete and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
    return removed


# --- RNG state (per rank) ---------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """All RNG states as tensors / ints, so they load with weights_only=True."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python_version": py_version,
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss": py_gauss,
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_gauss": float(np_state[4]),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- saving ------------------------------------------------------------------------------


def _tensor_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage; contiguous clones on CPU are always accepted.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor] | None,
    ema_states: dict[float, dict[str, torch.Tensor]] | None,
    trainer_state: dict[str, Any] | None,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    keep_last: int | None = None,
) -> Path:
    """Write and atomically commit the checkpoint of `step` (collective across ranks).

    Every rank writes its RNG state; rank 0 writes weights and trainer state (pass None on
    other ranks), then commits and prunes. `barrier` separates the phases in DDP.
    """
    root = checkpoint_root(run_dir)
    name = f"step_{step:08d}"
    tmp = root / f".tmp-{name}"
    final = root / name
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier()
    _write_durable(tmp / f"rng_rank{rank}.pt", lambda p: torch.save(capture_rng(), p))
    barrier()
    if rank == 0:
        assert model_state is not None and trainer_state is not None
        _write_durable(tmp / "model.safetensors", lambda p: save_file(_tensor_dict(model_state), str(p)))
        rates = sorted((ema_states or {}).keys())
        for rate in rates:
            state = _tensor_dict(ema_states[rate])
            _write_durable(tmp / f"ema_{rate}.safetensors", lambda p, s=state: save_file(s, str(p)))
        _write_durable(tmp / "trainer_state.pt", lambda p: torch.save(trainer_state, p))
        meta = {"step": step, "time": time.time(), "world_size": world_size, "ema_rates": rates}
        _write_durable(tmp / "meta.json", lambda p: p.write_text(json.dumps(meta, indent=1)))
        _write_durable(tmp / MARKER, lambda p: p.write_text(f"{step}\n"))
        _fsync_path(tmp)
        if final.exists():  # the same step saved again (e.g. final save after a periodic one)
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_path(root)
        if keep_last:
            for old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old.path, ignore_errors=True)
    barrier()
    return final


# --- loading -----------------------------------------------------------------------------


def load_trainer_state(ckpt: CheckpointInfo) -> dict[str, Any]:
    return torch.load(ckpt.path / "trainer_state.pt", map_location="cpu", weights_only=True)


def load_rng_state(ckpt: CheckpointInfo, rank: int) -> dict[str, Any] | None:
    path = ckpt.path / f"rng_rank{rank}.pt"
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weight file not found")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None


def load_model_weights(
    model: nn.Module, run_dir: str | Path, *, ema: bool | float = True, strict: bool = True
) -> CheckpointInfo:
    """Load the newest committed checkpoint's weights of `run_dir` into `model`.

    `ema=True` takes the slowest EMA rate when the run has EMA (falling back to the raw
    weights), a float picks that rate, False takes the raw weights.
    """
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None:
        raise UserError(f"{run_dir}: no committed checkpoint found (has this run trained yet?)")
    ema_keys = sorted(k for k in ckpt.weights if k.startswith("ema_"))
    key = "model"
    if ema is not False and ema_keys:
        if isinstance(ema, float) and not isinstance(ema, bool):
            key = f"ema_{ema}"
            if key not in ckpt.weights:
                raise UserError(
                    f"{run_dir}: no EMA at rate {ema}; available: {', '.join(ema_keys) or 'none'}"
                )
        else:
            key = max(ema_keys, key=lambda k: float(k[4:]))
    state = load_state_dict_file(ckpt.weights[key])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise UserError(
            f"{ckpt.weights[key]}: weights do not match the model "
            f"(missing: {list(missing)[:5]}, unexpected: {list(unexpected)[:5]})"
        )
    return ckpt
