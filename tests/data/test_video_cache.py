"""The video latent cache: it holds exactly the latents the video_flow stage computes, resumes,
re-encodes for another autoencoder, and a flow trained on it logs the losses of one trained on
the clips; a cache of another autoencoder is refused."""

from __future__ import annotations

import json

import pytest
import torch

from tests.stages.video_helpers import flow_overrides, video_artefacts
from voxforge.cli import main
from voxforge.data.latent_shards import CACHE_INDEX, SHARDS_DIR
from voxforge.data.video_cache import VideoLatentCache
from voxforge.data.videos import VideoClipDataset
from voxforge.errors import UserError
from voxforge.pipelines.video import cache_video_data, load_autoencoder
from voxforge.recipe import load_recipe
from voxforge.stages.video_flow import VideoFlowStage
from voxforge.train.engine import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    return video_artefacts(tmp_path_factory.getbasetemp() / "video_family")


def test_cache_holds_the_stage_latents_resumes_and_follows_the_autoencoder(artefacts, tmp_path):
    cache = tmp_path / "cache"
    first = cache_video_data(
        artefacts["clips"], cache, autoencoder=artefacts["ae"], batch_size=5, shard_mb=0.002
    )
    assert (first["encoded"], first["kept"], first["total"]) == (12, 0, 12)
    assert first["shards"] > 1  # 2 KB shards: one clip's latent (4 x 5 x 4 x 4 floats) each
    data, ae = VideoClipDataset(artefacts["clips"]), load_autoencoder(artefacts["ae"])
    cached = VideoLatentCache(cache)
    for index in (0, 7):
        with torch.no_grad():
            expected = ae.encode(data[index]["video"][None])[0]
        assert torch.allclose(cached.latent(data.records[index]["id"]), expected, atol=1e-5)
    again = cache_video_data(artefacts["clips"], cache, autoencoder=artefacts["ae"])
    assert (again["encoded"], again["kept"]) == (0, 12)
    before = {p.name for p in (cache / SHARDS_DIR).iterdir()}
    other = cache_video_data(artefacts["clips"], cache, autoencoder=artefacts["ae8"])
    assert (other["encoded"], other["kept"], other["shards"]) == (12, 0, 1)
    left = {p.name for p in (cache / SHARDS_DIR).iterdir()}
    assert len(left) == 1 and not left & before  # the first autoencoder's shards are deleted
    assert VideoLatentCache(cache).latent(data.records[0]["id"]).shape == (8, 5, 4, 4)
    with pytest.raises(UserError, match=r"1 of 1 clips have no cached latent \(first: nope\)"):
        VideoLatentCache(cache).check([{"id": "nope"}], ["16px/9/16x16"])
    changed = {**data.records[0], "sha": "another"}  # the clip was prepared again from other bytes
    with pytest.raises(UserError, match=rf"clip {changed['id']} was cached from another stored clip"):
        VideoLatentCache(cache).check([changed], [data.buckets()[0].name])


def test_flow_on_the_cache_logs_the_losses_of_the_clips(artefacts, tmp_path):
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "encode",
                "--model",
                str(artefacts["ae"]),
                "--data",
                str(artefacts["clips"]),
                "--out",
                str(cache),
            ]
        )
        == 0
    )
    assert json.loads((cache / CACHE_INDEX).read_text())["autoencoder"]["kind"] == "ltx"
    extra = ["train.log_every=1", "data.eval_samples=0", "flow.p_image_cond=0.5"]
    train(load_recipe("video_flow_tiny", flow_overrides(artefacts, *extra)), tmp_path / "clips")
    train(
        load_recipe("video_flow_tiny", flow_overrides(artefacts, *extra, f"data.latents={cache}")),
        tmp_path / "cached",
    )

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if "loss" in r and "event" not in r]

    assert len(losses(tmp_path / "cached")) == 2
    assert losses(tmp_path / "cached") == pytest.approx(losses(tmp_path / "clips"), abs=1e-5)
    batch = VideoClipDataset(artefacts["clips"], latents=cache)[0]
    assert "video" not in batch and batch["latent"].shape == (4, 5, 4, 4)


def test_a_cache_of_another_autoencoder_or_an_image_option_is_refused(artefacts, tmp_path, capsys):
    cache = tmp_path / "cache"
    cache_video_data(artefacts["clips"], cache, autoencoder=artefacts["ae"])
    recipe = load_recipe(
        "video_flow_tiny",
        flow_overrides(artefacts, f"data.latents={cache}", f"data.autoencoder={artefacts['ae8']}"),
    )
    with pytest.raises(UserError, match=r"data.latents\): cached with the autoencoder .*ae4"):
        VideoFlowStage(recipe, tmp_path / "run", torch.device("cpu")).build_dataset()
    args = ["encode", "--model", str(artefacts["ae"]), "--data", str(artefacts["clips"]), "--out", str(cache)]
    assert main([*args, "--flip"]) == 2
    assert "is a video autoencoder" in capsys.readouterr().err
