"""Peak memory of LoRA against full fine-tuning of Sana's denoiser: one training step
(forward + backward + AdamW step, random weights) at the tiny config and at Sana 600M.

Each (config, mode) runs in a fresh subprocess, so every peak is its own: the process's
resident-set high-water mark (`resource.getrusage(...).ru_maxrss`), its RSS after the imports
and after building the model, and the growth of the peak over the built model (what the
step itself adds: gradients, optimizer state, activations). The model is built the way the
`image_flow` stage builds it (`voxforge.models.image.build_transformer`, plus `apply_lora` for
LoRA: peft adapters on the attention projections, the base frozen), with the architecture
keys of the recipes:

- tiny: `image_lora_tiny` (4 blocks, width 128 = 4 heads x 32, 8 latent channels), 32 px
  through the 4x tiny DC-AE => 8 x 8 latent, batch 8 (the recipe's), 24 caption tokens of
  width 64 (its builtin text encoder), LoRA rank 8;
- sana_600m: `image_flow_sana_512` (Sana_600M: 28 blocks, width 1152 = 36 heads x 32, cross
  attention 16 heads x 72, caption channels 2304 (Gemma-2), MLP ratio 2.5, patch 1, 32 latent
  channels, gradient checkpointing as the recipe sets it), 512 px => 16 x 16 latent, batch 1,
  300 caption tokens (Sana's max_length), LoRA rank 16 (`image_lora_sana_1024`).

The text embeddings and latents are random tensors (no text encoder or autoencoder is
loaded), fp32 throughout. Prints a markdown table and writes `memory.json` into --out.

    python benchmarks/bench_image_memory.py [--threads 2] [--configs tiny,sana_600m] [--out runs/bench_image_memory] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from image_bench_common import machine, machine_line, markdown_table, peak_rss_mib, rss_mib

CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {
        "recipe": "image_lora_tiny",
        "lora_recipe": "image_lora_tiny",
        "caption_channels": 64,
        "caption_tokens": 24,
        "latent_side": 8,
        "batch": 8,
    },
    "sana_600m": {
        "recipe": "image_flow_sana_512",
        "lora_recipe": "image_lora_sana_1024",
        "caption_channels": 2304,
        "caption_tokens": 300,
        "latent_side": 16,
        "batch": 1,
    },
}


def child(config: str, mode: str, threads: int) -> dict[str, Any]:
    """One training step in this (fresh) process; returns the memory record."""
    torch.set_num_threads(threads)
    import diffusers  # noqa: F401 - imported before the first RSS reading, as the builders import it
    import peft  # noqa: F401
    from diffusers import SanaTransformer2DModel  # noqa: F401 - diffusers loads its classes lazily

    from voxforge.models.image import apply_lora, build_transformer
    from voxforge.recipe import load_recipe

    spec = CONFIGS[config]
    recipe = load_recipe(spec["recipe"])
    lora_cfg = load_recipe(spec["lora_recipe"]).lora
    rss_imports = rss_mib()
    torch.manual_seed(0)
    start = time.perf_counter()
    model = build_transformer(
        recipe.model, caption_channels=spec["caption_channels"], sample_size=spec["latent_side"]
    )
    total = sum(p.numel() for p in model.parameters())
    if mode == "lora":
        model = apply_lora(model, lora_cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    build_s = time.perf_counter() - start
    rss_built = rss_mib()
    peak_built = peak_rss_mib()
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    b, side, channels = spec["batch"], spec["latent_side"], recipe.model.in_channels
    x = torch.randn(b, channels, side, side, generator=gen)
    target = torch.randn(b, channels, side, side, generator=gen)
    text = torch.randn(b, spec["caption_tokens"], spec["caption_channels"], generator=gen)
    mask = torch.ones(b, spec["caption_tokens"], dtype=torch.bool)
    start = time.perf_counter()
    pred = model(
        x,
        encoder_hidden_states=text,
        encoder_attention_mask=mask,
        timestep=torch.full((b,), 500.0),
        return_dict=False,
    )[0]
    loss = (pred.float() - target).pow(2).mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step_s = time.perf_counter() - start
    peak = peak_rss_mib()
    return {
        "config": config,
        "mode": mode,
        "total_params": total,
        "trainable_params": trainable,
        "lora_rank": lora_cfg.rank if mode == "lora" else None,
        "gradient_checkpointing": bool(recipe.model.gradient_checkpointing),
        "batch": b,
        "tokens": side * side,
        "caption_tokens": spec["caption_tokens"],
        "rss_after_imports_mib": rss_imports,
        "rss_after_build_mib": rss_built,
        "peak_before_step_mib": peak_built,
        "peak_mib": peak,
        "step_growth_mib": peak - rss_built,
        "build_s": build_s,
        "step_s": step_s,
        "loss": float(loss),
    }


def run_child(config: str, mode: str, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", config, mode, "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{config} / {mode} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def report(rows: list[dict[str, Any]]) -> str:
    def mib(v: float) -> str:
        return f"{v / 1024:.2f} GiB" if v >= 1024 else f"{v:.0f} MiB"

    table = markdown_table(
        [
            "config",
            "mode",
            "trainable / total params",
            "RSS after build",
            "peak RSS",
            "peak − built",
            "build s",
            "step s",
        ],
        [
            [
                r["config"],
                r["mode"] + (f" (rank {r['lora_rank']})" if r["lora_rank"] else ""),
                f"{r['trainable_params'] / 1e6:.4g} M / {r['total_params'] / 1e6:.4g} M "
                f"({100 * r['trainable_params'] / r['total_params']:.3g} %)",
                mib(r["rss_after_build_mib"]),
                mib(r["peak_mib"]),
                mib(r["step_growth_mib"]),
                f"{r['build_s']:.1f}",
                f"{r['step_s']:.1f}",
            ]
            for r in rows
        ],
    )
    lines = [table, ""]
    by = {(r["config"], r["mode"]): r for r in rows}
    for config in dict.fromkeys(r["config"] for r in rows):
        full, lora = by.get((config, "full")), by.get((config, "lora"))
        if full and lora:
            lines.append(
                f"{config}: LoRA / full peak RSS {lora['peak_mib'] / full['peak_mib']:.2f}, "
                f"step growth {lora['step_growth_mib'] / max(full['step_growth_mib'], 1e-9):.2f}; "
                f"full fine-tuning's fp32 weights + gradients + AdamW moments = "
                f"{mib(full['trainable_params'] * 16 / 2**20)} (4 x 4 bytes per parameter)"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", default="tiny,sana_600m", help=f"comma-separated, of {list(CONFIGS)}")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_image_memory"))
    parser.add_argument("--quick", action="store_true", help="smoke run: the tiny config only")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.threads)))
        return 0
    configs = ["tiny"] if args.quick else [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        sys.exit(f"--configs: unknown {unknown}; choose from {list(CONFIGS)}")
    torch.set_num_threads(args.threads)
    info = machine()
    print(machine_line(info), flush=True)
    rows = []
    for config in configs:
        for mode in ("full", "lora"):
            rows.append(run_child(config, mode, args.threads))
            r = rows[-1]
            print(
                f"  {config} {mode}: peak {r['peak_mib']:.0f} MiB (built {r['rss_after_build_mib']:.0f} MiB), "
                f"step {r['step_s']:.1f} s",
                flush=True,
            )
    print()
    print(report(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    print(f"\nwrote {args.out / 'memory.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
