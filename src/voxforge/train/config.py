"""Configs of the training engine: the `train:` and `optim:` sections of every recipe.

Pure dataclasses (no torch import), so `voxforge config show` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from voxforge.config.core import ConfigValueError, option


@dataclass
class ParamGroupConfig:
    """Parameters whose name matches the regex `match` get their own lr scale / weight decay."""

    match: str = option(help="regular expression searched in the parameter name")
    lr_scale: float = option(1.0, ge=0.0, help="multiplies optim.lr for this group")
    weight_decay: float | None = option(None, ge=0.0, help="overrides optim.weight_decay")


@dataclass
class OptimConfig:
    name: Literal["adamw", "came"] = option(
        "adamw", help="adamw | came (Sana's: factored second moment, confidence-guided; train/came.py)"
    )
    lr: float = option(1e-4, gt=0.0, help="peak learning rate")
    betas: tuple[float, float] = option((0.9, 0.999), ge=0.0, lt=1.0, help="came: its first two betas")
    eps: float = option(1e-8, gt=0.0, help="adamw")
    came_beta3: float = option(0.9999, ge=0.0, lt=1.0, help="came: EMA rate of the update's instability")
    came_eps: tuple[float, float] = option(
        (1e-30, 1e-16), gt=0.0, help="came: added to the squared gradient and to the instability"
    )
    came_clip: float = option(1.0, gt=0.0, help="came: the update's RMS is clipped to this")
    weight_decay: float = option(0.0, ge=0.0)
    no_decay_1d: bool = option(True, help="no weight decay for biases, norms and other 1-D parameters")
    param_groups: list[ParamGroupConfig] = option(default_factory=list, help="first match wins")
    schedule: Literal["constant", "cosine"] = option("constant", help="after warmup")
    warmup_steps: int = option(0, ge=0)
    min_lr_ratio: float = option(0.0, ge=0.0, le=1.0, help="cosine floor as a fraction of lr")


@dataclass
class TrainConfig:
    max_steps: int = option(1000, ge=1, help="optimizer steps (skipped non-finite steps do not count)")
    batch_size: int = option(8, ge=1, help="per process, per micro-step")
    grad_accum: int = option(1, ge=1, help="micro-steps per optimizer step")
    precision: Literal["fp32", "bf16", "fp16", "auto"] = option(
        "fp32", help="auto: bf16 where this machine runs it faster than fp32, else fp32 (precision.json)"
    )
    device: str = option("auto", help="auto | cpu | cuda | cuda:N | mps")
    seed: int = option(0, ge=0)
    deterministic: bool = option(False, help="torch.use_deterministic_algorithms")
    num_workers: int = option(0, ge=0, help="DataLoader worker processes")
    grad_clip: Literal["none", "fixed", "adaptive"] = option("fixed")
    grad_clip_norm: float = option(1.0, gt=0.0, help="fixed: max norm; adaptive: ceiling")
    grad_clip_percentile: float = option(95.0, gt=0.0, le=100.0, help="adaptive: clip at this percentile")
    grad_clip_window: int = option(1000, ge=1, help="adaptive: recent norms remembered")
    ema_rates: list[float] = option(default_factory=list, gt=0.0, lt=1.0, help="e.g. [0.9999]")
    ema_warmup: bool = option(True, help="cap the EMA rate at (1+n)/(10+n) after n updates")
    checkpoint_every: int = option(1000, ge=1)
    keep_last: int = option(3, ge=1, help="committed checkpoints kept")
    time_limit: float | None = option(None, gt=0.0, help="seconds; stops with a checkpoint")
    log_every: int = option(10, ge=1)
    sample_every: int = option(0, ge=0, help="stage sample hook every N steps (0: only at the end)")
    max_nonfinite_in_row: int = option(20, ge=1, help="stop (with a checkpoint) after this many")
    spike_factor: float = option(4.0, gt=1.0, help="loss above factor x recent median is a spike")
    spike_window: int = option(50, ge=5)
    progress: bool = option(True, help="progress bar on rank 0")
    tensorboard: bool = option(True)
    compile: bool = option(False, help="torch.compile the model")
    parallel: Literal["auto", "none", "ddp", "fsdp"] = option(
        "auto",
        help="several processes: ddp replicates the model, fsdp shards parameters, gradients and "
        "optimizer state (FSDP2 fully_shard); auto: ddp when the world size is above 1",
    )
    fsdp_reshard: bool = option(
        True, help="fsdp: free each block's gathered weights after its forward (false: keep until backward)"
    )
    ddp_find_unused: bool = option(False)

    def __post_init__(self):
        if self.grad_clip == "adaptive" and self.grad_clip_window < 10:
            raise ConfigValueError("grad_clip_window", "adaptive clipping needs a window of at least 10")
