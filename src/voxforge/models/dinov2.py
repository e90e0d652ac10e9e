"""DINOv2 ViT with register tokens, the frozen image encoder TRELLIS conditions on.

TRELLIS-image-large conditions both of its flow transformers on `dinov2_vitl14_reg`
(ViT-L/14, 4 registers, torch.hub's facebookresearch/dinov2): the tokens of the last block
*before* the backbone's own final norm (`x_prenorm`), normalised by a LayerNorm without
affine parameters. This module is that network in voxforge's own parts, so the encoder
loads from local files only (no torch.hub, no network, no transformers needed) and runs
on CPU:

- **Parameter names are facebookresearch's** (`patch_embed.proj`, `cls_token`,
  `register_tokens`, `pos_embed`, `mask_token`, `blocks.N.{norm1, attn.qkv, attn.proj,
  ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`, `norm`), so a hub checkpoint loads with no
  renaming at all and a mismatch is reported in the names its users know. A transformers
  `Dinov2WithRegisters` folder is renamed into them (`convert_transformers_state`): its
  separate query/key/value projections are concatenated into the fused `qkv`.
- **Attention** is `voxforge.nn.transformer.SelfAttention`: one fused qkv projection whose
  output splits as [3, heads, head_dim], exactly DINOv2's layout, through SDPA.
- **The MLP uses the exact (erf) GELU**, as DINOv2 does; voxforge's own transformer MLP
  uses the tanh approximation, which would move the tokens by ~1e-3.
- **Register tokens are inserted after the positional embedding is added**, between the
  class token and the patches: they carry no position. The token order is
  [class, R registers, P patches].
- **Positional embeddings** are stored for `img_size` (37×37 patches at 518) and
  interpolated bicubically to other grids as DINOv2 does: with `interpolate_offset` 0 to an
  exact output size, otherwise (the non-register models' historical workaround) by the
  scale factor (grid + offset) / stored grid; antialiasing per `interpolate_antialias`.
  At the stored size and a square image they are used as they are.

Loading (`load_dinov2`) accepts a `.safetensors` or `.pth` file with facebookresearch key
names (a `.pth` only through `torch.load(weights_only=True)`: never arbitrary unpickling),
its architecture from a same-stem `.json` beside it (`{"args": {...}}` with the hub
constructor's arguments) or, without one, inferred from the tensor shapes; or a
transformers folder (`config.json` + `model.safetensors`). Loading is strict: missing,
unexpected and wrongly shaped keys are all named.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from voxforge.errors import UserError
from voxforge.nn.norms import LayerNorm32
from voxforge.nn.state import state_mismatch
from voxforge.nn.transformer import SelfAttention

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DinoV2",
    "DinoV2Config",
    "config_from_state",
    "config_from_transformers",
    "convert_transformers_state",
    "imagenet_normalize",
    "is_dinov2_weights_file",
    "load_dinov2",
    "read_dinov2_state",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DinoV2Config:
    """The architecture; the defaults are `dinov2_vitl14_reg` as TRELLIS loads it."""

    img_size: int = 518  # the side the stored positional embeddings are for
    patch_size: int = 14
    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    init_values: float | None = 1.0  # LayerScale; None (or 0) = no LayerScale
    num_register_tokens: int = 4
    interpolate_antialias: bool = True
    interpolate_offset: float = 0.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6

    def __post_init__(self):
        for name in ("img_size", "patch_size", "embed_dim", "depth", "num_heads"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"DINOv2 config: {name} must be positive, got {getattr(self, name)}")
        if self.num_register_tokens < 0:
            raise UserError(
                f"DINOv2 config: num_register_tokens must be >= 0, got {self.num_register_tokens}"
            )
        if self.embed_dim % self.num_heads:
            raise UserError(
                f"DINOv2 config: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.img_size % self.patch_size:
            raise UserError(
                f"DINOv2 config: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def grid(self) -> int:  # patches per side at img_size
        return self.img_size // self.patch_size

    @property
    def hidden(self) -> int:  # MLP width
        return int(self.embed_dim * self.mlp_ratio)

    def num_tokens(self, height: int | None = None, width: int | None = None) -> int:
        """Tokens of `forward` for an image of that size (default img_size): 1 + R + patches."""
        h, w = height or self.img_size, width or self.img_size
        return 1 + self.num_register_tokens + (h // self.patch_size) * (w // self.patch_size)

    @classmethod
    def from_args(cls, args: Mapping[str, Any], where: str = "DINOv2 config") -> DinoV2Config:
        """From the arguments of facebookresearch's `DinoVisionTransformer` (the `.json` format).

        Arguments that only matter for training (stochastic depth, FSDP block chunks) are
        accepted and ignored; ones that would change the network into something this module
        does not build (a SwiGLU FFN, other input channels, bias-free projections) are refused.
        """
        known = {f.name for f in fields(cls)}
        ignored = {"block_chunks", "drop_path_rate", "drop_path_uniform"}
        refused = {"ffn_layer": "mlp", "in_chans": 3, "proj_bias": True, "ffn_bias": True}
        values: dict[str, Any] = {}
        for key, value in args.items():
            if key in known:
                values[key] = value
            elif key in refused:
                if value != refused[key]:
                    raise UserError(f"{where}: {key}={value!r} is not supported (only {refused[key]!r})")
            elif key not in ignored:
                raise UserError(f"{where}: unknown DINOv2 argument '{key}'")
        try:
            return cls(**values)
        except TypeError as err:
            raise UserError(f"{where}: {err}") from None


class LayerScale(nn.Module):
    """Per-channel learned residual scale `gamma` (CaiT), DINOv2's `ls1` / `ls2`."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:  # [..., dim]
        return x * self.gamma


class DinoV2MLP(nn.Module):
    """Linear -> exact GELU -> Linear (`fc1`, `fc2`)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:  # [..., dim] -> [..., dim]
        return self.fc2(F.gelu(self.fc1(x)))


class DinoV2Block(nn.Module):
    """Pre-norm block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(self, cfg: DinoV2Config):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = LayerNorm32(dim, eps=cfg.layer_norm_eps)
        self.attn = SelfAttention(dim, cfg.num_heads, bias=cfg.qkv_bias)
        self.ls1: nn.Module = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()
        self.norm2 = LayerNorm32(dim, eps=cfg.layer_norm_eps)
        self.mlp = DinoV2MLP(dim, cfg.hidden)
        self.ls2: nn.Module = LayerScale(dim, cfg.init_values) if cfg.init_values else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # [B, T, C]
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """[B, 3, H, W] -> [B, (H/p)(W/p), C] by one stride-p convolution (`proj`), row-major patches."""

    def __init__(self, cfg: DinoV2Config):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(3, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"DINOv2: image side {height}x{width} is not a multiple of {self.patch_size}")
        return self.proj(image).flatten(2).transpose(1, 2)


class DinoV2(nn.Module):
    """DINOv2 ViT (with registers). `forward(image)` -> `x_prenorm` [B, 1 + R + P, C].

    `image` is [B, 3, H, W], ImageNet-normalised (`imagenet_normalize`), H and W multiples of
    the patch size. `condition_tokens(image)` is TRELLIS's conditioning:
    `F.layer_norm(x_prenorm, (C,))` without affine parameters. `normed(x_prenorm)` applies the
    backbone's own final norm (what DINOv2 reports as `x_norm_*` and transformers as
    `last_hidden_state`).
    """

    def __init__(self, cfg: DinoV2Config | None = None):
        super().__init__()
        self.cfg = cfg = cfg or DinoV2Config()
        dim = cfg.embed_dim
        self.embed_dim = self.out_dim = dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid**2, dim))
        if cfg.num_register_tokens:
            self.register_tokens = nn.Parameter(torch.zeros(1, cfg.num_register_tokens, dim))
        else:
            self.register_tokens = None
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # replaces masked patches (DINOv2 training)
        self.blocks = nn.ModuleList(DinoV2Block(cfg) for _ in range(cfg.depth))
        self.norm = LayerNorm32(dim, eps=cfg.layer_norm_eps)
        if self.pos_embed.device.type != "meta":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            if self.register_tokens is not None:
                nn.init.normal_(self.register_tokens, std=1e-6)

    def position_embedding(self, height: int, width: int) -> Tensor:  # -> [1, 1 + (H/p)(W/p), C]
        """The stored positions, interpolated to the patch grid of an H×W image when it differs."""
        cfg = self.cfg
        rows, cols = height // cfg.patch_size, width // cfg.patch_size
        stored = cfg.grid
        if rows == cols == stored:
            return self.pos_embed
        pos = self.pos_embed.float()
        grid = pos[:, 1:].reshape(1, stored, stored, -1).permute(0, 3, 1, 2)  # [1, C, M, M]
        if cfg.interpolate_offset:
            # DINO's float workaround: a scale factor slightly above rows / M, the output
            # size is still floor(M * factor) = rows
            factor = ((rows + cfg.interpolate_offset) / stored, (cols + cfg.interpolate_offset) / stored)
            grid = F.interpolate(
                grid, scale_factor=factor, mode="bicubic", antialias=cfg.interpolate_antialias
            )
        else:
            grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", antialias=cfg.interpolate_antialias)
        if grid.shape[-2:] != (rows, cols):
            raise ValueError(
                f"DINOv2: positions interpolated to {tuple(grid.shape[-2:])}, need {(rows, cols)}"
            )
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([pos[:, :1], grid], dim=1).to(self.pos_embed.dtype)

    def tokens(self, image: Tensor, masks: Tensor | None = None) -> Tensor:
        """Input tokens [B, 1 + R + P, C]: class + positions, registers (no position), patches + positions.

        `masks` [B, P] bool (DINOv2 training's masked patches) replaces those patches by
        `mask_token` before the positions are added.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"DINOv2 expects an image batch [B, 3, H, W], got {tuple(image.shape)}")
        height, width = image.shape[-2:]
        x = self.patch_embed(image)  # [B, P, C]
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.position_embedding(height, width)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)
        return x

    def forward(self, image: Tensor, masks: Tensor | None = None) -> Tensor:  # [B, 3, H, W] -> [B, T, C]
        x = self.tokens(image, masks)
        for block in self.blocks:
            x = block(x)
        return x  # x_prenorm

    def normed(self, x_prenorm: Tensor) -> Tensor:  # [B, T, C] -> [B, T, C], the backbone's final norm
        return self.norm(x_prenorm)

    def condition_tokens(self, image: Tensor) -> Tensor:  # [B, 3, H, W] normalised -> [B, T, C]
        """TRELLIS's condition: the last block's tokens under a parameter-free LayerNorm."""
        x = self.forward(image)
        return F.layer_norm(x, x.shape[-1:])


def imagenet_normalize(images: Tensor) -> Tensor:  # [B, 3, H, W] in [0, 1] -> normalised
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


# ----------------------------------------------------------------------------- loading


def config_from_state(state: Mapping[str, Tensor], where: str = "DINOv2 weights") -> DinoV2Config:
    """The architecture a facebookresearch state dict implies, when no `.json` says it.

    Widths, depth, patch size, MLP ratio and register count are read off the shapes. The
    head count is not in any shape: it is embed_dim / 64, as for every released DINOv2
    (S 384/6, B 768/12, L 1024/16, g 1536/24). The interpolation settings follow the hub
    constructors: the register models use antialias and no offset, the others offset 0.1.
    """
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if key not in state:
            raise UserError(
                f"{where}: no '{key}' — not a DINOv2 state dict with facebookresearch key names "
                "(give a transformers folder, or a .json config beside the file)"
            )
    dim = int(state["cls_token"].shape[-1])
    patch = int(state["patch_embed.proj.weight"].shape[-1])
    positions = int(state["pos_embed"].shape[1]) - 1
    grid = math.isqrt(positions)
    if grid * grid != positions:
        raise UserError(f"{where}: pos_embed holds {positions} patch positions, not a square grid")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    registers = int(state["register_tokens"].shape[1]) if "register_tokens" in state else 0
    if dim % 64:
        raise UserError(f"{where}: embed_dim {dim} is not a multiple of 64; give the head count in a .json")
    return DinoV2Config(
        img_size=grid * patch,
        patch_size=patch,
        embed_dim=dim,
        depth=depth,
        num_heads=dim // 64,
        mlp_ratio=int(state["blocks.0.mlp.fc1.weight"].shape[0]) / dim,
        init_values=1.0 if "blocks.0.ls1.gamma" in state else None,
        num_register_tokens=registers,
        interpolate_antialias=registers > 0,
        interpolate_offset=0.0 if registers else 0.1,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )


def config_from_transformers(config: Mapping[str, Any], where: str = "config.json") -> DinoV2Config:
    """A transformers `Dinov2WithRegistersConfig` (its `config.json`) as a `DinoV2Config`."""
    model_type = config.get("model_type")
    if model_type != "dinov2_with_registers":
        raise UserError(f"{where}: model_type '{model_type}', expected 'dinov2_with_registers'")
    if config.get("use_swiglu_ffn"):
        raise UserError(f"{where}: use_swiglu_ffn=true is not supported (only the MLP FFN)")
    if config.get("hidden_act", "gelu") != "gelu":
        raise UserError(f"{where}: hidden_act '{config.get('hidden_act')}' is not supported (only gelu)")
    if config.get("num_channels", 3) != 3:
        raise UserError(f"{where}: num_channels {config.get('num_channels')} is not supported (only 3)")
    try:
        return DinoV2Config(
            img_size=int(config.get("image_size", 518)),
            patch_size=int(config.get("patch_size", 14)),
            embed_dim=int(config["hidden_size"]),
            depth=int(config["num_hidden_layers"]),
            num_heads=int(config["num_attention_heads"]),
            mlp_ratio=float(config.get("mlp_ratio", 4)),
            init_values=float(config.get("layerscale_value", 1.0)),
            num_register_tokens=int(config.get("num_register_tokens", 4)),
            interpolate_antialias=True,  # transformers always interpolates with antialias, to a size
            interpolate_offset=0.0,
            qkv_bias=bool(config.get("qkv_bias", True)),
            layer_norm_eps=float(config.get("layer_norm_eps", 1e-6)),
        )
    except KeyError as err:
        raise UserError(f"{where}: missing {err}") from None


_TRANSFORMERS_RULES = [
    (r"embeddings\.cls_token", r"cls_token"),
    (r"embeddings\.mask_token", r"mask_token"),
    (r"embeddings\.register_tokens", r"register_tokens"),
    (r"embeddings\.position_embeddings", r"pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]
# query / key / value, in the saved (legacy) and in the in-memory (transformers 5) names
_QKV = re.compile(
    r"encoder\.layer\.(\d+)\.attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)"
)
_QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}


def convert_transformers_state(
    state: Mapping[str, Tensor], where: str = "model.safetensors"
) -> dict[str, Tensor]:
    """transformers `Dinov2WithRegistersModel` keys -> facebookresearch keys.

    Query, key and value are concatenated (in that order) into the fused `attn.qkv`, which
    is DINOv2's own layout. A `dinov2_with_registers.` prefix (a task model's backbone) is
    stripped. A key no rule covers is an error naming it.
    """
    rules = [(re.compile(p), r) for p, r in _TRANSFORMERS_RULES]
    out: dict[str, Tensor] = {}
    parts: dict[tuple[str, str], dict[int, Tensor]] = {}
    for key, value in state.items():
        name = key.removeprefix("dinov2_with_registers.")
        if m := _QKV.fullmatch(name):
            block, kind = m.group(1), m.group(2) or m.group(3)
            parts.setdefault((block, m.group(4)), {})[_QKV_ORDER[kind]] = value
            continue
        for pattern, repl in rules:
            if pattern.fullmatch(name):
                out[pattern.sub(repl, name)] = value
                break
        else:
            raise UserError(f"{where}: unexpected key '{key}' (not a Dinov2WithRegistersModel weight)")
    for (block, kind), qkv in sorted(parts.items()):
        if sorted(qkv) != [0, 1, 2]:
            names = ", ".join(("query", "key", "value")[i] for i in range(3) if i not in qkv)
            raise UserError(f"{where}: block {block} lacks the attention {names} {kind}")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([qkv[0], qkv[1], qkv[2]], dim=0)
    return out


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable safetensors file ({err})") from None


def _load_pth(path: Path) -> dict[str, Tensor]:
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"{path}: cannot be read as plain weights with torch.load(weights_only=True) ({first}); "
            "voxforge never unpickles arbitrary objects — convert it to .safetensors"
        ) from None
    if not isinstance(state, Mapping):
        raise UserError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    nested = sorted(str(k) for k, v in state.items() if not isinstance(v, Tensor))
    if nested:
        raise UserError(
            f"{path}: not a flat state dict of tensors (not a tensor: {', '.join(nested[:4])}); "
            "save the backbone's own state_dict()"
        )
    return dict(state)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: cannot read the DINOv2 config ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _transformers_weights(folder: Path) -> dict[str, Tensor]:
    single = folder / "model.safetensors"
    if single.is_file():
        return _load_safetensors(single)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: no 'weight_map'")
        state: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = (folder / str(shard)).resolve()
            if not shard_path.is_relative_to(folder.resolve()):
                raise UserError(f"{index}: shard '{shard}' points outside {folder}")
            state.update(_load_safetensors(shard_path))
        return state
    raise UserError(
        f"{folder}: no model.safetensors (or model.safetensors.index.json) in this transformers folder"
    )


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt")


def is_dinov2_weights_file(name: str | Path) -> bool:
    """Whether `name` names a weights file for `load_dinov2` (not a folder or a hub id)."""
    return Path(name).suffix in WEIGHT_SUFFIXES


def read_dinov2_state(path: str | Path) -> tuple[DinoV2Config, dict[str, Tensor]]:
    """(architecture, fp32 state dict in facebookresearch names) of a file or transformers folder."""
    path = Path(path)
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise UserError(f"{path}: a folder without config.json — not a transformers DINOv2 folder")
        cfg = config_from_transformers(_read_json(config_path), str(config_path))
        state = convert_transformers_state(_transformers_weights(path), str(path))
    elif path.is_file():
        if path.suffix == ".safetensors":
            state = _load_safetensors(path)
        elif path.suffix in WEIGHT_SUFFIXES:
            state = _load_pth(path)
        else:
            raise UserError(
                f"{path}: expected DINOv2 weights as .safetensors or .pth, or a transformers folder"
            )
        config_path = path.with_suffix(".json")
        if config_path.is_file():
            data = _read_json(config_path)
            args = data.get("args", data)
            if not isinstance(args, dict):
                raise UserError(f"{config_path}: 'args' must be an object")
            cfg = DinoV2Config.from_args(args, str(config_path))
        else:
            cfg = config_from_state(state, str(path))
    else:
        raise UserError(f"{path}: DINOv2 weights not found")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return cfg, state


def check_keys(module: nn.Module, state: Mapping[str, Tensor], where: str) -> None:
    """Raise a UserError naming the missing, unexpected and wrongly shaped keys, if any."""
    problems = state_mismatch(module, state)
    if problems:
        raise UserError(f"{where}: the DINOv2 weights do not match the architecture{problems}")


def load_dinov2(path: str | Path, *, device: torch.device | str = "cpu") -> DinoV2:
    """A DINOv2 from local files (see the module docstring), fp32, in eval mode, frozen."""
    cfg, state = read_dinov2_state(path)
    model = DinoV2(cfg)
    check_keys(model, state, str(path))
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)
