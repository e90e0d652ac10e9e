"""The video DiT: shapes of any clip, 3-D rotary positions, first-frame conditioning."""

from __future__ import annotations

import pytest
import torch

from voxforge.models.video_dit import VideoDiT, VideoDiTConfig, patchify, unpatchify, video_coords


def _model(**kwargs) -> VideoDiT:
    torch.manual_seed(0)
    cfg = VideoDiTConfig(**{"in_channels": 4, "width": 48, "depth": 2, "heads": 2, "patch_size": 2, **kwargs})
    model = VideoDiT(cfg, context_dim=16)
    for p in model.parameters():  # away from adaLN-zero so every path matters
        torch.nn.init.normal_(p, std=0.3)
    return model


def test_patchify_round_trip_and_coordinates_follow_its_order():
    x = torch.randn(2, 3, 4, 6, 8)
    tokens = patchify(x, 2, 2)
    assert tokens.shape == (2, 2 * 3 * 4, 3 * 2 * 2 * 2)
    assert torch.equal(unpatchify(tokens, (3, 4, 6, 8), 2, 2), x)
    coords = video_coords(2, 3, 4)
    assert coords.shape == (24, 3)
    # token 5 is (t 0, y 1, x 1): patchify's order is t, then y, then x
    assert coords[5].tolist() == [0.0, 1.0, 1.0]
    # and the token holds that patch: channels, then frames, then rows, then columns
    assert torch.equal(tokens[:, 5], x[:, :, 0:2, 2:4, 2:4].reshape(2, -1))


def test_any_frame_count_and_aspect_ratio_and_zero_init_output():
    cfg = VideoDiTConfig(in_channels=4, width=48, depth=1, heads=2, patch_size=2)
    fresh = VideoDiT(cfg, context_dim=16)
    context = torch.randn(2, 5, 16)
    for shape in [(1, 4, 4), (3, 8, 6), (5, 4, 10)]:
        x = torch.randn(2, 4, *shape)
        out = fresh(x, torch.rand(2), context)
        assert out.shape == x.shape
        assert torch.count_nonzero(out) == 0  # adaLN-zero: the untrained model predicts zero velocity
    assert cfg.tokens(3, 8, 6) == 3 * 4 * 3


def test_rotary_positions_make_the_model_see_frame_order():
    model = _model(image_condition=False)
    x = torch.randn(1, 4, 4, 4, 4)
    t = torch.full((1,), 0.5)
    context = torch.randn(1, 3, 16)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        permuted_out = model(x[:, :, perm], t, context)
        out_permuted = model(x, t, context)[:, :, perm]
    # without positions, self-attention would be permutation-equivariant and these equal
    assert (permuted_out - out_permuted).abs().max() > 1e-2


def test_first_frame_condition_and_masked_text_tokens_change_the_velocity():
    model = _model()
    x = torch.randn(2, 4, 3, 4, 4)
    t = torch.rand(2)
    context = torch.randn(2, 4, 16)
    with torch.no_grad():
        free = model(x, t, context)
        cond_latent = torch.zeros_like(x)
        cond_latent[:, :, 0] = torch.randn(2, 4, 4, 4)
        mask = torch.zeros(2, 1, 3, 4, 4)
        mask[:, :, 0] = 1
        conditioned = model(x, t, context, cond_latent=cond_latent, cond_mask=mask)
        explicit_none = model(
            x, t, context, cond_latent=torch.zeros_like(x), cond_mask=torch.zeros_like(mask)
        )
        valid = torch.tensor([[True, True, False, False], [True, True, True, True]])
        masked = model(x, t, context, context_mask=valid)
        dropped = model(x, t, context[:, :2], context_mask=valid[:, :2])
    assert (conditioned - free).abs().max() > 1e-2
    assert torch.allclose(explicit_none, free, atol=1e-6)  # no condition = zeros and mask 0
    assert (masked - free).abs().max() > 1e-3
    assert torch.allclose(masked[0], dropped[0], atol=1e-5)  # padded tokens are not attended to


def test_bad_shapes_are_named():
    model = _model()
    context = torch.randn(1, 2, 16)
    with pytest.raises(ValueError, match=r"expected latents \[B, 4, T, H, W\]"):
        model(torch.randn(1, 3, 2, 4, 4), torch.rand(1), context)
    with pytest.raises(ValueError, match="not divisible by the patch"):
        model(torch.randn(1, 4, 2, 5, 4), torch.rand(1), context)
    with pytest.raises(ValueError, match="needs its cond_mask"):
        model(torch.randn(1, 4, 2, 4, 4), torch.rand(1), context, cond_latent=torch.zeros(1, 4, 2, 4, 4))
    plain = _model(image_condition=False)
    with pytest.raises(ValueError, match="no image conditioning"):
        plain(torch.randn(1, 4, 2, 4, 4), torch.rand(1), context, cond_latent=torch.zeros(1, 4, 2, 4, 4))


def test_activation_checkpointing_gives_the_same_output_and_gradients():
    x = torch.randn(1, 4, 2, 4, 4)
    t = torch.rand(1)
    context = torch.randn(1, 3, 16)
    grads = []
    for checkpoint in (False, True):
        model = _model(grad_checkpoint=checkpoint)
        out = model(x, t, context)
        out.square().mean().backward()
        grads.append((out.detach(), model.x_embedder.weight.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-5)


def test_autoencoder_swap_keeps_every_tensor_that_fits_and_reports_the_rest():
    from voxforge.nn.state import transfer_state, transfer_table

    old = _model(in_channels=4)
    new = VideoDiT(VideoDiTConfig(in_channels=16, width=48, depth=2, heads=2, patch_size=2), context_dim=16)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    rows = transfer_state(new, old.state_dict())
    actions = {r.key: r.action for r in rows}
    # only the latent in/out projections depend on the autoencoder
    assert {k for k, a in actions.items() if a == "reinitialised"} == {
        "x_embedder.weight",
        "out_layer.weight",
        "out_layer.bias",
    }
    state, before = new.state_dict(), old.state_dict()
    kept = [k for k, a in actions.items() if a == "kept"]
    assert len(kept) == len(state) - 3 and any(k.startswith("blocks.1.") for k in kept)
    assert all(torch.equal(state[k], before[k]) for k in kept)
    assert torch.equal(state["x_embedder.weight"], fresh["x_embedder.weight"])
    assert torch.equal(state["x_embedder.bias"], old.state_dict()["x_embedder.bias"])  # width unchanged: kept
    table = transfer_table(rows)
    assert "3 reinitialised" in table and "| `x_embedder.weight` | reinitialised | 48x36 | 48x132 |" in table
    everything = transfer_state(new, old.state_dict(), reinit="all")
    assert {r.action for r in everything} == {"reinitialised"}
    with pytest.raises(ValueError, match="wrong shape"):
        transfer_state(new, old.state_dict(), reinit="none")
