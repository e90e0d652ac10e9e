"""Video autoencoders behind one interface (diffusers HunyuanVideo and LTX-Video classes, voxforge's conv)."""

from __future__ import annotations

import json

import pytest
import torch

from voxforge.errors import UserError
from voxforge.models.video_ae import VideoAEConfig, build_video_autoencoder, load_video_autoencoder

TINY = {
    "hunyuan": VideoAEConfig(kind="hunyuan", latent_channels=4, block_out_channels=[8, 8, 8, 8]),
    "ltx": VideoAEConfig(kind="ltx", latent_channels=8, block_out_channels=[8, 8, 8, 8], patch_size=4),
    "conv": VideoAEConfig(
        kind="conv",
        latent_channels=4,
        block_out_channels=[8, 16, 16],
        spatial_compression=4,
        temporal_compression=4,
    ),
}
OTHER = {"hunyuan": "ltx", "ltx": "conv", "conv": "hunyuan"}


@pytest.mark.parametrize("kind,compression", [("hunyuan", (4, 8)), ("ltx", (8, 32)), ("conv", (4, 4))])
def test_compression_shapes_and_round_trip_of_the_statistics(tmp_path, kind, compression):
    torch.manual_seed(0)
    ae = build_video_autoencoder(TINY[kind]).eval()
    tc, sc = compression
    assert (ae.temporal_compression, ae.spatial_compression) == (tc, sc)
    frames = 1 + tc
    video = torch.rand(1, 3, frames, 64, 64) * 2 - 1
    assert ae.latent_shape(frames, 64, 64) == (ae.latent_channels, 2, 64 // sc, 64 // sc)
    with torch.no_grad():
        mean, _ = ae.posterior(video)
        ae.calibrate(mean)
        latents = ae.encode(video)
        assert latents.shape == (1, *ae.latent_shape(frames, 64, 64))
        # normalised per channel: the calibration clip's latents have mean 0, std 1
        flat = latents.transpose(0, 1).reshape(ae.latent_channels, -1)
        assert flat.mean(1).abs().max() < 1e-4 and (flat.std(1) - 1).abs().max() < 1e-3
        decoded = ae.decode(latents)
        assert decoded.shape == video.shape
        assert torch.allclose(decoded, ae.decode_raw(mean), atol=1e-5)
    assert ae.frames_for(2) == frames
    folder = ae.save(tmp_path / "ae")
    back = load_video_autoencoder(folder)
    assert back.kind == kind and torch.equal(back.latent_std, ae.latent_std)
    with torch.no_grad():
        assert torch.allclose(back.encode(video), latents, atol=1e-5)
    with pytest.raises(UserError, match=f"is a {kind}"):
        load_video_autoencoder(folder, kind=OTHER[kind])


@pytest.mark.parametrize("kind", ["ltx", "conv"])
def test_causal_encoder_first_latent_frame_sees_only_the_first_frame(kind):
    # LTX-Video normalises per position (RMSNorm) and conv has no norm layers, so their causal
    # convolutions make the whole encoder causal; HunyuanVideo's GroupNorm pools over all frames
    torch.manual_seed(0)
    ae = build_video_autoencoder(TINY[kind]).eval()
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    changed = video.clone()
    changed[:, :, 1:] = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    with torch.no_grad():
        a, b = ae.encode(video), ae.encode(changed)
        image = ae.encode(video[:, :, :1])  # an image is a one-frame video
    assert torch.allclose(a[:, :, 0], b[:, :, 0], atol=1e-5)
    assert (a[:, :, 1] - b[:, :, 1]).abs().max() > 1e-4
    assert torch.allclose(image[:, :, 0], a[:, :, 0], atol=1e-5)


def test_bad_frames_and_folders_are_named(tmp_path):
    ae = build_video_autoencoder(TINY["hunyuan"])
    with pytest.raises(ValueError, match=r"1 \+ k\*4 frames"):
        ae.latent_shape(4, 32, 32)
    with pytest.raises(ValueError, match="divisible by 8"):
        ae.latent_shape(5, 36, 32)
    with pytest.raises(UserError, match="no config.json"):
        load_video_autoencoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UserError, match="AutoencoderKL is not one of"):
        load_video_autoencoder(tmp_path)


def test_hunyuan_levels_must_reach_the_compression():
    from voxforge.config.core import ConfigValueError

    with pytest.raises(ConfigValueError, match="4x needs 2 downsampling levels; 2 widths give 1"):
        VideoAEConfig(kind="hunyuan", block_out_channels=[8, 8], spatial_compression=2)
    with pytest.raises(ConfigValueError, match="not one of"):
        VideoAEConfig(kind="hunyuan", temporal_compression=2)


def test_conv_kind_settings_are_checked_and_its_shortcut_carries_the_pixels():
    from voxforge.config.core import ConfigValueError
    from voxforge.models.causal_video_ae import depth_to_space, space_to_depth

    with pytest.raises(ConfigValueError, match="8 is not a power of two of at most 4"):
        VideoAEConfig(kind="conv", block_out_channels=[8, 8, 8], spatial_compression=8)
    with pytest.raises(ConfigValueError, match="conv kind .* has no activation checkpointing"):
        VideoAEConfig(
            kind="conv", block_out_channels=[8, 8, 8], spatial_compression=4, gradient_checkpointing=True
        )
    with pytest.raises(ConfigValueError, match="widths 16 -> 24 at level 0"):
        VideoAEConfig(kind="conv", block_out_channels=[16, 24, 32], spatial_compression=4)
    # the parameter-free fold is invertible: 1 + k*st frames <-> 1 + k, the first frame kept
    video = torch.randn(2, 3, 9, 8, 8)
    folded = space_to_depth(video, (2, 2, 2))
    assert folded.shape == (2, 24, 5, 4, 4)
    assert torch.equal(depth_to_space(folded, (2, 2, 2)), video)
