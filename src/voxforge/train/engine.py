"""The training engine: runs any `Stage` from a recipe, on one process or many.

`train(recipe, run_dir)` is the whole public surface. It

- builds the stage's model (fp32 parameters), dataset, AdamW groups, LR schedule, EMA,
  gradient clipper and, for fp16, a GradScaler;
- resumes from the newest *committed* checkpoint of `run_dir` (half-written ones are
  removed), restoring weights, optimizer, schedule, scaler, EMA, every rank's RNG state
  and the data position, so N steps straight and N/2 + resume + N/2 give bit-identical
  weights on CPU;
- runs optimizer steps of `grad_accum` micro-batches under autocast; a non-finite loss or
  gradient on any rank skips the step on all ranks (counted, logged, schedule not moved)
  and too many in a row stop the run with a checkpoint (`TrainingDiverged`);
- stops cleanly on SIGTERM / SIGUSR1 (preemption), `train.time_limit` or `stop_after`,
  always finishing the current step and committing a checkpoint first;
- records in `RUN/state.json` (rank 0) that it runs, then how it ended: done, preempted,
  stopped (time limit, stop_after) or failed with the error (`voxforge.train.monitor`).
- on several processes, replicates the model (`train.parallel: ddp`) or shards it with
  FSDP2 (`fsdp`: sharded before the optimizer is built; checkpoints still hold full
  tensors, see `voxforge.train.distributed`).

Stages never see DDP, precision or checkpoints; see `voxforge.stages.base`.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import signal
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from voxforge.config.core import dump_yaml, to_dict
from voxforge.errors import UserError
from voxforge.stages import Recipe, get_stage
from voxforge.stages.base import Stage
from voxforge.train import checkpoint as ckpt_io
from voxforge.train.data import BatchStream
from voxforge.train.distributed import (
    DistInfo,
    full_model_state,
    full_optimizer_state,
    gather_full,
    init_distributed,
    load_full_model_state,
    load_full_optimizer_state,
    materialize,
    meta_template,
    optimizer_state_by_index,
    resolve_parallel,
    shard_like,
    shard_model,
    wrap_model,
)
from voxforge.train.ema import EMA
from voxforge.train.logging import MetricsLogger, Progress, SpikeDetector
from voxforge.train.monitor import RunStateFile
from voxforge.train.optim import GradClipper, build_optimizer, build_param_groups, build_scheduler, grad_norm
from voxforge.train.precision import DTYPES, PrecisionChoice, autocast, make_scaler, resolve_run_precision

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingDiverged(RuntimeError):
    """Too many non-finite steps in a row; a checkpoint of the last good state was written."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    reason: str  # max_steps | already_complete | preempted | time_limit | stop_after
    skipped_steps: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)
    signal: int | None = None

    @property
    def exit_code(self) -> int:
        return 128 + self.signal if self.signal else 0


@dataclass
class StepFlags:
    """One step's outcome on this process; summed over processes in a single all-reduce, so
    every rank takes the same decision (skip, stop) and sees the same mean loss."""

    nonfinite: float  # micro-batches with a non-finite loss, +1 for a non-finite gradient norm
    preempted: float  # processes that received SIGTERM / SIGUSR1
    past_time_limit: float  # processes past train.time_limit
    loss_sum: float  # mean micro-batch loss of the step (finite ones), summed over processes
    samples: float  # samples in the step, summed over processes

    def to_tensor(self, device: torch.device) -> torch.Tensor:  # [5] float64, in field order
        values = [float(getattr(self, f.name)) for f in fields(self)]
        return torch.tensor(values, dtype=torch.float64, device=device)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> StepFlags:
        return cls(*tensor.tolist())

    def all_reduce(self, info: DistInfo) -> StepFlags:
        if not info.enabled:
            return self
        # on the training device: NCCL reduces only CUDA tensors
        return StepFlags.from_tensor(info.all_reduce_sum(self.to_tensor(info.device)))


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device) for v in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch


@contextlib.contextmanager
def forked_rng():
    """Run a block (sampling hooks) without disturbing the training RNG streams."""
    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(py)
    np.random.set_state(npy)


def _from_main(info: DistInfo, value: int) -> int:
    """Rank 0's `value` on every rank (an all-reduce over a tensor only rank 0 fills)."""
    tensor = torch.tensor([value if info.is_main else 0], dtype=torch.float64, device=info.device)
    return int(info.all_reduce_sum(tensor).item())


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _write_config(run_dir: Path, recipe: Recipe, progress: Progress) -> None:
    path = run_dir / "config.yaml"
    text = dump_yaml(recipe)
    if path.is_file():
        old = yaml.safe_load(path.read_text()) or {}
        new = to_dict(recipe)
        changed = sorted(_diff_keys(old, new))
        if changed:
            progress.write(f"voxforge: resuming {run_dir} with changed settings: {', '.join(changed)}")
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _diff_keys(old: Any, new: Any, prefix: str = "") -> set[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys: set[str] = set()
        for k in set(old) | set(new):
            keys |= _diff_keys(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else k)
        return keys
    return set() if old == new else {prefix}


class Trainer:
    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | Path,
        *,
        stop_after: int | None = None,
        recipe_name: str | None = None,
    ):
        self.recipe = recipe
        self.cfg = recipe.train
        self.run_dir = Path(run_dir)
        self.stop_after = stop_after
        # RUN/state.json on rank 0 (train.monitor): running, then how the invocation ended
        self.state_file = RunStateFile(self.run_dir, recipe=recipe_name, max_steps=self.cfg.max_steps)
        self._signal: int | None = None
        # set up by run() (process group, run folder) and _build() (the stage's parts)
        self.info = DistInfo()
        self.precision = "fp32"  # resolved train.precision: fp32 | bf16 | fp16, same on every rank
        self.parallel = "none"  # resolved train.parallel: none | ddp | fsdp
        self.template: nn.Module | None = None  # fsdp: the unsharded skeleton for rank-0 hooks
        self.stage: Stage | None = None
        self.model: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self.clipper: GradClipper | None = None
        self.ema: EMA | None = None
        self.spikes: SpikeDetector | None = None
        self.dataset: Any = None
        self.params: list[nn.Parameter] = []
        self.logger: MetricsLogger | None = None
        # training position: checkpointed, restored by _resume()
        self.step = 0
        self.skipped = 0
        self.nonfinite_in_row = 0
        self.samples_seen = 0
        self.ema_updates = 0
        self.data_state: dict[str, int] = {"epoch": 0, "batch": 0}
        self.last_saved = -1  # step of the newest checkpoint this process wrote or resumed from

    # --- set-up ---------------------------------------------------------------------
    def _build(self, info: DistInfo) -> None:
        cfg, device = self.cfg, info.device
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        _seed_all(cfg.seed)  # identical initial weights on every rank
        stage_cls = get_stage(self.recipe.stage)
        self.stage = stage_cls(self.recipe, self.run_dir, device)
        self.model: nn.Module = self.stage.build_model().to(device)
        self.parallel = resolve_parallel(cfg.parallel, info)
        if self.parallel == "fsdp":  # before the optimizer: sharding replaces the parameters
            units = self.stage.fsdp_units(self.model)
            self.template = meta_template(self.model)
            shard_model(
                self.model, units, info, precision=self.precision, reshard_after_forward=cfg.fsdp_reshard
            )
        groups = self.stage.param_groups(self.model) or build_param_groups(self.model, self.recipe.optim)
        self.optimizer = build_optimizer(groups, self.recipe.optim)
        self.scheduler = build_scheduler(self.optimizer, self.recipe.optim, cfg.max_steps)
        self.scaler = make_scaler(device, self.precision)
        self.clipper = GradClipper(cfg)
        self.ema = EMA(self.model, cfg.ema_rates) if cfg.ema_rates else None
        self.spikes = SpikeDetector(cfg.spike_factor, cfg.spike_window)
        self.dataset = self.stage.build_dataset()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        _seed_all(cfg.seed + 7919 * info.rank)  # per-rank stream for the stages' randomness

    def _trainer_state(self, stream: BatchStream, optimizer_state: dict) -> dict[str, Any]:
        return {
            "step": self.step,
            "skipped": self.skipped,
            "nonfinite_in_row": self.nonfinite_in_row,
            "samples_seen": self.samples_seen,
            "ema_updates": self.ema_updates,
            "optimizer": optimizer_state,
            "parallel": self.parallel,  # fsdp: the optimizer state is keyed by parameter name
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "clipper": self.clipper.state_dict(),
            "spikes": self.spikes.state_dict(),
            "data": stream.state_dict(),
            "world_size": self.info.world_size,
            "stage": self.stage.state_dict(),  # stage-owned state (Stage.state_dict), {} for most
        }

    def _resume(self, info: DistInfo) -> ckpt_io.CheckpointInfo | None:
        # Verified and fully read before anything is applied: a damaged newest checkpoint is
        # moved aside and the next older one used (see checkpoint.load_for_resume).
        loaded = ckpt_io.load_for_resume(
            self.run_dir,
            rank=info.rank,
            ema_rates=self.ema.rates if self.ema is not None else (),
            agree=lambda code: _from_main(info, code),
        )
        self.damaged_checkpoints = loaded.damaged if loaded is not None else []
        if loaded is None:
            return None
        ckpt = loaded.info
        fsdp = self.parallel == "fsdp"
        try:
            if fsdp:
                load_full_model_state(self.model, loaded.model)
            else:
                self.model.load_state_dict(loaded.model)
        except (RuntimeError, KeyError, ValueError) as err:
            raise UserError(
                f"{ckpt.weights['model']}: weights do not fit the model built from this recipe "
                f"(were model settings changed?): {str(err).splitlines()[-1].strip()}"
            ) from None
        if self.ema is not None:
            shadows = self.ema.state_dicts()
            self.ema.load_state_dicts(
                {r: shard_like(s, shadows[r]) for r, s in loaded.ema.items() if r in shadows}
                if fsdp
                else loaded.ema
            )
        ts = loaded.trainer_state
        if fsdp:
            load_full_optimizer_state(self.model, self.optimizer, ts["optimizer"])
        else:  # an fsdp run's state (keyed by name) resumes under ddp too
            self.optimizer.load_state_dict(
                optimizer_state_by_index(ts["optimizer"], self.model, self.optimizer)
            )
        self.scheduler.load_state_dict(ts["scheduler"])
        if self.scaler is not None and ts.get("scaler"):
            self.scaler.load_state_dict(ts["scaler"])
        self.clipper.load_state_dict(ts["clipper"])
        self.spikes.load_state_dict(ts["spikes"])
        self.stage.load_state_dict(ts.get("stage") or {})
        self.step, self.skipped = ts["step"], ts["skipped"]
        self.nonfinite_in_row, self.samples_seen = ts["nonfinite_in_row"], ts["samples_seen"]
        self.ema_updates = ts.get("ema_updates", 0)
        if ts.get("world_size", 1) == info.world_size:
            self.data_state = ts["data"]
        else:  # a different process count re-deals the data; restart at the next epoch
            self.data_state = {"epoch": ts["data"]["epoch"] + 1, "batch": 0}
        if loaded.rng is not None:
            ckpt_io.restore_rng(loaded.rng)
        return ckpt

    # --- checkpoint / hooks ------------------------------------------------------------
    def _save(self, stream: BatchStream) -> None:
        info = self.info
        main = info.is_main
        if self.parallel == "fsdp":  # collectives: every rank gathers, rank 0 keeps the full tensors
            model_state = full_model_state(self.model)
            ema_states = (
                {r: gather_full(s, info) for r, s in self.ema.state_dicts().items()} if self.ema else None
            )
            optimizer_state = full_optimizer_state(self.model, self.optimizer)
        else:
            model_state = self.model.state_dict() if main else None
            ema_states = self.ema.state_dicts() if (main and self.ema) else None
            optimizer_state = self.optimizer.state_dict() if main else {}
        ckpt_io.save_checkpoint(
            self.run_dir,
            self.step,
            model_state=model_state if main else None,
            ema_states=ema_states if main else None,
            trainer_state=self._trainer_state(stream, optimizer_state) if main else None,
            rank=info.rank,
            world_size=info.world_size,
            barrier=info.barrier,
            keep_last=self.cfg.keep_last,
        )
        self.last_saved = self.step
        if main:
            self.logger.event(self.step, "checkpoint", path=str(ckpt_io.checkpoint_root(self.run_dir)))

    def _eval_model(self) -> nn.Module | None:
        """A plain copy of the model (EMA weights when EMA is on) for rank 0's hooks; None on
        the other ranks. Collective under fsdp (the weights are gathered)."""
        if self.parallel == "fsdp":
            if self.ema is not None:
                state = gather_full(self.ema.state_dicts()[max(self.ema.rates)], self.info)
            else:
                state = full_model_state(self.model)
            if not self.info.is_main:
                return None
            return materialize(self.template, state, self.info.device).eval()
        if not self.info.is_main:
            return None
        model = copy.deepcopy(self.model)
        if self.ema is not None:
            self.ema.copy_to(model)
        return model.eval()

    def _sample(self) -> None:
        eval_model = self._eval_model()
        if self.info.is_main:
            out_dir = self.run_dir / "samples" / f"step_{self.step:08d}"
            out_dir.mkdir(parents=True, exist_ok=True)
            with forked_rng(), torch.no_grad():
                metrics = self.stage.on_sample(eval_model, self.step, out_dir)
            if metrics:
                self.logger.log(self.step, {f"sample/{k}": v for k, v in metrics.items()})
        self.info.barrier()

    def _agree_on_precision(self, choice: PrecisionChoice | None) -> str:
        """Rank 0 decides (probe, precision.json); every rank trains in its choice."""
        if not self.info.enabled:
            assert choice is not None
            return choice.resolved
        names = list(DTYPES)
        votes = torch.zeros(len(names), dtype=torch.float64, device=self.info.device)
        if choice is not None:
            votes[names.index(choice.resolved)] = 1.0
        return names[int(self.info.all_reduce_sum(votes).argmax())]

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum

    # --- the loop -------------------------------------------------------------------
    def run(self) -> TrainResult:
        try:
            result = self._run()
        except BaseException as err:
            if self.info.is_main and self.state_file.path.parent.is_dir():
                self.state_file.fail(err, self.step)
            raise
        if self.info.is_main:
            self.state_file.finish(result.reason, result.step)
        return result

    def _run(self) -> TrainResult:
        cfg = self.cfg
        self.info = info = init_distributed(cfg.device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if info.is_main:
            self.state_file.start()
        start_time = time.monotonic()
        quiet_progress = Progress(0, 0, enabled=False)
        choice: PrecisionChoice | None = None
        if info.is_main:
            for path in ckpt_io.clean_incomplete(self.run_dir):
                quiet_progress.write(f"voxforge: removed incomplete checkpoint {path} (interrupted save)")
            # before _write_config: a run without precision.json keeps its old config's precision
            choice = resolve_run_precision(
                self.run_dir,
                cfg.precision,
                info.device,
                resuming=ckpt_io.latest_checkpoint(self.run_dir) is not None,
            )
            if choice.requested == "auto":
                quiet_progress.write(f"voxforge: {choice.describe()}")
            _write_config(self.run_dir, self.recipe, quiet_progress)
        info.barrier()
        self.precision = self._agree_on_precision(choice)
        self._build(info)
        resumed = self._resume(info)
        if self.step >= cfg.max_steps:
            return TrainResult(self.run_dir, self.step, "already_complete", self.skipped)

        self.logger = MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard, enabled=info.is_main)
        for moved, reason in self.damaged_checkpoints:
            self.logger.event(self.step, "checkpoint_damaged", moved_to=str(moved), reason=reason)
        if resumed is not None:
            self.logger.event(self.step, "resume", checkpoint=str(resumed.path))
        if choice is not None:
            self.logger.event(self.step, "precision", **choice.to_json())
        wrapped = wrap_model(
            self.model, info, parallel=self.parallel, compile=cfg.compile, find_unused=cfg.ddp_find_unused
        )
        stream = BatchStream(
            self.dataset,
            self.stage.collate,
            batch_size=cfg.batch_size,
            rank=info.rank,
            world_size=info.world_size,
            seed=cfg.seed,
            num_workers=cfg.num_workers,
            make_sampler=lambda **kw: self.stage.batch_sampler(self.dataset, cfg.batch_size, **kw),
            **self.data_state,
        )
        progress = Progress(
            cfg.max_steps, self.step, enabled=info.is_main and cfg.progress, desc=self.recipe.stage
        )
        previous = {s: signal.signal(s, self._on_signal) for s in PREEMPT_SIGNALS}
        self.last_saved = self.step if resumed is not None else -1
        steps_this_run = 0
        reason, result_signal = "max_steps", None
        window: dict[str, float] = {}
        window_steps, window_samples, window_start = 0, 0, time.perf_counter()
        try:
            while self.step < cfg.max_steps:
                metrics, samples, local_bad, loss_sum = self._train_step(wrapped, stream)
                gnorm = grad_norm(self.params)
                elapsed = time.monotonic() - start_time
                flags = StepFlags(
                    nonfinite=float(local_bad + (0 if math.isfinite(gnorm) else 1)),
                    preempted=float(self._signal is not None),
                    past_time_limit=float(cfg.time_limit is not None and elapsed > cfg.time_limit),
                    loss_sum=loss_sum,
                    samples=float(samples),
                ).all_reduce(info)
                if flags.nonfinite > 0:
                    self._skip_step(flags, progress, stream)
                else:
                    self._apply_step(gnorm)
                    steps_this_run += 1
                    loss = flags.loss_sum / info.world_size
                    self.samples_seen += int(flags.samples)
                    window_steps += 1
                    window_samples += int(flags.samples)
                    for k, v in {"loss": loss, "grad_norm": gnorm, **metrics}.items():
                        window[k] = window.get(k, 0.0) + v
                    median = self.spikes.check(loss)
                    if median is not None and info.is_main:
                        self.logger.event(self.step, "loss_spike", loss=loss, recent_median=median)
                        progress.write(
                            f"voxforge: loss spike at step {self.step}: {loss:.4g} (median {median:.4g})"
                        )
                    if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                        seconds = max(time.perf_counter() - window_start, 1e-9)
                        record = {k: v / window_steps for k, v in window.items()}
                        record.update(
                            lr=self.scheduler.get_last_lr()[0],
                            steps_per_s=window_steps / seconds,
                            samples_per_s=window_samples / seconds,
                            skipped_steps=self.skipped,
                        )
                        self.logger.log(self.step, record)
                        progress.update(window_steps, loss=record["loss"], samples_s=record["samples_per_s"])
                        window, window_steps, window_samples, window_start = {}, 0, 0, time.perf_counter()
                    if cfg.sample_every and self.step % cfg.sample_every == 0:
                        self._sample()
                    if self.step % cfg.checkpoint_every == 0:
                        self._save(stream)
                if flags.preempted > 0:
                    result_signal = self._signal or int(signal.SIGTERM)
                    reason = "preempted"
                elif flags.past_time_limit > 0:
                    reason = "time_limit"
                elif self.stop_after is not None and steps_this_run >= self.stop_after:
                    reason = "stop_after"
                if reason != "max_steps":
                    break
            if self.last_saved != self.step:
                self._save(stream)
            if reason == "max_steps":
                if not (cfg.sample_every and self.step % cfg.sample_every == 0):
                    self._sample()
                final = self._finish()
            else:
                final = {}
                self.logger.event(self.step, reason, signal=result_signal)
                progress.write(
                    f"voxforge: stopped at step {self.step} ({reason}); "
                    "checkpoint committed, re-run the same command to continue"
                )
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            progress.close()
            self.logger.close()
        return TrainResult(self.run_dir, self.step, reason, self.skipped, final, result_signal)

    def _train_step(
        self, wrapped: nn.Module, stream: BatchStream
    ) -> tuple[dict[str, float], int, int, float]:
        cfg, device = self.cfg, self.info.device
        self.optimizer.zero_grad(set_to_none=True)
        metrics: dict[str, float] = {}
        samples, bad, loss_sum = 0, 0, 0.0
        for micro in range(cfg.grad_accum):
            batch = to_device(stream.next(), device)
            samples += self.stage.batch_size_of(batch)
            last = micro == cfg.grad_accum - 1
            no_sync = getattr(wrapped, "no_sync", None)
            sync = contextlib.nullcontext() if (last or no_sync is None) else no_sync()
            with sync:
                with autocast(device, self.precision):
                    loss, extra = self.stage.loss(wrapped, batch)
                value = float(loss.detach().float())
                scaled = loss.float() / cfg.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            if math.isfinite(value):
                loss_sum += value / cfg.grad_accum
            else:
                bad += 1
            for k, v in (extra or {}).items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / cfg.grad_accum
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        return metrics, samples, bad, loss_sum

    def _apply_step(self, gnorm: float) -> None:
        self.clipper.clip(self.params, gnorm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        self.nonfinite_in_row = 0
        self.stage.after_step(self.model, self.step)
        if self.ema is not None:
            self.ema.update(self.model, self.ema_updates if self.cfg.ema_warmup else None)
            self.ema_updates += 1

    def _skip_step(self, flags: StepFlags, progress: Progress, stream: BatchStream) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.update()  # lowers the fp16 loss scale after an overflow
        self.skipped += 1
        self.nonfinite_in_row += 1
        if self.info.is_main:
            self.logger.event(
                self.step,
                "nonfinite",
                skipped_total=self.skipped,
                in_row=self.nonfinite_in_row,
                loss=flags.loss_sum,
            )
        if self.nonfinite_in_row >= self.cfg.max_nonfinite_in_row:
            if self.last_saved != self.step:
                self._save(stream)
            message = (
                f"{self.nonfinite_in_row} non-finite steps in a row at step {self.step} "
                f"({self.skipped} skipped in total); the last good state is checkpointed in "
                f"{ckpt_io.checkpoint_root(self.run_dir)}. Lower optim.lr, use train.precision=bf16 "
                "instead of fp16, or tighten train.grad_clip_norm, then re-run to resume."
            )
            if self.info.is_main:
                self.logger.event(self.step, "diverged", message=message)
            raise TrainingDiverged(message)

    def _finish(self) -> dict[str, Any]:
        final: dict[str, Any] = {}
        eval_model = self._eval_model()
        if self.info.is_main:
            with forked_rng(), torch.no_grad():
                final = self.stage.on_train_end(eval_model, self.step) or {}
            final = {"step": self.step, "skipped_steps": self.skipped, **final}
            (self.run_dir / "final_metrics.json").write_text(json.dumps(final, indent=1, default=float))
        self.info.barrier()
        return final


def train(
    recipe: Recipe, run_dir: str | Path, *, stop_after: int | None = None, recipe_name: str | None = None
) -> TrainResult:
    """Train `recipe` in `run_dir`, resuming from its newest committed checkpoint; `recipe_name`
    (the file or built-in name it came from) is recorded in RUN/state.json."""
    return Trainer(recipe, run_dir, stop_after=stop_after, recipe_name=recipe_name).run()
