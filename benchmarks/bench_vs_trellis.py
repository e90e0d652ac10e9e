"""voxforge's structure flow against TRELLIS's own `SparseStructureFlowModel`, same weights, one process.

    python benchmarks/bench_vs_trellis.py PATH_TO_TRELLIS_SOURCE [--width 768 --blocks 12 --batch 2]

PATH_TO_TRELLIS_SOURCE is a checkout of github.com/microsoft/TRELLIS (the folder that holds
`trellis/`), fetched by the user; without it, or when its model file does not import, the
script says what it needs and exits 0. Nothing of TRELLIS is vendored into voxforge.

How TRELLIS is imported. Its package `trellis/__init__.py` imports `pipelines`,
`renderers` and `representations`, which pull CUDA-only or optional packages (utils3d,
kaolin, nvdiffrast, spconv, xformers/flash-attn, ...). The script therefore never runs that
file: it registers an empty `trellis` package whose search path is the checkout's
`trellis/` folder, then imports only `trellis.models.sparse_structure_flow` (which reaches
`trellis.modules.{attention,transformer,spatial,utils,norm}` and, through `modules.utils`,
the lazy `trellis.modules.sparse` package — its conv wrapper imports spconv only when a
sparse conv is built, so the dense model needs neither spconv nor torchsparse). The
attention backend is chosen through TRELLIS's own environment variable, set before the
import: `ATTN_BACKEND=sdpa` (`trellis/modules/attention/__init__.py` reads it at import;
the default flash_attn does not exist on CPU).

What it measures, at the same config and the SAME weights: TRELLIS's model is built (use_fp16
off), every matrix refilled with N(0, 0.02) (its init zeroes the adaLN and output layers,
which would make both outputs 0), its state dict converted by voxforge's own spec
(`voxforge.trellis.flows.convert_ss_flow`, strict load) into `SSFlowTransformer`. Then:

1. correctness: both forwards on the same (x, t, condition) — TRELLIS takes t·1000 — max abs
   difference printed in fp32 and under bf16 autocast;
2. inference forward (no grad) and a training step (forward + MSE backward + AdamW), fp32 and
   bf16 autocast, alternating TRELLIS / voxforge rounds, minimum over `--repeats`; prints
   seconds and TRELLIS time / voxforge time (> 1: voxforge faster).

Default config: SS-flow-B (width 768, 12 blocks, 12 heads, 16³ tokens, 1374 condition tokens
of 1024 channels, qk RMS norm), batch 2. On a CPU without native bf16 a bf16 step of the
full model takes minutes: `--bf16-blocks N` runs the bf16 comparison on N blocks instead.

TRELLIS's sparse models (SLat flow, SLat VAEs) need spconv or torchsparse, both CUDA-only:
the script tries to import them and, when neither is there, says the sparse comparison is
skipped (it is not implemented here: on a CUDA machine with spconv, compare
`SLatFlowModel` the same way through `voxforge.trellis.flows.convert_slat_flow`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import types
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

NEEDS = (
    "bench_vs_trellis.py needs a TRELLIS source checkout: pass the folder that contains trellis/, e.g.\n"
    "    git clone https://github.com/microsoft/TRELLIS /tmp/trellis_src\n"
    "    python benchmarks/bench_vs_trellis.py /tmp/trellis_src\n"
    "(only torch and numpy are needed to import its dense structure flow; no CUDA packages)."
)


def import_trellis_ss_flow(source: Path) -> Any:
    """TRELLIS's `sparse_structure_flow` module without running `trellis/__init__.py` (docstring)."""
    package_dir = source / "trellis"
    if not (package_dir / "models" / "sparse_structure_flow.py").is_file():
        raise ImportError(f"{source}: no trellis/models/sparse_structure_flow.py")
    os.environ.setdefault("ATTN_BACKEND", "sdpa")
    if "trellis" not in sys.modules:
        package = types.ModuleType("trellis")
        package.__path__ = [str(package_dir)]
        package.__file__ = str(package_dir / "__init__.py")
        sys.modules["trellis"] = package
    return importlib.import_module("trellis.models.sparse_structure_flow")


def sparse_backends() -> list[str]:
    found = []
    for name in ("spconv.pytorch", "torchsparse"):
        try:
            importlib.import_module(name)
            found.append(name.split(".")[0])
        except Exception:  # ImportError, or a CUDA library missing at import
            pass
    return found


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def autocast(dtype: torch.dtype) -> Any:
    return nullcontext() if dtype == torch.float32 else torch.autocast("cpu", dtype=dtype)


def build_pair(trellis_mod: Any, args: dict[str, Any]) -> tuple[torch.nn.Module, torch.nn.Module]:
    from voxforge.trellis.flows import build_ss_flow, convert_ss_flow

    theirs = trellis_mod.SparseStructureFlowModel(**args)
    randomize(theirs)
    state = {k: v.detach().float().clone() for k, v in theirs.state_dict().items()}
    ours = build_ss_flow(args)
    ours.load_state_dict(convert_ss_flow(args, state), strict=True)
    return theirs, ours


def best(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def workloads(
    theirs: torch.nn.Module,
    ours: torch.nn.Module,
    calls: dict[str, Callable[[], torch.Tensor]],
    dtype: torch.dtype,
    target: torch.Tensor,  # [B, 8, r, r, r]
    *,
    train: bool,
) -> list[tuple[str, dict[str, Callable[[], None]]]]:
    """(name, {"TRELLIS": fn, "voxforge": fn}) for the inference forward and the training step."""

    def forward(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad(), autocast(dtype):
                fn()

        return run

    kinds = [("inference forward", {k: forward(f) for k, f in calls.items()})]
    if train:
        optims = {
            "TRELLIS": torch.optim.AdamW(theirs.parameters(), lr=1e-5),
            "voxforge": torch.optim.AdamW(ours.parameters(), lr=1e-5),
        }

        def step(key: str) -> Callable[[], None]:
            def run() -> None:
                optims[key].zero_grad(set_to_none=True)
                with autocast(dtype):
                    loss = torch.nn.functional.mse_loss(calls[key]().float(), target)
                loss.backward()
                optims[key].step()

            return run

        kinds.append(("train step fwd+bwd+AdamW", {k: step(k) for k in calls}))
    return kinds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "trellis_source", nargs="?", type=Path, help="TRELLIS checkout (folder with trellis/)"
    )
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--blocks", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--resolution", type=int, default=16)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--cond-tokens", type=int, default=1374, help="DINOv2-L/14-reg at 518²: 1 + 4 + 37²")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--bf16-blocks", type=int, default=0, help="blocks of the bf16 comparison (0: --blocks)"
    )
    parser.add_argument("--no-bf16", action="store_true")
    parser.add_argument("--no-train", action="store_true", help="inference forward only")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    opts = parser.parse_args()
    if opts.trellis_source is None:
        print(NEEDS)
        return 0
    try:
        trellis_mod = import_trellis_ss_flow(opts.trellis_source.resolve())
    except Exception as err:  # noqa: BLE001 - any import failure means "cannot compare"
        print(f"could not import TRELLIS's SparseStructureFlowModel from {opts.trellis_source}: {err!r}\n")
        print(NEEDS)
        return 0
    if opts.threads:
        torch.set_num_threads(opts.threads)
    sparse = sparse_backends()
    print(
        f"TRELLIS from {opts.trellis_source} (ATTN_BACKEND={os.environ['ATTN_BACKEND']}); "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}"
    )
    if not sparse:
        print(
            "sparse models (SLatFlowModel, SLat VAEs): skipped - TRELLIS needs spconv or torchsparse (CUDA), neither imports"
        )
    else:
        print(
            f"sparse backends found ({', '.join(sparse)}); the sparse comparison is not implemented in this script"
        )

    def config(blocks: int) -> dict[str, Any]:
        return {
            "resolution": opts.resolution,
            "in_channels": 8,
            "model_channels": opts.width,
            "cond_channels": 1024,
            "out_channels": 8,
            "num_blocks": blocks,
            "num_heads": opts.heads,
            "mlp_ratio": 4,
            "patch_size": 1,
            "pe_mode": "ape",
            "qk_rms_norm": True,
            "use_fp16": False,
        }

    gen = torch.Generator().manual_seed(1)
    r, b = opts.resolution, opts.batch
    x = torch.randn(b, 8, r, r, r, generator=gen)
    t = torch.rand(b, generator=gen)
    cond = torch.randn(b, opts.cond_tokens, 1024, generator=gen)
    target = torch.randn(b, 8, r, r, r, generator=gen)

    precisions = [("fp32", torch.float32, opts.blocks)]
    if not opts.no_bf16:
        precisions.append(("bf16", torch.bfloat16, opts.bf16_blocks or opts.blocks))
    rows = []
    pairs: dict[int, tuple[torch.nn.Module, torch.nn.Module]] = {}
    for name, dtype, blocks in precisions:
        if blocks not in pairs:
            pairs[blocks] = build_pair(trellis_mod, config(blocks))
        theirs, ours = pairs[blocks]
        calls = {
            "TRELLIS": lambda m=theirs: m(x, t * 1000, cond),
            "voxforge": lambda m=ours: m(x, t, cond),
        }
        with torch.no_grad(), autocast(dtype):
            ref, out = calls["TRELLIS"]().float(), calls["voxforge"]().float()
        diff = float((ref - out).abs().max())
        print(
            f"\n{name}, {blocks} blocks: max |TRELLIS - voxforge| = {diff:.3e} "
            f"(output max |.| {float(ref.abs().max()):.3e})"
        )
        kinds = workloads(theirs, ours, calls, dtype, target, train=not opts.no_train)
        for kind, fns in kinds:
            for fn in fns.values():
                fn()  # warm-up
            seconds = {k: float("inf") for k in fns}
            for round_ in range(opts.repeats):  # alternate the order every round
                order = list(fns) if round_ % 2 == 0 else list(fns)[::-1]
                for key in order:
                    seconds[key] = min(seconds[key], best(fns[key], 1))
            ratio = seconds["TRELLIS"] / seconds["voxforge"]
            rows.append((name, blocks, kind, seconds["TRELLIS"], seconds["voxforge"], ratio))
            print(
                f"  {kind:<26} TRELLIS {seconds['TRELLIS']:8.3f} s  voxforge {seconds['voxforge']:8.3f} s  "
                f"TRELLIS/voxforge {ratio:5.2f}x",
                flush=True,
            )
    print(
        f"\nSS flow width {opts.width}, {opts.heads} heads, {r}³ tokens, batch {b}, {opts.cond_tokens} cond tokens:"
    )
    print(
        f"  {'precision':<9} {'blocks':>6}  {'measured':<26} {'TRELLIS s':>10} {'voxforge s':>10} {'T/v':>6}"
    )
    for name, blocks, kind, ts, vs, ratio in rows:
        print(f"  {name:<9} {blocks:>6}  {kind:<26} {ts:10.3f} {vs:10.3f} {ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
