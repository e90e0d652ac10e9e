"""Process groups and model wrapping, applied from one place.

Launch through `torchrun` (single node: `--nproc-per-node N`; multi-node: `--nnodes`,
`--node-rank`, `--rdzv-endpoint` — torchrun's standard variables RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT are all we read). Backend: NCCL when the device is
CUDA, gloo otherwise (CPU training on many processes or machines). Model code stays
single-device: `shard_model` (FSDP2) and `wrap_model` (DDP, compile) are the only places
that change how it runs.

`train.parallel` (`resolve_parallel`): `ddp` keeps a full replica per process and all-reduces
gradients; `fsdp` applies FSDP2's `fully_shard` to each block the stage names
(`Stage.fsdp_units`, by default the items of the outermost `nn.ModuleList`s: a
transformer's blocks) and then to the root, so each process holds 1/N of the parameters,
gradients and optimizer state, and a block's weights are gathered only while it runs.
Parameters become DTensor shards; the optimizer is built on them after sharding. With
`bf16` / `fp16` the blocks compute in that dtype through `MixedPrecisionPolicy` (gradients
reduced in fp32, parameters kept in fp32). FSDP2 runs on CPU with gloo (its all-gather and
reduce-scatter both exist there in PyTorch 2.13), which is how the tests check it.

Checkpoints keep the engine's format whatever the mode: `full_model_state` /
`full_optimizer_state` gather full, unsharded tensors to rank 0's CPU
(`torch.distributed.checkpoint.state_dict`, `full_state_dict=True, cpu_offload=True`; the
optimizer state is then keyed by parameter name), and the `load_*` twins hand every rank its
shard of the full tensors it read from the checkpoint, without communication (every rank
reads the files). They do not use `set_model_state_dict` / `set_optimizer_state_dict`: with
full state dicts and no broadcast they scatter every tensor from rank 0, and in this engine
the two ranks reached those scatters for different tensors (a collective mismatch that
aborts gloo); slicing locally needs no collective at all. A ddp run's optimizer state (keyed
by position) loads into fsdp and back (`optimizer_state_by_index`), so a run can switch
modes on resume. EMA shadows stay sharded like the parameters (`gather_full` / `shard_like`
convert them). Sampling and final evaluation run on rank 0 alone, so they use a plain copy
of the model rebuilt from `meta_template` and the gathered weights.

Gradient accumulation under fsdp reduce-scatters after every micro-batch: skipping the sync
(`set_requires_gradient_sync(False)`) would keep every block's unsharded gradients alive
until the last micro-batch, the memory fsdp is there to save.
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from voxforge.data.workers import threads_per_process
from voxforge.errors import UserError

PARALLEL_MODES = ("none", "ddp", "fsdp")
_COMPUTE_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def resolve_parallel(requested: str, info: DistInfo) -> str:
    """`train.parallel` for this launch: none on one process (there is nothing to split),
    auto means ddp on several."""
    if requested not in (*PARALLEL_MODES, "auto"):
        raise UserError(
            f"key 'train.parallel': '{requested}' is not one of auto, {', '.join(PARALLEL_MODES)}"
        )
    if not info.enabled:
        return "none"
    return "ddp" if requested == "auto" else requested


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The items of the outermost `nn.ModuleList`s of `model` (a transformer's blocks);
    lists nested inside those items are left to their block."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(child, nn.ModuleList):
                found.extend(child)
            else:
                visit(child)

    visit(model)
    return found


def shard_model(
    model: nn.Module,
    units: Iterable[nn.Module],
    info: DistInfo,
    *,
    precision: str = "fp32",
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2 in place: `fully_shard` each unit, then the root (which takes what is left).
    Returns `model`, now an `FSDPModule` whose parameters are DTensor shards."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(info.device.type, (info.world_size,))
    dtype = _COMPUTE_DTYPES.get(precision)
    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
    for unit in units:
        if unit is model:
            continue
        fully_shard(unit, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    # the root's parameters are needed again at the start of backward: keep them gathered
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return model


# torch.distributed's FSDP, checkpoint and DTensor modules are imported where they are used:
# they cost 1.5 s at start-up (torch._dynamo), which every single-process command and test
# subprocess would pay for nothing.
def _full_options():  # full tensors on rank 0's CPU
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def dtensor_class() -> type | None:
    """DTensor, or None while torch.distributed.tensor is not imported (then no tensor is one)."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on rank 0's CPU (an empty dict elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_full_options())


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state with full tensors on rank 0's CPU, keyed by parameter name
    (torch.distributed.checkpoint's layout); collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_full_options())


def load_full_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load full tensors (every rank read them) into a sharded model: each keeps its shard."""
    model.load_state_dict(shard_like(state, model.state_dict()))


def _parameter_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters in its own order (the ids of `state_dict()`)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for group in optimizer.param_groups for p in group["params"]]


def optimizer_state_by_index(state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """An optimizer state keyed by parameter name (fsdp checkpoints) in `Optimizer.state_dict`'s
    layout, keyed by position; a state already keyed by position is returned as is."""
    if all(isinstance(k, int) for k in state["state"]) and all(
        isinstance(i, int) for g in state["param_groups"] for i in g["params"]
    ):
        return state
    index = {name: i for i, name in enumerate(_parameter_names(model, optimizer))}
    try:
        return {
            "state": {index[name]: values for name, values in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
        }
    except KeyError as err:
        raise UserError(
            f"the checkpoint's optimizer state names parameter {err} the model does not have"
        ) from None


@torch.no_grad()
def _init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's state (its tensors' shapes and shard placements) by one step at
    lr 0 with zero gradients; the weights do not move."""
    if optimizer.state:
        return
    lrs = [group["lr"] for group in optimizer.param_groups]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for param in params:
        param.grad = torch.zeros_like(param)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    optimizer.step()
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    for param in params:
        param.grad = None


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimizer state (`full_optimizer_state`'s, or a ddp run's) into the optimizer
    of a sharded model: each rank keeps the shards of its parameters, placed like the state
    the optimizer creates itself (CAME's column statistics are replicated, not sharded)."""
    by_index = optimizer_state_by_index(state, model, optimizer)
    _init_optimizer_state(optimizer)
    current = optimizer.state_dict()["state"]
    optimizer.load_state_dict(
        {
            "state": {i: shard_like(values, current.get(i, {})) for i, values in by_index["state"].items()},
            "param_groups": by_index["param_groups"],
        }
    )


def gather_full(state: dict[str, torch.Tensor], info: DistInfo) -> dict[str, torch.Tensor]:
    """DTensor shards -> full CPU tensors, kept on rank 0 only (every rank must call)."""
    out: dict[str, torch.Tensor] = {}
    dtensor = dtensor_class()
    for name, value in state.items():
        full = value.full_tensor() if dtensor is not None and isinstance(value, dtensor) else value
        if info.is_main:
            out[name] = full.detach().to("cpu", copy=True)
    return out


def shard_like(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Full tensors -> shards placed like `reference`'s DTensors (no communication: every
    rank holds the full tensors and keeps its own piece)."""
    out = {}
    dtensor = dtensor_class()
    for name, value in state.items():
        ref = reference.get(name)
        if dtensor is not None and isinstance(ref, dtensor):
            from torch.distributed.tensor import distribute_tensor

            value = distribute_tensor(
                value.to(ref.device, ref.dtype), ref.device_mesh, ref.placements, src_data_rank=None
            )
        out[name] = value
    return out


def meta_template(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters live on the meta device (no memory), buffers copied:
    the skeleton `materialize` fills with gathered weights once the model is sharded."""
    memo: dict[int, object] = {}
    for param in model.parameters():
        memo[id(param)] = nn.Parameter(torch.empty_like(param, device="meta"), param.requires_grad)
    return copy.deepcopy(model, memo)


def materialize(template: nn.Module, state: dict[str, torch.Tensor], device: torch.device) -> nn.Module:
    """A plain module from `meta_template`'s skeleton and a full state dict."""
    model = copy.deepcopy(template)
    model.load_state_dict(state, assign=True)
    return model.to(device)


def wrap_model(
    model: nn.Module,
    info: DistInfo,
    *,
    parallel: str = "ddp",
    compile: bool = False,
    find_unused: bool = False,
) -> nn.Module:
    """The training-time view of the model: DDP across processes (fsdp: already sharded by
    `shard_model`), optionally compiled."""
    wrapped = model
    if info.enabled and parallel == "ddp":
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
