"""The Inception-v3 network of standard FID, loading the weights users already have.

Standard FID (Heusel et al. 2017) is defined by one network: the TensorFlow Inception-v3 of
2015-12-05, as ported to PyTorch for pytorch-fid (`pt_inception-2015-12-05-6726825d.pth`, the
file pytorch-fid, torchmetrics and most papers' code use). Its 2048 pool features of an image
resized to 299 × 299 (bilinear) and scaled to [-1, 1] are what FID compares.

Why it is written here: the usual route, torchvision's `Inception3` patched by pytorch-fid,
needs torchvision, which does not import beside voxforge's CPU build of PyTorch. The network
below is built from the published architecture (Szegedy et al. 2016, "Rethinking the
Inception Architecture") with the TF port's differences: 1008 classes, average pools that
exclude padding from the count, and a max pool in the last block's pool branch. Its state
dict keys are the torchvision / pytorch-fid names, so the file loads as it is, strictly:
every missing, unexpected or wrongly shaped key is named (`nn.state.state_mismatch`).

The weights are never downloaded: the user names the file (`load_fid_inception(PATH)`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.errors import UserError
from voxforge.nn.state import state_mismatch

__all__ = ["FIDInception", "load_fid_inception"]

FEATURES = 2048
INPUT_SIZE = 299


class Conv(nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, as the TF graph), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class BlockA(nn.Module):  # 35 × 35: 1x1, 5x5, double 3x3, pool
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1 = Conv(cin, 48, 1)
        self.branch5x5_2 = Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class BlockB(nn.Module):  # 35 → 17: strided 3x3, strided double 3x3, max pool
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2 = Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, 3, stride=2),
            ],
            1,
        )


def _factorised(cin: int, width: int, cout: int, order: str) -> list[Conv]:
    """1×7 / 7×1 convolutions in `order` ("hw": 1×7 then 7×1), the last one to `cout`."""
    kinds = {"h": ((1, 7), (0, 3)), "w": ((7, 1), (3, 0))}
    layers = []
    for i, kind in enumerate(order):
        kernel, pad = kinds[kind]
        layers.append(Conv(width if i else cin, cout if i == len(order) - 1 else width, kernel, padding=pad))
    return layers


class BlockC(nn.Module):  # 17 × 17: factorised 7×7 convolutions
    def __init__(self, cin: int, width: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1 = Conv(cin, width, 1)
        self.branch7x7_2, self.branch7x7_3 = _factorised(width, width, 192, "hw")
        self.branch7x7dbl_1 = Conv(cin, width, 1)
        (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ) = _factorised(width, width, 192, "whwh")
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d7 = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            d7 = layer(d7)
        return torch.cat([self.branch1x1(x), b7, d7, self.branch_pool(_avg_pool(x))], 1)


class BlockD(nn.Module):  # 17 → 8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = Conv(cin, 192, 1)
        self.branch3x3_2 = Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2, self.branch7x7x3_3 = _factorised(192, 192, 192, "hw")
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # 8 × 8: expanded 1×3 / 3×1 pairs; the TF port's last block max-pools
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = Conv(cin, 448, 1)
        self.branch3x3dbl_2 = Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d3 = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(b3),
                self.branch3x3_2b(b3),
                self.branch3x3dbl_3a(d3),
                self.branch3x3dbl_3b(d3),
                self.branch_pool(pooled),
            ],
            1,
        )


class FIDInception(nn.Module):
    """Inception-v3 as standard FID uses it: images [N, 3, H, W] in [0, 1] → pool features [N, 2048]."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b = BlockA(192, 32)
        self.Mixed_5c = BlockA(256, 64)
        self.Mixed_5d = BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b = BlockC(768, 128)
        self.Mixed_6c = BlockC(768, 160)
        self.Mixed_6d = BlockC(768, 160)
        self.Mixed_6e = BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b = BlockE(1280, max_pool=False)
        self.Mixed_7c = BlockE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURES, 1008)  # the TF graph's logits: loaded with the file, not used for FID

    def forward(self, images: Tensor) -> Tensor:
        x = F.interpolate(images.float(), size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))


def load_fid_inception(path: str | Path, device: torch.device | str = "cpu") -> FIDInception:
    """pytorch-fid's `pt_inception-2015-12-05-*.pth` (or the same state dict as .safetensors), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"Inception weights {path}: no such file (pytorch-fid's pt_inception-2015-12-05-*.pth)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"Inception weights {path}: not a readable state dict ({exc})") from exc
    if not isinstance(state, dict):
        raise UserError(f"Inception weights {path}: holds a {type(state).__name__}, not a state dict")
    model = FIDInception()
    # old checkpoints carry no BatchNorm step counters; they do not change the network's output
    counters = {k: v for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    state = {**counters, **state}
    problem = state_mismatch(model, state)
    if problem:
        raise UserError(f"Inception weights {path} do not fit FID's Inception-v3:{problem}")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False).to(device)
