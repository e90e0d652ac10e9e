"""The offline judge of the image family: attribute classifier on real synthetic images, FID, KID."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from voxforge.data.synth_images import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    SynthImagesConfig,
    caption_of,
    draw_labels,
    parse_caption,
    render,
)
from voxforge.eval.image_attributes import (
    AttributeClassifierConfig,
    attribute_accuracy,
    chance_accuracy,
    evaluate_prompt_modes,
    frechet_distance,
    kernel_distance,
    train_attribute_classifier,
)

ATTRIBUTES = {"colour": list(COLOURS), "background": list(BACKGROUNDS), "shape": list(SHAPES)}
FAST = AttributeClassifierConfig(
    image_size=32, width=8, levels=2, feature_dim=32, steps=300, batch_size=32, lr=1e-2
)


def synth(indices, size=32, seed=0):
    config = SynthImagesConfig(num=1, size=size, seed=seed)
    labels = [draw_labels(config, i) for i in indices]
    images = np.stack([np.asarray(render(row, size).convert("RGB")) for row in labels])
    return images, labels


@pytest.fixture(scope="module")
def data():
    train_images, train_labels = synth(range(160))
    test_images, test_labels = synth(range(1000, 1064))
    return train_images, train_labels, test_images, test_labels


@pytest.fixture(scope="module")
def judge(data):
    train_images, train_labels, _, _ = data
    return train_attribute_classifier(train_images, train_labels, ATTRIBUTES, FAST)


@pytest.mark.slow  # trains the judge: 10-20 s on one thread
def test_classifier_reads_colour_and_background_of_held_out_images(judge, data):
    _, _, test_images, test_labels = data
    scores = attribute_accuracy(judge, test_images, test_labels)
    assert scores["colour"] >= 0.8 and scores["background"] >= 0.9  # seeds 0-2: 0.89-0.94, 0.98-1.0
    chance = chance_accuracy(test_labels, ["colour", "background"])
    rolled = test_labels[1:] + test_labels[:1]  # each image judged against another image's labels
    wrong = attribute_accuracy(judge, test_images, rolled)
    assert wrong["colour"] < chance["colour"] + 0.2 and wrong["background"] < chance["background"] + 0.2
    assert set(scores) == {"colour", "background", "shape", "all", "mean"}


def test_training_is_deterministic(data):
    train_images, train_labels, test_images, _ = data
    cfg = AttributeClassifierConfig(image_size=16, width=4, levels=1, feature_dim=8, steps=5, batch_size=8)
    a = train_attribute_classifier(train_images[:32], train_labels[:32], ATTRIBUTES, cfg)
    b = train_attribute_classifier(train_images[:32], train_labels[:32], ATTRIBUTES, cfg)
    torch.testing.assert_close(a.embed(test_images[:4]), b.embed(test_images[:4]))


def test_frechet_distance_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20000, 3, generator=g, dtype=torch.float64)
    y = torch.randn(20000, 3, generator=g, dtype=torch.float64) * 2.0 + torch.tensor([1.0, 0.0, -1.0])
    # N(0, I) vs N(mu, 4 I): |mu|^2 + tr(I + 4I - 2*2I) = 2 + 3
    assert frechet_distance(x, y) == pytest.approx(5.0, abs=0.15)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)
    scipy_linalg = pytest.importorskip("scipy.linalg")
    a, b = (
        torch.randn(50, 4, generator=g, dtype=torch.float64),
        torch.randn(60, 4, generator=g, dtype=torch.float64),
    )
    ca, cb = np.cov(a.numpy().T), np.cov(b.numpy().T)
    root = scipy_linalg.sqrtm(ca @ cb).real
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + np.trace(ca + cb - 2 * root)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)


def test_kernel_distance_is_unbiased_near_zero_and_grows_with_shift():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same, std = kernel_distance(x, y, subsets=20, subset_size=100)
    assert abs(same) < 3 * std + 1e-3
    shifted, _ = kernel_distance(x, y + 0.5, subsets=20, subset_size=100)
    assert shifted > 10 * max(abs(same), 1e-3)


@pytest.mark.slow
def test_prompt_modes_separate_a_prompt_following_generator_from_chance(judge, data):
    _, _, test_images, test_labels = data
    prompts = [caption_of(row) for row in test_labels]

    def follow(batch):  # a "model" that draws exactly what the prompt says
        rows = [
            parse_caption(p) if p else draw_labels(SynthImagesConfig(num=1, size=32, seed=7), 0)
            for p in batch
        ]
        return np.stack(
            [np.asarray(render({**row, "jitter": [[0, 0]] * 3}, 32).convert("RGB")) for row in rows]
        )

    results = evaluate_prompt_modes(judge, follow, prompts, test_labels, test_images, kid_subset_size=32)
    assert set(results) == {"conditional", "unconditional", "shuffled"}
    assert results["conditional"]["colour"] >= 0.8
    assert results["conditional"]["colour"] > results["shuffled"]["colour"] + 0.5
    assert results["conditional"]["colour"] > results["unconditional"]["colour"] + 0.5
    assert (
        results["conditional"]["fid"] < results["unconditional"]["fid"]
    )  # one fixed image: far from the data
