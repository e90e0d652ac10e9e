"""`voxforge generate video --model M --prompt TEXT --out OUT.mp4`: text (and a first frame) → a clip.

M is a video_flow run folder (`voxforge train` with a video_flow recipe) or its `export/`
folder; `pipelines.video.VideoPipeline` runs either. Writes:

- `OUT.mp4`: the clip, H.264 (yuv420p) through `export.video.write_mp4`;
- `OUT.gif`: a looping preview of the same frames;
- `OUT.json`: the inputs, the sampler settings (with the time shift used), frames, size, fps,
  seconds.

`--image FIRST_FRAME` makes it image → video: the picture is resized to cover the clip's size,
centre-cropped, encoded as a one-frame clip, and given to the denoiser as the first latent
frame (the model must have been trained with `model.image_condition`). `--frames` must be a
count the autoencoder takes (1 + k·tc, said in the error otherwise); defaults for the size,
frames and fps are the training data's most common bucket and frame rate. Torch and the
pipeline are imported by `run`, so `voxforge --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from voxforge.commands.generate_image import parse_size
from voxforge.errors import UserError

__all__ = ["register", "run"]

SAMPLER_CHOICES = ("euler", "heun", "dpm")


def register(targets: argparse._SubParsersAction) -> None:
    p = targets.add_parser(
        "video",
        help="text (+ a first frame) -> a video (.mp4 + .gif) with a video_flow run",
        description="Generate a clip from a text prompt with classifier-free guidance, optionally from a "
        "first frame (image -> video). MODEL: a video_flow run folder or its export/ folder. Writes OUT.mp4 "
        "(H.264), OUT.gif and OUT.json.",
    )
    p.add_argument("--model", required=True, metavar="MODEL", help="video_flow run (or its export/ folder)")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="what the clip shows")
    p.add_argument(
        "--negative", default="", metavar="TEXT", help="negative (unconditional) prompt (default empty)"
    )
    p.add_argument("--image", metavar="FIRST_FRAME", help="an image to start the clip from (image -> video)")
    p.add_argument("--out", default="video.mp4", metavar="OUT.mp4", help="output .mp4 (default video.mp4)")
    p.add_argument("--frames", type=int, help="frame count, 1 + k x the autoencoder's temporal compression")
    p.add_argument("--size", metavar="WxH", help="frame size in pixels (default: the training data's)")
    p.add_argument("--fps", type=float, help="frame rate of the files (default: the training clips')")
    p.add_argument("--steps", type=int, default=30, help="sampler steps (default 30)")
    p.add_argument(
        "--cfg",
        type=float,
        default=5.0,
        help="guidance scale w in v_u + w (v_c - v_u); 1 = off, 0 = unconditional",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise")
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default="euler", help="dpm: DPM-Solver++ 2M")
    p.add_argument("--shift", type=float, help="time-grid shift (default: the model's for this clip size)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--raw", action="store_true", help="video_flow runs: raw weights instead of the EMA")
    p.set_defaults(func=run)


def load_first_frame(path: str, size: tuple[int, int]):  # -> Tensor [1, 3, H, W] in [-1, 1]
    """An image file (size-checked before decoding) resized to cover `size` (W, H) and centre-cropped."""
    import torch

    from voxforge.data.video_io import VideoLimits, cover_crop, read_image_frame
    from voxforge.representations.mesh import AssetError

    file = Path(path)
    if not file.is_file():
        raise UserError(f"--image {path}: file not found")
    try:
        _, rgb = read_image_frame(file, file.name, VideoLimits())
    except AssetError as err:
        raise UserError(f"--image {path}: {err}") from None
    height, width = rgb.shape[:2]
    frame = cover_crop(rgb, (width, height), size)  # [H, W, 3] uint8
    return torch.from_numpy(frame.copy()).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)


def run(args: argparse.Namespace) -> int:
    from voxforge.export.video import write_gif, write_mp4
    from voxforge.pipelines.video import VideoPipeline
    from voxforge.train.distributed import resolve_device

    for bad, message in (
        (args.steps < 1, f"--steps must be >= 1, got {args.steps}"),
        (args.cfg < 0, f"--cfg must be >= 0, got {args.cfg}"),
        (args.seed < 0, f"--seed must be >= 0, got {args.seed}"),
        (args.fps is not None and not 0 < args.fps <= 240, f"--fps must be in (0, 240], got {args.fps}"),
        (args.shift is not None and args.shift <= 0, f"--shift must be > 0, got {args.shift}"),
    ):
        if bad:
            raise UserError(message)
    size = parse_size(args.size) if args.size else None
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise UserError(f"--out {out}: name an .mp4 file (the .gif and .json go next to it)")
    if out.is_dir():
        raise UserError(f"--out {out}: is a folder; name an .mp4 file")
    if not Path(args.model).exists():
        raise UserError(f"--model {args.model}: not found (a video_flow run folder or its export/ folder)")

    start = time.perf_counter()
    device = resolve_device(args.device)
    pipeline = VideoPipeline.from_model(args.model, device=device, ema=not args.raw)
    try:  # bad --frames / --size fail before any sampling, with the option named
        frames = pipeline.check_frames(args.frames)
    except UserError as err:
        raise UserError(f"--{err}") from None
    try:
        width, height = pipeline.check_size(size)
    except UserError as err:
        raise UserError(f"--{err}") from None
    image = load_first_frame(args.image, (width, height)) if args.image else None
    shift = pipeline.shift_for(frames, (width, height)) if args.shift is None else args.shift
    loaded = time.perf_counter()
    clip = pipeline.generate(
        args.prompt,
        args.negative,
        steps=args.steps,
        cfg=args.cfg,
        seed=args.seed,
        size=(width, height),
        frames=frames,
        sampler=args.sampler,
        image=image,
        time_shift=shift,
    )[0]  # uint8 [T, H, W, 3]
    sampled = time.perf_counter()

    fps = args.fps if args.fps is not None else pipeline.fps
    write_mp4(clip, out, fps=max(1, round(fps)))
    gif = write_gif(clip, out.with_suffix(".gif"), fps=max(1, round(fps)))
    record = {
        "model": str(Path(args.model).resolve()),
        "prompt": args.prompt,
        "negative": args.negative,
        "image": str(Path(args.image).resolve()) if args.image else None,
        "seed": args.seed,
        "frames": int(clip.shape[0]),
        "size": [width, height],
        "fps": max(1, round(fps)),
        "sampler": {"method": args.sampler, "steps": args.steps, "cfg_scale": args.cfg, "time_shift": shift},
        "files": [out.name, gif.name],
        "seconds": {"load": round(loaded - start, 3), "sample": round(sampled - loaded, 3)},
        "device": str(device),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=1))
    print(
        f"voxforge generate: {clip.shape[0]} frames of {width}x{height} in {sampled - loaded:.1f} s "
        f"({args.sampler}, {args.steps} steps, cfg {args.cfg:g}) -> {out}, {gif.name}, {out.with_suffix('.json').name}",
        file=sys.stderr,
    )
    return 0
