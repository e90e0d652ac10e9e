"""`voxforge data synth-images`: captions say exactly what is drawn, deterministic, consumable."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from voxforge.cli import main
from voxforge.config.core import ConfigError, from_dict
from voxforge.data.images import ImageCaptionDataset, ImagePrepareConfig, prepare_images, read_manifest
from voxforge.data.synth_images import (
    ATTRIBUTES,
    BACKGROUND_RGB,
    COLOURS,
    SynthImagesConfig,
    caption_of,
    draw_labels,
    parse_caption,
    write_synth_images,
)


def rows_of(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_captions_match_labels_and_pixels(tmp_path):
    rows = write_synth_images(tmp_path, SynthImagesConfig(num=60, size=64, seed=3))
    assert rows == rows_of(tmp_path)
    seen = {key: set() for key in ATTRIBUTES}
    for row in rows:
        labels = {key: row[key] for key in ATTRIBUTES}
        assert parse_caption(row["text"]) == labels
        assert caption_of(labels) == row["text"]
        assert row["colour"] != row["background"]
        for key in ATTRIBUTES:
            seen[key].add(row[key])
        pixels = np.asarray(Image.open(tmp_path / row["file_name"])).reshape(-1, 3).astype(int)
        assert pixels.shape[0] == 64 * 64
        # the shape's colour is drawn, on more background than shape
        shape_rgb, background_rgb = (
            np.array(COLOURS[row["colour"]]),
            np.array(BACKGROUND_RGB[row["background"]]),
        )
        near_shape = (np.abs(pixels - shape_rgb).max(axis=1) < 12).sum()
        near_background = (np.abs(pixels - background_rgb).max(axis=1) < 12).sum()
        assert near_background > near_shape > 0
    assert all(len(values) > 1 for values in seen.values()), seen
    assert seen["count"] == {1, 2, 3}


def test_shape_area_follows_count_and_size():
    from voxforge.data.synth_images import render

    def coloured_area(labels):
        pixels = np.asarray(render(labels, 64)).reshape(-1, 3).astype(int)
        return (np.abs(pixels - np.array(COLOURS[labels["colour"]])).max(axis=1) < 60).sum()

    base = {"shape": "square", "colour": "red", "count": 1, "position": "left", "size": "small",
            "background": "white", "jitter": [[0, 0]] * 3}  # fmt: skip
    small, large = coloured_area(base), coloured_area({**base, "size": "large"})
    three = coloured_area({**base, "count": 3})
    assert large > 2 * small and 2.5 * small < three < 3.5 * small
    left = np.asarray(render(base, 64)).astype(int)
    assert np.abs(left[:, 32:] - np.array(BACKGROUND_RGB["white"])).max() < 12, "left means the left half"


def test_deterministic_and_prefix_stable(tmp_path):
    write_synth_images(tmp_path / "a", SynthImagesConfig(num=6, seed=1))
    write_synth_images(tmp_path / "b", SynthImagesConfig(num=10, seed=1))
    write_synth_images(tmp_path / "c", SynthImagesConfig(num=6, seed=2))
    for i in range(6):
        name = f"{i:05d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert rows_of(tmp_path / "a") == rows_of(tmp_path / "b")[:6]
    assert rows_of(tmp_path / "a") != rows_of(tmp_path / "c")


def test_hold_back_a_colour():
    held = SynthImagesConfig(num=200, exclude_colours=("purple",))
    labels = [draw_labels(held, i) for i in range(200)]
    assert all(row["colour"] != "purple" and row["background"] != "purple" for row in labels)
    only = SynthImagesConfig(num=50, only_colours=("purple",))
    assert {draw_labels(only, i)["colour"] for i in range(50)} == {"purple"}
    with pytest.raises(ConfigError, match="unknown colours"):
        from_dict(SynthImagesConfig, {"exclude_colours": ["pink"]})
    with pytest.raises(ConfigError, match="every shape colour"):
        from_dict(SynthImagesConfig, {"only_colours": ["red"], "exclude_colours": ["red"]})


def test_output_is_consumed_by_data_images(tmp_path):
    write_synth_images(tmp_path / "src", SynthImagesConfig(num=8, size=32))
    config = ImagePrepareConfig(resolution=32, progress=False, workers=0)
    summary = prepare_images([str(tmp_path / "src")], tmp_path / "out", config)
    assert summary["count"] == 8 and summary["failed"] == 0 and summary["warnings"] == {}
    records = read_manifest(tmp_path / "out")
    for record, row in zip(records, rows_of(tmp_path / "src")):
        assert record["caption"] == row["text"]
        assert record["extra"] == {key: row[key] for key in ATTRIBUTES}
    item = ImageCaptionDataset(tmp_path / "out")[0]
    assert item["image"].shape == (3, 32, 32) and item["caption"] == rows_of(tmp_path / "src")[0]["text"]


def test_command(tmp_path, capsys):
    out = tmp_path / "synth"
    assert (
        main(["data", "synth-images", str(out), "--num", "5", "--size", "32", "--exclude-color", "purple"])
        == 0
    )
    assert "wrote 5 captioned images" in capsys.readouterr().out
    assert json.loads((out / "synth.json").read_text())["exclude_colours"] == ["purple"]
    assert main(["data", "synth-images", str(out), "--only-color", "pink"]) == 2
