"""image_flow on a latent cache (`data.latents`, written by `voxforge encode`): the same losses as
on images, the cache's builtin text encoder adopted, caches of other encoders refused."""

from __future__ import annotations

import json

import pytest
import torch

from tests.stages.image_helpers import FLOW_OVERRIDES, prepared_images
from voxforge.cli import main
from voxforge.errors import UserError
from voxforge.recipe import load_recipe
from voxforge.stages.image_flow import ImageFlowStage

pytest.importorskip("diffusers")

TEXT = [
    "text_encoder.width=16",
    "text_encoder.layers=1",
    "text_encoder.heads=2",
    "text_encoder.max_length=16",
]


def tiny_autoencoder(folder, seed: int = 0):
    from voxforge.models.image import ImageAEConfig, build_autoencoder

    if not (folder / "config.json").is_file():
        cfg = ImageAEConfig(
            latent_channels=4,
            block_out_channels=[8, 16],
            block_types=["ResBlock", "EfficientViTBlock"],
            encoder_layers=[1, 1],
            decoder_layers=[1, 1],
            attention_head_dim=8,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            build_autoencoder(cfg).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """12 prepared 32-px images, a random tiny DC-AE, and their cache (with flips and captions)."""
    base = tmp_path_factory.mktemp("image_cache")
    images = prepared_images(base)
    ae = tiny_autoencoder(base / "ae")
    cache = base / "cache"
    argv = ["encode", "--model", str(ae), "--data", str(images), "--out", str(cache), "--flip"]
    assert main(argv + ["--text-encoder", "image_flow_tiny", *TEXT, "--batch-size", "5"]) == 0
    return {"images": images, "ae": ae, "cache": cache, "base": base}


def overrides(cached, *extra: str) -> list[str]:
    return FLOW_OVERRIDES + [f"data.path={cached['images']}", f"data.autoencoder={cached['ae']}", *extra]


def first_batch(stage: ImageFlowStage) -> dict:
    dataset = stage.build_dataset()
    indices = next(iter(stage.batch_sampler(dataset, 4)))
    return stage.collate([dataset[i] for i in indices])


def test_cached_loss_equals_the_loss_on_images(cached, tmp_path):
    flip = "data.augment.flip=true"
    plain = ImageFlowStage(
        load_recipe("image_flow_tiny", overrides(cached, flip)), tmp_path / "a", torch.device("cpu")
    )
    recipe = load_recipe("image_flow_tiny", overrides(cached, flip, f"data.latents={cached['cache']}"))
    fast = ImageFlowStage(recipe, tmp_path / "b", torch.device("cpu"))
    model = plain.build_model()
    fast.build_model()
    batch, cached_batch = first_batch(plain), first_batch(fast)
    assert "image" in batch and "latent" in cached_batch and "text_embeds" in cached_batch
    assert batch["caption"] == cached_batch["caption"] and batch["id"] == cached_batch["id"]
    # the cache's builtin encoder is adopted: the same files as the one built from the captions
    for name in ("vocabulary.json", "model.safetensors"):
        assert (tmp_path / "a" / "text_encoder" / name).read_bytes() == (
            tmp_path / "b" / "text_encoder" / name
        ).read_bytes()
    fast.autoencoder().encode = lambda *a, **k: pytest.fail("a cached step ran the autoencoder")
    fast.text_encoder().encode = lambda *a, **k: pytest.fail("a cached step ran the text encoder")
    fast.null_condition = plain.null_condition  # (the empty caption's embedding is the one call left)
    losses = []
    for stage, data in ((plain, batch), (fast, cached_batch)):
        torch.manual_seed(5)
        loss, _ = stage.loss(model, data)
        losses.append(loss)
    assert torch.allclose(losses[0], losses[1], rtol=1e-5), losses


def test_a_cache_of_other_encoders_is_refused(cached, tmp_path):
    other = tiny_autoencoder(cached["base"] / "ae_other", seed=1)
    recipe = load_recipe(
        "image_flow_tiny", overrides(cached, f"data.autoencoder={other}", f"data.latents={cached['cache']}")
    )
    with pytest.raises(UserError, match="cached with the autoencoder"):
        ImageFlowStage(recipe, tmp_path / "r", torch.device("cpu")).build_dataset()
    recipe = load_recipe(
        "image_flow_tiny", overrides(cached, f"data.latents={cached['cache']}", "text_encoder.width=32")
    )
    with pytest.raises(Exception, match="text_encoder.width"):
        ImageFlowStage(recipe, tmp_path / "w", torch.device("cpu")).build_dataset()
    # the same width with text off: latents from the cache, captions encoded per step
    recipe = load_recipe(
        "image_flow_tiny",
        overrides(
            cached, f"data.latents={cached['cache']}", "text_encoder.width=32", "data.text_cache=false"
        ),
    )
    stage = ImageFlowStage(recipe, tmp_path / "t", torch.device("cpu"))
    assert "text_embeds" not in stage.build_dataset()[0]


def test_encode_resumes_and_rejects_what_is_not_an_image_autoencoder(cached, tmp_path, capsys):
    argv = [
        "encode",
        "--model",
        str(cached["ae"]),
        "--data",
        str(cached["images"]),
        "--out",
        str(cached["cache"]),
    ]
    assert main(argv + ["--flip", "--json", "--text-encoder", "image_flow_tiny", *TEXT]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["latents"] == {"encoded": 0, "kept": 12} and summary["text"] == {"encoded": 0, "kept": 12}
    assert main(argv + ["text_encoder.width=8"]) == 2  # overrides without a recipe
    assert "need --text-encoder" in capsys.readouterr().err


@pytest.mark.slow
def test_training_on_the_cache_logs_the_losses_of_training_on_images(cached, tmp_path):
    from voxforge.train.engine import train

    steps = ["train.max_steps=3", "train.log_every=1", "train.checkpoint_every=3", "data.augment.flip=true"]
    curves = []
    for name, extra in (("images", []), ("cache", [f"data.latents={cached['cache']}"])):
        train(load_recipe("image_flow_tiny", overrides(cached, *steps, *extra)), tmp_path / name)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        curves.append([r["loss"] for r in map(json.loads, lines) if "loss" in r])
    assert len(curves[0]) == 3 and torch.allclose(torch.tensor(curves[0]), torch.tensor(curves[1]), rtol=1e-4)


def test_a_pretrained_text_encoder_is_identified_by_its_folders(cached, tmp_path):
    from tests.stages.image_helpers import tiny_pretrained_text_encoder

    pytest.importorskip("transformers")
    model = tiny_pretrained_text_encoder(tmp_path / "gemma")
    pretrained = ["text_encoder.kind=pretrained", f"text_encoder.path={model}", "text_encoder.max_length=16"]
    cache = tmp_path / "cache"
    argv = ["encode", "--model", str(cached["ae"]), "--data", str(cached["images"]), "--out", str(cache)]
    assert main(argv + ["--text-encoder", "image_flow_tiny", *pretrained]) == 0
    recipe = load_recipe("image_flow_tiny", overrides(cached, f"data.latents={cache}", *pretrained))
    stage = ImageFlowStage(recipe, tmp_path / "run", torch.device("cpu"))
    item = stage.build_dataset()[0]
    embeds, mask = stage.text_encoder().encode([item["caption"]])
    assert torch.equal(item["text_mask"], mask[0]) and torch.allclose(
        item["text_embeds"][mask[0]], embeds[0][mask[0]]
    )
    longer = load_recipe(
        "image_flow_tiny",
        overrides(cached, f"data.latents={cache}", *pretrained[:2], "text_encoder.max_length=12"),
    )
    with pytest.raises(UserError, match="another text encoder"):
        ImageFlowStage(longer, tmp_path / "run2", torch.device("cpu")).build_dataset()
