"""The built-in captioned image dataset: shapes from a small grammar, deterministic by seed.

Every image draws `count` (one to three) shapes of one kind, colour and size in one region of
the canvas over a plain background, and its caption says exactly that, e.g. "two small red
circles on the left, blue background". The attributes are written with the caption, as extra
fields of `metadata.jsonl` (shape, colour, count, position, size, background), so a classifier
can be trained on real held-out images to judge whether generated images follow their prompt.
The output is a folder in the diffusers ImageFolder layout (`00000.png` ... + metadata.jsonl),
which `voxforge data images` reads as it is; `synth.json` records the settings and every
attribute's values.

Item i draws its attributes from `default_rng([seed, i])`, so any item can be made alone and
`--num 64` extends `--num 16` without changing it. The shape colour never equals the
background. `exclude_colours` holds colours back from the shapes (and backgrounds), for a
fine-tuning demo that teaches a colour the base model never saw; `only_colours` makes the
images of that demo. Shapes are drawn 4x larger and downsampled (anti-aliased edges).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.config.core import ConfigValueError, option

SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"cross": "crosses"}
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
BACKGROUNDS = ("white", "black", "grey", "blue", "green", "yellow")
BACKGROUND_RGB = {**COLOURS, "grey": (128, 128, 128)}
POSITIONS = ("left", "right", "top", "bottom", "centre")
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
SIZES = {"small": 0.09, "large": 0.14}  # radius as a fraction of the image side
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
ATTRIBUTES = ("shape", "colour", "count", "position", "size", "background")
SUPERSAMPLE = 4


@dataclass
class SynthImagesConfig:
    num: int = option(256, ge=1, help="number of images")
    size: int = option(64, ge=16, le=1024, help="image width and height in pixels")
    seed: int = option(0, help="random seed; the same seed gives the same files")
    exclude_colours: tuple[str, ...] = option((), help="shape colours never drawn (held back)")
    only_colours: tuple[str, ...] = option((), help="draw shapes only in these colours")

    def __post_init__(self) -> None:
        for key in ("exclude_colours", "only_colours"):
            unknown = sorted(set(getattr(self, key)) - set(COLOURS))
            if unknown:
                raise ConfigValueError(key, f"unknown colours {unknown}; choose from {list(COLOURS)}")
        if not self.colours():
            raise ConfigValueError("exclude_colours", "every shape colour is excluded")

    def colours(self) -> list[str]:
        allowed = [c for c in COLOURS if not self.only_colours or c in self.only_colours]
        return [c for c in allowed if c not in self.exclude_colours]


def caption_of(labels: dict[str, Any]) -> str:
    """The caption that says exactly what `labels` describes."""
    count = int(labels["count"])
    shape = labels["shape"] if count == 1 else PLURALS.get(labels["shape"], labels["shape"] + "s")
    return (
        f"{COUNT_WORDS[count]} {labels['size']} {labels['colour']} {shape} "
        f"{POSITION_PHRASES[labels['position']]}, {labels['background']} background"
    )


def draw_labels(config: SynthImagesConfig, index: int) -> dict[str, Any]:
    """The attributes of item `index` (its own random stream)."""
    rng = np.random.default_rng([config.seed, index])
    colours = config.colours()
    colour = colours[int(rng.integers(len(colours)))]
    backgrounds = [b for b in BACKGROUNDS if b != colour and b not in config.exclude_colours]
    return {
        "shape": SHAPES[int(rng.integers(len(SHAPES)))],
        "colour": colour,
        "count": int(rng.integers(1, 4)),
        "position": POSITIONS[int(rng.integers(len(POSITIONS)))],
        "size": ("small", "large")[int(rng.integers(2))],
        "background": backgrounds[int(rng.integers(len(backgrounds)))],
        "jitter": rng.uniform(-1.0, 1.0, size=(3, 2)).tolist(),  # per-shape offset, in units of slack
    }


def _centres(
    position: str, count: int, radius: float, jitter: list[list[float]]
) -> list[tuple[float, float]]:
    """Shape centres (fractions of the side) inside the region, evenly spaced along its long axis."""
    region = {
        "left": (0.0, 0.0, 0.5, 1.0),
        "right": (0.5, 0.0, 1.0, 1.0),
        "top": (0.0, 0.0, 1.0, 0.5),
        "bottom": (0.0, 0.5, 1.0, 1.0),
        "centre": (0.02, 0.25, 0.98, 0.75),
    }[position]
    x0, y0, x1, y1 = region
    along_x = (x1 - x0) >= (y1 - y0)
    centres = []
    for k in range(count):
        if along_x:
            cell = (x1 - x0) / count
            cx, cy = x0 + cell * (k + 0.5), (y0 + y1) / 2
            slack = (max(0.0, cell / 2 - radius * 1.1), max(0.0, (y1 - y0) / 2 - radius * 1.1))
        else:
            cell = (y1 - y0) / count
            cx, cy = (x0 + x1) / 2, y0 + cell * (k + 0.5)
            slack = (max(0.0, (x1 - x0) / 2 - radius * 1.1), max(0.0, cell / 2 - radius * 1.1))
        centres.append((cx + 0.5 * slack[0] * jitter[k][0], cy + 0.5 * slack[1] * jitter[k][1]))
    return centres


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [
            (cx + r * math.cos(a), cy - r * math.sin(a))
            for a in (math.pi / 2, 7 * math.pi / 6, 11 * math.pi / 6)
        ]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else r * 0.45
            angle = math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy - radius * math.sin(angle)))
        return points
    if shape == "cross":
        a, b = r, r * 0.35
        return [
            (cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
            (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
            (cx - a, cy - b), (cx - b, cy - b),
        ]  # fmt: skip
    raise ValueError(f"unknown shape {shape!r}")


def render(labels: dict[str, Any], size: int) -> Any:
    """A PIL RGB image of `labels` at `size` x `size`."""
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUND_RGB[labels["background"]])
    draw = ImageDraw.Draw(image)
    radius = SIZES[labels["size"]]
    fill = COLOURS[labels["colour"]]
    for cx, cy in _centres(labels["position"], labels["count"], radius, labels["jitter"]):
        if labels["shape"] == "circle":
            draw.ellipse(
                [(cx - radius) * big, (cy - radius) * big, (cx + radius) * big, (cy + radius) * big],
                fill=fill,
            )
        else:
            draw.polygon(
                [(x * big, y * big) for x, y in _polygon(labels["shape"], cx, cy, radius)], fill=fill
            )
    return image.resize((size, size), Image.Resampling.BOX)


def write_synth_images(out: str | Path, config: SynthImagesConfig | None = None) -> list[dict[str, Any]]:
    """Write the images, metadata.jsonl and synth.json into `out`; returns the metadata rows."""
    config = config or SynthImagesConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(config.num):
        labels = draw_labels(config, index)
        name = f"{index:05d}.png"
        render(labels, config.size).save(out / name, format="PNG")
        row = {"file_name": name, "text": caption_of(labels)}
        row.update({key: labels[key] for key in ATTRIBUTES})
        rows.append(row)
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    info = {
        "format": "voxforge.synth_images",
        "num": config.num,
        "size": config.size,
        "seed": config.seed,
        "exclude_colours": list(config.exclude_colours),
        "only_colours": list(config.only_colours),
        "attributes": {
            "shape": list(SHAPES),
            "colour": list(COLOURS),
            "count": list(COUNT_WORDS),
            "position": list(POSITIONS),
            "size": list(SIZES),
            "background": list(BACKGROUNDS),
        },
    }
    (out / "synth.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return rows


def parse_caption(caption: str) -> dict[str, Any] | None:
    """The attributes a caption of this grammar names (None when it is not one of its captions)."""
    words = caption.replace(",", " ").split()
    try:
        count = {v: k for k, v in COUNT_WORDS.items()}[words[0]]
        size, colour, noun = words[1], words[2], words[3]
        shape = next(s for s in SHAPES if noun in (s, PLURALS.get(s, s + "s")))
        phrase = " ".join(words[4:-2])
        position = next(p for p, text in POSITION_PHRASES.items() if text == phrase)
        background = words[-2]
    except (KeyError, IndexError, StopIteration):
        return None
    if (
        size not in SIZES
        or colour not in COLOURS
        or background not in BACKGROUND_RGB
        or words[-1] != "background"
    ):
        return None
    return {
        "shape": shape,
        "colour": colour,
        "count": count,
        "position": position,
        "size": size,
        "background": background,
    }
