"""Linear attention pays off: Sana's denoiser against a softmax-attention DiT of the same
width and depth, time per step at 8 resolutions from 256 to 2048 px.

The linear model is `SanaTransformer2DModel` as voxforge builds it
(`voxforge.models.image.build_transformer`: ReLU linear self-attention through
`FencedLinearAttention`, which in fp32 computes what diffusers' `SanaLinearAttnProcessor2_0`
does). The softmax model is *the same model with the same weights* whose self-attention
processors are swapped for diffusers' `AttnProcessor2_0` (softmax `scaled_dot_product_attention`
over the same q, k, v projections), so the two differ only in the attention operator; the
cross-attention to the caption tokens, the Mix-FFN and everything else are shared.

Latent side = px / 32 (DC-AE f32, patch 1): 8 .. 64 tokens per side, 64 .. 4096 tokens.
For each size: forward (no grad) and forward + backward (loss = mean of the squared output),
the two models alternated, best of --repeats each. Prints a markdown table, the ratios
softmax / linear, and the least-squares slope of log(time) against log(tokens) for each model
over all sizes and over the largest four (linear: close to 1; softmax: approaching 2 as the
N^2 attention takes over); writes `attention_scaling.png` (log-log plot, drawn with PIL:
matplotlib is not a dependency of the project) and `attention_scaling.json` into --out.

    python benchmarks/bench_image_attention.py [--threads 2] [--width 256 --heads 8 --depth 4] \
        [--repeats 3] [--out runs/bench_image_attention] [--quick]

The default width 256 (8 heads x 32, Sana's head width) and depth 4 keep the run to a few
minutes on 2 CPU cores; Sana 600M is width 1152, depth 28 (`--width 1152 --heads 36 --depth 28`
on a bigger machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from image_bench_common import loglog_slope, machine, machine_line, markdown_table

SIZES = (256, 384, 512, 768, 1024, 1280, 1536, 2048)
COMPRESSION = 32  # DC-AE f32
LATENT_CHANNELS = 32  # DC-AE f32c32


def build_models(args: argparse.Namespace) -> dict[str, torch.nn.Module]:
    """{"linear": Sana as voxforge builds it, "softmax": a copy whose self-attention is SDPA}."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    from voxforge.models.image import ImageFlowConfig, build_transformer

    if args.width % args.heads:
        sys.exit(f"--width {args.width} is not a multiple of --heads {args.heads}")
    cfg = ImageFlowConfig(
        in_channels=LATENT_CHANNELS,
        num_layers=args.depth,
        heads=args.heads,
        head_dim=args.width // args.heads,
        cross_heads=args.heads,
        mlp_ratio=2.5,
    )
    torch.manual_seed(0)
    linear = build_transformer(cfg, caption_channels=args.caption_channels, sample_size=SIZES[0] // 32)
    softmax = copy.deepcopy(linear)
    processors = softmax.attn_processors
    swapped = {name: AttnProcessor2_0() if ".attn1." in name else p for name, p in processors.items()}
    softmax.set_attn_processor(swapped)
    kinds = {type(p).__name__ for name, p in softmax.attn_processors.items() if ".attn1." in name}
    assert kinds == {"AttnProcessor2_0"}, kinds
    return {"linear": linear.train(), "softmax": softmax.train()}


def inputs(side: int, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(side)
    mask = torch.ones(args.batch, args.caption_tokens, dtype=torch.bool)
    mask[:, args.caption_tokens // 2 :] = False  # half the caption is padding, as short prompts are
    return {
        "hidden_states": torch.randn(args.batch, LATENT_CHANNELS, side, side, generator=gen),
        "encoder_hidden_states": torch.randn(
            args.batch, args.caption_tokens, args.caption_channels, generator=gen
        ),
        "encoder_attention_mask": mask,
        "timestep": torch.full((args.batch,), 500.0),
    }


def forward(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        model(**x, return_dict=False)


def forward_backward(model: torch.nn.Module, x: dict[str, torch.Tensor]) -> None:
    model.zero_grad(set_to_none=True)
    out = model(**x, return_dict=False)[0]
    out.float().pow(2).mean().backward()


def timed(fn: Any, *a: Any) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*a)
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    models = build_models(args)
    warm = inputs(args.sizes[0] // COMPRESSION, args)
    for model in models.values():  # kernels, allocator: not part of any measurement
        forward_backward(model, warm)
    rows = []
    for px in args.sizes:
        side = px // COMPRESSION
        x = inputs(side, args)
        row: dict[str, Any] = {"px": px, "side": side, "tokens": side * side}
        for mode, fn in (("fwd", forward), ("fwd_bwd", forward_backward)):
            walls: dict[str, list[float]] = {"linear": [], "softmax": []}
            cpus: dict[str, list[float]] = {"linear": [], "softmax": []}
            for r in range(args.repeats):  # alternate (L S, S L, ...) so load drift hits both
                order = ("linear", "softmax") if r % 2 == 0 else ("softmax", "linear")
                for name in order:
                    wall, cpu = timed(fn, models[name], x)
                    walls[name].append(wall)
                    cpus[name].append(cpu)
            for name in walls:  # best of the repeats, wall and CPU time each
                row[f"{name}_{mode}_s"] = min(walls[name])
                row[f"{name}_{mode}_cpu_s"] = min(cpus[name])
        rows.append(row)
        print(
            f"  {px:5d} px, {side * side:5d} tokens: fwd linear {row['linear_fwd_s'] * 1e3:8.1f} ms, "
            f"softmax {row['softmax_fwd_s'] * 1e3:8.1f} ms; fwd+bwd linear {row['linear_fwd_bwd_s'] * 1e3:8.1f} ms, "
            f"softmax {row['softmax_fwd_bwd_s'] * 1e3:8.1f} ms",
            flush=True,
        )
    return rows


def slopes(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    tokens = [r["tokens"] for r in rows]
    top = max(2, min(4, len(rows)))
    out = {}
    for key in ("linear_fwd", "softmax_fwd", "linear_fwd_bwd", "softmax_fwd_bwd"):
        times = [r[f"{key}_s"] for r in rows]
        cpu = [r[f"{key}_cpu_s"] for r in rows]
        out[key] = {
            "all": loglog_slope(tokens, times),
            f"largest_{top}": loglog_slope(tokens[-top:], times[-top:]),
            "cpu_all": loglog_slope(tokens, cpu),
            f"cpu_largest_{top}": loglog_slope(tokens[-top:], cpu[-top:]),
        }
    return out


# --- the plot (PIL: matplotlib is not a dependency) ------------------------------------------
SERIES = (
    ("linear_fwd", "linear, forward", (31, 119, 180), False),
    ("linear_fwd_bwd", "linear, forward + backward", (31, 119, 180), True),
    ("softmax_fwd", "softmax, forward", (214, 39, 40), False),
    ("softmax_fwd_bwd", "softmax, forward + backward", (214, 39, 40), True),
)


def _dashed(draw: Any, points: list[tuple[float, float]], fill: Any, width: int, dash: float = 8.0) -> None:
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        steps = max(1, int(length // dash))
        for i in range(0, steps, 2):
            a, b = i / steps, min(1.0, (i + 1) / steps)
            draw.line(
                [(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                fill,
                width,
            )


def plot(
    rows: list[dict[str, Any]],
    fitted: dict[str, dict[str, float]],
    title: str,
    path: Path,
    clock: str = "wall",
) -> None:
    """The log-log plot of `clock` ("wall" or "cpu") time against tokens, with slope-1 and
    slope-2 guides, as a PNG."""
    from PIL import Image, ImageDraw, ImageFont

    suffix, slope_key = ("_cpu_s", "cpu_all") if clock == "cpu" else ("_s", "all")
    top_key = next(k for k in next(iter(fitted.values())) if k.startswith("largest"))

    w, h, left, right, top, bottom = 900, 580, 80, 270, 60, 60
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=13)
    tokens = [r["tokens"] for r in rows]
    times = [r[f"{key}{suffix}"] * 1e3 for key, *_ in SERIES for r in rows]
    lx0, lx1 = math.log10(min(tokens)) - 0.05, math.log10(max(tokens)) + 0.05
    ly0, ly1 = math.floor(math.log10(min(times))), math.ceil(math.log10(max(times)))

    def xy(n: float, ms: float) -> tuple[float, float]:
        fx = (math.log10(n) - lx0) / (lx1 - lx0)
        fy = (math.log10(ms) - ly0) / (ly1 - ly0)
        return left + fx * (w - left - right), h - bottom - fy * (h - top - bottom)

    for e in range(ly0, ly1 + 1):  # horizontal grid at decades of milliseconds
        _, y = xy(tokens[0], 10.0**e)
        draw.line([(left, y), (w - right, y)], (225, 225, 225))
        draw.text((left - 8, y), f"{10.0**e:g} ms", (60, 60, 60), font, anchor="rm")
    draw.text((left, 32), f"{'CPU' if clock == 'cpu' else 'wall'} time per call, log-log", (60, 60, 60), font)
    for n in tokens:  # vertical grid at the measured token counts
        x, _ = xy(n, 10.0**ly0)
        draw.line([(x, top), (x, h - bottom)], (235, 235, 235))
        draw.text((x, h - bottom + 6), str(n), (60, 60, 60), font, anchor="ma")
    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    draw.text(
        ((left + w - right) / 2, h - 22),
        "tokens (latent side^2; px = 32 x side)",
        (0, 0, 0),
        font,
        anchor="ma",
    )
    draw.text((left, 10), title, (0, 0, 0), font)
    # reference slopes 1 and 2 through the first forward+backward point of the linear model
    n0, t0 = tokens[0], rows[0][f"linear_fwd_bwd{suffix}"] * 1e3
    for k, label in ((1, "slope 1"), (2, "slope 2")):
        n1 = tokens[-1]
        t1 = t0 * (n1 / n0) ** k
        if t1 > 10.0**ly1:  # clip at the top of the plot
            n1 = n0 * (10.0**ly1 / t0) ** (1 / k)
            t1 = 10.0**ly1
        _dashed(draw, [xy(n0, t0), xy(n1, t1)], (150, 150, 150), 1, dash=4.0)
        draw.text(xy(n1, t1), label, (120, 120, 120), font, anchor="rb")
    legend_y = top + 10
    for key, label, colour, dashed in SERIES:
        pts = [xy(r["tokens"], r[f"{key}{suffix}"] * 1e3) for r in rows]
        if dashed:
            _dashed(draw, pts, colour, 2)
        else:
            draw.line(pts, colour, 2)
        for x, y in pts:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        lx = w - right + 14
        if dashed:
            _dashed(draw, [(lx, legend_y + 7), (lx + 26, legend_y + 7)], colour, 2, dash=5.0)
        else:
            draw.line([(lx, legend_y + 7), (lx + 26, legend_y + 7)], colour, 2)
        draw.text((lx + 32, legend_y), label, (0, 0, 0), font)
        draw.text(
            (lx + 32, legend_y + 15),
            f"slope {fitted[key][slope_key]:.2f} all, {fitted[key][slope_key.replace('all', top_key)]:.2f} {top_key.replace('_', ' ')}",
            (90, 90, 90),
            font,
        )
        legend_y += 40
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)


def report(rows: list[dict[str, Any]], fitted: dict[str, dict[str, float]], clock: str = "wall") -> str:
    """The table in `clock` time (with the other clock's fwd+bwd ratio) and the slopes."""
    main, other = ("_cpu_s", "_s") if clock == "cpu" else ("_s", "_cpu_s")
    name, other_name = ("CPU", "wall") if clock == "cpu" else ("wall", "CPU")

    def ms(r: dict[str, Any], key: str) -> str:
        return f"{r[key + main] * 1e3:.1f}"

    def ratio(r: dict[str, Any], mode: str, suffix: str) -> str:
        return f"{r['softmax_' + mode + suffix] / r['linear_' + mode + suffix]:.2f}×"

    table = markdown_table(
        [
            "px",
            "latent",
            "tokens",
            f"linear fwd ms ({name})",
            f"softmax fwd ms ({name})",
            "softmax / linear",
            f"linear fwd+bwd ms ({name})",
            f"softmax fwd+bwd ms ({name})",
            "softmax / linear",
            f"fwd+bwd softmax / linear, {other_name} time",
        ],
        [
            [
                r["px"],
                f"{r['side']}²",
                r["tokens"],
                ms(r, "linear_fwd"),
                ms(r, "softmax_fwd"),
                ratio(r, "fwd", main),
                ms(r, "linear_fwd_bwd"),
                ms(r, "softmax_fwd_bwd"),
                ratio(r, "fwd_bwd", main),
                ratio(r, "fwd_bwd", other),
            ]
            for r in rows
        ],
    )
    top = next(k for k in fitted["linear_fwd"] if k.startswith("largest"))
    slope_table = markdown_table(
        [
            "model, pass",
            "slope of log(wall time) on log(tokens), all sizes",
            f"wall, {top.replace('_', ' ')} sizes",
            "CPU time, all sizes",
            f"CPU time, {top.replace('_', ' ')}",
        ],
        [
            [
                key.replace("_fwd_bwd", ", fwd+bwd").replace("_fwd", ", fwd"),
                f"{s['all']:.2f}",
                f"{s[top]:.2f}",
                f"{s['cpu_all']:.2f}",
                f"{s['cpu_' + top]:.2f}",
            ]
            for key, s in fitted.items()
        ],
    )
    return table + "\n\n" + slope_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--caption-tokens", type=int, default=300, help="Sana's max_length")
    parser.add_argument("--caption-channels", type=int, default=256)
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="pixel sides, multiples of 32")
    parser.add_argument("--repeats", type=int, default=3, help="best of N per point (alternated)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_image_attention"))
    parser.add_argument(
        "--clock",
        choices=("auto", "wall", "cpu"),
        default="auto",
        help="the time of the table and the plot; auto: process CPU time with 1 thread (its compute "
        "time whatever else shares the machine), wall time otherwise",
    )
    parser.add_argument(
        "--replot",
        type=Path,
        default=None,
        help="re-draw the table and plot of a saved attention_scaling.json",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 small sizes, a tiny model")
    args = parser.parse_args(argv)
    if args.replot is not None:
        record = json.loads(args.replot.read_text())
        rows, info, saved = record["rows"], record["machine"], record["args"]
        clock = args.clock if args.clock != "auto" else ("cpu" if int(info["threads"]) == 1 else "wall")
        fitted = slopes(rows)
        print(machine_line(info))
        print(report(rows, fitted, clock))
        title = (
            f"Sana denoiser, width {saved['width']}, depth {saved['depth']}, batch {saved['batch']}: "
            f"linear vs softmax self-attention ({info['capability']}, {info['threads']} thread(s))"
        )
        plot(rows, fitted, title, args.out / "attention_scaling.png", clock)
        print(f"\nwrote {args.out / 'attention_scaling.png'}")
        return 0
    args.sizes = [int(s) for s in str(args.sizes).split(",")]
    if args.quick:
        args.sizes, args.width, args.heads, args.depth = [256, 384, 512], 64, 2, 1
        args.caption_tokens, args.caption_channels, args.repeats = 16, 32, 1
    if any(s % COMPRESSION for s in args.sizes) or len(args.sizes) < 2:
        sys.exit("--sizes: give at least two pixel sides, each a multiple of 32")
    torch.set_num_threads(args.threads)
    clock = args.clock if args.clock != "auto" else ("cpu" if args.threads == 1 else "wall")
    info = machine()
    print(machine_line(info))
    print(
        f"model: SanaTransformer2DModel width {args.width} ({args.heads} heads x {args.width // args.heads}), "
        f"depth {args.depth}, {LATENT_CHANNELS} latent channels, batch {args.batch}, "
        f"{args.caption_tokens} caption tokens x {args.caption_channels}; softmax = the same model, "
        "self-attention through diffusers AttnProcessor2_0 (SDPA)",
        flush=True,
    )
    start = time.perf_counter()
    rows = measure(args)
    fitted = slopes(rows)
    print()
    print(report(rows, fitted, clock))
    png = args.out / "attention_scaling.png"
    title = (
        f"Sana denoiser, width {args.width}, depth {args.depth}, batch {args.batch}: "
        f"linear vs softmax self-attention ({info['capability']}, {info['threads']} thread(s))"
    )
    plot(rows, fitted, title, png, clock)
    record = {
        "machine": info,
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "slopes": fitted,
    }
    (args.out / "attention_scaling.json").write_text(json.dumps(record, indent=1))
    print(f"\nwrote {png} and {args.out / 'attention_scaling.json'} ({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
