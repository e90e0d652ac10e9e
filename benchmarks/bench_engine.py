"""Engine overhead: one optimizer step through `voxforge.train.engine` against a bare
PyTorch loop on the same model, batch size and optimizer (goal: ratio <= 1.05).

Both sides do forward, backward, grad-norm clipping, AdamW and an LR schedule step; the
engine adds its data stream, non-finite checks, logging and checkpoint bookkeeping.

    python benchmarks/bench_engine.py [--steps 60] [--width 256] [--tokens 256]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from voxforge.config.core import option
from voxforge.recipe import recipe_from_data
from voxforge.stages import register_stage
from voxforge.stages.base import Stage
from voxforge.train.engine import train


def block(width: int) -> nn.Module:
    return nn.TransformerEncoderLayer(
        width, nhead=max(1, width // 64), dim_feedforward=4 * width, batch_first=True, dropout=0.0
    )


@dataclass
class BenchModel:
    width: int = option(256, ge=8)
    tokens: int = option(256, ge=1)


class TokenData(torch.utils.data.Dataset):
    def __init__(self, n: int, tokens: int, width: int):
        self.x = torch.randn(n, tokens, width, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


@register_stage
class BenchStage(Stage):
    name = "bench_block"
    sections = {"model": BenchModel}

    def build_model(self):
        return block(self.recipe.model.width)

    def build_dataset(self):
        return TokenData(64, self.recipe.model.tokens, self.recipe.model.width)

    def loss(self, model, batch):
        return model(batch).float().pow(2).mean(), {}


def bare_loop(width: int, tokens: int, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = block(width)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    data = TokenData(64, tokens, width)
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        x = data.x[(step * batch) % 64 : (step * batch) % 64 + batch]
        opt.zero_grad(set_to_none=True)
        loss = model(x).float().pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        times.append(time.perf_counter() - t0)
    warm = times[steps // 4 :]
    return len(warm) / sum(warm)


def engine_loop(width: int, tokens: int, batch: int, steps: int) -> float:
    log_every = max(1, steps // 4)
    recipe = recipe_from_data(
        {
            "stage": "bench_block",
            "model": {"width": width, "tokens": tokens},
            "optim": {"lr": 1e-4},
            "train": {
                "max_steps": steps,
                "batch_size": batch,
                "progress": False,
                "tensorboard": False,
                "log_every": log_every,
                "checkpoint_every": 10**9,
            },
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        train(recipe, tmp)
        rows = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in rows if "steps_per_s" in r][1:]  # skip the warm-up window
    return sum(rates) / len(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    args = parser.parse_args()
    bares, engines = [], []
    for _ in range(args.rounds):  # alternate so drift in machine load hits both sides alike
        bares.append(bare_loop(args.width, args.tokens, args.batch, args.steps))
        engines.append(engine_loop(args.width, args.tokens, args.batch, args.steps))
    bare, engine = sorted(bares)[len(bares) // 2], sorted(engines)[len(engines) // 2]
    print(
        f"model: TransformerEncoderLayer width {args.width}, {args.tokens} tokens, batch {args.batch}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"bare PyTorch loop : {1000 / bare:8.2f} ms/step")
    print(f"voxforge engine   : {1000 / engine:8.2f} ms/step")
    print(f"engine / bare step time ratio: {bare / engine:.3f}  (goal <= 1.05)")


if __name__ == "__main__":
    main()
