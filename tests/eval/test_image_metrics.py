"""PSNR and SSIM against direct NumPy references and scikit-image (a dev-only dependency)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from voxforge.eval.image_metrics import gaussian_window, mse_to_psnr, psnr, ssim


def _ssim_reference(x: np.ndarray, y: np.ndarray, size: int = 11, sigma: float = 1.5) -> float:
    """Loop over every valid window of every channel (no separability, no convolution)."""
    ax = np.arange(size) - (size - 1) / 2
    w1 = np.exp(-(ax**2) / (2 * sigma**2))
    w = np.outer(w1, w1)
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    values = []
    h, wd, ch = x.shape
    for c in range(ch):
        for i in range(h - size + 1):
            for j in range(wd - size + 1):
                a = x[i : i + size, j : j + size, c]
                b = y[i : i + size, j : j + size, c]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                cov = (w * a * b).sum() - ma * mb
                values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_windowed_definition():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 16, 18, 3, generator=gen)
    y = (x + 0.1 * torch.randn(1, 16, 18, 3, generator=gen)).clamp(0, 1)
    expected = _ssim_reference(x[0].double().numpy(), y[0].double().numpy())
    assert float(ssim(x, y)[0]) == pytest.approx(expected, abs=1e-5)
    assert float(ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(ssim(x, 1 - x)[0]) < 0.2


def test_ssim_small_images_bf16_and_gradients():
    x = torch.rand(2, 7, 9, 3, requires_grad=True)
    y = torch.rand(2, 7, 9, 3)
    value = ssim(x, y)
    assert value.shape == (2,) and torch.isfinite(value).all()
    (1 - value).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = ssim(x.detach().bfloat16(), y.bfloat16())
    assert low.dtype == torch.float32


def test_psnr_values():
    x = torch.zeros(2, 4, 4, 3)
    y = torch.full((2, 4, 4, 3), 0.1)
    torch.testing.assert_close(psnr(x, y), torch.full((2,), 20.0))
    assert math.isinf(float(psnr(x, x)[0]))
    assert float(psnr(x, x, max_db=60.0)[0]) == 60.0
    assert mse_to_psnr(0.01) == pytest.approx(20.0)
    assert gaussian_window(5).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="differ"):
        psnr(x, y[:, :3])


def _skimage_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, reference, degraded) float64 images [H, W, C] in [0, 1]: noise, real photos."""
    from PIL import Image, ImageFilter
    from skimage import data

    rng = np.random.default_rng(0)
    noise = rng.random((40, 52, 3))
    pairs = [
        ("uniform noise", noise, np.clip(noise + 0.1 * rng.standard_normal(noise.shape), 0, 1)),
        ("smallest window", noise[:11, :11], noise[:11, :11] ** 2),
        ("one channel", noise[..., :1], np.clip(noise[..., :1] + 0.3, 0, 1)),
    ]
    for name, image in (("astronaut", data.astronaut()), ("chelsea", data.chelsea())):
        photo = Image.fromarray(image).resize((image.shape[1] // 2, image.shape[0] // 2), Image.BILINEAR)
        jpeg = io.BytesIO()
        photo.save(jpeg, format="JPEG", quality=20)
        degraded = {
            "jpeg q20": Image.open(jpeg).convert("RGB"),
            "blur": photo.filter(ImageFilter.GaussianBlur(1.5)),
        }
        for kind, other in degraded.items():
            pairs.append((f"{name} {kind}", np.asarray(photo) / 255.0, np.asarray(other) / 255.0))
    return pairs


def test_ssim_and_psnr_match_scikit_image():
    """The docstring's claim, checked against scikit-image (dev extra; float64 there, fp32 here)."""
    metrics = pytest.importorskip("skimage.metrics")
    for name, x, y in _skimage_pairs():
        expected_ssim = metrics.structural_similarity(
            x,
            y,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1.0,
            channel_axis=-1,
        )
        expected_psnr = metrics.peak_signal_noise_ratio(x, y, data_range=1.0)
        pred = torch.from_numpy(y[None]).float()
        target = torch.from_numpy(x[None]).float()
        assert float(ssim(pred, target)[0]) == pytest.approx(expected_ssim, abs=1e-5), name
        assert float(psnr(pred, target)[0]) == pytest.approx(expected_psnr, abs=1e-4), name
    # a batch scores each image on its own
    _, x, y = _skimage_pairs()[0]
    batch_pred = torch.from_numpy(np.stack([y, x])).float()
    batch_target = torch.from_numpy(np.stack([x, x])).float()
    torch.testing.assert_close(
        ssim(batch_pred, batch_target)[0], ssim(batch_pred[:1], batch_target[:1])[0], atol=1e-6, rtol=0
    )
    assert float(ssim(batch_pred, batch_target)[1]) == pytest.approx(1.0, abs=1e-6)
