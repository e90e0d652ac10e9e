"""TRELLIS's autoencoders as voxforge modules: the sparse-structure VAE and the SLat VAE.

Four TRELLIS classes, each built as the voxforge module that already implements its
network, with the options that make it compute TRELLIS's function:

- `SparseStructureEncoder` / `SparseStructureDecoder` → `SSVAEEncoder` / `SSVAEDecoder`
  (`models.ss_vae`) with `downsample="conv2"` (TRELLIS's 2×2×2 stride-2 convolution).
  TRELLIS lists the decoder's widths coarsest first, voxforge finest first, so the decoder's
  `channels` is reversed. TRELLIS keeps the middle blocks in their own `middle_block`; in
  voxforge they are part of `blocks` (after the levels in the encoder, before them in the
  decoder — the order TRELLIS runs them), so the conversion renumbers them.
- `SLatEncoder` / `SLatGaussianDecoder` → `models.slat_vae`'s modules with
  `pos_embedding="sin_cos"`, `norm_affine=False`, `out_norm_affine=False`,
  `out_norm_eps=1e-5` (TRELLIS's blocks use affine-free LayerNorms and its final norm is a
  plain `F.layer_norm`) and, for the decoder, `GaussianHeadConfig(parametrisation="trellis")`
  with the `representation_config` of the checkpoint.

`sparse_transformer_rules(prefix)` is the key table of the shared sparse transformer
backbone (`SparseTransformerStack`), also used by the mesh decoder's conversion, and
`slat_backbone_config(args)` the matching config.

The golden checks run the modules on the stored inputs and return TRELLIS's outputs:
the posterior mean of both encoders, the occupancy logits, and per sample the activated
Gaussian attributes (`get_xyz`, `_features_dc`, `get_scaling`, `get_rotation`, `get_opacity`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from voxforge.errors import UserError
from voxforge.models.slat_vae import (
    GaussianHeadConfig,
    SLatEncoder,
    SLatGaussianDecoder,
    SLatVAEConfig,
)
from voxforge.models.ss_vae import SSVAEConfig, SSVAEDecoder, SSVAEEncoder
from voxforge.sparse.tensor import SparseTensor
from voxforge.trellis.common import rename
from voxforge.trellis.compose import gaussian_outputs
from voxforge.trellis.spec import Compare, GoldenCheck, ModelSpec

__all__ = [
    "GOLDENS",
    "SPECS",
    "slat_backbone_config",
    "slat_decoder_config",
    "sparse_transformer_rules",
    "ss_vae_config",
]


def _arg(args: Mapping[str, Any], key: str, cls: str) -> Any:
    if key not in args:
        raise UserError(f"{cls} checkpoint args: missing '{key}'")
    return args[key]


# ------------------------------------------------------------------------- sparse structure
def ss_vae_config(args: Mapping[str, Any], cls: str) -> SSVAEConfig:
    """`SSVAEConfig` of a TRELLIS `SparseStructureEncoder`/`Decoder` (widths finest first)."""
    channels = [int(c) for c in _arg(args, "channels", cls)]
    if cls == "SparseStructureDecoder":
        channels = channels[::-1]
        if int(args.get("out_channels", 1)) != 1:
            raise UserError(
                f"{cls}: out_channels {args['out_channels']} (voxforge decodes one occupancy logit)"
            )
    elif int(args.get("in_channels", 1)) != 1:
        raise UserError(
            f"{cls}: in_channels {args['in_channels']} (voxforge encodes a binary occupancy grid)"
        )
    if args.get("norm_type", "layer") != "layer":
        raise UserError(f"{cls}: norm_type '{args['norm_type']}' is not supported (only 'layer')")
    factor = 2 ** (len(channels) - 1)
    return SSVAEConfig(
        resolution=max(64, factor),  # TRELLIS's grid; the networks themselves take any multiple
        latent_channels=int(_arg(args, "latent_channels", cls)),
        channels=channels,
        num_res_blocks=int(_arg(args, "num_res_blocks", cls)),
        num_res_blocks_middle=int(args.get("num_res_blocks_middle", 2)),
        norm="layer",
        downsample="conv2",
        prior_init=False,
    )


def _resblock_rules(src: str, dst: str) -> list[tuple[str, str]]:
    return [
        (rf"{src}\.(norm1|norm2|conv1|conv2)\.(weight|bias)", rf"{dst}.\1.\2"),
        (rf"{src}\.skip_connection\.(weight|bias)", rf"{dst}.skip.\1"),
    ]


def _ss_rules(args: Mapping[str, Any], cls: str) -> list[tuple[str, str]]:
    cfg = ss_vae_config(args, cls)
    levels = len(cfg.channels) * cfg.num_res_blocks + len(cfg.channels) - 1
    middle = cfg.num_res_blocks_middle
    rules: list[tuple[str, str]] = [
        (r"input_layer\.(weight|bias)", r"conv_in.\1"),
        (r"out_layer\.0\.(weight|bias)", r"norm_out.\1"),
        (r"out_layer\.2\.(weight|bias)", r"conv_out.\1"),
    ]
    shift_levels, shift_middle = (0, levels) if cls == "SparseStructureEncoder" else (middle, 0)
    for i in range(levels):
        j = i + shift_levels
        # the encoder's down-sampling conv is a bare Conv3d in voxforge, the decoder's
        # up-sampling block keeps its `conv`
        sampler = "" if cls == "SparseStructureEncoder" else "conv."
        rules += [(rf"blocks\.{i}\.conv\.(weight|bias)", rf"blocks.{j}.{sampler}\1")]
        rules += _resblock_rules(rf"blocks\.{i}", f"blocks.{j}")
    for i in range(middle):
        rules += _resblock_rules(rf"middle_block\.{i}", f"blocks.{i + shift_middle}")
    return rules


def _ss_convert(cls: str):
    def convert(args: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return rename(state, _ss_rules(args, cls), source=cls)

    return convert


def _build_ss_encoder(args: Mapping[str, Any]) -> SSVAEEncoder:
    return SSVAEEncoder(ss_vae_config(args, "SparseStructureEncoder"))


def _build_ss_decoder(args: Mapping[str, Any]) -> SSVAEDecoder:
    return SSVAEDecoder(ss_vae_config(args, "SparseStructureDecoder"))


# ------------------------------------------------------------------------- structured latents
def sparse_transformer_rules(prefix: str = "stack.") -> list[tuple[str, str]]:
    """Key table TRELLIS `SparseTransformerBase` (+ `out_layer`) → `SparseTransformerStack`.

    `prefix` is where the stack sits in the voxforge module ("stack." in the SLat encoder
    and Gaussian decoder). TRELLIS's qk RMSNorm gain `gamma` becomes `weight`: TRELLIS
    normalises with `F.normalize(x) · sqrt(D)`, voxforge with `x · rsqrt(mean(x²) + 1e-6)`,
    the same up to the epsilon.
    """
    p = prefix
    return [
        (r"input_layer\.(weight|bias)", rf"{p}input.\1"),
        (r"blocks\.(\d+)\.attn\.to_qkv\.(weight|bias)", rf"{p}blocks.\1.attn.qkv.\2"),
        (r"blocks\.(\d+)\.attn\.to_out\.(weight|bias)", rf"{p}blocks.\1.attn.proj.\2"),
        (r"blocks\.(\d+)\.attn\.q_rms_norm\.gamma", rf"{p}blocks.\1.attn.q_norm.weight"),
        (r"blocks\.(\d+)\.attn\.k_rms_norm\.gamma", rf"{p}blocks.\1.attn.k_norm.weight"),
        (r"blocks\.(\d+)\.mlp\.mlp\.0\.(weight|bias)", rf"{p}blocks.\1.mlp.fc1.\2"),
        (r"blocks\.(\d+)\.mlp\.mlp\.2\.(weight|bias)", rf"{p}blocks.\1.mlp.fc2.\2"),
        (r"blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)", rf"{p}blocks.\1.\2.\3"),
        (r"out_layer\.(weight|bias)", rf"{p}output.\1"),
    ]


def slat_backbone_config(args: Mapping[str, Any], cls: str, **fields: Any) -> SLatVAEConfig:
    """`SLatVAEConfig` whose backbone fields compute TRELLIS's `SparseTransformerBase`.

    `fields` sets the others (e.g. `decoder_blocks`, `head`). Raises `UserError` for
    TRELLIS options voxforge does not implement (serialized attention modes, rotary
    positions).
    """
    width = int(_arg(args, "model_channels", cls))
    heads = args.get("num_heads") or width // int(args.get("num_head_channels", 64))
    attn_mode = args.get("attn_mode", "swin")
    if attn_mode not in ("swin", "full"):
        raise UserError(f"{cls}: attn_mode '{attn_mode}' is not supported (swin or full)")
    if args.get("pe_mode", "ape") != "ape":
        raise UserError(f"{cls}: pe_mode '{args['pe_mode']}' is not supported (only 'ape')")
    blocks = int(_arg(args, "num_blocks", cls))
    return SLatVAEConfig(
        resolution=int(_arg(args, "resolution", cls)),
        latent_channels=int(_arg(args, "latent_channels", cls)),
        width=width,
        encoder_blocks=max(blocks, 1),
        decoder_blocks=max(blocks, 1),
        heads=int(heads),
        mlp_ratio=float(args.get("mlp_ratio", 4.0)),
        attn_mode=attn_mode,
        window_size=int(args.get("window_size") or 8),
        qk_norm=bool(args.get("qk_rms_norm", False)),
        pos_embedding="sin_cos",
        norm_affine=False,
        out_norm_affine=False,
        out_norm_eps=1e-5,
        **fields,
    )


def _build_slat_encoder(args: Mapping[str, Any]) -> SLatEncoder:
    cfg = slat_backbone_config(args, "SLatEncoder")
    return SLatEncoder(cfg, int(_arg(args, "in_channels", "SLatEncoder")))


def _convert_slat_encoder(args: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return rename(state, sparse_transformer_rules("stack."), source="SLatEncoder")


_TRELLIS_LR_KEYS = {
    "_xyz": "offset",
    "_features_dc": "color",
    "_scaling": "scale",
    "_rotation": "rotation",
    "_opacity": "opacity",
}


def slat_decoder_config(args: Mapping[str, Any]) -> SLatVAEConfig:
    """`SLatVAEConfig` of a TRELLIS `SLatGaussianDecoder` (its `representation_config` → the head)."""
    cls = "SLatGaussianDecoder"
    rep = dict(_arg(args, "representation_config", cls))
    lr = {_TRELLIS_LR_KEYS[k]: float(v) for k, v in dict(rep.get("lr", {})).items() if k in _TRELLIS_LR_KEYS}
    head = GaussianHeadConfig(
        parametrisation="trellis",
        gaussians_per_voxel=int(rep.get("num_gaussians", 32)),
        offset_extent=float(rep.get("voxel_size", 1.5)),
        perturb_offset=bool(rep.get("perturb_offset", True)),
        opacity_init=float(rep.get("opacity_bias", 0.1)),
        scale_activation=rep.get("scaling_activation", "exp"),
        scaling_bias=float(rep.get("scaling_bias", 0.01)),
        filter_3d=float(rep.get("3d_filter_kernel_size", 0.0)),
        output_lr=lr,
    )
    return slat_backbone_config(args, cls, head=head)


def _build_slat_decoder(args: Mapping[str, Any]) -> SLatGaussianDecoder:
    return SLatGaussianDecoder(slat_decoder_config(args))


def _convert_slat_decoder(args: Mapping[str, Any], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    rules = [*sparse_transformer_rules("stack."), (r"offset_perturbation", "offset_perturbation")]
    return rename(state, rules, source="SLatGaussianDecoder")


SPECS: list[ModelSpec] = [
    ModelSpec("SparseStructureEncoder", _build_ss_encoder, _ss_convert("SparseStructureEncoder")),
    ModelSpec("SparseStructureDecoder", _build_ss_decoder, _ss_convert("SparseStructureDecoder")),
    ModelSpec("SLatEncoder", _build_slat_encoder, _convert_slat_encoder),
    ModelSpec("SLatGaussianDecoder", _build_slat_decoder, _convert_slat_decoder),
]


# ------------------------------------------------------------------------- golden checks
def _golden_sparse(golden: Mapping[str, Tensor], feats: str, file: str) -> SparseTensor:
    """The golden file's `coords [N, 4]` + `feats [N, C]` rows, in their stored order.

    The outputs are compared row by row, so the rows are not re-sorted; voxforge only needs
    them grouped by sample, as TRELLIS's batches are.
    """
    coords = golden["coords"]
    if coords.shape[0] > 1 and bool((coords[1:, 0] < coords[:-1, 0]).any()):
        raise UserError(f"{file}: 'coords' rows are not grouped by sample (batch column decreases)")
    return SparseTensor(coords, golden[feats].float())


@torch.no_grad()
def _run_ss_vae(models: Mapping[str, Any], golden: Mapping[str, Tensor]) -> dict[str, Tensor]:
    mean, _ = models["SparseStructureEncoder"](golden["occupancy"].float())
    logits = models["SparseStructureDecoder"](golden["z"].float())
    return {"mean": mean, "logits": logits}


@torch.no_grad()
def _run_slat_enc(models: Mapping[str, Any], golden: Mapping[str, Tensor]) -> dict[str, Tensor]:
    mean, _ = models["SLatEncoder"](_golden_sparse(golden, "feats", "slat_enc.safetensors"))
    return {"mean": mean.feats}


@torch.no_grad()
def _run_slat_dec_gs(models: Mapping[str, Any], golden: Mapping[str, Tensor]) -> dict[str, Tensor]:
    x = _golden_sparse(golden, "latents", "slat_dec_gs.safetensors")
    out: dict[str, Tensor] = {}
    for i, g in enumerate(models["SLatGaussianDecoder"](x)):
        out.update({f"{i}.{name}": value for name, value in gaussian_outputs(g).items()})
    return out


def _gs_compare(golden: Mapping[str, Tensor]) -> dict[str, Compare]:
    tol = Compare("tensor", atol=1e-4, rtol=1e-4)
    names = ("xyz", "features_dc", "scaling", "rotation", "opacity")
    samples = sorted({k.split(".")[0] for k in golden if k.split(".")[0].isdigit()}, key=int)
    return {f"{i}.{n}": tol for i in samples for n in names}


GOLDENS: list[GoldenCheck] = [
    GoldenCheck(
        "ss_vae.safetensors",
        ("SparseStructureEncoder", "SparseStructureDecoder"),
        _run_ss_vae,
        {"mean": Compare("tensor", atol=2e-4, rtol=1e-4), "logits": Compare("tensor", atol=2e-4, rtol=1e-4)},
    ),
    GoldenCheck(
        "slat_enc.safetensors",
        ("SLatEncoder",),
        _run_slat_enc,
        {"mean": Compare("tensor", atol=2e-4, rtol=1e-4)},
    ),
    GoldenCheck(
        "slat_dec_gs.safetensors", ("SLatGaussianDecoder",), _run_slat_dec_gs, compare_for=_gs_compare
    ),
]
