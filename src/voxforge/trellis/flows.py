"""TRELLIS's two flow transformers and its guided Euler sampler, on voxforge's modules.

Models. `SparseStructureFlowModel` (stage 1, dense 16³ grid) becomes `SSFlowTransformer`
and `SLatFlowModel` (stage 2, sparse voxels) `SLatFlowTransformer`, each with the options
that make voxforge's network compute TRELLIS's function (`ss_flow_config`,
`slat_flow_config`; the model docstrings list what each option changes). The modules are the
bare denoisers: `model(x, t, context)` with `t` the flow time in [0, 1] — TRELLIS's models
take `t * 1000`, voxforge's timestep embedder does that multiplication itself — and the
condition tokens (DINOv2 features, zeros as the null condition) as `context`. Conversion is
renaming plus one reshape (sparse-conv weights from spconv's layout, `trellis.common`);
TRELLIS's `pos_emb` buffer is dropped after checking it equals the embedding voxforge
computes, so a checkpoint with another position layout fails loudly instead of loading.

Arguments voxforge does not express (rope positions, a shared adaLN modulation, SLat
without skips, a different output width) are `UserError`s naming the argument, never a
silently different network.

Sampler. TRELLIS's `FlowEulerGuidanceIntervalSampler` is voxforge's Euler sampler
(`voxforge.flow.sample`) under the same conventions — t = 1 noise, t = 0 data, the network
predicts v = eps - x0 (up to sigma_min), x ← x + (t_next - t)·v — with
`cfg_strength` s as guidance scale 1 + s (TRELLIS: (1 + s)·v_c − s·v_u = v_u + (1 + s)(v_c − v_u)),
`cfg_interval` as the guidance interval and `rescale_t` as the time-grid shift. sigma_min
only enters TRELLIS's x0 predictions, not its trajectory, so the samples do not depend on
it. `sample` runs the conditional and the unconditional branch as one batch of 2B with the
condition pair concatenated once before the loop (`batch_guidance`), for the dense and the
sparse model alike (a sparse batch is duplicated once with `sparse_cat`; its neighbour maps
and coarse levels are cached on that duplicate and reused by every step).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from voxforge.errors import UserError
from voxforge.flow import SamplerConfig, sample_from_config
from voxforge.models.conditioning import ImageConditionedFlow
from voxforge.models.slat_flow import SLatFlowConfig, SLatFlowTransformer
from voxforge.models.ss_flow import SSFlowConfig, SSFlowTransformer
from voxforge.nn.embeddings import sincos_position_embedding
from voxforge.nn.rope import grid_coords
from voxforge.sparse.tensor import SparseTensor, sparse_cat
from voxforge.trellis.common import rename, spconv_to_conv3d_weight
from voxforge.trellis.spec import Compare, GoldenCheck, ModelSpec

__all__ = [
    "GOLDENS",
    "SPECS",
    "TRACE_SAMPLER_PARAMS",
    "build_slat_flow",
    "build_ss_flow",
    "convert_slat_flow",
    "convert_ss_flow",
    "sample",
    "sampler_config",
    "slat_flow_config",
    "ss_flow_config",
]

# ------------------------------------------------------------------------------ arguments

_COMMON_ARGS = {
    "resolution",
    "in_channels",
    "model_channels",
    "cond_channels",
    "out_channels",
    "num_blocks",
    "num_heads",
    "num_head_channels",
    "mlp_ratio",
    "patch_size",
    "pe_mode",
    "use_fp16",
    "use_checkpoint",
    "share_mod",
    "qk_rms_norm",
    "qk_rms_norm_cross",
}
_SLAT_ARGS = _COMMON_ARGS | {"num_io_res_blocks", "io_block_channels", "use_skip_connection"}


def _check_args(cls: str, args: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(args) - known)
    if unknown:
        raise UserError(
            f"{cls} args: unknown argument(s) {', '.join(unknown)} (this TRELLIS version is not supported)"
        )
    for key in ("resolution", "in_channels", "model_channels", "cond_channels", "num_blocks"):
        if key not in args:
            raise UserError(f"{cls} args: missing '{key}'")
    if args.get("pe_mode", "ape") != "ape":
        raise UserError(f"{cls} args: pe_mode '{args['pe_mode']}' is not supported (only 'ape')")
    if args.get("share_mod", False):
        raise UserError(f"{cls} args: share_mod true is not supported (one adaLN modulation per block)")
    out = args.get("out_channels", args["in_channels"])
    if out != args["in_channels"]:
        raise UserError(f"{cls} args: out_channels {out} must equal in_channels {args['in_channels']}")


def _heads(args: Mapping[str, Any]) -> int:
    heads = args.get("num_heads")
    return int(heads) if heads else int(args["model_channels"]) // int(args.get("num_head_channels") or 64)


def _trellis_block_options(args: Mapping[str, Any]) -> dict[str, Any]:
    """Options shared by both flows: TRELLIS's transformer-block and position layout."""
    return {
        "width": int(args["model_channels"]),
        "depth": int(args["num_blocks"]),
        "heads": _heads(args),
        "mlp_ratio": float(args.get("mlp_ratio", 4)),
        "qk_norm": bool(args.get("qk_rms_norm", False)),
        "cross_qk_norm": bool(args.get("qk_rms_norm_cross", False)),
        "qk_norm_kind": "l2",
        "pos_embed": "ape",
        "ape_order": "sin_cos",
    }


def ss_flow_config(args: Mapping[str, Any]) -> SSFlowConfig:
    """`SparseStructureFlowModel` args (`ckpts/NAME.json`) -> the `SSFlowConfig` computing it."""
    _check_args("SparseStructureFlowModel", args, _COMMON_ARGS)
    try:
        return SSFlowConfig(
            resolution=int(args["resolution"]),
            in_channels=int(args["in_channels"]),
            patch_size=int(args.get("patch_size", 2)),
            final_modulation=False,
            final_norm_eps=1e-5,  # F.layer_norm's default
            **_trellis_block_options(args),
        )
    except ValueError as err:  # ConfigValueError
        raise UserError(f"SparseStructureFlowModel args: {err}") from None


def slat_flow_config(args: Mapping[str, Any]) -> SLatFlowConfig:
    """`SLatFlowModel` args -> the `SLatFlowConfig` computing it."""
    cls = "SLatFlowModel"
    _check_args(cls, args, _SLAT_ARGS)
    io = args.get("io_block_channels")
    if not io:
        raise UserError(f"{cls} args: io_block_channels is needed (voxforge's SLat flow has >= 1 level)")
    patch = int(args.get("patch_size", 2))
    if patch != 2 ** len(io):
        raise UserError(f"{cls} args: patch_size {patch} must be 2^len(io_block_channels) = {2 ** len(io)}")
    if not args.get("use_skip_connection", True):
        raise UserError(f"{cls} args: use_skip_connection false is not supported")
    n_io = int(args.get("num_io_res_blocks", 2))
    if n_io < 1:
        raise UserError(f"{cls} args: num_io_res_blocks must be >= 1, got {n_io}")
    try:
        return SLatFlowConfig(
            resolution=int(args["resolution"]),
            in_channels=int(args["in_channels"]),
            io_channels=[int(c) for c in io],
            io_res_blocks=n_io - 1,  # TRELLIS counts the down-sampling block
            skip_wiring="block",
            resample_first=True,
            downsample_pool="mean_incl_zero",
            out_norm_affine=False,
            out_norm_eps=1e-5,
            **_trellis_block_options(args),
        )
    except ValueError as err:
        raise UserError(f"{cls} args: {err}") from None


def build_ss_flow(args: Mapping[str, Any]) -> SSFlowTransformer:
    return SSFlowTransformer(ss_flow_config(args), int(args["cond_channels"]))


def build_slat_flow(args: Mapping[str, Any]) -> SLatFlowTransformer:
    return SLatFlowTransformer(slat_flow_config(args), int(args["cond_channels"]))


# ------------------------------------------------------------------------------ conversion

_BLOCK_RULES = [
    (r"blocks\.(\d+)\.adaLN_modulation\.1\.(weight|bias)", r"blocks.\1.modulation.1.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (r"blocks\.(\d+)\.self_attn\.to_qkv\.(weight|bias)", r"blocks.\1.attn.qkv.\2"),
    (r"blocks\.(\d+)\.self_attn\.to_out\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"blocks\.(\d+)\.self_attn\.(q|k)_rms_norm\.gamma", r"blocks.\1.attn.\2_norm.weight"),
    (r"blocks\.(\d+)\.cross_attn\.to_q\.(weight|bias)", r"blocks.\1.cross_attn.q.\2"),
    (r"blocks\.(\d+)\.cross_attn\.to_kv\.(weight|bias)", r"blocks.\1.cross_attn.kv.\2"),
    (r"blocks\.(\d+)\.cross_attn\.to_out\.(weight|bias)", r"blocks.\1.cross_attn.proj.\2"),
    (r"blocks\.(\d+)\.cross_attn\.(q|k)_rms_norm\.gamma", r"blocks.\1.cross_attn.\2_norm.weight"),
    (r"blocks\.(\d+)\.mlp\.mlp\.0\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (r"blocks\.(\d+)\.mlp\.mlp\.2\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"(t_embedder\.mlp\.[02]\.(?:weight|bias))", r"\1"),
    (r"(input_layer|out_layer)\.(weight|bias)", r"\1.\2"),
]


def _check_pos_emb(state: Mapping[str, Tensor], args: Mapping[str, Any]) -> None:
    """TRELLIS stores its (fixed) APE; it must equal the one voxforge computes.

    A meta tensor (the official-shapes check converts shapes without values) is checked for
    its shape only.
    """
    stored = state.get("pos_emb")
    if stored is None:
        return
    cfg = ss_flow_config(args)
    grid = cfg.resolution // cfg.patch_size
    if tuple(stored.shape) != (grid**3, cfg.width):
        raise UserError(
            f"SparseStructureFlowModel: pos_emb has shape {tuple(stored.shape)}, expected {(grid**3, cfg.width)}"
        )
    if stored.is_meta:
        return
    ours = sincos_position_embedding(
        grid_coords(grid, device=stored.device).float(), cfg.width, order=cfg.ape_order
    )
    err = float((stored.float() - ours).abs().max())
    if err > 1e-4:
        raise UserError(
            f"SparseStructureFlowModel: pos_emb differs from the sin-cos embedding voxforge computes "
            f"(max error {err:.2e}); this checkpoint's position layout is not supported"
        )


def convert_ss_flow(args: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    _check_pos_emb(state, args)
    return rename(state, _BLOCK_RULES, drop=("pos_emb",), source="SparseStructureFlowModel")


def _io_block_names(args: Mapping[str, Any]) -> dict[str, str]:
    """TRELLIS `input_blocks.i` / `out_blocks.i` -> voxforge's residual-block module paths."""
    levels, n = len(args["io_block_channels"]), int(args.get("num_io_res_blocks", 2))
    names: dict[str, str] = {}
    for level in range(levels):
        for i in range(n):
            ours = f"down_res.{level}.{i}" if i < n - 1 else f"down.{level}"
            names[f"input_blocks.{level * n + i}"] = ours
    for rank, level in enumerate(reversed(range(levels))):  # output blocks run coarse to fine
        names[f"out_blocks.{rank * n}"] = f"up.{level}"
        for j in range(n - 1):
            names[f"out_blocks.{rank * n + 1 + j}"] = f"up_res.{level}.{j}"
    return names


_RES_PARTS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "conv1.conv.weight": "conv1.weight",
    "conv1.conv.bias": "conv1.bias",
    "conv2.conv.weight": "conv2.weight",
    "conv2.conv.bias": "conv2.bias",
    "emb_layers.1.weight": "emb.1.weight",
    "emb_layers.1.bias": "emb.1.bias",
    "skip_connection.weight": "skip.weight",
    "skip_connection.bias": "skip.bias",
}


def convert_slat_flow(args: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    cls = "SLatFlowModel"
    slat_flow_config(args)  # the same argument checks as build
    names = _io_block_names(args)
    blocks: dict[str, Tensor] = {}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        index, _, part = rest.partition(".")
        if head in ("input_blocks", "out_blocks"):
            module = names.get(f"{head}.{index}")
            if module is None or part not in _RES_PARTS:
                raise UserError(f"{cls}: unexpected key '{key}' (no conversion rule covers it)")
            if part.endswith("conv.weight"):
                value = spconv_to_conv3d_weight(value, key)
            out[f"{module}.{_RES_PARTS[part]}"] = value
        else:
            blocks[key] = value
    out.update(rename(blocks, _BLOCK_RULES, source=cls))
    return out


SPECS = [
    # pos_emb is not in `dropped`: the loader removes dropped keys before `convert`, and this
    # one is checked against voxforge's embedding there (then left out of the result)
    ModelSpec("SparseStructureFlowModel", build_ss_flow, convert_ss_flow),
    ModelSpec("SLatFlowModel", build_slat_flow, convert_slat_flow),
]


# ------------------------------------------------------------------------------ sampler

#: TRELLIS's FlowEulerGuidanceIntervalSampler.sample defaults, for keys a params block omits.
_TRELLIS_SAMPLER_DEFAULTS = {"steps": 50, "cfg_strength": 3.0, "cfg_interval": (0.0, 1.0), "rescale_t": 1.0}

#: the sampler settings of the golden traces (golden/README.md): pipeline.json's, at 6 steps.
TRACE_SAMPLER_PARAMS = {"steps": 6, "cfg_strength": 7.5, "cfg_interval": (0.5, 1.0), "rescale_t": 3.0}


def sampler_config(params: Mapping[str, Any]) -> SamplerConfig:
    """pipeline.json's sampler `params` (steps, cfg_strength, cfg_interval, rescale_t) -> `SamplerConfig`.

    Guidance scale = 1 + cfg_strength (TRELLIS extrapolates from the conditional velocity);
    missing keys take TRELLIS's sampler defaults. sigma_min (the sampler's `args`) is not a
    trajectory setting; `sample` takes it separately.
    """
    unknown = sorted(set(params) - set(_TRELLIS_SAMPLER_DEFAULTS))
    if unknown:
        raise UserError(
            f"sampler params: unknown key(s) {', '.join(unknown)} (expected steps, cfg_strength, cfg_interval, rescale_t)"
        )
    p = {**_TRELLIS_SAMPLER_DEFAULTS, **params}
    try:
        lo, hi = (float(v) for v in p["cfg_interval"])
        lo, hi = max(lo, 0.0), min(hi, 1.0)  # TRELLIS tests lo <= t <= hi for t in [0, 1]
        return SamplerConfig(
            method="euler",
            steps=int(p["steps"]),
            cfg_scale=1.0 + float(p["cfg_strength"]),
            guidance_interval=(lo, hi),
            time_shift=float(p["rescale_t"]),
        )
    except (TypeError, ValueError) as err:
        raise UserError(f"sampler params {dict(params)}: {err}") from None


@torch.no_grad()
def sample(
    model: SSFlowTransformer | SLatFlowTransformer | ImageConditionedFlow,
    noise: Tensor | SparseTensor,  # [B, C, r, r, r] dense, or a SparseTensor [N, C] (SLat)
    cond: Tensor,  # [B, T, Cc] condition tokens
    neg_cond: Tensor,  # [B, T, Cc] null condition (TRELLIS: zeros)
    params: Mapping[str, Any],  # pipeline.json's sampler params
    sigma_min: float = 1e-5,
    callback: Callable[[int, float, Tensor], None] | None = None,  # after each step (i, t, x)
) -> Tensor | SparseTensor:  # the sample at t = 0, like noise (fp32)
    """TRELLIS's FlowEulerGuidanceIntervalSampler with a TRELLIS-loaded voxforge flow model.

    `model` is a bare denoiser (what the specs build) or a voxforge flow module around one
    (`StructureFlowModel`, `SLatFlowModel`: its `denoiser` runs on the given tokens).
    """
    if isinstance(model, ImageConditionedFlow):
        model = model.denoiser
    config = sampler_config(params)
    batch = noise.batch_size if isinstance(noise, SparseTensor) else noise.shape[0]
    if cond.shape[0] == 1 and batch > 1:  # TRELLIS repeats a single condition over the batch
        cond = cond.expand(batch, *cond.shape[1:])
    if neg_cond.shape[0] == 1 and batch > 1:
        neg_cond = neg_cond.expand(batch, *neg_cond.shape[1:])
    if cond.shape[0] != batch or neg_cond.shape[0] != batch:
        raise ValueError(f"cond {tuple(cond.shape)} / neg_cond {tuple(neg_cond.shape)} for {batch} samples")
    if not isinstance(noise, SparseTensor):  # x [B or 2B, C, r, r, r]
        return sample_from_config(
            model, noise, cond, neg_cond, config, sigma_min=sigma_min, batch_guidance=True, callback=callback
        )

    single = noise.replace(noise.feats.float())
    pair = sparse_cat([single, single])  # cond and uncond rows; its cache serves every step

    def sparse_fn(x: Tensor, t: Tensor, context: Tensor) -> Tensor:  # x: packed feats [N or 2N, C]
        template = single if x.shape[0] == single.num_points else pair
        t_batch = t[:1].expand(template.batch_size)
        return model(template.replace(x), t_batch, context).feats

    feats = sample_from_config(
        sparse_fn,
        single.feats,
        cond,
        neg_cond,
        config,
        sigma_min=sigma_min,
        batch_guidance=True,
        callback=callback,
    )
    return noise.replace(feats)


# ------------------------------------------------------------------------------ goldens


def _run_ss_flow(models: Mapping[str, Any], golden: Mapping[str, Tensor]) -> dict[str, Tensor]:
    model = models["SparseStructureFlowModel"]
    with torch.no_grad():  # TRELLIS's model takes t·1000, voxforge's the flow time
        return {"out": model(golden["x"], golden["t"] / 1000.0, golden["cond"])}


def _run_slat_flow(models: Mapping[str, Any], golden: Mapping[str, Tensor]) -> dict[str, Tensor]:
    model = models["SLatFlowModel"]
    x = SparseTensor(golden["coords"], golden["x"], spatial_shape=(model.cfg.resolution,) * 3)
    with torch.no_grad():
        out = model(x, golden["t"] / 1000.0, golden["cond"])
    return {"out": out.feats, "out_coords": out.coords}


def _run_sampler(models: Mapping[str, Any], golden: Mapping[str, Tensor]) -> dict[str, Tensor]:
    model = models["SparseStructureFlowModel"]
    samples = sample(model, golden["noise"], golden["cond"], golden["neg_cond"], TRACE_SAMPLER_PARAMS)
    return {"samples": samples}


GOLDENS = [
    GoldenCheck("ss_flow.safetensors", ("SparseStructureFlowModel",), _run_ss_flow, {"out": Compare()}),
    GoldenCheck(
        "slat_flow.safetensors",
        ("SLatFlowModel",),
        _run_slat_flow,
        {"out": Compare(), "out_coords": Compare("exact")},
    ),
    GoldenCheck(
        "sampler.safetensors",
        ("SparseStructureFlowModel",),
        _run_sampler,
        {"samples": Compare(atol=1e-3, rtol=1e-3)},
    ),
]
