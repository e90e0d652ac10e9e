import pytest
import torch
from safetensors.torch import load_file, save_file

from voxforge.config.core import from_dict
from voxforge.errors import ConfigError
from voxforge.models.image_encoders import ImageEncoderConfig
from voxforge.models.ss_flow import SSFlowConfig, SSFlowTransformer, StructureFlowModel

ENC = ImageEncoderConfig(image_size=16, patch_size=8, width=24, depth=1, heads=2)


def _cfg(**kw):
    base = dict(resolution=4, in_channels=3, width=48, depth=2, heads=4)
    base.update(kw)
    return SSFlowConfig(**base)


def _unzero(model):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                p.add_(torch.randn_like(p) * 0.02)


@pytest.mark.parametrize(
    "pos_embed, patch, pooled", [("ape", 1, False), ("rope", 1, True), ("both", 2, False)]
)
def test_shapes_and_every_parameter_gets_gradient(pos_embed, patch, pooled):
    model = StructureFlowModel(_cfg(pos_embed=pos_embed, patch_size=patch, pooled_cond=pooled), ENC)
    _unzero(model)
    x, t, images = torch.randn(2, 3, 4, 4, 4), torch.rand(2), torch.rand(2, 3, 16, 16)
    out = model(x, t, images=images)
    assert out.shape == x.shape
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_output_is_zero_at_init_and_drop_means_zero_tokens():
    model = StructureFlowModel(_cfg(), ENC)
    x, t, images = torch.randn(2, 3, 4, 4, 4), torch.rand(2), torch.rand(2, 3, 16, 16)
    assert torch.equal(model(x, t, images=images), torch.zeros_like(x))
    _unzero(model)
    dropped = model(x, t, images=images, drop=torch.tensor([True, False]))
    zeros = model(x, t, context=torch.zeros(2, 5, 24))
    conditioned = model(x, t, images=images)
    torch.testing.assert_close(dropped[0], zeros[0])
    torch.testing.assert_close(dropped[1], conditioned[1])
    assert not torch.allclose(zeros[1], conditioned[1])


def test_frozen_encoder_path_takes_context_tokens():
    model = StructureFlowModel(_cfg(), ImageEncoderConfig(kind="dinov2", image_size=28), context_dim=16)
    assert model.image_encoder is None
    out = model(torch.randn(1, 3, 4, 4, 4), torch.rand(1), context=torch.randn(1, 7, 16))
    assert out.shape == (1, 3, 4, 4, 4)
    with pytest.raises(ValueError, match="context_dim"):
        StructureFlowModel(_cfg(), ImageEncoderConfig(kind="dinov2", image_size=28))
    with pytest.raises(ValueError, match="frozen encoder"):
        model(torch.randn(1, 3, 4, 4, 4), torch.rand(1), images=torch.rand(1, 3, 28, 28))


def test_bad_latent_shape_and_config_are_explained():
    model = SSFlowTransformer(_cfg(), 8)
    with pytest.raises(ValueError, match="expected latents"):
        model(torch.randn(1, 3, 8, 8, 8), torch.rand(1), torch.randn(1, 2, 8))
    with pytest.raises(ConfigError, match="patch_size"):
        from_dict(SSFlowConfig, {"resolution": 6, "patch_size": 4})


def test_trellis_l_recipe_scale():
    cfg = SSFlowConfig()
    assert (cfg.width, cfg.depth, cfg.resolution, cfg.tokens) == (1024, 24, 16, 4096)


def test_tiny_flow_training_lowers_loss():
    torch.manual_seed(0)
    model = StructureFlowModel(_cfg(depth=2), ENC)
    target = torch.randn(4, 3, 4, 4, 4)
    images = torch.rand(4, 3, 16, 16)
    t, noise = torch.rand(4), torch.randn_like(target)  # fixed: the run must fit this batch
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        x_t = (1 - t.view(-1, 1, 1, 1, 1)) * target + t.view(-1, 1, 1, 1, 1) * noise
        loss = (model(x_t, t, images=images) - (noise - target)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_safetensors_round_trip(tmp_path):
    model, other = StructureFlowModel(_cfg(), ENC), StructureFlowModel(_cfg(), ENC)
    _unzero(model)
    save_file(model.state_dict(), str(tmp_path / "flow.safetensors"))
    other.load_state_dict(load_file(str(tmp_path / "flow.safetensors")))
    x, t, images = torch.randn(1, 3, 4, 4, 4), torch.rand(1), torch.rand(1, 3, 16, 16)
    assert torch.equal(model(x, t, images=images), other(x, t, images=images))
