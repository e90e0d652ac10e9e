"""Process groups and model wrapping, applied from one place.

Launch through `torchrun` (single node: `--nproc-per-node N`; multi-node: `--nnodes`,
`--node-rank`, `--rdzv-endpoint` — torchrun's standard variables RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT are all we read). Backend: NCCL when the device is
CUDA, gloo otherwise (CPU training on many processes or machines). Model code stays
single-device: `wrap_model` is the only place that applies DDP (and later FSDP2,
activation checkpointing or compile).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from voxforge.data.workers import threads_per_process


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def init_distributed(device_name: str) -> DistInfo:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1:
        # co-located ranks spin-wait on each other's OpenMP threads when processes x threads >
        # cores; an explicit OMP_NUM_THREADS (torchrun sets 1 for several processes) wins

        local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
        torch.set_num_threads(threads_per_process(local))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(
    model: nn.Module, info: DistInfo, *, compile: bool = False, find_unused: bool = False
) -> nn.Module:
    """The training-time view of the model: DDP across processes, optionally compiled."""
    wrapped = model
    if info.enabled:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused
        )
    if compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def unwrap_model(model: nn.Module) -> nn.Module:
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
