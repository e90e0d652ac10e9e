"""TRELLIS's flow transformers and guided Euler sampler in voxforge: goldens, conversions, options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from voxforge.errors import UserError
from voxforge.models.slat_flow import SLatFlowConfig
from voxforge.models.ss_flow import SSFlowConfig
from voxforge.sparse.tensor import SparseTensor
from voxforge.trellis import flows
from voxforge.trellis.common import conv3d_to_spconv_weight, rename, spconv_to_conv3d_weight
from voxforge.trellis.loading import check_state_dict, convert_state, read_weights

FIXTURES = Path(__file__).resolve().parents[2] / ".." / "shared" / "golden" / "trellis"
SPECS = {spec.trellis_class: spec for spec in flows.SPECS}
CHECKS = {check.file: check for check in flows.GOLDENS}


def _fixtures() -> Path:
    if not (FIXTURES / "ckpts").is_dir():
        pytest.skip(f"{FIXTURES} not present")
    return FIXTURES


def _checkpoints() -> dict[str, tuple[dict, Path]]:
    found = {}
    for path in sorted((_fixtures() / "ckpts").glob("*.json")):
        meta = json.loads(path.read_text())
        if meta["name"] in SPECS:
            found[meta["name"]] = (meta["args"], path.with_suffix(".safetensors"))
    return found


@pytest.fixture(scope="module")
def trellis_models() -> dict[str, torch.nn.Module]:
    models = {}
    for name, (args, weights) in _checkpoints().items():
        module = SPECS[name].build(args)
        state = convert_state(name, args, read_weights(weights), str(weights))
        check_state_dict(module, state, str(weights))
        module.load_state_dict(state, strict=True)
        models[name] = module.eval()
    return models


def _golden(file: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = _fixtures() / "golden" / file
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return load_file(str(path))


def _assert_matches(check, outputs, golden):
    comparisons = check.comparisons(golden)
    assert comparisons
    for key, compare in comparisons.items():
        out, ref = outputs[key], golden[key]
        assert out.shape == ref.shape, key
        if compare.kind == "exact":
            assert torch.equal(out.to(ref.dtype), ref), key
            continue
        err = (out - ref).abs()
        assert bool((err <= compare.atol + compare.rtol * ref.abs()).all()), (
            f"{key}: max abs error {float(err.max()):.3g}"
        )


# ------------------------------------------------------------------------- goldens
@pytest.mark.parametrize(
    "file, tolerances",
    [
        ("ss_flow.safetensors", {"out": (2e-4, 1e-4)}),
        ("slat_flow.safetensors", {"out": (2e-4, 1e-4), "out_coords": None}),
        ("sampler.safetensors", {"samples": (1e-3, 1e-3)}),
    ],
)
def test_golden_outputs_match_trellis(trellis_models, file, tolerances):
    check = CHECKS[file]
    golden = _golden(file)
    missing = [name for name in check.needs if name not in trellis_models]
    assert not missing, f"fixture checkpoints for {missing} not found"
    comparisons = check.comparisons(golden)
    assert set(comparisons) == set(tolerances)
    for key, tol in tolerances.items():
        if tol is None:
            assert comparisons[key].kind == "exact"
        else:
            assert (comparisons[key].atol, comparisons[key].rtol) == tol
    _assert_matches(check, check.run(trellis_models, golden), golden)


def _trellis_reference_sampler(model_fn, noise, cond, neg_cond, params):
    """TRELLIS's guided-interval Euler loop, written out independently of voxforge.flow."""
    steps, s, (lo, hi), r = (
        params["steps"],
        params["cfg_strength"],
        params["cfg_interval"],
        params["rescale_t"],
    )
    seq = [1 - i / steps for i in range(steps + 1)]
    seq = [r * t / (1 + (r - 1) * t) for t in seq]
    x = noise
    for t, t_prev in zip(seq[:-1], seq[1:]):
        v = model_fn(x, t, cond)
        if lo <= t <= hi:
            v = (1 + s) * v - s * model_fn(x, t, neg_cond)
        x = x - (t - t_prev) * v
    return x


def test_sparse_sampling_matches_trellis_loop(trellis_models):
    model = trellis_models["SLatFlowModel"]
    golden = _golden("slat_flow.safetensors")
    torch.manual_seed(0)
    noise = SparseTensor(
        golden["coords"], torch.randn_like(golden["x"]), spatial_shape=(model.cfg.resolution,) * 3
    )
    cond = golden["cond"]
    params = {"steps": 2, "cfg_strength": 3.0, "cfg_interval": (0.5, 1.0), "rescale_t": 3.0}
    out = flows.sample(model, noise, cond, torch.zeros_like(cond), params)
    assert isinstance(out, SparseTensor) and torch.equal(out.coords, noise.coords)

    def one(x, t, c):  # one model call per branch, TRELLIS's t*1000 taken back to flow time
        with torch.no_grad():
            return model(noise.replace(x), torch.full((noise.batch_size,), t), c).feats

    ref = _trellis_reference_sampler(one, noise.feats, cond, torch.zeros_like(cond), params)
    torch.testing.assert_close(out.feats, ref, atol=1e-4, rtol=1e-4)


class _RecordingFlow(torch.nn.Module):
    """A stand-in flow model: records (x batch, t, context batch) per call, velocity = x·mean(context)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, context):
        sparse = isinstance(x, SparseTensor)
        batch = x.batch_size if sparse else x.shape[0]
        assert t.shape == (batch,) and context.shape[0] == batch
        self.calls.append((batch, float(t[0])))
        scale = context.mean(dim=(1, 2))  # [B]
        if sparse:
            return x.replace(x.feats * scale[x.batch_index][:, None])
        return x * scale.view(-1, *[1] * (x.ndim - 1))


def test_sampling_batches_cond_and_uncond_and_repeats_a_single_condition():
    # rescale 1, 2 steps: t = 1 inside [0.6, 1] (cond + uncond as one batch of 2B), t = 0.5 outside
    params = {"steps": 2, "cfg_strength": 1.0, "cfg_interval": (0.6, 1.0), "rescale_t": 1.0}
    cond = torch.full((1, 3, 4), 0.5)  # one condition for both samples (TRELLIS repeats it)
    model = _RecordingFlow()
    noise = torch.randn(2, 2, 4, 4, 4)
    out = flows.sample(model, noise, cond, torch.zeros_like(cond), params)
    assert [b for b, _ in model.calls] == [4, 2]
    # v = 0.5 x conditionally, 0 unconditionally: guided (1 + 1)·0.5 x = x at t = 1, then 0.5 x
    torch.testing.assert_close(out, noise * (1 - 0.5) * (1 - 0.5 * 0.5))

    sparse_model = _RecordingFlow()
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 2, 3, 1]], dtype=torch.int32)
    sparse_noise = SparseTensor(coords, torch.randn(3, 2))
    sparse_out = flows.sample(sparse_model, sparse_noise, cond, torch.zeros_like(cond), params)
    assert [b for b, _ in sparse_model.calls] == [4, 2]
    assert isinstance(sparse_out, SparseTensor) and torch.equal(sparse_out.coords, coords)
    torch.testing.assert_close(sparse_out.feats, sparse_noise.feats * 0.5 * 0.75)


# ------------------------------------------------------------------------- sampler settings
def test_sampler_config_from_pipeline_params():
    cfg = flows.sampler_config(
        {"steps": 25, "cfg_strength": 7.5, "cfg_interval": [0.5, 1.0], "rescale_t": 3.0}
    )
    assert (cfg.method, cfg.steps, cfg.cfg_scale, cfg.guidance_interval, cfg.time_shift) == (
        "euler",
        25,
        8.5,
        (0.5, 1.0),
        3.0,
    )
    assert cfg.guidance_rescale == 0.0
    defaults = flows.sampler_config({})  # TRELLIS's sampler defaults
    assert (defaults.steps, defaults.cfg_scale, defaults.guidance_interval, defaults.time_shift) == (
        50,
        4.0,
        (0.0, 1.0),
        1.0,
    )
    with pytest.raises(UserError, match="cfg_strenght"):
        flows.sampler_config({"cfg_strenght": 3.0})
    assert flows.sampler_config({"cfg_interval": [-1.0, 2.0]}).guidance_interval == (0.0, 1.0)
    with pytest.raises(UserError, match="sampler params"):
        flows.sampler_config({"cfg_interval": [0.9, 0.1]})


# ------------------------------------------------------------------------- configs and conversion
def test_configs_follow_the_checkpoint_args():
    ss_args, _ = _checkpoints()["SparseStructureFlowModel"]
    cfg = flows.ss_flow_config(ss_args)
    assert isinstance(cfg, SSFlowConfig)
    assert (cfg.width, cfg.depth, cfg.resolution, cfg.in_channels) == (
        ss_args["model_channels"],
        ss_args["num_blocks"],
        ss_args["resolution"],
        ss_args["in_channels"],
    )
    assert (cfg.ape_order, cfg.cross_qk_norm, cfg.final_modulation, cfg.final_norm_eps) == (
        "sin_cos",
        False,
        False,
        1e-5,
    )
    slat_args, _ = _checkpoints()["SLatFlowModel"]
    scfg = flows.slat_flow_config(slat_args)
    assert isinstance(scfg, SLatFlowConfig)
    assert scfg.io_channels == list(slat_args["io_block_channels"])
    assert scfg.io_res_blocks == slat_args["num_io_res_blocks"] - 1
    assert (scfg.skip_wiring, scfg.resample_first, scfg.downsample_pool) == ("block", True, "mean_incl_zero")


def test_default_configs_keep_voxforge_behaviour():
    for cfg in (SSFlowConfig(), SLatFlowConfig()):
        assert cfg.ape_order == "cos_sin" and cfg.cross_qk_norm is None and cfg.qk_norm_kind == "rms"
    assert SSFlowConfig().final_modulation and SSFlowConfig().final_norm_eps == 1e-6
    slat = SLatFlowConfig()
    assert (slat.skip_wiring, slat.resample_first, slat.downsample_pool) == ("level", False, "mean")
    assert slat.out_norm_affine and slat.out_norm_eps == 1e-6


def test_unsupported_args_are_user_errors():
    ss_args, _ = _checkpoints()["SparseStructureFlowModel"]
    for change, word in [
        ({"pe_mode": "rope"}, "pe_mode"),
        ({"share_mod": True}, "share_mod"),
        ({"out_channels": ss_args["in_channels"] + 1}, "out_channels"),
        ({"new_option": 1}, "new_option"),
    ]:
        with pytest.raises(UserError, match=word):
            flows.build_ss_flow({**ss_args, **change})
    slat_args, _ = _checkpoints()["SLatFlowModel"]
    with pytest.raises(UserError, match="patch_size"):
        flows.build_slat_flow({**slat_args, "patch_size": 4})
    with pytest.raises(UserError, match="use_skip_connection"):
        flows.build_slat_flow({**slat_args, "use_skip_connection": False})


def test_conversion_names_unknown_keys_and_checks_the_position_embedding():
    ss_args, weights = _checkpoints()["SparseStructureFlowModel"]
    state = read_weights(weights)
    assert "pos_emb" in state
    converted = flows.convert_ss_flow(ss_args, state)
    assert "pos_emb" not in converted
    with pytest.raises(UserError, match="blocks.0.extra"):
        flows.convert_ss_flow(ss_args, {**state, "blocks.0.extra": torch.zeros(1)})
    flipped = dict(state)
    flipped["pos_emb"] = state["pos_emb"].flip(-1)
    with pytest.raises(UserError, match="pos_emb"):
        flows.convert_ss_flow(ss_args, flipped)
    slat_args, slat_weights = _checkpoints()["SLatFlowModel"]
    slat_state = read_weights(slat_weights)
    with pytest.raises(UserError, match="input_blocks.99"):
        flows.convert_slat_flow(slat_args, {**slat_state, "input_blocks.99.norm1.weight": torch.zeros(1)})


def test_io_block_mapping_for_two_levels():
    names = flows._io_block_names({"io_block_channels": [32, 64], "num_io_res_blocks": 3})
    assert names["input_blocks.0"] == "down_res.0.0" and names["input_blocks.2"] == "down.0"
    assert names["input_blocks.5"] == "down.1"
    assert names["out_blocks.0"] == "up.1" and names["out_blocks.2"] == "up_res.1.1"
    assert names["out_blocks.3"] == "up.0" and names["out_blocks.5"] == "up_res.0.1"
    args = {
        "resolution": 16,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 32,
        "cond_channels": 8,
        "num_blocks": 1,
        "num_heads": 2,
        "patch_size": 4,
        "num_io_res_blocks": 3,
        "io_block_channels": [8, 16],
    }
    module = flows.build_slat_flow(args)

    def block(key: str) -> str:  # "up_res.1.0.conv1.weight" -> "up_res.1.0", "down.0.x" -> "down.0"
        parts = key.split(".")
        return ".".join(parts[:3] if parts[0].endswith("_res") else parts[:2])

    blocks = {block(k) for k in module.state_dict() if k.startswith(("down", "up"))}
    assert blocks == set(flows._io_block_names(args).values())


def test_spconv_weight_layout_round_trip_and_errors():
    w = torch.randn(5, 3, 3, 3, 7)  # spconv [Cout, kx, ky, kz, Cin]
    ours = spconv_to_conv3d_weight(w)
    assert ours.shape == (5, 7, 3, 3, 3)
    assert torch.equal(ours[:, 2, 0, 1, 2], w[:, 0, 1, 2, 2])
    assert torch.equal(conv3d_to_spconv_weight(ours), w)
    with pytest.raises(UserError, match="conv1.weight"):
        spconv_to_conv3d_weight(torch.zeros(5, 3, 3, 7), "conv1.weight")
    with pytest.raises(UserError, match="'b'"):
        rename({"a": torch.zeros(1), "b": torch.zeros(1)}, [("a", "x")])
    assert set(rename({"a.1": torch.zeros(1), "c": torch.zeros(1)}, [(r"a\.(\d)", r"x.\1")], drop=["c"])) == {
        "x.1"
    }
