"""`voxforge data videos`: probing, failures, gif and image inputs, captions, buckets, resume; the
dataset and its bucket sampler (determinism, exact resume of its state, rank sharding)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from PIL import Image  # noqa: E402

from voxforge.cli import main  # noqa: E402
from voxforge.config.core import from_dict  # noqa: E402
from voxforge.data.synth_videos import write_mp4  # noqa: E402
from voxforge.data.video_buckets import (  # noqa: E402
    VideoBucket,
    VideoBucketSampler,
    aspect_tables,
    assign_bucket,
    bucket_rng,
    parse_bucket_config,
)
from voxforge.data.video_io import VideoLimits, frame_indices, probe_video, read_clip  # noqa: E402
from voxforge.data.videos import (  # noqa: E402
    VideoClipDataset,
    VideoPrepareConfig,
    collate_videos,
    prepare_videos,
    read_manifest,
    video_batch_sampler,
)
from voxforge.errors import ConfigError, UserError  # noqa: E402

TABLE = {"32px": {1: [1.0, 2], 4: [1.0, 2], 8: [1.0, 2]}}


def moving(frames: int = 8, width: int = 32, height: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [T, H, W, 3]: a bright bar moving right over a dark gradient (distinct per seed)."""
    x = np.linspace(0, 80, width)[None, :].repeat(height, 0)
    base = np.stack([x, x * 0 + 40 + 20 * seed, 80 - x], -1)
    clip = np.repeat(base[None], frames, 0)
    for t in range(frames):
        left = t * (width - 8) // max(frames - 1, 1)
        clip[t, :, left : left + 8] = (230, 200, 40)
    return clip.astype(np.uint8)


def mp4_index_at_end(frames: np.ndarray, path: Path, fps: int = 8) -> None:
    """An .mp4 as most muxers write it: the index (moov) after the data."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def gif(path: Path, frames: np.ndarray, duration_ms: int = 125) -> None:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration_ms, loop=0)


def run(sources, out, **kwargs) -> dict:
    kwargs.setdefault("buckets", TABLE)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("workers", 0)
    config = from_dict(VideoPrepareConfig, kwargs, source="test")
    return prepare_videos([str(s) for s in sources], out, config)


def by_name(out: Path) -> dict[str, dict]:
    return {r["file_name"]: r for r in read_manifest(out)}


def test_probe_numbers_of_mp4_and_webm(tmp_path):
    write_mp4(moving(8, 48, 32), tmp_path / "a.mp4", fps=8)
    probe = probe_video(tmp_path / "a.mp4", "a.mp4", VideoLimits())
    assert (probe.frames, probe.width, probe.height, probe.declared_frames) == (8, 48, 32, 8)
    assert probe.fps == pytest.approx(8.0) and probe.duration == pytest.approx(1.0, abs=0.01)
    assert probe.codec in ("h264", "mpeg4") and probe.kind == "video"
    # webm declares no frame count: counted by decoding (the two-pass path of read_clip)
    with av.open(str(tmp_path / "b.webm"), mode="w") as container:
        stream = container.add_stream("libvpx-vp9", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in moving(6):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    probe = probe_video(tmp_path / "b.webm", "b.webm", VideoLimits())
    assert (probe.frames, probe.width, probe.height, probe.codec) == (6, 32, 32, "vp9")
    assert probe.fps == pytest.approx(10.0)


def test_broken_files_are_failures_and_the_others_go_on(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    write_mp4(moving(8), src / "good.mp4")
    data = (src / "good.mp4").read_bytes()
    (src / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])  # index first, data cut short
    mp4_index_at_end(moving(8, seed=1), src / "noindex.mp4")
    data = (src / "noindex.mp4").read_bytes()
    (src / "noindex.mp4").write_bytes(data[: len(data) // 2])  # cut before the index
    (src / "notes.mp4").write_text("this is a text file, not a video\n" * 20)
    (src / "empty.webm").write_bytes(b"")
    write_mp4(moving(8, seed=2), src / "other.mp4")
    summary = run([src], out)
    records = by_name(out)
    assert records["good.mp4"]["status"] == records["other.mp4"]["status"] == "done"
    assert records["cut.mp4"]["reason"] == "truncated_video"
    assert records["noindex.mp4"]["reason"] == "corrupt_video"
    assert records["notes.mp4"]["reason"] == "not_a_video"
    assert records["empty.webm"]["reason"] == "empty_file"
    assert summary["count"] == 2 and summary["failed"] == 4
    assert all(records[n]["error"] for n in ("cut.mp4", "noindex.mp4", "notes.mp4"))
    assert not (out / "clips" / f"{records['notes.mp4']['id']}.npy").exists()


def test_limits_are_checked_before_decoding(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_mp4(moving(8), src / "a.mp4")
    run([src], tmp_path / "frames", limits={"max_frames": 6})
    assert by_name(tmp_path / "frames")["a.mp4"]["reason"] == "too_many_frames"
    run([src], tmp_path / "pixels", limits={"max_frame_pixels": 32 * 31})
    assert by_name(tmp_path / "pixels")["a.mp4"]["reason"] == "video_too_large"
    run([src], tmp_path / "bytes", limits={"max_file_bytes": 100})
    assert by_name(tmp_path / "bytes")["a.mp4"]["reason"] == "too_large"


def test_gif_and_images_are_clips(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    frames = np.stack([np.full((32, 32, 3), 40 * (t + 1), np.uint8) for t in range(5)])
    gif(src / "anim.gif", frames)
    Image.fromarray(moving(1, 64, 32)[0]).save(src / "still.png")  # 2:1, centre-cropped to 32x32
    run([src], out)
    records = by_name(out)
    anim, still = records["anim.gif"], records["still.png"]
    assert anim["kind"] == "video" and anim["probe"]["frames"] == 5
    assert anim["bucket"] == {"resolution": "32px", "frames": 4, "width": 32, "height": 32}
    assert anim["frame_indices"] == [0, 1, 2, 3]
    clip = np.load(out / "clips" / f"{anim['id']}.npy")
    assert clip.shape == (4, 32, 32, 3) and clip.dtype == np.uint8
    assert np.abs(clip.mean(axis=(1, 2, 3)) - [40, 80, 120, 160]).max() < 3  # the gif's frames, in order
    assert still["kind"] == "image" and still["bucket"]["frames"] == 1
    image = np.load(out / "clips" / f"{still['id']}.npy")
    assert image.shape == (1, 32, 32, 3)
    expected = np.asarray(Image.fromarray(moving(1, 64, 32)[0]).resize((64, 32)).crop((16, 0, 48, 32)))
    assert np.abs(image[0].astype(int) - expected).mean() < 4


def test_caption_sources(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    for name, seed in (("a.mp4", 0), ("b.mp4", 1), ("c.mp4", 2), ("sub/d.mp4", 3), ("e.mp4", 4)):
        write_mp4(moving(8, seed=seed), src / name)
    (src / "a.txt").write_text("  a bar moving right \n")
    (src / "b.txt").write_text("the sidecar says this")
    (src / "metadata.jsonl").write_text(
        json.dumps({"file_name": "b.mp4", "text": "the metadata says this", "motion": "right"})
        + "\n"
        + json.dumps({"file_name": "c.mp4", "text": "from jsonl"})
        + "\nnot json\n"
        + json.dumps({"file_name": "../outside.mp4", "text": "x"})
        + "\n"
    )
    (src / "sub" / "metadata.csv").write_text("file_name,text\nd.mp4,from csv\n")
    run([src], out)
    records = by_name(out)
    assert records["a.mp4"]["caption"] == "a bar moving right"
    assert records["b.mp4"]["caption"] == "the metadata says this"
    assert "caption_conflict" in records["b.mp4"]["warning_reasons"]
    assert records["b.mp4"]["extra"] == {"motion": "right"}
    assert records["c.mp4"]["caption"] == "from jsonl"
    assert records["sub/d.mp4"]["caption"] == "from csv"
    assert records["e.mp4"]["caption"] == "" and "missing_caption" in records["e.mp4"]["warning_reasons"]
    notes = json.loads((out / "dataset.json").read_text())["notes"]
    assert any("not JSON" in n for n in notes) and any("outside the source" in n for n in notes)


def test_archive_sources(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_mp4(moving(8), src / "a.mp4")
    (src / "a.txt").write_text("from the archive")
    with tarfile.open(tmp_path / "clips.tar.gz", "w:gz") as archive:
        archive.add(src / "a.mp4", arcname="x/a.mp4")
        archive.add(src / "a.txt", arcname="x/a.txt")
        link = tarfile.TarInfo("x/evil.mp4")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    run([tmp_path / "clips.tar.gz"], tmp_path / "out")
    (record,) = read_manifest(tmp_path / "out")
    assert record["reason"] == "path_outside_source"  # the whole archive is refused, nothing extracted
    with tarfile.open(tmp_path / "good.tar", "w") as archive:
        archive.add(src / "a.mp4", arcname="x/a.mp4")
        archive.add(src / "a.txt", arcname="x/a.txt")
    run([tmp_path / "good.tar"], tmp_path / "out2")
    (record,) = read_manifest(tmp_path / "out2")
    assert record["status"] == "done" and record["caption"] == "from the archive"


def test_bucket_assignment_follows_the_table():
    table = parse_bucket_config(
        {"64px": {1: [1.0, 8], "8": [1.0, 4], 16: [1.0, 2]}, "32": {1: [1.0, 16], 4: [1.0, 8], 8: [1.0, 8]}}
    )
    assert list(table) == ["64px", "32px"]  # largest first, names normalized
    aspects = aspect_tables(table, 16, 2.0)
    rng = np.random.default_rng(0)

    def bucket(frames, width, height):
        return assign_bucket(table, aspects, frames, width, height, rng)

    assert bucket(16, 64, 64) == VideoBucket("64px", 16, 64, 64)
    assert bucket(40, 64, 64) == VideoBucket("64px", 16, 64, 64)  # the largest count that fits
    assert bucket(12, 64, 64) == VideoBucket("64px", 8, 64, 64)
    assert bucket(1, 64, 64) == VideoBucket("64px", 1, 64, 64)  # an image
    assert bucket(16, 96, 48) == VideoBucket("64px", 16, 96, 48)  # 2:1 aspect bucket
    assert bucket(16, 40, 40) == VideoBucket("32px", 8, 32, 32)  # under 0.8 x 64²: the next resolution
    assert bucket(5, 64, 64) == VideoBucket("32px", 4, 32, 32)  # no 64px bucket for 5 frames
    assert bucket(3, 64, 64) is None  # a video never goes to a one-frame bucket
    assert bucket(16, 16, 16) is None  # smaller than every resolution


def test_bucket_probability_moves_clips_down_deterministically():
    table = parse_bucket_config({"64px": {8: [0.3, 4]}, "32px": {8: [1.0, 8]}})
    aspects = aspect_tables(table, 16, 2.0)
    ids = [f"{i:016x}" for i in range(0, 2000, 2)]
    first = [assign_bucket(table, aspects, 8, 64, 64, bucket_rng(7, i)) for i in ids]
    again = [assign_bucket(table, aspects, 8, 64, 64, bucket_rng(7, i)) for i in ids]
    assert first == again
    high = sum(b.resolution == "64px" for b in first) / len(first)
    assert 0.25 < high < 0.35 and all(b is not None for b in first)
    other_seed = [assign_bucket(table, aspects, 8, 64, 64, bucket_rng(8, i)) for i in ids]
    assert other_seed != first
    dropped = parse_bucket_config({"64px": {8: [0.5, 4]}, "32px": {8: [0.0, 8]}})
    kept = [assign_bucket(dropped, aspects, 8, 64, 64, bucket_rng(7, i)) for i in ids]
    assert 0.4 < sum(b is not None for b in kept) / len(kept) < 0.6  # the rest fall past the lowest


@pytest.mark.parametrize(
    "table, words",
    [
        ({"32px": {8: [1.5, 2]}}, "probability"),
        ({"32px": {8: [1.0, 0]}}, "batch size"),
        ({"32px": {8: [1.0, 2.5]}}, "batch size"),
        ({"big": {8: [1.0, 2]}}, "<N>px"),
        ({"32px": {"x": [1.0, 2]}}, "frame count"),
        ({"32px": {8: 1.0}}, "[probability, batch size]"),
        ({"32px": {8: [1, 2]}, "32": {8: [1, 2]}}, "same resolution"),
        ({}, "non-empty"),
    ],
)
def test_bad_bucket_tables_name_the_entry(table, words):
    with pytest.raises(ConfigError, match="buckets") as err:
        from_dict(VideoPrepareConfig, {"buckets": table}, source="recipe.yaml")
    assert words in str(err.value)


def test_frame_indices():
    assert frame_indices(10, 4, "centre") == [3, 4, 5, 6]
    assert frame_indices(10, 4, "start") == [0, 1, 2, 3]
    assert frame_indices(10, 4, "spread") == [0, 3, 6, 9]
    assert frame_indices(1, 1) == [0]


def make_set(tmp_path: Path, counts: dict[int, int]) -> Path:
    """A source folder of clips: `counts` {frames: how many}."""
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    index = 0
    for frames, count in counts.items():
        for _ in range(count):
            write_mp4(moving(frames, seed=index), src / f"{index:03d}.mp4")
            index += 1
    return src


def test_resume_skips_finished_clips_and_reprocesses_what_changed(tmp_path):
    src, out = make_set(tmp_path, {8: 3, 5: 2}), tmp_path / "out"
    first = run([src], out)
    assert first["this_run"] == {**first["this_run"], "processed": 5, "skipped": 0}
    assert first["bucket_counts"] == {"32px/4/32x32": 2, "32px/8/32x32": 3}
    again = run([src], out)
    assert again["this_run"]["processed"] == 0 and again["this_run"]["skipped"] == 5
    (src / "000.txt").write_text("a new caption")
    table = {"32px": {1: [1.0, 2], 4: [1.0, 3], 8: [1.0, 1]}}  # batch sizes only: nothing to redo
    edited = run([src], out, buckets=table)
    assert edited["this_run"]["processed"] == 0 and by_name(out)["000.mp4"]["caption"] == "a new caption"
    records = by_name(out)
    (out / "clips" / f"{records['001.mp4']['id']}.npy").unlink()  # a clip lost (a killed run)
    with open(out / "manifest.jsonl", "a") as handle:
        handle.write('{"id": "torn')  # the cut-off last line of a killed run
    assert run([src], out)["this_run"]["processed"] == 1
    moved = run([src], out, buckets={"32px": {1: [1.0, 2], 4: [1.0, 2]}})  # 8-frame clips now go to 4
    assert moved["this_run"]["processed"] == 3 and moved["bucket_counts"] == {"32px/4/32x32": 5}
    assert np.load(out / "clips" / f"{records['000.mp4']['id']}.npy").shape == (4, 32, 32, 3)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line) for line in lines)  # rewritten, one line per file


def test_dataset_items_and_per_bucket_batches(tmp_path):
    src, out = make_set(tmp_path, {8: 4, 5: 6}), tmp_path / "out"
    run([src], out, buckets={"32px": {4: [1.0, 3], 8: [1.0, 2]}})
    data = VideoClipDataset(out)
    item = data[0]
    assert item["video"].shape == (3, 8, 32, 32) and item["video"].dtype == torch.float32
    assert -1.0 <= float(item["video"].min()) and float(item["video"].max()) <= 1.0
    assert item["fps"] == pytest.approx(8.0)
    sizes = {b.frames: n for b, n in data.batch_sizes().items()}
    assert sizes == {4: 3, 8: 2}
    sampler = video_batch_sampler(data, seed=1)
    assert sampler.batches_per_epoch == 2 + 2  # 6 clips in batches of 3, 4 clips in batches of 2
    seen = []
    for batch in sampler:
        frames = {data[i]["video"].shape[1] for i in batch}
        assert len(frames) == 1 and len(batch) == {4: 3, 8: 2}[frames.pop()]
        collated = collate_videos([data[i] for i in batch])
        assert collated["video"].shape[0] == len(batch)
        seen += batch
    assert sorted(seen) == list(range(len(data)))  # every clip once per epoch
    overridden = VideoClipDataset(out, batch_sizes={"32px/8": 4})
    assert {b.frames: n for b, n in overridden.batch_sizes().items()} == {4: 3, 8: 4}
    with pytest.raises(UserError, match="not buckets"):
        VideoClipDataset(out, batch_sizes={"32px/16": 4})
    with pytest.raises(ValueError, match="mixes"):
        collate_videos([data[i] for i in range(len(data))])


KEYS = ["a"] * 12 + ["b"] * 9 + ["c"] * 3 + ["d"] * 1  # d: never a full batch
SIZES = {"a": 2, "b": 3, "c": 1, "d": 2}


def epoch(sampler: VideoBucketSampler) -> list[list[int]]:
    return [list(b) for b in sampler]


def test_sampler_is_deterministic_and_batches_one_bucket_at_its_size():
    first = epoch(VideoBucketSampler(KEYS, SIZES, seed=3))
    assert first == epoch(VideoBucketSampler(KEYS, SIZES, seed=3))
    assert first != epoch(VideoBucketSampler(KEYS, SIZES, seed=4))
    sampler = VideoBucketSampler(KEYS, SIZES, seed=3)
    assert sampler.unused == 1 and sampler.batches_per_epoch == 6 + 3 + 3 == len(first)
    for batch in first:
        (bucket,) = {KEYS[i] for i in batch}
        assert len(batch) == SIZES[bucket]
    flat = [i for b in first for i in b]
    assert sorted(flat) == list(range(24))  # each item once, the one in "d" never
    assert [KEYS[b[0]] for b in first] != sorted(KEYS[b[0]] for b in first)  # buckets interleaved
    second = epoch(sampler := VideoBucketSampler(KEYS, SIZES, seed=3, epoch=1))
    assert second != first and sampler.epoch == 2  # the iterator moves on to the next epoch
    with pytest.raises(UserError, match="full batch"):
        VideoBucketSampler(["a", "a"], {"a": 3})


def test_sampler_state_resumes_exactly():
    whole = VideoBucketSampler(KEYS, SIZES, seed=5)
    expected = epoch(whole) + epoch(whole)  # two epochs without interruption
    sampler = VideoBucketSampler(KEYS, SIZES, seed=5)
    iterator = iter(sampler)
    got = [next(iterator) for _ in range(5)]
    state = json.loads(json.dumps(sampler.state_dict()))  # plain data
    assert state["batch"] == 5 and state["epoch"] == 0 and "rng" in state
    restored = VideoBucketSampler(KEYS, SIZES, seed=5)
    restored.load_state_dict(state)
    assert len(restored) == whole.batches_per_epoch - 5
    got += epoch(restored) + epoch(restored)
    assert got == expected
    # the engine's hook: a sampler built at (epoch, start_batch) yields the same rest of the epoch
    hook = VideoBucketSampler(KEYS, SIZES, seed=5, epoch=0, start_batch=5)
    assert epoch(hook) == expected[5 : whole.batches_per_epoch]
    with pytest.raises(ValueError, match="another seed"):
        VideoBucketSampler(KEYS, SIZES, seed=6).load_state_dict(state)


def test_sampler_shards_by_rank():
    single = epoch(VideoBucketSampler(KEYS, {k: 2 * v for k, v in SIZES.items()}, seed=2))
    ranks = [epoch(VideoBucketSampler(KEYS, SIZES, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for whole, part0, part1 in zip(single, *ranks):
        assert part0 == whole[0::2] and part1 == whole[1::2]  # 1 process at 2B == 2 processes at B
        assert {KEYS[i] for i in part0 + part1} == {KEYS[whole[0]]}  # both ranks in the same bucket
    assert not set(i for b in ranks[0] for i in b) & set(i for b in ranks[1] for i in b)


def test_cli_videos_and_synth_videos(tmp_path, capsys):
    clips, out = tmp_path / "clips", tmp_path / "out"
    assert main(["data", "synth-videos", str(clips), "--num", "3", "--frames", "8", "--size", "32"]) == 0
    table = tmp_path / "buckets.yaml"
    table.write_text("buckets:\n  32px:\n    8: [1.0, 1]\n")
    assert main(["data", "videos", str(clips), str(out), "--buckets", str(table), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "3 clips ready" in text and "32px/8/32x32: 3" in text
    code = main(["data", "videos", str(clips), str(out), "--buckets", "{32px: {8: [1.0, 1]}}", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["this_run"]["skipped"] == 3
    assert main(["data", "videos", str(clips), str(out), "--buckets", "{32px: {8: [2.0, 1]}}"]) == 2
    assert "probability" in capsys.readouterr().err


def test_rotation_metadata_is_applied(tmp_path):
    frames = np.zeros((4, 32, 64, 3), np.uint8)
    frames[:, :, :16] = 255  # white on the left; shown rotated 90° counter-clockwise: at the bottom
    with av.open(str(tmp_path / "phone.mp4"), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    probe, clip = read_clip(tmp_path / "phone.mp4", "phone.mp4", VideoLimits(), lambda p: ([0, 3], (32, 64)))
    assert (probe.width, probe.height, probe.rotation) == (32, 64, 90)
    assert clip.shape == (2, 64, 32, 3)
    assert clip[:, 52:].mean() > 200 and clip[:, :44].mean() < 30
    run([tmp_path], tmp_path / "out")
    assert by_name(tmp_path / "out")["phone.mp4"]["warning_reasons"] == ["missing_caption", "rotated"]


def test_engine_batch_stream_resumes_the_bucket_order(tmp_path):
    from voxforge.train.data import BatchStream

    src, out = make_set(tmp_path, {8: 4, 5: 6}), tmp_path / "out"
    run([src], out, buckets={"32px": {4: [1.0, 3], 8: [1.0, 2]}})
    data = VideoClipDataset(out)

    def stream(epoch: int = 0, batch: int = 0) -> BatchStream:
        return BatchStream(
            data, collate_videos, batch_size=1, rank=0, world_size=1, seed=9, epoch=epoch, batch=batch,
            make_sampler=lambda **position: video_batch_sampler(data, None, **position),
        )  # fmt: skip

    whole = stream()
    expected = [whole.next()["id"] for _ in range(7)]  # across an epoch boundary (4 batches per epoch)
    first = stream()
    got = [first.next()["id"] for _ in range(3)]
    resumed = stream(**first.state_dict())
    got += [resumed.next()["id"] for _ in range(4)]
    assert got == expected and expected[:4] != expected[4:]
