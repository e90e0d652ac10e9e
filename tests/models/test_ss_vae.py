import pytest
import torch
from safetensors.torch import load_file, save_file

from voxforge.config.core import from_dict
from voxforge.errors import ConfigError
from voxforge.models.ss_vae import SSVAE, SSVAEConfig, occupancy_metrics, ss_vae_loss
from voxforge.nn.shuffle import pixel_shuffle_3d, pixel_unshuffle_3d

TINY = dict(resolution=16, patch_size=2, channels=[8, 16], num_res_blocks=1, num_res_blocks_middle=1)


def _blobs(n: int, r: int, seed: int = 0) -> torch.Tensor:  # [n, 1, r, r, r] spherical shells
    gen = torch.Generator().manual_seed(seed)
    axis = torch.arange(r).float() + 0.5
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    out = []
    for _ in range(n):
        centre = r / 2 + (torch.rand(3, generator=gen) - 0.5) * r / 4
        radius = r / 5 + torch.rand(1, generator=gen) * r / 6
        dist = (grid - centre).norm(dim=-1)
        out.append(((dist - radius).abs() < 0.9).float())
    return torch.stack(out)[:, None]


def test_pixel_shuffle_round_trip():
    x = torch.randn(2, 3, 4, 6, 8)
    y = pixel_unshuffle_3d(x, 2)
    assert y.shape == (2, 24, 2, 3, 4)
    assert torch.equal(pixel_shuffle_3d(y, 2), x)
    assert torch.equal(y[0, :8, 0, 0, 0], x[0, 0, :2, :2, :2].flatten())


@pytest.mark.parametrize(
    "kwargs, latent",
    [(TINY, 4), (dict(resolution=16, channels=[4, 8, 8], num_res_blocks=1, norm="group"), 4)],
)
def test_shapes_and_gradients(kwargs, latent):
    cfg = SSVAEConfig(latent_channels=3, **kwargs)
    vae = SSVAE(cfg)
    x = _blobs(2, 16)
    logits, mean, logvar = vae(x)
    assert mean.shape == logvar.shape == (2, 3, latent, latent, latent)
    assert logits.shape == x.shape
    assert vae.encode(x).shape == mean.shape and vae.decode(mean).shape == x.shape
    loss, parts = ss_vae_loss(logits, x, mean, logvar, cfg)
    loss.backward()
    assert set(parts) == {"bce", "dice", "kl"}
    for name, p in vae.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_trellis_config_is_64_to_16_by_8():
    cfg = SSVAEConfig()
    assert (cfg.resolution, cfg.latent_resolution, cfg.latent_channels) == (64, 16, 8)
    assert cfg.channels == [32, 128, 512]


def test_config_rejects_indivisible_resolution():
    with pytest.raises(ConfigError, match="resolution"):
        from_dict(SSVAEConfig, {"resolution": 30, "channels": [8, 8, 8]})


def test_tiny_training_run_lowers_loss_and_raises_iou():
    torch.manual_seed(0)
    cfg = SSVAEConfig(latent_channels=4, kl_weight=1e-4, **TINY)
    vae = SSVAE(cfg)
    data = _blobs(8, 16)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits, mean, logvar = vae(data)
        loss, _ = ss_vae_loss(logits, data, mean, logvar, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    iou = occupancy_metrics(vae.decode(vae.encode(data)) > 0, data > 0)["iou"].mean()
    assert iou > 0.3


def test_safetensors_round_trip(tmp_path):
    cfg = SSVAEConfig(**TINY)
    vae, other = SSVAE(cfg), SSVAE(cfg)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_file(vae.state_dict(), str(tmp_path / "vae.safetensors"))
    other.load_state_dict(load_file(str(tmp_path / "vae.safetensors")))
    x = _blobs(1, 16)
    assert torch.equal(vae.decode(vae.encode(x)), other.decode(other.encode(x)))


def test_occupancy_metrics():
    target = torch.zeros(3, 4, dtype=torch.bool)
    pred = torch.zeros(3, 4, dtype=torch.bool)
    target[0, :2] = True
    pred[0, 1:3] = True  # 1 shared, 1 false positive, 1 missed
    target[1, 0] = True  # nothing predicted
    m = occupancy_metrics(pred, target)
    torch.testing.assert_close(m["iou"], torch.tensor([1 / 3, 0.0, 1.0]))
    torch.testing.assert_close(m["precision"], torch.tensor([0.5, 1.0, 1.0]))
    torch.testing.assert_close(m["recall"], torch.tensor([0.5, 0.0, 1.0]))
