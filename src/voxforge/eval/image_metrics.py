"""Image metrics for rendered views: PSNR and SSIM, batched, differentiable, in fp32.

Images are `[B, H, W, C]` floats in [0, 1] (the layout `render_gaussians` returns), which
is also what the training losses take, so the metric reported on held-out views is the
same function as the loss term trained on.

- `psnr`: 10·log10(1 / MSE) per image (data range 1), averaged by the caller; scikit-image's
  `peak_signal_noise_ratio(data_range=1)`. An exact match gives +inf; `max_db` caps it for
  logs that must stay finite.
- `ssim`: Wang et al. 2004 with the usual constants (K1 = 0.01, K2 = 0.03, data range 1)
  and an 11-tap Gaussian window of σ = 1.5, applied separably per channel, the mean taken
  over "valid" windows only (no padding), so image borders do not bias the score. This is
  scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, channel_axis=-1)` (it filters with reflection
  and then crops the 5-pixel border, which leaves the same windows) and the 3DGS training
  code's definition; `tests/eval/test_image_metrics.py` checks both metrics against
  scikit-image to 1e-5 (SSIM) and 1e-4 dB (PSNR). Images smaller than the window, which
  scikit-image refuses, use a window shrunk to the image.

Both disable autocast and compute in fp32 whatever the input dtype: the SSIM variances are
differences of nearly equal numbers and lose all precision in bf16.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["gaussian_window", "mse_to_psnr", "psnr", "ssim"]


def _check(name: str, pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.ndim != 4:
        raise ValueError(f"{name}: expected images [B, H, W, C], got {tuple(pred.shape)}")


def psnr(
    pred: Tensor,  # [B, H, W, C] in [0, 1]
    target: Tensor,  # [B, H, W, C]
    max_db: float | None = None,
) -> Tensor:  # [B] dB
    _check("psnr", pred, target)
    with torch.autocast(pred.device.type, enabled=False):
        mse = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
        value = -10.0 * torch.log10(mse)
        if max_db is not None:
            value = value.clamp(max=max_db)
    return value


def gaussian_window(size: int = 11, sigma: float = 1.5, device: torch.device | str | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps `[size]` (fp32)."""
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter(x: Tensor, taps: Tensor) -> Tensor:  # [B, C, H, W] -> [B, C, H-k+1, W-k+1]
    c = x.shape[1]
    k = taps.numel()
    x = F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim(
    pred: Tensor,  # [B, H, W, C] in [0, 1]
    target: Tensor,  # [B, H, W, C]
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:  # [B] mean SSIM per image
    _check("ssim", pred, target)
    with torch.autocast(pred.device.type, enabled=False):
        x = pred.float().permute(0, 3, 1, 2)
        y = target.float().permute(0, 3, 1, 2)
        size = min(window, x.shape[2], x.shape[3])
        if size % 2 == 0:
            size -= 1
        taps = gaussian_window(size, sigma * size / window if size < window else sigma, x.device)
        mu_x, mu_y = _filter(x, taps), _filter(y, taps)
        var_x = _filter(x * x, taps) - mu_x**2
        var_y = _filter(y * y, taps) - mu_y**2
        cov = _filter(x * y, taps) - mu_x * mu_y
        c1, c2 = k1**2, k2**2
        num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
        den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
        return (num / den).flatten(1).mean(1)


def mse_to_psnr(mse: float) -> float:
    """PSNR (dB) of a mean squared error with data range 1; inf for 0."""
    return math.inf if mse <= 0 else -10.0 * math.log10(mse)
