"""The interface between the training engine and what it trains.

A *stage* (the toy flow, the sparse-structure VAE, the structure flow, ...) is a class
that says which recipe sections it owns and how to build its model, its dataset and its
loss. The engine (`voxforge.train.engine`) does everything else: devices, precision,
distribution, optimisation, EMA, checkpoints, logging and preemption.

Rules a stage follows so that resume is exact and distribution is transparent:
- Model code is single-device. The engine wraps the model (`train.parallel`: DDP, or FSDP2
  over the units `fsdp_units` names); `loss` receives the wrapped model and must call it
  (not `model.module`) for the forward pass.
- Randomness inside `loss` draws from the global torch RNG (the engine saves and restores
  it per rank). Randomness inside a dataset's `__getitem__` derives from the index and
  `self.epoch` (see `EpochAware`), never from global state, so worker processes and
  resumed runs see the same data.
- `loss` runs under the engine's autocast; anything that must stay fp32 (rendering,
  losses on rendered images, sampling accumulators) fences itself with
  `torch.autocast(device_type, enabled=False)`.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from voxforge.stages import Recipe
from voxforge.train.distributed import transformer_blocks


class EpochAware:
    """Mixin for datasets whose per-item randomness depends on the epoch; the engine sets it."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class Stage(abc.ABC):
    """Base class of trainable stages; subclasses set `name` and `sections`."""

    name: ClassVar[str] = ""
    #: extra recipe sections this stage owns, e.g. {"model": ToyModelConfig, "data": ...}
    sections: ClassVar[dict[str, type]] = {}

    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device):
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.device = device
        self._evaluated: tuple[int, Any] | None = None

    # --- building -------------------------------------------------------------------
    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The single-device model, fp32 parameters (the engine moves and wraps it)."""

    @abc.abstractmethod
    def build_dataset(self) -> torch.utils.data.Dataset:
        """A map-style dataset; items are batched by `collate`."""

    def collate(self, items: list[Any]) -> Any:
        return torch.utils.data.default_collate(items)

    def batch_sampler(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        *,
        rank: int,
        world_size: int,
        seed: int,
        epoch: int,
        start_batch: int,
    ) -> Any:
        """One epoch's batch sampler, or None for the engine's `train.data.ResumableBatchSampler`.

        Override to group items (e.g. by aspect-ratio bucket); the result must be a function
        of the arguments alone and expose `batches_per_epoch` (see `train.data.BatchStream`).
        """
        return None

    def fsdp_units(self, model: nn.Module) -> list[nn.Module]:
        """The modules `train.parallel: fsdp` shards one by one before the root (each one's
        weights are gathered only while it runs); default: the items of the model's outermost
        `nn.ModuleList`s, a transformer's blocks. Raise UserError for a model that cannot be
        sharded."""
        return transformer_blocks(model)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """Optional custom optimizer groups; None uses the recipe's `optim` rules."""
        return None

    # --- training -------------------------------------------------------------------
    @abc.abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """Return the scalar loss of one micro-batch and extra metrics to log."""

    def batch_size_of(self, batch: Any) -> int:
        """Samples in a batch (for samples/s); override for unusual batch structures."""
        if isinstance(batch, torch.Tensor):
            return batch.shape[0]
        if isinstance(batch, dict):
            for value in batch.values():
                if isinstance(value, torch.Tensor):
                    return value.shape[0]
        if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
            return batch[0].shape[0]
        return 1

    # --- stage-owned training state (every rank) ------------------------------------
    def after_step(self, model: nn.Module, step: int) -> None:
        """Called on every rank after each applied optimizer step (not after skipped ones),
        with the unwrapped model and the new step count: for updates that must follow the
        engine's step, e.g. a GAN's G_ema."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Training state the stage owns besides the model's weights (a GAN's second
        optimizer and discriminators, an augmentation probability): tensors, numbers and
        containers of them, saved in every checkpoint's trainer state so resume is exact."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (called on resume, after `build_model`)."""
        return None

    # --- hooks (rank 0 only) ----------------------------------------------------------
    def on_sample(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float] | None:
        """Write periodic samples under `out_dir` (the EMA model when EMA is on); return metrics."""
        return None

    def on_train_end(self, model: nn.Module, step: int) -> dict[str, float] | None:
        """Called once when training reaches max_steps; return final metrics (or None)."""
        return None

    def evaluate_once(self, model: nn.Module, step: int) -> Any:
        """The stage's `evaluate(model, out_dir)` at most once per step, into the step's
        `samples/` folder.

        The engine samples at the last step and then calls `on_train_end` with the same (EMA)
        weights; stages that evaluate in both hooks route them through here, so the final
        evaluation runs once and its previews land in one folder.
        """
        if self._evaluated is not None and self._evaluated[0] == step:
            return self._evaluated[1]
        out_dir = self.run_dir / "samples" / f"step_{step:08d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        result = self.evaluate(model, out_dir)  # type: ignore[attr-defined]
        self._evaluated = (step, result)
        return result
