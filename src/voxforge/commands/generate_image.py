"""`voxforge generate image --model M --prompt TEXT [--prompt TEXT2 ...] --out DIR`: text → images.

M is an image_flow run folder (`voxforge train` with an image_flow recipe) or a local
diffusers Sana folder (`SanaPipeline.save_pretrained` layout); `pipelines.image.ImagePipeline`
runs either. Writes into DIR:

- `<i>.png`: one image per prompt and per `--per-prompt` sample, prompt-major
  (image i of prompt p is number p * per_prompt + i, drawn from seed + that number, so one
  image can be regenerated alone with `--seed`);
- `grid.png`: one row per prompt, one column per sample;
- `generation.json`: the inputs, the sampler settings, each file's prompt and seed, seconds.

Sampler defaults are Sana's: DPM-Solver++ (2M), 20 steps, guidance 4.5, the model's flow
shift and resolution. Torch and the pipeline are imported by `run`, so `voxforge --help`
stays fast.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

from voxforge.errors import UserError

__all__ = ["parse_size", "register", "run"]

SAMPLER_CHOICES = ("dpm", "euler", "heun")


def parse_size(text: str) -> tuple[int, int]:
    """'WxH' (or one number for a square) -> (W, H)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+)\s*)?", text)
    if not match:
        raise UserError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 512x512 (or one number)")
    width = int(match.group(1))
    height = int(match.group(2)) if match.group(2) else width
    if width <= 0 or height <= 0:
        raise UserError(f"--size {text!r}: width and height must be > 0")
    return width, height


def register(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser(
        "image",
        help="text -> images (.png) with an image_flow run or a diffusers Sana folder",
        description="Generate images from text prompts with classifier-free guidance. MODEL: an image_flow run "
        "folder or a local diffusers Sana folder (never downloaded). Writes DIR/<i>.png, DIR/grid.png and "
        "DIR/generation.json.",
    )
    p.add_argument("--model", required=True, metavar="MODEL", help="image_flow run or diffusers Sana folder")
    p.add_argument(
        "--prompt", required=True, action="append", metavar="TEXT", help="a prompt; repeat for more"
    )
    p.add_argument(
        "--negative", default="", metavar="TEXT", help="negative (unconditional) prompt (default empty)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    p.add_argument(
        "--cfg",
        type=float,
        default=4.5,
        help="guidance scale w in v_u + w (v_c - v_u); 1 = off, 0 = unconditional",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image n uses seed + n")
    p.add_argument("--size", metavar="WxH", help="image size in pixels (default: the model's resolution)")
    p.add_argument(
        "--sampler", choices=SAMPLER_CHOICES, default="dpm", help="dpm: DPM-Solver++ 2M, Sana's (default)"
    )
    p.add_argument(
        "--schedule",
        choices=("flow", "sana"),
        default="flow",
        help="flow: voxforge's time grid from t=1 (default); sana: SanaPipeline's default DPM grid (integer "
        "timesteps), to compare image for image with diffusers (needs --sampler dpm)",
    )
    p.add_argument("--per-prompt", type=int, default=1, metavar="N", help="images per prompt (default 1)")
    p.add_argument("--batch", type=int, default=4, metavar="N", help="images sampled at once (default 4)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--raw", action="store_true", help="image_flow runs: raw weights instead of the EMA")
    p.set_defaults(func=run)


def grid_image(images, rows: int):  # uint8 [N, H, W, 3] -> uint8 [rows*H + gaps, cols*W + gaps, 3]
    import numpy as np

    count, height, width, _ = images.shape
    cols = -(-count // rows)
    gap = 2
    grid = np.full((rows * height + (rows - 1) * gap, cols * width + (cols - 1) * gap, 3), 255, np.uint8)
    for n, image in enumerate(images):
        r, c = divmod(n, cols)
        grid[
            r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width
        ] = image
    return grid


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from voxforge.pipelines.image import ImagePipeline
    from voxforge.train.distributed import resolve_device

    for bad, message in (
        (args.steps < 1, f"--steps must be >= 1, got {args.steps}"),
        (args.cfg < 0, f"--cfg must be >= 0, got {args.cfg}"),
        (args.per_prompt < 1, f"--per-prompt must be >= 1, got {args.per_prompt}"),
        (args.batch < 1, f"--batch must be >= 1, got {args.batch}"),
        (args.seed < 0, f"--seed must be >= 0, got {args.seed}"),
        (
            args.schedule == "sana" and args.sampler != "dpm",
            "--schedule sana is SanaPipeline's DPM grid: use --sampler dpm",
        ),
    ):
        if bad:
            raise UserError(message)
    size = parse_size(args.size) if args.size else None
    if not Path(args.model).exists():
        raise UserError(
            f"--model {args.model}: not found (an image_flow run folder or a diffusers Sana folder)"
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")

    start = time.perf_counter()
    device = resolve_device(args.device)
    pipeline = ImagePipeline.from_model(args.model, device=device, ema=not args.raw)
    width, height = pipeline.check_size(size)  # a bad --size fails before any sampling
    loaded = time.perf_counter()

    prompts = [p for p in args.prompt for _ in range(args.per_prompt)]
    chunks = []
    for first in range(0, len(prompts), args.batch):
        chunks.append(
            pipeline.generate(
                prompts[first : first + args.batch],
                negative=args.negative,
                steps=args.steps,
                cfg=args.cfg,
                seed=args.seed + first,
                size=(width, height),
                sampler=args.sampler,
                schedule=args.schedule,
            )
        )
    images = np.concatenate(chunks)
    sampled = time.perf_counter()

    out.mkdir(parents=True, exist_ok=True)
    files = []
    for n, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
        Image.fromarray(image).save(out / f"{n}.png")
        files.append({"file": f"{n}.png", "prompt": prompt, "seed": args.seed + n})
    Image.fromarray(grid_image(images, rows=len(args.prompt))).save(out / "grid.png")
    record = {
        "model": str(Path(args.model).resolve()),
        "prompts": list(args.prompt),
        "negative": args.negative,
        "per_prompt": args.per_prompt,
        "seed": args.seed,
        "size": [width, height],
        "sampler": {
            "method": args.sampler,
            "steps": args.steps,
            "cfg_scale": args.cfg,
            "schedule": args.schedule,
            "flow_shift": pipeline.flow_shift,
        },
        "images": files,
        "seconds": {
            "load": round(loaded - start, 3),
            "sample": round(sampled - loaded, 3),
            "per_image": round((sampled - loaded) / len(prompts), 3),
        },
        "device": str(device),
    }
    (out / "generation.json").write_text(json.dumps(record, indent=1))
    print(
        f"voxforge generate: {len(prompts)} image(s) of {width}x{height} in {sampled - loaded:.1f} s "
        f"({args.sampler}, {args.steps} steps, cfg {args.cfg:g}) -> {out} (0..{len(prompts) - 1}.png, grid.png, "
        "generation.json)",
        file=sys.stderr,
    )
    return 0
