"""LPIPS from local weights: both accepted layouts load strictly; distances behave."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from voxforge.errors import UserError
from voxforge.eval.lpips import LPIPS, load_lpips


def _random_lpips(seed: int = 0) -> LPIPS:
    torch.manual_seed(seed)
    model = LPIPS()
    for name, param in model.named_parameters():
        if name.startswith("lin"):
            param.data.uniform_(0.0, 0.1)  # the linear layers are non-negative in real LPIPS
    return model


def test_lpips_loads_its_own_layout_and_measures_distances(tmp_path):
    model = _random_lpips()
    path = tmp_path / "lpips_vgg.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_lpips(path)
    x = torch.rand(2, 16, 16, 3)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    torch.testing.assert_close(loaded(x, y), model(x, y))
    assert torch.allclose(loaded(x, x), torch.zeros(2), atol=1e-6)
    near, far = loaded(x, y), loaded(x, 1 - x)
    assert (near > 0).all() and (far > near).all()
    pred = x.clone().requires_grad_(True)
    loaded(pred, y).sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in loaded.parameters())


def test_lpips_loads_torchvision_vgg_plus_linear_layers_from_a_folder(tmp_path):
    model = _random_lpips(1)
    state = model.state_dict()
    vgg = {}
    for key, value in state.items():
        if key.startswith("net."):
            _, _, index, kind = key.split(".")
            vgg[f"features.{index}.{kind}"] = value
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    torch.save(vgg, tmp_path / "vgg16-397923af.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, tmp_path / "vgg.pth")
    loaded = load_lpips(tmp_path)
    x, y = torch.rand(1, 16, 16, 3), torch.rand(1, 16, 16, 3)
    torch.testing.assert_close(loaded(x, y), model(x, y))


def test_lpips_missing_or_wrong_weights_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="never downloaded"):
        load_lpips(tmp_path / "nope.pth")
    torch.save({"something.weight": torch.zeros(3)}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="not LPIPS"):
        load_lpips(tmp_path / "bad.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .pth"):
        load_lpips(tmp_path / "empty")
