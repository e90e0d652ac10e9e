"""LPIPS (Zhang et al. 2018, VGG variant) from local weights only — never downloaded.

The network is the `lpips` package's `LPIPS(net="vgg")`, rebuilt here so that no package
fetches torchvision weights behind the user's back: a VGG16 trunk (13 convolutions, taps
after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3), unit-normalised features per tap, squared
differences weighted per channel by a non-negative 1×1 "linear" layer, averaged over space,
summed over taps. Inputs are [B, H, W, 3] in [0, 1] (mapped to [-1, 1], then the LPIPS
scaling layer), computed in fp32 with autocast off.

Weights: `load_lpips(path)` takes
- one file (safetensors, or a PyTorch state dict read with `weights_only=True`) holding the
  state dict of `lpips.LPIPS(net="vgg")` — keys `net.slice{1..5}.<i>.weight|bias` and
  `lin{0..4}.model.1.weight` (`scaling_layer.*` optional), or
- a directory with two such files: torchvision's VGG16 (`features.<i>.*`, any name ending
  in .pth/.safetensors that holds them) and the LPIPS linear layers (`lin*` keys, the
  `lpips` package's `weights/v0.1/vgg.pth`).
Parameter names keep the `lpips` layout, so a converted checkpoint loads strictly; a
missing or mismatched file raises a `UserError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.errors import UserError

__all__ = ["LPIPS", "load_lpips"]

# (slice, [layer indices inside torchvision's vgg16.features]) for the five taps
_VGG_LAYERS = [(1, [0, 2]), (2, [5, 7]), (3, [10, 12, 14]), (4, [17, 19, 21]), (5, [24, 26, 28])]
_CHANNELS = [64, 128, 256, 512, 512]


class _Slice(nn.Module):
    """Convolutions (+ReLU) of one VGG tap, preceded by max-pooling for taps 2..5."""

    def __init__(self, indices: list[int], in_channels: int, out_channels: int, pool: bool):
        super().__init__()
        self.pool, self.indices = pool, indices
        for n, index in enumerate(indices):
            self.add_module(
                str(index), nn.Conv2d(in_channels if n == 0 else out_channels, out_channels, 3, padding=1)
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.pool:
            x = F.max_pool2d(x, 2, 2)
        for index in self.indices:
            x = F.relu(getattr(self, str(index))(x))
        return x


class _VGG(nn.Module):
    def __init__(self):
        super().__init__()
        previous = 3
        for (number, indices), channels in zip(_VGG_LAYERS, _CHANNELS):
            self.add_module(f"slice{number}", _Slice(indices, previous, channels, pool=number > 1))
            previous = channels

    def forward(self, x: Tensor) -> list[Tensor]:
        taps = []
        for number, _ in _VGG_LAYERS:
            x = getattr(self, f"slice{number}")(x)
            taps.append(x)
        return taps


class _Linear(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(0.0), nn.Conv2d(channels, 1, 1, bias=False))


class _Scaling(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))


class LPIPS(nn.Module):
    """LPIPS distance, [B, H, W, 3] × [B, H, W, 3] in [0, 1] → [B]; frozen."""

    def __init__(self):
        super().__init__()
        self.scaling_layer = _Scaling()
        self.net = _VGG()
        for i, channels in enumerate(_CHANNELS):
            self.add_module(f"lin{i}", _Linear(channels))
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape or pred.ndim != 4 or pred.shape[-1] != 3:
            raise ValueError(
                f"LPIPS expects two [B, H, W, 3] images, got {tuple(pred.shape)} and {tuple(target.shape)}"
            )
        with torch.autocast(pred.device.type, enabled=False):
            scale = self.scaling_layer

            def prep(x: Tensor) -> Tensor:
                return ((x.float().permute(0, 3, 1, 2) * 2 - 1) - scale.shift) / scale.scale

            total = pred.new_zeros(pred.shape[0], dtype=torch.float32)
            for i, (a, b) in enumerate(zip(self.net(prep(pred)), self.net(prep(target)))):
                a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + getattr(self, f"lin{i}").model(a.sub(b).pow(2)).mean((1, 2, 3))
        return total


def _read_state(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad weights file
        raise UserError(f"{path}: cannot read LPIPS weights ({type(err).__name__}: {err})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict of tensors")
    return state


def _remap(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision `features.<i>.*` and `module.`-prefixed keys -> the LPIPS layout."""
    slice_of = {index: number for number, indices in _VGG_LAYERS for index in indices}
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith("features."):
            index = int(key.split(".")[1])
            if index not in slice_of:
                continue  # ReLU / pooling have no parameters; other layers are not used
            key = f"net.slice{slice_of[index]}.{index}.{key.split('.', 2)[2]}"
        elif key.startswith("classifier."):
            continue
        out[key] = value
    return out


def load_lpips(path: str | Path) -> LPIPS:
    """LPIPS with weights from a local file or directory (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".pth", ".pt", ".safetensors"))
        if not files:
            raise UserError(f"{path}: no .pth/.pt/.safetensors LPIPS weights in this folder")
    elif path.is_file():
        files = [path]
    else:
        raise UserError(
            f"{path}: LPIPS weights not found (they are never downloaded; set loss.lpips_weights to a local "
            "file, or loss.lpips_weights=null to train without LPIPS)"
        )
    state: dict[str, Tensor] = {}
    for file in files:
        state.update(_remap(_read_state(file)))
    model = LPIPS()
    defaults = {k: v for k, v in model.state_dict().items() if k.startswith("scaling_layer.")}
    state = {**defaults, **state}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path}: not LPIPS (VGG) weights (missing: {list(missing)[:4]}, unexpected: {list(unexpected)[:4]})"
        )
    return model
