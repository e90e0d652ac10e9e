"""The built-in captioned video dataset: one shape that moves, grows, shrinks or changes colour.

Every clip shows one shape (the image set's shapes and colours, `voxforge.data.synth_images`)
over a plain background of another colour (never one too close to it, orange on yellow, nor a
colour change whose way passes near it, white to black on grey) doing one thing, and its
caption says exactly that:

    "a red circle moving left on a blue background"
    "a green star growing on a white background"
    "a yellow cross turning purple on a black background"

The motions are moving left / right / up / down (the shape travels `travel` of the frame
side, its cross position drawn at random), growing and shrinking (its radius goes from 0.09
to 0.22 of the side, or back) and a colour change (linear in RGB from the first colour to the
second). The attributes go with every caption as extra columns of `metadata.jsonl` and into
`labels.json` (shape, colour, end colour, motion, background, and the trajectory), so a
classifier of shape, colour and motion trained on real held-out clips can judge whether a
generated clip follows its prompt; `parse_caption` reads a caption back into attributes.

Clip i draws its attributes from `default_rng([seed, i])`: any clip can be made alone and
`--num 64` extends `--num 16` without changing it. Frames are drawn 4x larger and downsampled
(anti-aliased edges), then written as real `.mp4` files with PyAV — H.264 (libx264, CRF 12,
4:4:4 chroma so a shape of a few pixels keeps its colour, one encoder thread: the same bytes on
every run) or MPEG-4 part 2 (4:2:0) where this FFmpeg build has no H.264 encoder — so
`voxforge data videos` reads them exactly like a user's videos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from voxforge.config.core import ConfigValueError, option
from voxforge.data.synth_images import BACKGROUND_RGB, BACKGROUNDS, COLOURS, SHAPES, _polygon
from voxforge.data.video_io import require_av

__all__ = [
    "MOTIONS",
    "SynthVideosConfig",
    "attribute_values",
    "caption_of",
    "draw_labels",
    "parse_caption",
    "render_frames",
    "vocabulary_of",
    "write_mp4",
    "write_synth_videos",
]

MOTIONS = ("left", "right", "up", "down", "grow", "shrink", "colour")
MOTION_PHRASES = {
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "grow": "growing",
    "shrink": "shrinking",
}
ATTRIBUTES = ("shape", "colour", "end_colour", "motion", "background")
#: an attribute of labels.json -> the SynthVideosConfig key of the values it is drawn from
VOCABULARY = {
    "shape": "shapes",
    "colour": "colours",
    "end_colour": "colours",
    "motion": "motions",
    "background": "backgrounds",
}
RADIUS = 0.15  # of the side, for shapes that move or change colour
SMALL, LARGE = 0.09, 0.22  # radii of growing and shrinking shapes
SUPERSAMPLE = 4
MIN_CONTRAST = 120  # least L1 RGB distance between a shape's colours and its background (orange/yellow: 85)
CODECS = ("auto", "h264", "mpeg4")


@dataclass
class SynthVideosConfig:
    num: int = option(64, ge=1, help="number of clips")
    frames: int = option(16, ge=2, le=1024, help="frames per clip")
    size: int = option(32, ge=16, le=1024, help="frame width and height in pixels (even)")
    fps: int = option(8, ge=1, le=120, help="frames per second of the written files")
    seed: int = option(0, help="random seed; the same seed gives the same clips")
    travel: float = option(
        0.45, gt=0.0, le=0.7, help="how far a moving shape travels, a fraction of the side"
    )
    scale: float = option(
        1.0,
        gt=0.0,
        le=2.5,
        help="shape size: every radius times this (1: 0.15 of the side, 0.09-0.22 growing)",
    )
    motions: tuple[str, ...] = option(MOTIONS, help="the motions drawn from")
    shapes: tuple[str, ...] = option(SHAPES, help="the shapes drawn from")
    colours: tuple[str, ...] = option(tuple(COLOURS), help="the shape colours drawn from (and turned to)")
    backgrounds: tuple[str, ...] = option(BACKGROUNDS, help="the background colours drawn from")
    codec: str = option(
        "auto", choices=CODECS, help="auto: H.264 when this FFmpeg can encode it, else MPEG-4"
    )

    def __post_init__(self) -> None:
        if self.size % 2:
            raise ConfigValueError("size", f"{self.size} is odd; yuv420p video needs an even side")
        for key, values, known in (
            ("motions", self.motions, MOTIONS),
            ("shapes", self.shapes, SHAPES),
            ("colours", self.colours, tuple(COLOURS)),
            ("backgrounds", self.backgrounds, BACKGROUNDS),
        ):
            unknown = sorted(set(values) - set(known))
            if unknown or not values:
                raise ConfigValueError(key, f"unknown or no {key} {unknown}; choose from {list(known)}")
            if len(set(values)) != len(values):
                raise ConfigValueError(key, f"{list(values)} names a value twice")
        for colour in self.colours:
            if not _backgrounds_for(colour, self.backgrounds):
                raise ConfigValueError(
                    "backgrounds",
                    f"no background of {list(self.backgrounds)} stands out from the colour {colour!r}; "
                    "add one or drop that colour",
                )
            if self.motions == ("colour",) and not _end_colours(colour, self.colours, self.backgrounds):
                raise ConfigValueError(
                    "colours",
                    f"the motion 'colour' needs a second colour that {colour!r} can turn to on one of "
                    f"{list(self.backgrounds)}; add colours or drop the motion",
                )


def caption_of(labels: dict[str, Any]) -> str:
    """The caption that says exactly what `labels` describes."""
    motion = labels["motion"]
    phrase = f"turning {labels['end_colour']}" if motion == "colour" else MOTION_PHRASES[motion]
    return (
        f"{_article(labels['colour'])} {labels['colour']} {labels['shape']} {phrase} "
        f"on {_article(labels['background'])} {labels['background']} background"
    )


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def parse_caption(caption: str) -> dict[str, Any] | None:
    """The attributes a caption of this grammar names (None when it is not one of its captions)."""
    words = caption.strip().split()
    if len(words) < 8 or words[-4] != "on" or words[-1] != "background":
        return None
    colour, shape, background = words[1], words[2], words[-2]
    if words[0] != _article(colour) or words[-3] != _article(background):
        return None
    phrase = " ".join(words[3:-4])
    end_colour = colour
    if phrase.startswith("turning "):
        motion, end_colour = "colour", phrase[len("turning ") :]
    else:
        motion = next((m for m, text in MOTION_PHRASES.items() if text == phrase), None)
    if (
        motion is None
        or colour not in COLOURS
        or end_colour not in COLOURS
        or shape not in SHAPES
        or background not in BACKGROUND_RGB
    ):
        return None
    return {
        "shape": shape,
        "colour": colour,
        "end_colour": end_colour,
        "motion": motion,
        "background": background,
    }


def attribute_values(config: SynthVideosConfig) -> dict[str, list[str]]:
    """labels.json's "attributes": every attribute and the values `config` draws it from."""
    return {name: list(getattr(config, VOCABULARY[name])) for name in ATTRIBUTES}


def vocabulary_of(attributes: dict[str, list[str]]) -> dict[str, tuple[str, ...]]:
    """The SynthVideosConfig subsets (shapes, colours, ...) of a labels.json "attributes"."""
    return {
        VOCABULARY[name]: tuple(values)
        for name, values in attributes.items()
        if name in VOCABULARY and values
    }


def draw_labels(config: SynthVideosConfig, index: int) -> dict[str, Any]:
    """The attributes and trajectory of clip `index` (its own random stream)."""
    rng = np.random.default_rng([config.seed, index])
    colours = list(config.colours)
    colour = colours[int(rng.integers(len(colours)))]
    backgrounds = _backgrounds_for(colour, config.backgrounds)
    if tuple(config.motions) == ("colour",):  # a colour change is the only motion: it needs a second colour
        backgrounds = [b for b in backgrounds if _ends(colour, colours, b)]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    motion = config.motions[int(rng.integers(len(config.motions)))]
    ends = _ends(colour, colours, background)
    if motion == "colour" and not ends and len(config.motions) > 1:
        # this background leaves the colour nothing to turn to (a reduced palette): another motion
        motion = next(m for m in config.motions if m != "colour")
    end_colour = ends[int(rng.integers(len(ends)))] if motion == "colour" else colour
    cross = float(rng.uniform(0.3, 0.7))  # the coordinate across the motion
    along = float(rng.uniform(-0.05, 0.05))  # where along it the path is centred
    return {
        "shape": config.shapes[int(rng.integers(len(config.shapes)))],
        "colour": colour,
        "end_colour": end_colour,
        "motion": motion,
        "background": background,
        "cross": cross,
        "along": along,
    }


def _backgrounds_for(colour: str, backgrounds: tuple[str, ...]) -> list[str]:
    """The backgrounds that stand out from `colour`."""
    return [b for b in backgrounds if _contrast(COLOURS[colour], BACKGROUND_RGB[b]) >= MIN_CONTRAST]


def _ends(colour: str, colours: list[str], background: str) -> list[str]:
    """The colours `colour` can turn to on `background`: the change is linear in RGB, and every
    colour on the way must stand out from the background."""
    return [
        c
        for c in colours
        if c != colour
        and _path_contrast(COLOURS[colour], COLOURS[c], BACKGROUND_RGB[background]) >= MIN_CONTRAST
    ]


def _end_colours(colour: str, colours: tuple[str, ...], backgrounds: tuple[str, ...]) -> list[str]:
    return [c for b in _backgrounds_for(colour, backgrounds) for c in _ends(colour, list(colours), b)]


def _contrast(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return sum(abs(x - y) for x, y in zip(a, b))


def _path_contrast(start: tuple[int, ...], end: tuple[int, ...], background: tuple[int, ...]) -> float:
    """The least L1 distance to the background along the RGB line from start to end."""
    line = np.asarray(start, float) + np.linspace(0.0, 1.0, 33)[:, None] * np.subtract(end, start)
    return float(np.abs(line - np.asarray(background, float)).sum(-1).min())


def trajectory(
    labels: dict[str, Any], frames: int, travel: float, radius_scale: float = 1.0
) -> list[tuple[float, float, float, float]]:
    """(centre x, centre y, radius, colour mix 0-1) per frame, in fractions of the side
    (`radius_scale`: every radius times this)."""
    motion, cross, along = labels["motion"], labels["cross"], labels["along"]
    steps = []
    for k in range(frames):
        u = k / (frames - 1) if frames > 1 else 0.0
        x = y = 0.5 + along
        radius, mix = RADIUS, 0.0
        if motion in ("left", "right", "up", "down"):
            sign = -1.0 if motion in ("left", "up") else 1.0
            position = 0.5 + along + sign * travel * (u - 0.5)
            x, y = (position, cross) if motion in ("left", "right") else (cross, position)
        elif motion in ("grow", "shrink"):
            t = u if motion == "grow" else 1.0 - u
            radius = SMALL + (LARGE - SMALL) * t
            x, y = 0.5 + along, 0.5 + (cross - 0.5) * 0.3
        else:
            mix = u
            x, y = 0.5 + along, cross
        steps.append((x, y, radius * radius_scale, mix))
    return steps


def render_frames(
    labels: dict[str, Any], frames: int, size: int, travel: float = 0.45, radius_scale: float = 1.0
) -> np.ndarray:
    """The clip of `labels`: uint8 [T, size, size, 3]."""
    from PIL import Image, ImageDraw

    big = size * SUPERSAMPLE
    start, end = (
        np.asarray(COLOURS[labels["colour"]], float),
        np.asarray(COLOURS[labels["end_colour"]], float),
    )
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for k, (cx, cy, radius, mix) in enumerate(trajectory(labels, frames, travel, radius_scale)):
        image = Image.new("RGB", (big, big), BACKGROUND_RGB[labels["background"]])
        draw = ImageDraw.Draw(image)
        fill = tuple(int(round(v)) for v in start + (end - start) * mix)
        if labels["shape"] == "circle":
            draw.ellipse(
                [(cx - radius) * big, (cy - radius) * big, (cx + radius) * big, (cy + radius) * big],
                fill=fill,
            )
        else:
            draw.polygon(
                [(x * big, y * big) for x, y in _polygon(labels["shape"], cx, cy, radius)], fill=fill
            )
        out[k] = np.asarray(image.resize((size, size), Image.Resampling.BOX))
    return out


def _encoder(codec: str) -> str:
    av = require_av()
    if codec in ("auto", "h264"):
        try:
            av.codec.Codec("libx264", "w")
            return "libx264"
        except (av.error.FFmpegError, ValueError):  # an FFmpeg without libx264
            if codec == "h264":
                raise
    return "mpeg4"


def write_mp4(
    frames: np.ndarray, path: str | Path, fps: int = 8, codec: str = "auto", chroma: str = "420"
) -> str:
    """Write uint8 [T, H, W, 3] (even H and W) as an .mp4 (index at the front); returns the encoder.

    `chroma`: "420" (what every player plays) or "444" (H.264 High 4:4:4, full colour resolution).
    """
    av = require_av()
    encoder = _encoder(codec)
    path = Path(path)
    partial = path.with_name(path.name + ".partial.mp4")
    height, width = frames.shape[1:3]
    with av.open(str(partial), mode="w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream(encoder, rate=int(fps))
        # full-resolution chroma with H.264: at 32 px, 4:2:0 would smear a small shape's colour into
        # the background (a judge of colour then learns the smear); MPEG-4 part 2 has only 4:2:0
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv444p" if encoder == "libx264" and chroma == "444" else "yuv420p"
        stream.codec_context.thread_count = 1  # one thread: the same bytes on every run
        stream.options = {"crf": "12"} if encoder == "libx264" else {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.replace(path)
    return encoder


def write_synth_videos(out: str | Path, config: SynthVideosConfig | None = None) -> list[dict[str, Any]]:
    """Write the clips, metadata.jsonl and labels.json into `out`; returns the metadata rows."""
    config = config or SynthVideosConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, items, encoder = [], {}, None
    for index in range(config.num):
        labels = draw_labels(config, index)
        name = f"{index:05d}.mp4"
        encoder = write_mp4(
            render_frames(labels, config.frames, config.size, config.travel, config.scale),
            out / name,
            config.fps,
            config.codec,
            chroma="444",
        )
        caption = caption_of(labels)
        row = {"file_name": name, "text": caption, **{key: labels[key] for key in ATTRIBUTES}}
        rows.append(row)
        items[name] = {**labels, "caption": caption}
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    info = {
        "format": "voxforge.synth_videos",
        "num": config.num,
        "frames": config.frames,
        "size": config.size,
        "fps": config.fps,
        "seed": config.seed,
        "travel": config.travel,
        "scale": config.scale,
        "codec": encoder,
        "attributes": attribute_values(config),
        "items": items,
    }
    (out / "labels.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return rows
