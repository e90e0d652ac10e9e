"""Engine overhead of LoRA fine-tuning: a step of `voxforge train image_lora_tiny` against a
bare diffusers + peft loop at the same config (goal: voxforge / bare <= 1.05).

Both sides, in this process, on the same prepared dataset (synthetic captioned 32-px images
written by `voxforge.data.synth_images` and prepared by `voxforge.data.images`, one square
bucket) and the same random-weight parts saved once as diffusers folders: the recipe's
`SanaTransformer2DModel` (4 blocks, width 128) and the `image_ae_tiny` `AutoencoderDC` (4x,
8 latent channels). Each step reads a batch of 8 PNGs, encodes them with the frozen DC-AE and
the captions with the builtin text encoder (the same vocabulary), runs the rectified-flow loss
through the transformer with peft LoRA adapters (rank 8, alpha 8, the attention projections),
backward, clips the gradient norm at 1, AdamW (lr 2e-3), a constant schedule with 10 warm-up
steps, fp32.

- voxforge: `voxforge.cli.main(["train", "image_lora_tiny", "--out", RUN, ...])`, the real
  command's code path in-process (`model.pretrained=` the saved transformer,
  `data.autoencoder=` the saved DC-AE; progress bar and TensorBoard off, no checkpoint inside
  the timed steps). Its step time is the engine's own `steps_per_s` per `log_every` window of
  `metrics.jsonl`, the first window (warm-up) left out: everything the engine does per step
  (data stream, caption dropout, mask weights, non-finite checks, logging) is inside it.
- bare: the shape of diffusers' `examples/dreambooth/train_dreambooth_lora_sana.py` (custom
  captions branch, no accelerate, no prior preservation): a `DataLoader` over the same
  `ImageCaptionDataset`, `vae.encode(...).latent * scaling_factor`, logit-normal timesteps
  through `diffusers.training_utils.compute_density_for_timestep_sampling` and a
  `FlowMatchEulerDiscreteScheduler`'s sigmas, `transformer.add_adapter(LoraConfig(...))`,
  `torch.nn.utils.clip_grad_norm_`, `torch.optim.AdamW`, `diffusers.optimization.get_scheduler`.
  Timed over the same steps (the same warm-up left out), data loading included.
  `bare` uses diffusers' own Sana linear-attention processor; `bare, voxforge processor` the
  same loop with voxforge's fp16-safe `FencedLinearAttention` (what voxforge's model runs), so
  the processor's cost is told apart from the engine's.

The loops run in alternating rounds (voxforge, bare, bare+processor; then the reverse ...);
medians are reported. `--profile` runs the voxforge side once more under cProfile and prints
where its time goes (writes `voxforge.prof` into --out).

    python benchmarks/bench_image_lora.py [--threads 2] [--steps 60] [--rounds 3] [--out runs/bench_image_lora] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from image_bench_common import machine, machine_line, markdown_table


def prepare(work: Path, images: int) -> dict[str, Any]:
    """The shared inputs: prepared images, the DC-AE and transformer folders, the recipe."""
    from voxforge.data.images import ImagePrepareConfig, prepare_images
    from voxforge.data.synth_images import SynthImagesConfig, write_synth_images
    from voxforge.models.image import build_autoencoder, build_transformer
    from voxforge.recipe import load_recipe

    lora = load_recipe("image_lora_tiny")
    ae_model = load_recipe("image_ae_tiny").model
    data = work / "images"
    if not (data / "dataset.json").is_file():
        write_synth_images(work / "src", SynthImagesConfig(num=images, size=lora.data.resolution, seed=0))
        config = ImagePrepareConfig(
            resolution=lora.data.resolution, buckets="square", workers=0, progress=False
        )
        prepare_images([work / "src"], data, config)
    torch.manual_seed(0)
    ae = build_autoencoder(ae_model)
    ae.save_pretrained(str(work / "autoencoder"))
    compression = int(ae.spatial_compression_ratio)
    model_cfg = copy.deepcopy(lora.model)
    model_cfg.attention_fp32 = False  # save diffusers' own processor; voxforge fences it on load
    transformer = build_transformer(
        model_cfg,
        caption_channels=lora.text_encoder.width,
        sample_size=lora.data.resolution // compression,
    )
    transformer.save_pretrained(str(work / "transformer"))
    return {
        "recipe": lora,
        "data": data,
        "autoencoder": work / "autoencoder",
        "transformer": work / "transformer",
    }


# --- voxforge ---------------------------------------------------------------------------
def voxforge_overrides(parts: dict[str, Any], args: argparse.Namespace) -> list[str]:
    return [
        f"model.pretrained={parts['transformer']}",
        f"data.path={parts['data']}",
        f"data.autoencoder={parts['autoencoder']}",
        f"train.max_steps={args.steps}",
        f"train.log_every={args.window}",
        f"train.batch_size={args.batch}",
        f"train.checkpoint_every={10 * args.steps}",
        "train.precision=fp32",
        "train.grad_clip_norm=1.0",
        "train.progress=false",
        "train.tensorboard=false",
        "train.sample_every=0",
    ]


@contextlib.contextmanager
def window_clock(marks: list[tuple[float, float]]) -> Iterator[None]:
    """Record (wall, process CPU) each time the engine logs a window's `steps_per_s`: the
    engine's own window boundaries, so its step time can be read in CPU time as well."""
    from voxforge.train.logging import MetricsLogger

    original = MetricsLogger.log

    def log(self: Any, step: int, values: dict[str, Any]) -> None:
        if "steps_per_s" in values:
            marks.append((time.perf_counter(), time.process_time()))
        original(self, step, values)

    MetricsLogger.log = log
    try:
        yield
    finally:
        MetricsLogger.log = original


def voxforge_loop(
    parts: dict[str, Any], args: argparse.Namespace, profile: Path | None = None
) -> dict[str, float]:
    """ms per step (wall, CPU) over the windows after the first, and the command's wall time."""
    from voxforge.cli import main as voxforge_main

    marks: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, window_clock(marks):
        run = Path(tmp) / "run"
        argv = ["train", "image_lora_tiny", "--out", str(run), *voxforge_overrides(parts, args)]
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()) as err:
            if profile is None:
                code = voxforge_main(argv)
            else:
                profiler = cProfile.Profile()
                code = profiler.runcall(voxforge_main, argv)
                profiler.dump_stats(str(profile))
        wall = time.perf_counter() - start
        if code != 0:
            sys.exit(f"voxforge train exited {code}:\n{err.getvalue()[-3000:]}")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in rows if "steps_per_s" in r][1:]  # the first window warms up
    seconds = sum(args.window / rate for rate in rates)
    steps = args.window * len(rates)
    if len(marks) != len(rates) + 1:
        sys.exit(
            f"expected {len(rates) + 1} logged windows, saw {len(marks)}: has the engine's logging changed?"
        )
    return {
        "ms_per_step": 1000 * seconds / steps,  # the engine's own steps_per_s
        "cpu_ms_per_step": 1000 * (marks[-1][1] - marks[0][1]) / steps,
        "hook_ms_per_step": 1000 * (marks[-1][0] - marks[0][0]) / steps,
        "command_s": wall,
    }


# --- bare diffusers + peft ---------------------------------------------------------------
def bare_loop(parts: dict[str, Any], args: argparse.Namespace, *, fenced: bool) -> dict[str, float]:
    """The shape of diffusers' train_dreambooth_lora_sana.py (custom captions, one process)."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaTransformer2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
    from peft import LoraConfig

    from voxforge.data.images import ImageCaptionDataset, collate_images
    from voxforge.models.image import build_text_encoder, fence_linear_attention

    recipe = parts["recipe"]
    start = time.perf_counter()
    torch.manual_seed(0)
    vae = AutoencoderDC.from_pretrained(str(parts["autoencoder"]), local_files_only=True).eval()
    vae.requires_grad_(False)
    transformer = SanaTransformer2DModel.from_pretrained(str(parts["transformer"]), local_files_only=True)
    if fenced:
        fence_linear_attention(transformer)
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=recipe.lora.rank,
            lora_alpha=recipe.lora.alpha,
            init_lora_weights="gaussian",
            target_modules=list(recipe.lora.targets),
        )
    )
    transformer.train()
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.optim.lr, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)
    lr_scheduler = get_scheduler(
        "constant_with_warmup",
        optimizer,
        num_warmup_steps=recipe.optim.warmup_steps,
        num_training_steps=args.steps,
    )
    noise_scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=recipe.flow.time_shift)
    dataset = ImageCaptionDataset(parts["data"])
    text_encoder = build_text_encoder(recipe.text_encoder, captions=[r["caption"] for r in dataset.records])
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, shuffle=True, collate_fn=collate_images, drop_last=True, num_workers=0
    )
    sigmas_all, timesteps_all = noise_scheduler.sigmas, noise_scheduler.timesteps
    set_up = time.perf_counter() - start

    def sigmas_of(timesteps: torch.Tensor) -> torch.Tensor:  # [B] -> [B, 1, 1, 1]
        index = [(timesteps_all == t).nonzero().item() for t in timesteps]
        return sigmas_all[index].flatten().view(-1, 1, 1, 1)

    step, measured, t_measure, cpu_measure = 0, 0, 0.0, 0.0
    while step < args.steps:
        for batch in loader:
            if step == args.window:  # the first window warms up, as on the voxforge side
                t_measure, cpu_measure = time.perf_counter(), time.process_time()
            prompt_embeds, prompt_mask = text_encoder.encode(batch["caption"])
            with torch.no_grad():
                model_input = vae.encode(batch["image"]).latent * vae.config.scaling_factor
            noise = torch.randn_like(model_input)
            u = compute_density_for_timestep_sampling(
                weighting_scheme="logit_normal",
                batch_size=model_input.shape[0],
                logit_mean=0.0,
                logit_std=1.0,
            )
            timesteps = timesteps_all[(u * noise_scheduler.config.num_train_timesteps).long()]
            sigmas = sigmas_of(timesteps)
            noisy = (1.0 - sigmas) * model_input + sigmas * noise
            model_pred = transformer(
                hidden_states=noisy,
                encoder_hidden_states=prompt_embeds,
                encoder_attention_mask=prompt_mask,
                timestep=timesteps,
                return_dict=False,
            )[0]
            weighting = compute_loss_weighting_for_sd3(weighting_scheme="logit_normal", sigmas=sigmas)
            target = noise - model_input
            loss = torch.mean(
                (weighting.float() * (model_pred.float() - target.float()) ** 2).reshape(target.shape[0], -1),
                1,
            )
            loss = loss.mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad()
            float(loss.detach())  # the script's progress bar reads loss.item() every step
            step += 1
            measured += step > args.window
            if step >= args.steps:
                break
    elapsed, cpu = time.perf_counter() - t_measure, time.process_time() - cpu_measure
    return {
        "ms_per_step": 1000 * elapsed / measured,
        "cpu_ms_per_step": 1000 * cpu / measured,
        "set_up_s": set_up,
    }


def parameter_counts(parts: dict[str, Any]) -> tuple[int, int]:
    """(trainable: the adapters voxforge's `apply_lora` adds, total: the transformer without them)."""
    from diffusers import SanaTransformer2DModel

    from voxforge.models.image import apply_lora

    model = SanaTransformer2DModel.from_pretrained(str(parts["transformer"]), local_files_only=True)
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in apply_lora(model, parts["recipe"].lora).parameters()), total


def print_profile(path: Path, top: int = 25) -> None:
    stats = pstats.Stats(str(path))
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        stats.stream = buf
        stats.sort_stats(key).print_stats(top)
        print(f"\n--- cProfile of the voxforge run, top {top} by {key} ---")
        print("\n".join(line for line in buf.getvalue().splitlines() if line.strip())[:8000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60, help="steps per loop, the first window included")
    parser.add_argument("--window", type=int, default=10, help="steps per timing window (train.log_every)")
    parser.add_argument("--batch", type=int, default=8, help="the recipe's train.batch_size")
    parser.add_argument("--images", type=int, default=64, help="synthetic images in the prepared dataset")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians are reported")
    parser.add_argument("--profile", action="store_true", help="profile one more voxforge run (cProfile)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_image_lora"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 6 steps, 16 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.window, args.rounds, args.images, args.batch = 6, 2, 1, 16, 4
    if args.steps < 2 * args.window:
        sys.exit("--steps must be at least two windows (the first one warms up)")
    torch.set_num_threads(args.threads)
    info = machine()
    print(machine_line(info), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    loops = {
        "voxforge train image_lora_tiny": lambda: voxforge_loop(parts, args),
        "bare diffusers + peft": lambda: bare_loop(parts, args, fenced=False),
        "bare, voxforge processor": lambda: bare_loop(parts, args, fenced=True),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in loops}
    with tempfile.TemporaryDirectory() as tmp:
        parts = prepare(Path(tmp), args.images)
        trainable, total = parameter_counts(parts)
        print(
            f"image_lora_tiny: {total:,} transformer parameters, {trainable:,} trainable (LoRA rank "
            f"{parts['recipe'].lora.rank}); batch {args.batch}, {args.steps} steps per loop, windows of "
            f"{args.window} (the first left out), {args.rounds} round(s)",
            flush=True,
        )
        names = list(loops)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                results[name].append(loops[name]())
                print(f"  round {r + 1}: {name}: {results[name][-1]['ms_per_step']:.2f} ms/step", flush=True)
        if args.profile:
            voxforge_loop(parts, args, profile=args.out / "voxforge.prof")
    med = {name: statistics.median(x["ms_per_step"] for x in runs) for name, runs in results.items()}
    cpu = {name: statistics.median(x["cpu_ms_per_step"] for x in runs) for name, runs in results.items()}
    rows = [
        [
            name,
            f"{med[name]:.2f}",
            " / ".join(f"{x['ms_per_step']:.2f}" for x in results[name]),
            f"{cpu[name]:.2f}",
            " / ".join(f"{x['cpu_ms_per_step']:.2f}" for x in results[name]),
        ]
        for name in names
    ]
    print()
    print(markdown_table(["loop", "wall ms/step (median)", "rounds", "CPU ms/step (median)", "rounds"], rows))
    ratios = {}
    for label, (a, b) in {
        "voxforge / bare diffusers + peft (goal <= 1.05)": (names[0], names[1]),
        "voxforge / bare with voxforge's processor (the engine alone)": (names[0], names[2]),
        "bare with voxforge's processor / bare (the processor alone)": (names[2], names[1]),
    }.items():
        ratios[label] = {"wall": med[a] / med[b], "cpu": cpu[a] / cpu[b]}
        print(f"{label}: {med[a] / med[b]:.3f} wall, {cpu[a] / cpu[b]:.3f} CPU time")
    command = statistics.median(x["command_s"] for x in results[names[0]])
    print(
        f"whole `voxforge train` command (set-up, {args.steps} steps, export, held-out loss): {command:.1f} s"
    )
    record = {
        "machine": info,
        "args": {k: str(v) for k, v in vars(args).items()},
        "parameters": {"trainable": trainable, "total": total},
        "results": results,
        "medians_ms": med,
        "medians_cpu_ms": cpu,
        "ratios": ratios,
    }
    (args.out / "lora_overhead.json").write_text(json.dumps(record, indent=1))
    if args.profile:
        print_profile(args.out / "voxforge.prof")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
