"""Crash-safe checkpoints.

Layout of a run directory::

    RUN/checkpoints/step_00001000/
        model.safetensors          raw weights (the unwrapped model's state dict)
        ema_0.9999.safetensors     one file per EMA rate (a full state dict, loads like model)
        trainer_state.pt           optimizer, scheduler, scaler, clipper, counters, data position
        rng_rank0.pt ...           RNG states of every rank (torch, cuda, numpy, python)
        meta.json                  step, wall time, world size, EMA rates
        manifest.json              sha256 and size of every file above
        COMMITTED                  written last (holds the manifest's sha256): the
                                   directory counts only with it
    RUN/checkpoints/damaged/       checkpoints that failed verification, moved aside

Commit protocol (TRELLIS writes checkpoints in place, so a crash during a save corrupts
the resume target; we never do): everything is written into `.tmp-step_XXXXXXXX/`, each
file is fsynced, the `COMMITTED` marker is written and fsynced, then the directory is
renamed to its final name and the parent directory is fsynced. A crash at any point
leaves either the previous committed checkpoint untouched or a `.tmp-*` directory, which
`clean_incomplete` removes on the next start. Nothing is ever unpickled: trainer state
loads with `torch.load(weights_only=True)` and weights with safetensors.

A committed checkpoint can still go bad later (a disk error, a truncated copy, a file
swapped by hand). Resume therefore verifies before it trusts: every file against the
manifest, then a full load into memory. Any failure (size, checksum, safetensors header,
refused unpickling, missing file, bad JSON) raises `CheckpointDamaged`; resume moves such a
checkpoint into `damaged/` (never deleted: `list_checkpoints`, pruning and
`clean_incomplete` do not look there) and takes the newest one that verifies. Checkpoints
of earlier versions have no manifest; for them "verifies" means "loads".
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file
from torch import nn

from voxforge.errors import UserError

MARKER = "COMMITTED"
MANIFEST = "manifest.json"
DAMAGED_DIR = "damaged"
DAMAGED_NOTE = "DAMAGED.txt"  # written into a moved-aside checkpoint: why it was moved
_STEP_DIR = re.compile(r"^step_(\d{8,})$")
_MANIFEST_LINE = f"{MANIFEST} sha256 "


class CheckpointDamaged(UserError):
    """A file of a committed checkpoint is missing, changed since the commit, or unreadable."""

    def __init__(self, path: Path, file: str, reason: str):
        super().__init__(f"{Path(path) / file}: {reason}")
        self.path, self.file, self.reason = Path(path), file, reason

    @property
    def summary(self) -> str:
        return f"{self.file}: {self.reason}"


@dataclass
class CheckpointInfo:
    step: int
    path: Path
    time: float
    weights: dict[str, Path]  # "model" and "ema_<rate>" -> safetensors file
    problem: str | None = None  # why meta.json cannot be read (the checkpoint is damaged)

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
        if match and (child / MARKER).is_file():
            found.append(_checkpoint_info(child, int(match.group(1))))
    return sorted(found, key=lambda c: c.step)


def _checkpoint_info(path: Path, step: int) -> CheckpointInfo:
    weights = {"model": path / "model.safetensors"}
    try:
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
        rates = [float(r) for r in meta.get("ema_rates", [])]
        wall = float(meta.get("time", 0.0))
    except (OSError, ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return CheckpointInfo(step, path, 0.0, weights, problem=f"not readable ({_one_line(err)})")
    for rate in rates:
        weights[f"ema_{rate}"] = path / f"ema_{rate}.safetensors"
    return CheckpointInfo(step, path, wall, weights)


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
        files = {
            f.name: {"sha256": _sha256(f), "bytes": f.stat().st_size}
            for f in sorted(tmp.iterdir())
            if f.is_file() and f.name not in (MANIFEST, MARKER)
        }
        manifest = json.dumps({"format": 1, "step": step, "files": files}, indent=1).encode()
        _write_durable(tmp / MANIFEST, lambda p: p.write_bytes(manifest))
        digest = hashlib.sha256(manifest).hexdigest()
        _write_durable(tmp / MARKER, lambda p: p.write_text(f"{step}\n{_MANIFEST_LINE}{digest}\n"))
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


# --- verifying --------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _one_line(err: BaseException) -> str:
    """The informative line of an exception message (torch's unpickling errors span a page)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    noise = ("Weights only load failed", "Please file an issue", "Check the documentation")
    useful = [line for line in lines if not line.startswith(noise)]
    text = (useful or lines or [type(err).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def read_manifest(ckpt: CheckpointInfo) -> dict[str, dict[str, Any]] | None:
    """{file name: {"sha256", "bytes"}} recorded at commit; None for checkpoints of earlier
    versions (no manifest). Raises CheckpointDamaged when the manifest itself is bad."""
    path = ckpt.path
    try:
        marker = (path / MARKER).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointDamaged(path, MARKER, f"not readable ({_one_line(err)})") from None
    expected = next(
        (
            line[len(_MANIFEST_LINE) :].strip()
            for line in marker.splitlines()
            if line.startswith(_MANIFEST_LINE)
        ),
        None,
    )
    if not (path / MANIFEST).is_file():
        if expected is not None:
            raise CheckpointDamaged(path, MANIFEST, "missing (the COMMITTED marker names it)")
        return None
    data = (path / MANIFEST).read_bytes()
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise CheckpointDamaged(path, MANIFEST, "sha256 differs from the one in the COMMITTED marker")
    try:
        files = json.loads(data)["files"]
        for entry in files.values():
            if not (isinstance(entry["sha256"], str) and isinstance(entry["bytes"], int)):
                raise TypeError("entries need a sha256 string and a byte count")
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointDamaged(path, MANIFEST, f"not a checkpoint manifest ({_one_line(err)})") from None
    return files


def verify_checkpoint(ckpt: CheckpointInfo, *, full: bool = True) -> bool:
    """Check the files of `ckpt` against its manifest; raise CheckpointDamaged on a mismatch.

    `full=False` checks presence and sizes only (no reading: catches truncation and missing
    files); `full=True` also hashes every file. Returns False for a checkpoint without a
    manifest (earlier versions), which only a load can check (`load_checkpoint`).
    """
    if ckpt.problem:
        raise CheckpointDamaged(ckpt.path, "meta.json", ckpt.problem)
    files = read_manifest(ckpt)
    if files is None:
        return False
    for name, entry in files.items():
        path = ckpt.path / name
        if not path.is_file():
            raise CheckpointDamaged(ckpt.path, name, "missing (listed in the manifest)")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointDamaged(
                ckpt.path, name, f"{size} bytes, {entry['bytes']} when committed (truncated or overwritten)"
            )
    if full:
        for name, entry in files.items():
            if _sha256(ckpt.path / name) != entry["sha256"]:
                raise CheckpointDamaged(ckpt.path, name, "sha256 differs from the one recorded at commit")
    return True


def quarantine(ckpt: CheckpointInfo | Path, reason: str) -> Path:
    """Move a damaged checkpoint into `checkpoints/damaged/` (never deleted); returns its new path."""
    path = ckpt.path if isinstance(ckpt, CheckpointInfo) else Path(ckpt)
    root = path.parent / DAMAGED_DIR
    root.mkdir(exist_ok=True)
    dest, n = root / path.name, 1
    while dest.exists():  # the same step damaged twice
        n += 1
        dest = root / f"{path.name}.{n}"
    os.rename(path, dest)
    with contextlib.suppress(OSError):  # the move is what matters; the note is a courtesy
        (dest / DAMAGED_NOTE).write_text(reason + "\n")
    _fsync_path(root)
    _fsync_path(path.parent)
    return dest


def list_damaged(run_dir: str | Path) -> list[tuple[Path, str]]:
    """Checkpoints moved aside by `quarantine`, with the recorded reason."""
    root = checkpoint_root(run_dir) / DAMAGED_DIR
    if not root.is_dir():
        return []
    found = []
    for child in sorted(root.iterdir()):
        if child.is_dir():
            try:
                reason = (child / DAMAGED_NOTE).read_text().strip()
            except OSError:
                reason = "reason not recorded"
            found.append((child, reason))
    return found


# --- loading -----------------------------------------------------------------------------


def _read(directory: Path, name: str, manifest: dict[str, dict[str, Any]] | None) -> bytes:
    """A checkpoint file's bytes, checked against its manifest entry (when there is one)."""
    path = directory / name
    if not path.is_file():
        raise CheckpointDamaged(directory, name, "missing")
    data = path.read_bytes()
    entry = (manifest or {}).get(name)
    if entry is not None and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointDamaged(directory, name, "sha256 differs from the one recorded at commit")
    return data


def _torch_load(directory: Path, name: str, manifest: dict[str, dict[str, Any]] | None = None) -> Any:
    data = _read(directory, name, manifest)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointDamaged(directory, name, f"unpickling refused ({_one_line(err)})") from None
    except Exception as err:  # truncated zip, bad pickle opcodes: torch raises many types
        raise CheckpointDamaged(
            directory, name, f"not readable ({type(err).__name__}: {_one_line(err)})"
        ) from None


def _safetensors_load(
    directory: Path, name: str, manifest: dict[str, dict[str, Any]] | None = None
) -> dict[str, torch.Tensor]:
    data = _read(directory, name, manifest)
    try:
        return load_safetensors(data)
    except Exception as err:  # safetensors raises several types for corrupt files
        raise CheckpointDamaged(
            directory, name, f"not a readable safetensors file ({_one_line(err)})"
        ) from None


def load_trainer_state(
    ckpt: CheckpointInfo, manifest: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    state = _torch_load(ckpt.path, "trainer_state.pt", manifest)
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "optimizer" not in state:
        raise CheckpointDamaged(ckpt.path, "trainer_state.pt", "not a trainer state (no step or optimizer)")
    return state


def load_rng_state(
    ckpt: CheckpointInfo, rank: int, manifest: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any] | None:
    if not (ckpt.path / f"rng_rank{rank}.pt").is_file():
        return None  # e.g. resuming with more processes than the run was saved with
    return _torch_load(ckpt.path, f"rng_rank{rank}.pt", manifest)


@dataclass
class LoadedCheckpoint:
    """Every file of one checkpoint, read into memory and checked (see `load_checkpoint`)."""

    info: CheckpointInfo
    model: dict[str, torch.Tensor]
    ema: dict[float, dict[str, torch.Tensor]]
    trainer_state: dict[str, Any]
    rng: dict[str, Any] | None
    checksums: bool  # False: written by an earlier version, checked by loading only
    damaged: list[tuple[Path, str]] = field(default_factory=list)  # newer ones moved aside


def load_checkpoint(
    ckpt: CheckpointInfo, *, rank: int = 0, ema_rates: Iterable[float] = (), verify: bool = True
) -> LoadedCheckpoint:
    """Verify `ckpt` (when `verify`) and load all it holds for `rank`; CheckpointDamaged on
    any failure. EMA rates the checkpoint does not have are left out (EMA added on resume)."""
    # presence and sizes first (no reading); each file is then read once, hashed and parsed
    checksums = verify_checkpoint(ckpt, full=False) if verify else False
    manifest = read_manifest(ckpt) if checksums else None
    model = _safetensors_load(ckpt.path, "model.safetensors", manifest)
    ema_names = {rate: f"ema_{rate}.safetensors" for rate in ema_rates if f"ema_{rate}" in ckpt.weights}
    ema = {rate: _safetensors_load(ckpt.path, name, manifest) for rate, name in ema_names.items()}
    trainer_state = load_trainer_state(ckpt, manifest)
    rng = load_rng_state(ckpt, rank, manifest)
    if verify:  # what this rank does not load (other ranks' RNG, unused EMA) is checked too
        loaded = {"model.safetensors", "trainer_state.pt", f"rng_rank{rank}.pt", *ema_names.values()}
        if manifest is not None:
            for name, entry in manifest.items():
                if name not in loaded and _sha256(ckpt.path / name) != entry["sha256"]:
                    raise CheckpointDamaged(ckpt.path, name, "sha256 differs from the one recorded at commit")
        else:  # no manifest: the other ranks' RNG files are checked by loading
            for other in sorted(ckpt.path.glob("rng_rank*.pt")):
                if other.name not in loaded:
                    _torch_load(ckpt.path, other.name)
    return LoadedCheckpoint(ckpt, model, ema, trainer_state, rng, checksums)


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def load_for_resume(
    run_dir: str | Path,
    *,
    rank: int = 0,
    ema_rates: Iterable[float] = (),
    agree: Callable[[int], int] = lambda code: code,
    warn: Callable[[str], None] = _say,
) -> LoadedCheckpoint | None:
    """The newest committed checkpoint of `run_dir` that verifies and loads, or None.

    Rank 0 tries the checkpoints newest first; those that fail are moved into `damaged/`
    (one line each through `warn`) once an older one has loaded. When none loads, nothing
    is moved and a UserError lists why each failed. `agree(code)` hands rank 0's choice to
    every rank (a step, -1 for "none", -2 for "failed"); the other ranks then load that step.
    """
    ema_rates = list(ema_rates)
    picked: LoadedCheckpoint | None = None
    failures: list[CheckpointDamaged] = []
    if rank == 0:
        candidates = list_checkpoints(run_dir)
        for ckpt in reversed(candidates):
            try:
                picked = load_checkpoint(ckpt, rank=0, ema_rates=ema_rates)
                break
            except CheckpointDamaged as err:
                failures.append(err)
    code = picked.info.step if picked is not None else (-2 if failures else -1)
    code = agree(code)
    if code == -1:
        return None
    if code == -2:
        if rank != 0:
            raise UserError(f"{checkpoint_root(run_dir)}: no checkpoint can be resumed (see rank 0)")
        reasons = "; ".join(f"{err.path.name}: {err.summary}" for err in failures)
        raise UserError(
            f"{checkpoint_root(run_dir)}: no checkpoint can be resumed, all {len(failures)} are damaged "
            f"({reasons}); they were left in place. Move the checkpoints folder aside to start over"
        )
    if rank == 0:
        assert picked is not None
        for err in failures:
            moved = quarantine(err.path, err.summary)
            picked.damaged.append((moved, err.summary))
            warn(
                f"voxforge: checkpoint {err.path.name} is damaged ({err.summary}); "
                f"moved to {moved}, resuming from {picked.info.path.name}"
            )
        return picked
    path = checkpoint_root(run_dir) / f"step_{code:08d}"
    try:  # rank 0 has verified every file in the manifest, this rank's RNG file included
        return load_checkpoint(_checkpoint_info(path, code), rank=rank, ema_rates=ema_rates, verify=False)
    except CheckpointDamaged as err:
        raise UserError(f"rank {rank}: {err}") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weight file not found")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None


def _load_weights_verified(ckpt: CheckpointInfo, key: str) -> dict[str, torch.Tensor]:
    """One weight file of `ckpt`, read once and checked against the manifest when there is one."""
    return _safetensors_load(ckpt.path, ckpt.weights[key].name, read_manifest(ckpt))


def load_model_weights(
    model: nn.Module, run_dir: str | Path, *, ema: bool | float = True, strict: bool = True
) -> CheckpointInfo:
    """Load the newest committed checkpoint's weights of `run_dir` into `model`.

    `ema=True` takes the slowest EMA rate when the run has EMA (falling back to the raw
    weights), a float picks that rate, False takes the raw weights. A damaged weight file
    (checksum, truncation, unreadable) falls back to the next older checkpoint with a
    warning on stderr; nothing is moved (that is the training command's job).
    """
    ckpts = list_checkpoints(run_dir)
    if not ckpts:
        raise UserError(f"{run_dir}: no committed checkpoint found (has this run trained yet?)")
    failures: list[CheckpointDamaged] = []
    for ckpt in reversed(ckpts):
        key = _weights_key(ckpt, run_dir, ema)
        try:
            if ckpt.problem:
                verify_checkpoint(ckpt, full=False)
            state = _load_weights_verified(ckpt, key)
        except CheckpointDamaged as err:
            failures.append(err)
            continue
        if failures:
            _say(
                f"voxforge: newest checkpoint of {run_dir} is damaged ({failures[0]}); "
                f"using {ckpt.path.name} instead"
            )
        break
    else:
        reasons = "; ".join(f"{err.path.name}: {err.summary}" for err in failures)
        raise UserError(f"{run_dir}: no checkpoint with readable weights ({reasons})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise UserError(
            f"{ckpt.weights[key]}: weights do not match the model "
            f"(missing: {list(missing)[:5]}, unexpected: {list(unexpected)[:5]})"
        )
    return ckpt


def _weights_key(ckpt: CheckpointInfo, run_dir: str | Path, ema: bool | float) -> str:
    ema_keys = sorted(k for k in ckpt.weights if k.startswith("ema_"))
    if ema is False or not ema_keys:
        return "model"
    if isinstance(ema, float) and not isinstance(ema, bool):
        key = f"ema_{ema}"
        if key not in ckpt.weights:
            raise UserError(f"{run_dir}: no EMA at rate {ema}; available: {', '.join(ema_keys) or 'none'}")
        return key
    return max(ema_keys, key=lambda k: float(k[4:]))
