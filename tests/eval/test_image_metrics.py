"""PSNR and SSIM against direct NumPy references."""

from __future__ import annotations

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
