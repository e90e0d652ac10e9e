"""Peak memory of one video_flow training step per bucket, activation checkpointing on and off,
against the prediction of `voxforge.models.video_memory` (what `data.memory_limit_gb` checks).

Each (config, bucket, checkpointing) runs in a fresh process (`--child`): a `VideoDiT` with random
weights, AdamW and one EMA copy, random latents of the bucket's shape and random text tokens, one
forward + backward + optimizer step, fp32 on CPU. The measured number is the growth of the
process's peak resident set (`ru_maxrss`) over its resident set after the imports, so
interpreter and library pages are left out; the prediction is compared with `base=0`.

    python benchmarks/bench_video_memory.py                    # tiny buckets + Open-Sora-width blocks
    python benchmarks/bench_video_memory.py --only tiny --json runs/bench_video_memory.json

Configs: `tiny` is video_flow_tiny's denoiser (width 96, depth 4, 8 latent channels of
video_ae_tiny, builtin text encoder: 16 tokens of 64); `opensora` is video_flow_opensora_256's
width, heads and patch (3072, 24, 2x2; 16 channels of HunyuanVideo's VAE; T5-XXL: 512 tokens of
4096) at depth 1 — a 57-block step does not fit this machine, so the full depth is predicted
from the per-block terms the depth-1 measurement checks. Buckets are latent shapes (frames,
height, width) of 256 px-class clips after the autoencoder.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = {
    "tiny": {
        "model": {"in_channels": 8, "patch_size": 1, "width": 96, "depth": 4, "heads": 4},
        "context": [16, 64],
        # name -> (batch, latent frames, latent height, latent width): 4x8x8 latents of the clip
        "buckets": {
            "32px/9 (b8)": [8, 3, 4, 4],
            "64px/17 (b8)": [8, 5, 8, 8],
            "128px/33 (b2)": [2, 9, 16, 16],
        },
    },
    "opensora": {
        "model": {"in_channels": 16, "patch_size": 2, "width": 3072, "depth": 1, "heads": 24},
        "context": [512, 4096],
        "buckets": {"256px/1 (b1)": [1, 1, 32, 32]},
        "full_depth": 57,
        "predict": {  # the Open-Sora bucket table at 256 px (batch sizes of video_flow_opensora_256)
            "256px/1 (b48)": [48, 1, 32, 32],
            "256px/33 (b8)": [8, 9, 32, 32],
            "256px/65 (b4)": [4, 17, 32, 32],
            "256px/129 (b2)": [2, 33, 32, 32],
        },
    },
}


def _rss() -> int:  # bytes, now
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(spec: dict) -> dict:
    import torch

    from voxforge.models.video_dit import VideoDiT, VideoDiTConfig

    torch.set_num_threads(spec.get("threads", 1))
    start = _rss()
    cfg = VideoDiTConfig(**spec["model"], grad_checkpoint=spec["checkpoint"], image_condition=True)
    length, dim = spec["context"]
    model = VideoDiT(cfg, context_dim=dim)
    ema = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch, t, h, w = spec["bucket"]
    x = torch.randn(batch, cfg.in_channels, t, h, w)
    context = torch.randn(batch, length, dim)
    began = time.perf_counter()
    loss = model(x, torch.rand(batch), context).pow(2).mean()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        for e, p in zip(ema, model.parameters()):
            e.lerp_(p, 0.001)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "tokens": cfg.tokens(t, h, w),
        "measured_bytes": peak - start,
        "step_seconds": seconds,
    }


def predicted(
    config: dict, bucket: list[int], checkpoint: bool, params: int, depth: int | None = None
) -> float:
    from voxforge.models.video_dit import VideoDiTConfig
    from voxforge.models.video_memory import predict_step_memory

    model = config["model"]
    cfg = VideoDiTConfig(**{**model, "depth": depth or model["depth"]})
    batch, t, h, w = bucket
    return predict_step_memory(
        params=params,
        width=cfg.width,
        depth=cfg.depth,
        heads=cfg.heads,
        batch=batch,
        tokens=cfg.tokens(t, h, w),
        grad_checkpoint=checkpoint,
        base=0.0,
    ).total


def params_of(config: dict, depth: int) -> int:
    import torch

    from voxforge.models.video_dit import VideoDiT, VideoDiTConfig

    with torch.device("meta"):
        model = VideoDiT(
            VideoDiTConfig(**{**config["model"], "depth": depth}), context_dim=config["context"][1]
        )
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(CONFIGS), help="one config")
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    rows = []
    gib = 2**30
    print(
        f"{'config':<10} {'bucket':<16} {'ckpt':<5} {'tokens':>7} {'measured GiB':>13} {'predicted GiB':>14} {'ratio':>6} {'step s':>7}"
    )
    for name, config in CONFIGS.items():
        if args.only and name != args.only:
            continue
        for bucket_name, bucket in config["buckets"].items():
            for checkpoint in (False, True):
                spec = {
                    "model": config["model"],
                    "context": config["context"],
                    "bucket": bucket,
                    "checkpoint": checkpoint,
                }
                out = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update(config=name, bucket=bucket_name, checkpoint=checkpoint)
                row["predicted_bytes"] = predicted(config, bucket, checkpoint, row["params"])
                rows.append(row)
                print(
                    f"{name:<10} {bucket_name:<16} {'on' if checkpoint else 'off':<5} {row['tokens']:>7} "
                    f"{row['measured_bytes'] / gib:>13.3f} {row['predicted_bytes'] / gib:>14.3f} "
                    f"{row['measured_bytes'] / row['predicted_bytes']:>6.2f} {row['step_seconds']:>7.2f}",
                    flush=True,
                )
        if "full_depth" in config:
            depth = config["full_depth"]
            params = params_of(config, depth)
            print(
                f"{name} at depth {depth} ({params / 1e9:.2f} B parameters), predicted (fp32 AdamW + 1 EMA, one process):"
            )
            for bucket_name, bucket in config["predict"].items():
                values = [predicted(config, bucket, c, params, depth) / gib for c in (False, True)]
                rows.append({"config": f"{name}@{depth}", "bucket": bucket_name, "predicted_gib": values})
                print(f"  {bucket_name:<16} checkpointing off {values[0]:8.1f} GiB   on {values[1]:8.1f} GiB")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
