"""`voxforge data images`: validation, captions, buckets, masks, mixing, resume, archives; the dataset."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.hostile import bomb_png
from voxforge.cli import main
from voxforge.config.core import from_dict
from voxforge.data.images import (
    BucketBatchSampler,
    ImageAugmentConfig,
    ImageCaptionDataset,
    ImagePrepareConfig,
    bucket_batch_sampler,
    bucket_table,
    collate_images,
    nearest_bucket,
    prepare_images,
    read_manifest,
    swap_left_right,
)

R = 64  # target resolution of most tests


def gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """A non-constant image (so crops and flips are visible)."""
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def save(image: Image.Image, path: Path, fmt: str = "PNG", **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **kwargs)
    return path


def run(sources, out, **kwargs) -> dict:
    kwargs.setdefault("resolution", R)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("workers", 0)
    config = from_dict(ImagePrepareConfig, kwargs, source="test")
    return prepare_images([str(s) for s in sources], out, config)


def by_name(out: Path) -> dict[str, dict]:
    return {r["file_name"]: r for r in read_manifest(out)}


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# ----------------------------------------------------------------------------------------------
# validation


def test_every_validation_case_is_recorded_and_the_job_goes_on(tmp_path):
    src = tmp_path / "src"
    save(gradient(80, 64), src / "good.png")
    (src / "bomb.png").write_bytes(bomb_png())
    full = io.BytesIO()
    gradient(64, 64).save(full, format="PNG")
    (src / "truncated.png").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    (src / "junk.jpg").write_bytes(b"this is not an image at all" * 10)
    (src / "empty.png").write_bytes(b"")
    save(gradient(64, 64, "CMYK"), src / "cmyk.jpg", "JPEG")
    deep = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    save(Image.fromarray(deep), src / "deep.png")
    save(gradient(64, 64).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), src / "palette.png")
    rgba = gradient(64, 64, "RGBA")
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :32] = 0
    rgba.putalpha(Image.fromarray(alpha))
    save(rgba, src / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: portrait
    save(gradient(96, 64), src / "rotated.jpg", "JPEG", exif=exif.tobytes())
    save(gradient(40, 40), src / "small.png")
    for name in list(os.listdir(src)):
        (src / name).with_suffix(".txt").write_text(f"caption of {name}")
    before = listing(src)

    summary = run([src], tmp_path / "out")
    records = by_name(tmp_path / "out")
    assert listing(src) == before, "nothing is written next to the user's files"
    failed = {name: r["reason"] for name, r in records.items() if r["status"] == "failed"}
    assert failed == {
        "bomb.png": "image_too_large",
        "truncated.png": "corrupt_image",
        "junk.jpg": "not_an_image",
        "empty.png": "empty_file",
    }
    assert all(records[name]["error"] for name in failed)
    warned = {name: set(r["warning_reasons"]) for name, r in records.items() if r["status"] == "done"}
    assert warned["good.png"] == set()
    assert "cmyk" in warned["cmyk.jpg"]
    assert "high_bit_depth" in warned["deep.png"]
    assert "palette" in warned["palette.png"]
    assert "alpha" in warned["alpha.png"]
    assert "exif_orientation" in warned["rotated.jpg"]
    assert "upscaled" in warned["small.png"]
    assert summary["count"] == 7 and summary["failed"] == 4

    out = tmp_path / "out"
    # the EXIF rotation was applied: a portrait image whose red gradient (along the stored
    # width) now runs down the rows
    rotated = records["rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (64, 96)
    with Image.open(out / "images" / f"{rotated['id']}.png") as image:
        red = np.asarray(image)[..., 0].astype(float)
    assert np.ptp(red.mean(axis=1)) > 100 and np.ptp(red.mean(axis=0)) < 20
    # every stored image is 8-bit RGB at its bucket's size
    for record in records.values():
        if record["status"] == "done":
            with Image.open(out / "images" / f"{record['id']}.png") as image:
                assert image.mode == "RGB" and list(image.size) == record["bucket"]
    # 16-bit values were scaled, not clipped: the mean stays near the middle grey
    with Image.open(out / "images" / f"{records['deep.png']['id']}.png") as image:
        assert 90 < np.asarray(image).mean() < 165
    # transparency became the background colour (white)
    with Image.open(out / "images" / f"{records['alpha.png']['id']}.png") as image:
        assert np.asarray(image)[:, :8].min() > 250
    # CMYK became RGB with its colours
    with Image.open(out / "images" / f"{records['cmyk.jpg']['id']}.png") as image:
        assert np.asarray(image).std() > 20


def test_small_images_fail_when_asked_and_min_size(tmp_path):
    src = tmp_path / "src"
    save(gradient(40, 40), src / "small.png")
    save(gradient(64, 64), src / "fine.png")
    run([src], tmp_path / "a", small="fail")
    assert by_name(tmp_path / "a")["small.png"]["reason"] == "too_small"
    assert by_name(tmp_path / "a")["fine.png"]["status"] == "done"
    run([src], tmp_path / "b", min_size=50)
    assert by_name(tmp_path / "b")["small.png"]["reason"] == "too_small"


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    src = tmp_path / "src"
    save(gradient(64, 64), src / "big.png")
    run([src], tmp_path / "out", limits={"max_texture_pixels": 1000})
    assert by_name(tmp_path / "out")["big.png"]["reason"] == "image_too_large"


def test_duplicates_and_symlinks_outside(tmp_path):
    src = tmp_path / "src"
    save(gradient(64, 64), src / "a.png")
    save(gradient(64, 64), src / "b.png")
    save(gradient(32, 32), tmp_path / "elsewhere.png")
    os.symlink(tmp_path / "elsewhere.png", src / "link.png")
    run([src], tmp_path / "out")
    records = by_name(tmp_path / "out")
    assert records["a.png"]["status"] == "done"
    assert records["b.png"]["reason"] == "duplicate" and "a.png" in records["b.png"]["error"]
    assert records["link.png"]["reason"] == "path_outside_source"


# ----------------------------------------------------------------------------------------------
# captions


def test_captions_from_txt_jsonl_csv_and_missing(tmp_path):
    txt, jsonl, csv_src = tmp_path / "txt", tmp_path / "jsonl", tmp_path / "csv"
    save(gradient(80, 80), txt / "a.png")
    (txt / "a.txt").write_text("  a red thing \n")
    save(gradient(80, 72), txt / "nocap.png")
    save(gradient(80, 74), jsonl / "sub" / "b.png")
    save(gradient(80, 75), jsonl / "c.png")
    (jsonl / "metadata.jsonl").write_text(
        json.dumps({"file_name": "sub/b.png", "text": "b from jsonl", "shape": "star"})
        + "\nnot json\n"
        + json.dumps({"file_name": "../escape.png", "text": "outside"})
        + "\n"
    )
    (jsonl / "c.txt").write_text("c from txt")
    save(gradient(80, 73), csv_src / "d.png")
    (csv_src / "metadata.csv").write_text('file_name,text\nd.png,"d, from csv"\n')
    summary = run([txt, jsonl, csv_src], tmp_path / "out")
    records = by_name(tmp_path / "out")
    assert records["a.png"]["caption"] == "a red thing"
    assert records["nocap.png"]["caption"] == "" and records["nocap.png"]["warning_reasons"] == [
        "missing_caption"
    ]
    assert records["sub/b.png"]["caption"] == "b from jsonl"
    assert records["sub/b.png"]["extra"] == {"shape": "star"}
    assert records["c.png"]["caption"] == "c from txt"
    assert records["d.png"]["caption"] == "d, from csv"
    notes = " ".join(summary["notes"])
    assert "metadata.jsonl:2" in notes and "outside" in notes


def test_metadata_wins_over_txt_with_a_warning(tmp_path):
    src = tmp_path / "src"
    save(gradient(64, 64), src / "a.png")
    (src / "a.txt").write_text("from txt")
    (src / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "from metadata"}) + "\n")
    run([src], tmp_path / "out")
    record = by_name(tmp_path / "out")["a.png"]
    assert record["caption"] == "from metadata" and record["warning_reasons"] == ["caption_conflict"]


# ----------------------------------------------------------------------------------------------
# buckets


@pytest.mark.parametrize("resolution", [256, 512, 1024])
def test_bucket_table(resolution):
    table = bucket_table(resolution, 32, 2.0)
    assert (resolution, resolution) in table
    aspects = [w / h for w, h in table]
    assert aspects == sorted(aspects) and len(set(aspects)) == len(aspects)
    for w, h in table:
        assert w % 32 == 0 and h % 32 == 0
        assert 0.8 <= w * h / resolution**2 <= 1.25
        assert max(w / h, h / w) <= 2.0
    assert len(table) >= 7  # portrait and landscape ratios, not only the square
    assert bucket_table(64, 32, 2.0) == [(64, 64)]  # tiny resolutions collapse to the square


def test_nearest_bucket_and_stored_size(tmp_path):
    table = bucket_table(512, 32, 2.0)
    assert nearest_bucket(1920, 1080, table)[0] > nearest_bucket(1920, 1080, table)[1]
    assert nearest_bucket(1000, 1000, table) == (512, 512)
    assert nearest_bucket(1080, 1920, table) == tuple(reversed(nearest_bucket(1920, 1080, table)))
    src = tmp_path / "src"
    save(gradient(300, 150), src / "wide.png")
    save(gradient(150, 300), src / "tall.png")
    run([src], tmp_path / "out", resolution=128, small="warn")
    records = by_name(tmp_path / "out")
    assert records["wide.png"]["bucket"] == [192, 96] and records["tall.png"]["bucket"] == [96, 192]
    run([src], tmp_path / "square", resolution=128, buckets="square")
    assert by_name(tmp_path / "square")["wide.png"]["bucket"] == [128, 128]


# ----------------------------------------------------------------------------------------------
# masks


def test_masks_beside_and_in_metadata(tmp_path):
    src = tmp_path / "src"
    save(gradient(128, 128), src / "a.png")
    mask = np.zeros((128, 128), np.uint8)
    mask[:, 64:] = 255  # the right half matters
    save(Image.fromarray(mask), src / "a_mask.png")
    save(gradient(128, 120), src / "b.png")
    save(Image.fromarray(mask[:120]), src / "masks" / "b_region.png")
    save(gradient(128, 126), src / "c.png")
    save(Image.fromarray(mask[:40, :100]), src / "c_mask.png")  # another shape: ignored
    (src / "metadata.jsonl").write_text(
        json.dumps({"file_name": "b.png", "text": "b", "mask": "masks/b_region.png"}) + "\n"
    )
    run([src], tmp_path / "out")
    records = by_name(tmp_path / "out")
    assert "a_mask.png" not in records, "a mask is not an image of its own"
    assert records["a.png"]["mask"] and records["b.png"]["mask"]
    assert not records["c.png"]["mask"] and "mask" in records["c.png"]["warning_reasons"]
    with Image.open(tmp_path / "out" / "masks" / f"{records['a.png']['id']}.png") as stored:
        assert stored.size == (R, R)
        values = np.asarray(stored)
        assert values[:, : R // 2 - 2].max() == 0 and values[:, R // 2 + 2 :].min() == 255

    dataset = ImageCaptionDataset(tmp_path / "out", mask_weight=3.0)
    items = {item["id"]: item for item in (dataset[i] for i in range(len(dataset)))}
    weight = items[records["a.png"]["id"]]["mask"]
    assert weight.shape == (1, R, R)
    assert torch.allclose(weight[..., : R // 2 - 2], torch.ones(1)) and torch.allclose(
        weight[..., R // 2 + 2 :], torch.full((1,), 3.0)
    )
    assert torch.equal(items[records["c.png"]["id"]]["mask"], torch.ones(1, R, R))


# ----------------------------------------------------------------------------------------------
# mixing


def test_mixing_weights_per_item_and_in_the_sampler(tmp_path):
    big, small = tmp_path / "big", tmp_path / "small"
    for i in range(12):
        save(gradient(64, 48 + i), big / f"{i}.png")
    for i in range(4):
        save(gradient(48 + i, 64).rotate(180), small / f"{i}.png")
    summary = run([big, small], tmp_path / "out", weights=(1.0, 1.0), buckets="square")
    records = read_manifest(tmp_path / "out")
    assert [s["done"] for s in summary["sources"]] == [12, 4]
    per_source = [sum(r["weight"] for r in records if r["source_index"] == i) for i in (0, 1)]
    assert per_source == pytest.approx([1.0, 1.0])
    dataset = ImageCaptionDataset(tmp_path / "out")
    sampler = bucket_batch_sampler(dataset, 4, seed=3)
    source_of = [r["source_index"] for r in dataset.records]
    drawn = [source_of[i] for epoch in range(30) for batch in sampler.epoch_batches(epoch) for i in batch]
    assert 0.4 < np.mean(drawn) < 0.6, "equal weights draw both sources equally, whatever their sizes"
    # re-weighting needs no reprocessing
    summary = run([big, small], tmp_path / "out", weights=(3.0, 1.0), buckets="square")
    assert summary["this_run"]["processed"] == 0
    assert sum(
        r["weight"] for r in read_manifest(tmp_path / "out") if r["source_index"] == 0
    ) == pytest.approx(3.0)


# ----------------------------------------------------------------------------------------------
# resume


def test_resume_skips_done_items(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        save(gradient(64, 60 + i), src / f"{i}.png")
        (src / f"{i}.txt").write_text(f"caption {i}")
    out = tmp_path / "out"
    assert run([src], out)["this_run"]["processed"] == 4
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    again = run([src], out)["this_run"]
    assert (again["processed"], again["skipped"]) == (0, 4)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamps
    # a caption edit is picked up without reprocessing; a changed image is reprocessed
    (src / "0.txt").write_text("new caption")
    save(gradient(64, 50), src / "1.png")
    summary = run([src], out)
    assert summary["this_run"]["processed"] == 1
    assert by_name(out)["0.png"]["caption"] == "new caption"
    # a changed setting reprocesses everything
    assert run([src], out, background=(0, 0, 0))["this_run"]["processed"] == 4
    # a killed run: the manifest ends in a torn line and one image is gone
    with open(out / "manifest.jsonl", "a") as handle:
        handle.write('{"id": "torn')
    (out / "images" / f"{by_name(out)['2.png']['id']}.png").unlink()
    summary = run([src], out, background=(0, 0, 0))
    assert summary["this_run"]["processed"] == 1 and summary["count"] == 4
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4


def test_failed_items_are_kept_until_retry(tmp_path):
    src = tmp_path / "src"
    (src).mkdir()
    (src / "bad.png").write_bytes(b"junk" * 20)
    out = tmp_path / "out"
    run([src], out)
    assert run([src], out)["this_run"]["processed"] == 0
    assert run([src], out, retry_failed=True)["this_run"]["processed"] == 1


def test_worker_processes_give_the_same_result(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        save(gradient(64, 60 + i), src / f"{i}.png")
    (src / "bad.png").write_bytes(b"junk" * 20)
    run([src], tmp_path / "a", workers=0)
    run([src], tmp_path / "b", workers=2)
    strip = lambda records: {k: {f: v for f, v in r.items() if f != "mtime"} for k, r in records.items()}  # noqa: E731
    assert strip(by_name(tmp_path / "a")) == strip(by_name(tmp_path / "b"))


# ----------------------------------------------------------------------------------------------
# archives


def png_bytes(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    gradient(width, height).save(buffer, format="PNG")
    return buffer.getvalue()


def test_zip_and_tar_sources(tmp_path):
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr("photos/x.png", png_bytes())
        archive.writestr("photos/x.txt", "x from zip")
        archive.writestr("run.sh", "rm -rf /")
    with tarfile.open(tmp_path / "b.tar.gz", "w:gz") as archive:
        for name, data in {
            "y.png": png_bytes(64, 40),
            "metadata.jsonl": b'{"file_name": "y.png", "text": "y"}\n',
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    run([tmp_path / "a.zip", tmp_path / "b.tar.gz"], tmp_path / "out")
    records = by_name(tmp_path / "out")
    assert records["photos/x.png"]["caption"] == "x from zip" and records["y.png"]["caption"] == "y"
    assert records["photos/x.png"]["source"].endswith("a.zip")
    assert not list((tmp_path / "out" / "archives").rglob("run.sh"))


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_path_traversal_is_refused(tmp_path, kind):
    name = "../evil.png"
    if kind == "zip":
        with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
            archive.writestr("fine.png", png_bytes())
            archive.writestr(zipfile.ZipInfo(name), png_bytes())
        source = tmp_path / "a.zip"
    else:
        with tarfile.open(tmp_path / "a.tar", "w") as archive:
            data = png_bytes()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        source = tmp_path / "a.tar"
    good = tmp_path / "good"
    save(gradient(64, 64), good / "ok.png")
    summary = run([source, good], tmp_path / "out" / "deep")
    records = read_manifest(tmp_path / "out" / "deep")
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "path_outside_source"
    assert summary["count"] == 1, "the job goes on with the other sources"
    assert not list(tmp_path.rglob("evil.png"))


def test_tar_links_are_refused(tmp_path):
    with tarfile.open(tmp_path / "a.tar", "w") as archive:
        info = tarfile.TarInfo("link.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        archive.addfile(info)
    run([tmp_path / "a.tar"], tmp_path / "out")
    assert read_manifest(tmp_path / "out")[0]["reason"] == "path_outside_source"


# ----------------------------------------------------------------------------------------------
# dataset and sampler


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    src = root / "src"
    for i in range(8):
        save(gradient(128, 128).rotate(i * 10), src / f"square{i}.png")
        (src / f"square{i}.txt").write_text(f"square {i} on the left")
    for i in range(5):
        save(gradient(192, 96 + i), src / f"wide{i}.png")
        (src / f"wide{i}.txt").write_text(f"wide {i}")
    prepare_images([str(src)], root / "out", ImagePrepareConfig(resolution=128, progress=False, workers=0))
    return root / "out"


def test_dataset_items(prepared):
    dataset = ImageCaptionDataset(prepared)
    assert len(dataset) == 13
    assert sorted(set(dataset.buckets())) == [(128, 128), (192, 96)]
    item = dataset[0]
    assert set(item) == {"image", "caption", "mask", "id"}
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 128, 128)
    assert -1.0 <= item["image"].min() < -0.5 and 0.5 < item["image"].max() <= 1.0
    assert torch.equal(item["mask"], torch.ones(1, 128, 128))
    assert item["caption"] == "square 0 on the left"
    # a lower training resolution maps every bucket to that resolution's table
    small = ImageCaptionDataset(prepared, resolution=64)
    assert set(small.buckets()) == {(64, 64)} and small[12]["image"].shape == (3, 64, 64)


def test_augmentations_are_deterministic_per_index_and_epoch(prepared):
    augment = ImageAugmentConfig(random_crop=0.2, flip=True, rotate_deg=10)
    dataset = ImageCaptionDataset(prepared, augment=augment, seed=1)
    plain = ImageCaptionDataset(prepared)
    first = [dataset[i]["image"] for i in range(4)]
    torch.manual_seed(123)  # global state plays no part
    assert all(torch.equal(a, dataset[i]["image"]) for i, a in enumerate(first))
    assert not torch.equal(first[0], plain[0]["image"])
    dataset.set_epoch(1)
    assert any(not torch.equal(a, dataset[i]["image"]) for i, a in enumerate(first))
    # a rotation never shows empty corners: values stay those of the image
    assert dataset[0]["image"].abs().max() <= 1.0
    # flips mirror the image and swap left/right in the caption
    flips = ImageCaptionDataset(prepared, augment=ImageAugmentConfig(flip=True))
    items = [(flips[i], plain[i]) for i in range(8)]
    flipped = [(a, b) for a, b in items if not torch.equal(a["image"], b["image"])]
    assert 0 < len(flipped) < 8
    for a, b in flipped:
        assert torch.equal(a["image"], b["image"].flip(-1)) and "on the right" in a["caption"]
    assert swap_left_right("Left of the right tree") == "Right of the left tree"


def test_bucket_batches(prepared):
    dataset = ImageCaptionDataset(prepared)
    buckets = dataset.buckets()
    sampler = bucket_batch_sampler(dataset, 4, seed=0)
    assert len(sampler) == 8 // 4 + 5 // 4
    batches = list(sampler)
    assert len(batches) == 3 and all(len({buckets[i] for i in b}) == 1 for b in batches)
    assert len({i for b in batches for i in b}) == 12, "an epoch draws each item at most once"
    batch = collate_images([dataset[i] for i in batches[0]])
    assert batch["image"].shape[0] == 4 and len(batch["caption"]) == 4
    # the same epoch again, resumed mid-way, and split over two ranks
    assert list(bucket_batch_sampler(dataset, 4, seed=0)) == batches
    assert list(bucket_batch_sampler(dataset, 4, seed=0, start_batch=1)) == batches[1:]
    ranks = [list(bucket_batch_sampler(dataset, 2, seed=0, rank=r, world_size=2)) for r in (0, 1)]
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(b) for b in batches]
    sampler.set_epoch(1)
    assert list(sampler) != batches
    with pytest.raises(Exception, match="no bucket has a full batch"):
        BucketBatchSampler(buckets, 16)


def test_weighted_batches_follow_the_weights(prepared):
    dataset = ImageCaptionDataset(prepared)
    buckets = dataset.buckets()
    weights = [10.0 if b == (192, 96) else 1.0 for b in buckets]
    sampler = BucketBatchSampler(buckets, 2, weights=weights, seed=0)
    assert len(sampler) == 13 // 2
    wide = [buckets[batch[0]] == (192, 96) for e in range(20) for batch in sampler.epoch_batches(e)]
    assert np.mean(wide) > 0.75  # 50 of 58 weight units
    assert all(len(set(b.tolist())) == 2 for b in sampler.epoch_batches(0)), "no item twice in a batch"


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(Exception, match="voxforge data images"):
        ImageCaptionDataset(tmp_path)


# ----------------------------------------------------------------------------------------------
# command


def test_command(tmp_path, capsys):
    src = tmp_path / "src"
    save(gradient(64, 64), src / "a.png")
    (src / "b.png").write_bytes(bomb_png())
    assert main(["data", "images", str(src), str(src), str(tmp_path / "out"), "--resolution", "64",
                 "--weights", "1,0.5", "--no-progress"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "1 images ready" in text and "image_too_large: 1" in text and "duplicate: 2" in text
    assert main(["data", "images", str(src), str(tmp_path / "out"), "--weights", "1,2"]) == 2
    assert "one per source" in capsys.readouterr().err
    assert main(["data", "images", str(tmp_path / "nowhere"), str(tmp_path / "out")]) == 2


def test_output_inside_the_source_and_stable_warnings_on_resume(tmp_path):
    src = tmp_path / "src"
    save(gradient(64, 64, "CMYK"), src / "a.jpg", "JPEG")
    save(gradient(80, 80), src / "b.png")
    (src / "metadata.jsonl").write_text(
        json.dumps({"file_name": "b.png", "text": "b", "mask": "gone.png"}) + "\n"
    )
    out = src / "prepared"
    first = by_name(out) if run([src], out) else None
    assert set(first) == {"a.jpg", "b.png"}
    assert first["a.jpg"]["warning_reasons"] == ["missing_caption", "cmyk"]
    assert first["b.png"]["warning_reasons"] == ["missing_mask"]
    summary = run([src], out)
    assert summary["this_run"]["processed"] == 0 and summary["count"] == 2, "its own outputs are not inputs"
    assert by_name(out) == first
    (src / "a.txt").write_text("now captioned")
    run([src], out)
    assert by_name(out)["a.jpg"]["warning_reasons"] == ["cmyk"]
    with pytest.raises(Exception, match="must not be"):
        run([out], src / "prepared")
