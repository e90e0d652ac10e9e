"""The image latent cache (`voxforge.data.image_cache`): shards, index, resume, flips, masks, and
the dataset reading it. The encoders here are small real functions (average pooling, a fixed
embedding table), so what is cached can be checked exactly against what they compute."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from voxforge.data.image_cache import CACHE_INDEX, SHARDS_DIR, encode_image_cache, files_digest
from voxforge.data.images import (
    ImageAugmentConfig,
    ImageCaptionDataset,
    ImagePrepareConfig,
    collate_images,
    prepare_images,
    swap_left_right,
)
from voxforge.errors import UserError

POOL = 4  # the fake autoencoder's compression
LENGTH, WIDTH = 8, 6  # the fake text encoder's max_length and width


def pool(images: torch.Tensor) -> torch.Tensor:
    """A fake autoencoder: [B, 3, H, W] -> [B, 3, H/4, W/4] plus a channel that is not symmetric."""
    x = F.avg_pool2d(images, POOL)
    return torch.cat([x, x.cumsum(-1)], dim=1)


def embed(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A fake text encoder: one vector per word (hash-seeded), right-padded to LENGTH."""
    embeds = torch.full((len(captions), LENGTH, WIDTH), 7.0)  # padding is not zero: the cache trims it
    mask = torch.zeros(len(captions), LENGTH, dtype=torch.bool)
    for row, caption in enumerate(captions):
        words = ["<bos>", *caption.lower().replace(",", "").split()][:LENGTH]
        for col, word in enumerate(words):
            embeds[row, col] = torch.tensor([float(sum(map(ord, word)) % 97 + k) for k in range(WIDTH)])
        mask[row, : len(words)] = True
    return embeds, mask


def identity(sha: str, **extra) -> dict:
    return {"sha256": sha, "path": f"/models/{sha}", "files": {}, **extra}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """8 square images (3 with a mask, captions with left/right) and 2 wide ones, 32 px."""
    root = tmp_path_factory.mktemp("cache_data")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        size = (64, 32) if i >= 8 else (32, 32)
        pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(src / f"{i}.png")
        (src / f"{i}.txt").write_text(f"shape {i} on the left" if i % 2 else f"shape {i}")
        if i < 3:
            mask = np.zeros((size[1], size[0]), dtype=np.uint8)
            mask[:, : size[0] // 3] = 255
            Image.fromarray(mask).save(src / f"{i}_mask.png")
    config = ImagePrepareConfig(resolution=32, multiple=8, max_aspect=2.0, progress=False, workers=0)
    prepare_images([src], root / "out", config)
    return root / "out"


def write(prepared: Path, out: Path, *, ae: str = "ae1", te: str | None = "te1", **kwargs) -> dict:
    text = {"encode_text": embed, "text_encoder": identity(te, max_length=LENGTH, dim=WIDTH, kind="builtin")}
    return encode_image_cache(
        prepared,
        out,
        encode_images=kwargs.pop("encode_images", pool),
        autoencoder=identity(ae, latent_channels=6, compression=POOL, scaling_factor=1.0),
        **(text if te else {}),
        **kwargs,
    )


def test_cache_holds_what_the_encoders_compute(prepared, tmp_path):
    summary = write(prepared, tmp_path / "cache", flip=True, batch_size=3)
    assert summary["total"] == 10 and summary["latents"]["encoded"] == 10 and summary["text"]["encoded"] == 10
    index = json.loads((tmp_path / "cache" / CACHE_INDEX).read_text())
    assert index["flip"] and index["resolution"] == 32 and index["autoencoder"]["sha256"] == "ae1"
    data = ImageCaptionDataset(prepared)
    cached = ImageCaptionDataset(prepared, latents=tmp_path / "cache")
    assert cached.text
    for i in range(len(data)):
        item, got = data[i], cached[i]
        assert set(got) == {"latent", "caption", "mask", "id", "text_embeds", "text_mask"}
        assert torch.allclose(got["latent"], pool(item["image"][None])[0], atol=1e-6)
        region = data.region(i)
        want = torch.ones(1, *got["latent"].shape[-2:])
        if region is not None:  # the region averaged over each latent cell, then weighted
            want = 1.0 + (cached.mask_weight - 1.0) * F.avg_pool2d(region[None], POOL)[0]
        assert torch.allclose(got["mask"], want, atol=1e-6)
        embeds, mask = embed([item["caption"]])
        assert torch.equal(got["text_mask"], mask[0])
        assert torch.allclose(got["text_embeds"][mask[0]], embeds[0][mask[0]])
        assert not got["text_embeds"][~mask[0]].any(), "padding is stored trimmed and read back as zeros"
    assert sum(r.get("mask", False) for r in data.records) == 3
    batch = collate_images([cached[i] for i in range(len(cached)) if cached.buckets()[i] == (32, 32)][:4])
    assert batch["latent"].shape == (4, 6, 8, 8) and batch["text_embeds"].shape == (4, LENGTH, WIDTH)
    worker = pickle.loads(pickle.dumps(cached))  # a DataLoader worker opens its own shards
    assert torch.equal(worker[3]["latent"], cached[3]["latent"])


def test_flips_follow_the_image_path_draw_for_draw(prepared, tmp_path):
    write(prepared, tmp_path / "cache", flip=True)
    flip = ImageAugmentConfig(flip=True)
    images = ImageCaptionDataset(prepared, augment=flip, seed=3)
    cached = ImageCaptionDataset(prepared, augment=flip, seed=3, latents=tmp_path / "cache")
    flipped = 0
    for epoch in (0, 1):
        images.set_epoch(epoch)
        cached.set_epoch(epoch)
        for i in range(len(images)):
            item, got = images[i], cached[i]
            assert got["caption"] == item["caption"]
            assert torch.allclose(got["latent"], pool(item["image"][None])[0], atol=1e-6)
            weight = F.avg_pool2d(item["mask"][None], POOL)[0]  # what the loss averages down on the fly
            assert torch.allclose(got["mask"], weight, atol=1e-6)
            assert torch.allclose(
                got["text_embeds"][got["text_mask"]], embed([item["caption"]])[0][0][got["text_mask"]]
            )
            flipped += item["caption"] != images.records[i]["caption"]
    assert flipped > 0, "some captions with 'left' were mirrored"
    assert swap_left_right("on the left") == "on the right"


def test_shards_are_bounded_and_resume_skips_what_is_done(prepared, tmp_path):
    out = tmp_path / "cache"
    per_image = 6 * 8 * 8 * 4  # a square image's latent in bytes
    write(prepared, out, shard_bytes=3 * per_image, batch_size=4)
    shards = sorted((out / SHARDS_DIR).glob("latents-*.safetensors"))
    assert len(shards) >= 3
    # a shard holds at most its bound plus one image (the wide images are twice the size), plus the header
    assert all(s.stat().st_size <= 3 * per_image + 2 * per_image + 4096 for s in shards)
    again = write(prepared, out)
    assert again["latents"] == {"encoded": 0, "kept": 10} and again["text"] == {"encoded": 0, "kept": 10}


def test_a_killed_run_keeps_its_written_shards(prepared, tmp_path):
    out = tmp_path / "cache"
    calls = []

    def dies(images):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return pool(images)

    with pytest.raises(KeyboardInterrupt):
        write(prepared, out, encode_images=dies, shard_bytes=1, batch_size=2, te=None)
    assert not list((out / SHARDS_DIR).glob("*.partial"))
    index = json.loads((out / CACHE_INDEX).read_text())
    assert sum("latent" in e for e in index["entries"].values()) == 4  # the two batches before the kill
    summary = write(prepared, out, shard_bytes=1, te=None)
    assert summary["latents"] == {"encoded": 6, "kept": 4}
    cached = ImageCaptionDataset(prepared, latents=out)
    assert not cached.text and "text_embeds" not in cached[0]


def test_another_encoder_re_encodes_its_part_and_drops_stale_shards(prepared, tmp_path):
    out = tmp_path / "cache"
    write(prepared, out)
    text_shards = sorted(p.name for p in (out / SHARDS_DIR).glob("text-*"))
    summary = write(prepared, out, ae="ae2")
    assert summary["latents"]["encoded"] == 10 and summary["text"]["encoded"] == 0
    assert sorted(p.name for p in (out / SHARDS_DIR).glob("text-*")) == text_shards
    assert [p.name for p in (out / SHARDS_DIR).glob("latents-*")] == ["latents-00001.safetensors"]
    summary = write(prepared, out, ae="ae2", te="te2")
    assert summary["latents"]["encoded"] == 0 and summary["text"]["encoded"] == 10
    # flips asked for later: every latent again (the mirrored ones come with them)
    assert write(prepared, out, ae="ae2", te="te2", flip=True)["latents"]["encoded"] == 10


def test_a_changed_caption_re_encodes_its_embedding_only(prepared, tmp_path):
    import shutil

    copy = tmp_path / "prepared"
    shutil.copytree(prepared, copy)
    write(copy, tmp_path / "cache")
    lines = (copy / "manifest.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["caption"] = "a new caption"
    (copy / "manifest.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    summary = write(copy, tmp_path / "cache")
    assert summary["latents"]["encoded"] == 0 and summary["text"] == {"encoded": 1, "kept": 9}
    # without a text encoder the changed caption has no embedding: the dataset says so
    write(copy, tmp_path / "latents_only", te=None)
    lines[0] = json.dumps({**record, "caption": "changed again"})
    (copy / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    write(copy, tmp_path / "cache", te=None)
    with pytest.raises(UserError, match="1 of 10 images have no cached caption embedding"):
        ImageCaptionDataset(copy, latents=tmp_path / "cache")
    assert not ImageCaptionDataset(copy, latents=tmp_path / "cache", text=False).text


def test_the_dataset_refuses_what_a_cache_cannot_give(prepared, tmp_path):
    write(prepared, tmp_path / "cache")
    with pytest.raises(UserError, match="no mirrored latents"):
        ImageCaptionDataset(prepared, augment=ImageAugmentConfig(flip=True), latents=tmp_path / "cache")
    with pytest.raises(UserError, match="cannot be cropped or rotated"):
        ImageCaptionDataset(prepared, augment=ImageAugmentConfig(random_crop=0.1), latents=tmp_path / "cache")
    with pytest.raises(UserError, match="cached at 32 px"):
        ImageCaptionDataset(prepared, resolution=16, latents=tmp_path / "cache")
    with pytest.raises(UserError, match="no cache.json"):
        ImageCaptionDataset(prepared, latents=tmp_path / "nothing")
    index = json.loads((tmp_path / "cache" / CACHE_INDEX).read_text())
    first = next(iter(index["entries"]))
    del index["entries"][first]["latent"]
    (tmp_path / "cache" / CACHE_INDEX).write_text(json.dumps(index))
    with pytest.raises(UserError, match="1 of 10 images have no cached latent"):
        ImageCaptionDataset(prepared, latents=tmp_path / "cache")


def test_files_digest_memoises_by_size_and_mtime(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "weights.bin").write_bytes(b"abc")
    sha, memo = files_digest([tmp_path / "m"])
    assert files_digest([tmp_path / "m"], memo) == (sha, memo)
    (tmp_path / "m" / "weights.bin").write_bytes(b"abcd")
    assert files_digest([tmp_path / "m"], memo)[0] != sha
