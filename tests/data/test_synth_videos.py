"""`voxforge data synth-videos`: captions that match the labels and the pixels, determinism, ingest."""

from __future__ import annotations

import json

import numpy as np
import pytest

av = pytest.importorskip("av")

from voxforge.config.core import from_dict  # noqa: E402
from voxforge.data.synth_images import BACKGROUND_RGB, COLOURS, SHAPES  # noqa: E402
from voxforge.data.synth_videos import (  # noqa: E402
    ATTRIBUTES,
    MOTIONS,
    SynthVideosConfig,
    caption_of,
    draw_labels,
    parse_caption,
    render_frames,
    write_synth_videos,
)
from voxforge.data.videos import VideoPrepareConfig, prepare_videos, read_manifest  # noqa: E402
from voxforge.errors import ConfigError  # noqa: E402


def decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def shape_track(frames: np.ndarray, background: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: the centre (x, y as fractions), the area (fraction) and the colour of the shape."""
    distance = np.abs(frames.astype(float) - BACKGROUND_RGB[background]).sum(-1)
    size = frames.shape[1]
    ys, xs = np.mgrid[0:size, 0:size]
    centres, areas, colours = [], [], []
    for frame, away in zip(frames, distance):
        mask = away > 90
        centres.append([(xs[mask].mean() + 0.5) / size, (ys[mask].mean() + 0.5) / size])
        areas.append(mask.mean())
        core = away >= np.percentile(away[mask], 70)  # the inside, not the edges blended with the background
        colours.append(np.median(frame[core], axis=0))
    return np.asarray(centres), np.asarray(areas), np.asarray(colours)


def nearest(colour: np.ndarray) -> str:
    """The palette colour nearest (L1) to a measured one."""
    return min(COLOURS, key=lambda name: np.abs(np.asarray(COLOURS[name]) - colour).sum())


@pytest.mark.parametrize("motion", MOTIONS)
def test_clips_show_what_their_captions_say(tmp_path, motion):
    rows = write_synth_videos(tmp_path, SynthVideosConfig(num=3, frames=8, size=32, motions=(motion,)))
    labels = json.loads((tmp_path / "labels.json").read_text())
    for row in rows:
        assert row["motion"] == motion
        item = labels["items"][row["file_name"]]
        assert (
            parse_caption(row["text"]) == {k: row[k] for k in ATTRIBUTES} == {k: item[k] for k in ATTRIBUTES}
        )
        assert item["caption"] == row["text"]
        frames = decode(tmp_path / row["file_name"])
        assert frames.shape == (8, 32, 32, 3)
        centres, areas, colours = shape_track(frames, row["background"])
        dx, dy = centres[-1] - centres[0]
        if motion in ("left", "right", "up", "down"):
            along, across = (dx, dy) if motion in ("left", "right") else (dy, dx)
            assert abs(along) > 0.3 and abs(across) < 0.05, (row, centres)
            assert np.sign(along) == (-1 if motion in ("left", "up") else 1)
        elif motion in ("grow", "shrink"):
            ratio = areas[-1] / areas[0]
            assert (ratio > 2.5) if motion == "grow" else (ratio < 0.4), (row, areas)
            assert abs(dx) < 0.05 and abs(dy) < 0.05
        else:  # the decoded colour is nearest to the named one, first and last
            assert (nearest(colours[0]), nearest(colours[-1])) == (row["colour"], row["end_colour"]), row
            assert abs(dx) < 0.05 and abs(dy) < 0.05 and 0.5 < areas[-1] / areas[0] < 2  # it stays put
        if motion != "colour":
            assert row["end_colour"] == row["colour"]
            assert nearest(colours[int(np.argmax(areas))]) == row["colour"], row


def test_deterministic_by_seed_and_extensible(tmp_path):
    first = write_synth_videos(tmp_path / "a", SynthVideosConfig(num=4, frames=8, size=32, seed=3))
    again = write_synth_videos(tmp_path / "b", SynthVideosConfig(num=6, frames=8, size=32, seed=3))
    other = write_synth_videos(tmp_path / "c", SynthVideosConfig(num=4, frames=8, size=32, seed=4))
    assert again[:4] == first and other != first
    assert decode(tmp_path / "a" / "00002.mp4").tolist() == decode(tmp_path / "b" / "00002.mp4").tolist()
    assert (tmp_path / "a" / "00001.mp4").read_bytes() == (tmp_path / "b" / "00001.mp4").read_bytes()


def test_captions_and_config_checks():
    labels = {"shape": "star", "colour": "orange", "end_colour": "white", "motion": "colour"}
    assert caption_of({**labels, "background": "grey"}) == "an orange star turning white on a grey background"
    assert caption_of({**labels, "motion": "up", "background": "blue"}) == (
        "an orange star moving up on a blue background"
    )
    assert parse_caption("a red circle dancing on a blue background") is None
    assert parse_caption("two small red circles on the left, blue background") is None
    assert draw_labels(SynthVideosConfig(motions=("grow",)), 5)["motion"] == "grow"
    with pytest.raises(ConfigError, match="even"):
        from_dict(SynthVideosConfig, {"size": 33}, source="test")
    with pytest.raises(ConfigError, match="motions"):
        from_dict(SynthVideosConfig, {"motions": ["spin"]}, source="test")


def test_vocabulary_subsets(tmp_path):
    """shapes / colours / backgrounds / motions restrict the draws, labels.json and the checks."""
    default = [draw_labels(SynthVideosConfig(), i) for i in range(40)]
    same = [draw_labels(SynthVideosConfig(shapes=SHAPES), i) for i in range(40)]
    assert same == default  # naming the full set changes no clip
    config = SynthVideosConfig(
        num=3,
        frames=2,
        size=16,
        shapes=("circle", "square"),
        colours=("red", "white"),
        backgrounds=("black",),
        motions=("left", "colour"),
    )
    drawn = [draw_labels(config, i) for i in range(60)]
    assert {r["shape"] for r in drawn} == {"circle", "square"}
    assert {r["colour"] for r in drawn} == {"red", "white"} and {r["background"] for r in drawn} == {"black"}
    assert {r["end_colour"] for r in drawn if r["motion"] == "colour"} <= {"red", "white"}
    write_synth_videos(tmp_path, config)
    known = json.loads((tmp_path / "labels.json").read_text())["attributes"]
    assert known["shape"] == ["circle", "square"] and known["background"] == ["black"]
    with pytest.raises(ConfigError, match="'colours'.*pink"):
        from_dict(SynthVideosConfig, {"colours": ["red", "pink"]}, source="test")
    big = SynthVideosConfig(num=1, frames=2, size=32, colours=("white",), backgrounds=("black",), scale=2.0)
    small = SynthVideosConfig(num=1, frames=2, size=32, colours=("white",), backgrounds=("black",))
    lit = [(render_frames(draw_labels(c, 0), 2, 32, c.travel, c.scale) > 128).mean() for c in (small, big)]
    assert 3.0 < lit[1] / lit[0] < 5.0  # twice the radius: about four times the area
    with pytest.raises(ConfigError, match="stands out from the colour 'black'"):
        from_dict(SynthVideosConfig, {"colours": ["black"], "backgrounds": ["black"]}, source="test")


def test_data_videos_ingests_the_synthetic_set(tmp_path):
    rows = write_synth_videos(tmp_path / "clips", SynthVideosConfig(num=5, frames=8, size=32))
    config = from_dict(
        VideoPrepareConfig,
        {"buckets": {"32px": {8: [1.0, 2]}}, "progress": False, "workers": 0},
        source="test",
    )
    summary = prepare_videos([tmp_path / "clips"], tmp_path / "out", config)
    assert summary["count"] == 5 and summary["failed"] == 0 and not summary["warnings"]
    records = {r["file_name"]: r for r in read_manifest(tmp_path / "out")}
    for row in rows:
        record = records[row["file_name"]]
        assert record["caption"] == row["text"]
        assert record["extra"] == {k: row[k] for k in ATTRIBUTES}
        assert record["probe"]["frames"] == 8 and record["probe"]["fps"] == pytest.approx(8.0)
        stored = np.load(tmp_path / "out" / "clips" / f"{record['id']}.npy")
        assert np.abs(stored.astype(int) - decode(tmp_path / "clips" / row["file_name"])).max() <= 2
