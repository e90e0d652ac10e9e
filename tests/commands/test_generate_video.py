"""`voxforge generate video`: an .mp4 that decodes to the asked frame count, a .gif, the record;
bad --frames named; image → video keeps the given first frame."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image

from tests.stages.video_helpers import video_flow_run
from voxforge.cli import main
from voxforge.pipelines.video import VideoPipeline


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory):
    return video_flow_run(tmp_path_factory.getbasetemp() / "video_family")


def decoded_frames(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]


def test_generate_video_writes_mp4_gif_and_record(flow_run, tmp_path):
    out = tmp_path / "clip.mp4"
    argv = ["generate", "video", "--model", str(flow_run), "--prompt", "a red circle moving left"]
    assert (
        main(argv + ["--out", str(out), "--steps", "2", "--frames", "5", "--size", "16x32", "--fps", "4"])
        == 0
    )
    frames = decoded_frames(out)
    assert len(frames) == 5 and frames[0].shape == (32, 16, 3)
    with Image.open(out.with_suffix(".gif")) as gif:
        assert gif.n_frames == 5 and gif.size == (16, 32)
    record = json.loads(out.with_suffix(".json").read_text())  # 3 x 8 x 4 latent tokens: shift sqrt(96 / 80)
    assert record["frames"] == 5 and record["size"] == [16, 32] and record["fps"] == 4
    assert record["sampler"] == {
        "method": "euler",
        "steps": 2,
        "cfg_scale": 5.0,
        "time_shift": pytest.approx((96 / 80) ** 0.5),
    }


def test_bad_frames_and_size_are_named(flow_run, tmp_path, capsys):
    argv = ["generate", "video", "--model", str(flow_run), "--prompt", "x", "--out", str(tmp_path / "a.mp4")]
    assert main(argv + ["--frames", "8"]) == 2
    assert "--frames 8: the ltx autoencoder takes 1 + k*2 frames (1, 3, 5, 7, ...)" in capsys.readouterr().err
    assert main(argv + ["--size", "18x16"]) == 2
    assert "--size 18x16" in capsys.readouterr().err and not (tmp_path / "a.mp4").exists()


def test_image_to_video_starts_from_the_given_frame(flow_run, tmp_path):
    pipeline = VideoPipeline.from_run(flow_run)
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    latents = pipeline.sample_latents("a blue square growing", image=image, steps=3, sampler="heun", cfg=3.0)
    assert torch.allclose(latents[:, :, :1], pipeline.encode_image(image), atol=1e-5)
    free = pipeline.sample_latents("a blue square growing", steps=3, sampler="heun", cfg=3.0)
    assert not torch.allclose(latents[:, :, 1:], free[:, :, 1:])  # the first frame steers the rest

    first = tmp_path / "first.png"
    Image.fromarray(np.full((40, 24, 3), (200, 30, 30), np.uint8)).save(first)  # covers 16 x 16 after a crop
    out = tmp_path / "i2v.mp4"
    argv = ["generate", "video", "--model", str(flow_run / "export"), "--prompt", "a red circle", "--image"]
    assert main(argv + [str(first), "--out", str(out), "--steps", "2", "--sampler", "dpm"]) == 0
    assert len(decoded_frames(out)) == 9
    assert json.loads(out.with_suffix(".json").read_text())["image"] == str(first.resolve())
