"""The image family's networks (Sana's row): DC-AE autoencoder, Sana denoiser, text encoder.

The autoencoder and the denoiser are diffusers classes (`AutoencoderDC`,
`SanaTransformer2DModel`), so a run's weights are diffusers folders a user can load anywhere
and a released Sana / DC-AE folder loads here unchanged (`pretrained: PATH`, a local folder,
`local_files_only`: never the network). The tiny CPU recipes use small configs of the same
classes, trained from scratch.

Text encoders (`TextEncoder.encode(prompts) -> (embeds [B, L, C], mask [B, L] bool)`, always
padded to `max_length` so an empty-caption embedding broadcasts as the guidance null):

- `builtin`: a small word-level transformer encoder voxforge ships, frozen at its seeded
  initialisation. Words are lower-cased alphanumeric runs; the vocabulary is built from the
  training captions and saved with the run (`save(folder)`, `load_builtin_text_encoder`), so
  sampling maps words to the same rows. Words outside it hash (crc32) into `unk_buckets`
  extra rows, so a word first seen in a fine-tune (a new colour) still gets its own vector.
  A `<bos>` token leads every prompt, so no mask is all False.
- `pretrained`: a transformers model + tokenizer from a local folder (Gemma-2 for Sana). Like
  diffusers' `SanaPipeline` without its `complex_human_instruction`: the prompt is lower-cased
  and stripped, tokenized to `max_length` (Sana: 300) with right padding, and the last hidden
  state is the embedding. No chat template.

LoRA (`apply_lora`): peft's `LoraConfig` is injected into the transformer (diffusers'
`add_adapter`, as its DreamBooth LoRA script does) and the result is wrapped in
`LoRATransformer`, a module whose *registered* parameters are the adapters only. The frozen
base is held unregistered, so everything that walks the registered parameters (optimizer,
EMA, DDP, the engine's checkpoint of `state_dict()`) sees only the adapters: a LoRA
checkpoint holds the adapters and their optimizer state, nothing of the base. The base is
rebuilt from its source (`init_from` / `pretrained`) when the run is built again.
`lora_state_dict` gives the adapters in diffusers' naming, which
`SanaLoraLoaderMixin.save_lora_weights` writes as `pytorch_lora_weights.safetensors`.

diffusers and peft are optional (`pip install 'voxforge[image]'`); they are imported when a
builder runs.
"""

from __future__ import annotations

import abc
import json
import re
import warnings
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from voxforge.config.core import option
from voxforge.errors import ConfigError, MissingDependencyError, UserError

__all__ = [
    "ImageAEConfig",
    "ImageFlowConfig",
    "LoRAConfig",
    "LoRATransformer",
    "TextEncoder",
    "TextEncoderConfig",
    "BuiltinTextEncoder",
    "FencedLinearAttention",
    "PretrainedTextEncoder",
    "apply_lora",
    "build_autoencoder",
    "build_text_encoder",
    "build_transformer",
    "fence_linear_attention",
    "load_autoencoder",
    "load_builtin_text_encoder",
    "load_transformer_weights",
    "lora_state_dict",
    "tokenize_words",
]


def _diffusers() -> Any:
    try:
        import diffusers  # optional: the image family's networks
    except ImportError as exc:
        raise MissingDependencyError("diffusers", "image", "The image family (Sana, DC-AE)") from exc
    return diffusers


# --- autoencoder -------------------------------------------------------------------------
@dataclass
class ImageAEConfig:
    """A DC-AE (`diffusers.AutoencoderDC`): one entry per level in the list keys; the spatial
    compression is 2^(levels - 1)."""

    pretrained: str = option(
        "", help="local diffusers AutoencoderDC folder (e.g. dc-ae-f32c32); the other keys are then ignored"
    )
    latent_channels: int = option(8, ge=1, help="channels of the latent (DC-AE f32c32: 32)")
    block_out_channels: list[int] = option(default_factory=lambda: [32, 64, 128], help="width per level")
    block_types: list[str] = option(
        default_factory=lambda: ["ResBlock", "ResBlock", "EfficientViTBlock"],
        help="ResBlock | EfficientViTBlock per level (encoder and decoder)",
    )
    encoder_layers: list[int] = option(default_factory=lambda: [1, 1, 1], help="blocks per encoder level")
    decoder_layers: list[int] = option(default_factory=lambda: [1, 1, 1], help="blocks per decoder level")
    attention_head_dim: int = option(
        16, ge=1, help="head width of the EfficientViT (linear attention) blocks"
    )
    qkv_multiscale: int = option(
        5, ge=1, help="kernel of the multi-scale qkv aggregation in attention levels"
    )


def build_autoencoder(cfg: ImageAEConfig) -> nn.Module:
    """A fresh `AutoencoderDC` of `cfg`, or the local pretrained folder it names."""
    if cfg.pretrained:
        return load_autoencoder(cfg.pretrained)
    levels = len(cfg.block_out_channels)
    for key in ("block_types", "encoder_layers", "decoder_layers"):
        if len(getattr(cfg, key)) != levels:
            raise ConfigError(
                f"key 'model.{key}': {len(getattr(cfg, key))} entries, but model.block_out_channels "
                f"has {levels} levels; give one per level"
            )
    unknown = sorted(set(cfg.block_types) - {"ResBlock", "EfficientViTBlock"})
    if unknown:
        raise ConfigError(f"key 'model.block_types': unknown {unknown}; use ResBlock or EfficientViTBlock")
    if any(
        c % cfg.attention_head_dim for c, b in zip(cfg.block_out_channels, cfg.block_types) if b != "ResBlock"
    ):
        raise ConfigError(
            "key 'model.attention_head_dim': must divide the width of every EfficientViTBlock level"
        )
    scales = tuple((cfg.qkv_multiscale,) if b != "ResBlock" else () for b in cfg.block_types)
    return _diffusers().AutoencoderDC(
        in_channels=3,
        latent_channels=cfg.latent_channels,
        attention_head_dim=cfg.attention_head_dim,
        encoder_block_types=tuple(cfg.block_types),
        decoder_block_types=tuple(cfg.block_types),
        encoder_block_out_channels=tuple(cfg.block_out_channels),
        decoder_block_out_channels=tuple(cfg.block_out_channels),
        encoder_layers_per_block=tuple(cfg.encoder_layers),
        decoder_layers_per_block=tuple(cfg.decoder_layers),
        encoder_qkv_multiscales=scales,
        decoder_qkv_multiscales=scales,
    )


def _local_folder(path: str | Path, what: str, needs: str = "config.json") -> Path:
    folder = Path(path)
    if not (folder / needs).is_file():
        raise UserError(f"{folder}: not a local {what} folder ({needs} not found); voxforge never downloads")
    return folder


def load_autoencoder(path: str | Path) -> nn.Module:
    """An `AutoencoderDC` from a local diffusers folder (`save_pretrained` layout), eval mode."""
    folder = _local_folder(path, "diffusers AutoencoderDC")
    return _diffusers().AutoencoderDC.from_pretrained(str(folder), local_files_only=True).eval()


# --- denoiser ----------------------------------------------------------------------------
@dataclass
class ImageFlowConfig:
    """A `SanaTransformer2DModel` (linear-attention DiT): heads x head_dim is the width; cross
    attention runs at the same width, as in Sana."""

    pretrained: str = option(
        "", help="local diffusers SanaTransformer2DModel folder; architecture keys ignored"
    )
    init_from: str = option(
        "",
        help="a previous image_flow run whose weights start this one (progressive resolution, fine-tuning)",
    )
    finetune: Literal["full", "lora"] = option("full", help="full: train every weight; lora: adapters only")
    in_channels: int = option(8, ge=1, help="latent channels of the autoencoder")
    num_layers: int = option(2, ge=1, help="transformer blocks (Sana 600M: 28, 1.6B: 20)")
    heads: int = option(2, ge=1, help="self-attention heads")
    head_dim: int = option(32, ge=1, help="width per head (Sana: 32)")
    cross_heads: int = option(2, ge=1, help="cross-attention heads; cross_heads x cross_head_dim = width")
    mlp_ratio: float = option(2.5, gt=0.0, help="GLU-MBConv expansion (Sana: 2.5)")
    patch_size: int = option(1, ge=1, help="latent pixels per token side (Sana: 1)")
    qk_norm: str = option("", help="'' or rms_norm_across_heads (Sana 1.5)")
    interpolation_scale: float = option(
        0.0, ge=0.0, help="0: no absolute position embedding (Sana's default); > 0: sin-cos at that scale"
    )
    sample_size: int = option(0, ge=0, help="latent side the model is built for; 0: from data.resolution")
    gradient_checkpointing: bool = option(
        False, help="recompute each block's activations in backward (memory for time; large models)"
    )
    attention_fp32: bool = option(
        True, help="linear attention's token sums in fp32 under fp16/bf16 autocast (no fp16 NaNs)"
    )


def _transformer_kwargs(cfg: ImageFlowConfig, caption_channels: int, sample_size: int) -> dict[str, Any]:
    width = cfg.heads * cfg.head_dim
    if width % cfg.cross_heads:
        raise ConfigError(f"key 'model.cross_heads': {cfg.cross_heads} does not divide the width {width}")
    return {
        "in_channels": cfg.in_channels,
        "out_channels": cfg.in_channels,
        "num_attention_heads": cfg.heads,
        "attention_head_dim": cfg.head_dim,
        "num_layers": cfg.num_layers,
        "num_cross_attention_heads": cfg.cross_heads,
        "cross_attention_head_dim": width // cfg.cross_heads,
        "cross_attention_dim": width,
        "caption_channels": caption_channels,
        "mlp_ratio": cfg.mlp_ratio,
        "sample_size": sample_size,
        "patch_size": cfg.patch_size,
        "qk_norm": cfg.qk_norm or None,
        "interpolation_scale": cfg.interpolation_scale or None,
    }


def build_transformer(cfg: ImageFlowConfig, *, caption_channels: int = 64, sample_size: int = 8) -> nn.Module:
    """A fresh `SanaTransformer2DModel` of `cfg` for text embeddings of `caption_channels`,
    or the local pretrained folder `cfg.pretrained` names (its `sample_size` set to ours)."""
    diffusers = _diffusers()
    if cfg.pretrained:
        folder = _local_folder(cfg.pretrained, "diffusers SanaTransformer2DModel")
        model = diffusers.SanaTransformer2DModel.from_pretrained(
            str(folder), local_files_only=True, sample_size=sample_size
        )
        if model.config.caption_channels != caption_channels:
            raise UserError(
                f"{folder}: the transformer takes text embeddings of width {model.config.caption_channels}, "
                f"the text encoder gives {caption_channels}; use the text encoder it was trained with"
            )
    else:
        model = diffusers.SanaTransformer2DModel(**_transformer_kwargs(cfg, caption_channels, sample_size))
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.attention_fp32:
        fence_linear_attention(model)
    return model


class FencedLinearAttention:
    """Sana's ReLU linear attention with its reductions in fp32 whatever the autocast.

    diffusers' processor casts q, k, v to float, but inside an fp16 autocast region the two
    matmuls run in fp16 again; the normaliser (sum over tokens of k, dotted with q) then
    underflows to 0 where ReLU zeroed a head's keys, 0 / 0 gives NaN, and every fp16 step is
    skipped. Here the projections still run under autocast and only the token sums and the
    division are fenced. In fp32 it computes what diffusers' processor computes.
    """

    eps = 1e-15

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,  # [B, N, C]
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,  # unused, as in diffusers' processor
    ) -> Tensor:  # [B, N, C]
        dtype = hidden_states.dtype
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        batch, tokens, _ = query.shape

        def heads(x: Tensor) -> Tensor:  # [B, N, h*d] -> [B, h, N, d]
            return x.view(batch, x.shape[1], attn.heads, -1).transpose(1, 2)

        query, key, value = heads(F.relu(query)), heads(F.relu(key)), heads(value)
        with torch.autocast(query.device.type, enabled=False):
            query, key, value = query.float(), key.float(), value.float()
            summary = key.transpose(2, 3) @ value  # [B, h, d, d]: sum over tokens of k v^T
            normaliser = query @ key.sum(dim=2, keepdim=True).transpose(2, 3)  # [B, h, N, 1]
            out = (query @ summary) / (normaliser + self.eps)
        out = out.transpose(1, 2).reshape(batch, tokens, -1).to(dtype)
        return attn.to_out[1](attn.to_out[0](out))


def fence_linear_attention(model: nn.Module) -> None:
    """Swap diffusers' Sana linear-attention processors of `model` for `FencedLinearAttention`."""
    processors = model.attn_processors
    if any(type(p).__name__.startswith("SanaLinearAttnProcessor") for p in processors.values()):
        model.set_attn_processor(
            {
                name: FencedLinearAttention() if type(p).__name__.startswith("SanaLinearAttnProcessor") else p
                for name, p in processors.items()
            }
        )


def load_transformer_weights(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Copy `state` into `model`, refusing with every misfitting key named (shape or presence)."""
    own = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if wrong or missing or unexpected:
        parts = []
        if wrong:
            parts.append(f"shapes differ (checkpoint vs model): {', '.join(wrong)}")
        if missing:
            parts.append(f"missing: {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else ""))
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:8])}" + (" ..." if len(unexpected) > 8 else ""))
        raise UserError(
            f"{source}: weights do not fit the model of this recipe ({'; '.join(parts)}); "
            "keep the model keys (in_channels, heads, head_dim, num_layers, patch_size, ...) of the run it starts from"
        )
    model.load_state_dict(state)


# --- LoRA --------------------------------------------------------------------------------
@dataclass
class LoRAConfig:
    rank: int = option(16, ge=1, help="adapter rank r")
    alpha: float = option(16.0, gt=0.0, help="scale alpha (the update is alpha / r * B A)")
    targets: list[str] = option(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        help="module names the adapters wrap (default: the attention projections, self and cross)",
    )
    dropout: float = option(0.0, ge=0.0, lt=1.0, help="dropout on the adapter input")


class LoRATransformer(nn.Module):
    """A transformer with injected LoRA adapters whose registered parameters are the adapters
    only (see the module docstring); `forward` is the transformer's."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        object.__setattr__(self, "base", transformer)  # unregistered: not in state_dict / parameters
        self.adapters = nn.ModuleDict()
        for name, module in transformer.named_modules():
            for part in ("lora_A", "lora_B"):
                holder = getattr(module, part, None)
                if isinstance(holder, nn.ModuleDict) and len(holder):
                    self.adapters[f"{name.replace('.', '__')}__{part}"] = holder
        if not len(self.adapters):
            raise ConfigError(
                "key 'lora.targets': no module of the transformer matched; no adapter was added"
            )

    def __getattr__(self, name: str) -> Any:
        # registered modules first (nn.Module's lookup), then the transformer's own attributes
        # (config, dtype, device, peft_config), so callers can treat the wrapper as the model
        try:
            return super().__getattr__(name)
        except AttributeError:
            base = self.__dict__.get("base")
            if base is None:
                raise
            return getattr(base, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> LoRATransformer:
        self.base._apply(fn, recurse)  # the adapters are inside base: the same module objects
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> LoRATransformer:
        self.base.train(mode)
        return super().train(mode)


def apply_lora(transformer: nn.Module, cfg: LoRAConfig) -> LoRATransformer:
    """Freeze `transformer`, inject peft LoRA adapters on `cfg.targets`, wrap it."""
    try:
        from peft import LoraConfig  # optional: LoRA fine-tuning
    except ImportError as exc:
        raise MissingDependencyError("peft", "image", "LoRA fine-tuning (model.finetune: lora)") from exc
    transformer.requires_grad_(False)
    config = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        init_lora_weights="gaussian",
        target_modules=list(cfg.targets),
    )
    try:
        transformer.add_adapter(config)
    except ValueError as err:
        raise ConfigError(f"key 'lora.targets': {err}") from None
    for name, param in transformer.named_parameters():
        param.requires_grad_("lora_" in name)
    return LoRATransformer(transformer)


def lora_state_dict(model: LoRATransformer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(adapters in diffusers / peft naming without the adapter name, the LoraConfig as a dict:
    the metadata diffusers' loader reads for alpha and targets)."""
    from peft.utils import get_peft_model_state_dict  # optional: LoRA fine-tuning

    base = model.base
    state = {k: v.detach().float().cpu().contiguous() for k, v in get_peft_model_state_dict(base).items()}
    meta = base.peft_config["default"].to_dict()
    return state, meta


# --- text encoders -----------------------------------------------------------------------
@dataclass
class TextEncoderConfig:
    kind: Literal["builtin", "pretrained"] = option(
        "builtin", help="builtin: small word-level encoder; pretrained: local folder"
    )
    path: str = option("", help="pretrained: local transformers model folder (Sana: its text_encoder/)")
    tokenizer: str = option(
        "", help="pretrained: local tokenizer folder (default: path, or path/../tokenizer)"
    )
    max_length: int = option(32, ge=2, help="tokens per prompt, padded and truncated (Sana: 300)")
    width: int = option(64, ge=8, help="builtin: embedding width")
    layers: int = option(2, ge=0, help="builtin: transformer encoder layers (0: embeddings only)")
    heads: int = option(4, ge=1, help="builtin: attention heads")
    unk_buckets: int = option(64, ge=1, help="builtin: hashed rows for words outside the vocabulary")
    seed: int = option(0, ge=0, help="builtin: seed of the (frozen) initialisation")


_WORD = re.compile(r"[a-z0-9]+")
SPECIALS = ("<pad>", "<bos>")


def tokenize_words(text: str) -> list[str]:
    """The builtin encoder's words: lower-cased alphanumeric runs."""
    return _WORD.findall(text.lower())


class TextEncoder(nn.Module, abc.ABC):
    """`encode(prompts) -> (embeds [B, max_length, dim] float, mask [B, max_length] bool)`."""

    dim: int
    max_length: int
    _warned = False

    def _warn_truncated(self, count: int) -> None:
        if count and not self._warned:
            warnings.warn(
                f"{count} prompt(s) longer than the text encoder's {self.max_length} tokens were truncated",
                stacklevel=3,
            )
            self._warned = True

    @abc.abstractmethod
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]: ...


class BuiltinTextEncoder(TextEncoder):
    def __init__(self, cfg: TextEncoderConfig, vocabulary: list[str]):
        super().__init__()
        if cfg.width % cfg.heads:
            raise ConfigError(f"key 'text_encoder.heads': {cfg.heads} does not divide width {cfg.width}")
        self.cfg, self.dim, self.max_length = cfg, cfg.width, cfg.max_length
        self.vocabulary = list(SPECIALS) + [w for w in vocabulary if w not in SPECIALS]
        self.index = {w: i for i, w in enumerate(self.vocabulary)}
        rows = len(self.vocabulary) + cfg.unk_buckets
        with torch.random.fork_rng(devices=[]):  # seeded init that leaves the caller's RNG alone
            torch.manual_seed(cfg.seed)
            self.embed = nn.Embedding(rows, cfg.width)  # N(0, 1) rows: distinct words, distinct vectors
            self.position = nn.Parameter(0.1 * torch.randn(cfg.max_length, cfg.width))
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(
                    cfg.width, cfg.heads, 2 * cfg.width, dropout=0.0, batch_first=True, norm_first=True
                )
                for _ in range(cfg.layers)
            )
        self.norm = nn.LayerNorm(cfg.width)
        self.requires_grad_(False)
        self.eval()

    def ids(self, prompts: list[str]) -> tuple[Tensor, Tensor]:  # ([B, L] long, [B, L] bool)
        n_vocab, buckets = len(self.vocabulary), self.cfg.unk_buckets
        ids = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        truncated = 0
        for row, prompt in enumerate(prompts):
            words = tokenize_words(prompt)
            tokens = [self.index["<bos>"]] + [
                self.index.get(w, n_vocab + zlib.crc32(w.encode()) % buckets) for w in words
            ]
            truncated += len(tokens) > self.max_length
            tokens = tokens[: self.max_length]
            ids[row, : len(tokens)] = torch.tensor(tokens)
        self._warn_truncated(truncated)
        return ids, ids != 0

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        ids, mask = self.ids(prompts)
        device = self.embed.weight.device
        ids, mask = ids.to(device), mask.to(device)
        x = self.embed(ids) + self.position
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=~mask)
        return self.norm(x).float(), mask

    def save(self, folder: str | Path) -> None:
        """`folder/{text_encoder.json, vocabulary.json, model.safetensors}`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = {
            k: getattr(self.cfg, k) for k in ("max_length", "width", "layers", "heads", "unk_buckets", "seed")
        }
        (folder / "text_encoder.json").write_text(json.dumps({"kind": "builtin", **cfg}, indent=1))
        (folder / "vocabulary.json").write_text(json.dumps(self.vocabulary[len(SPECIALS) :]))
        save_file(
            {k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors")
        )


def load_builtin_text_encoder(folder: str | Path) -> BuiltinTextEncoder:
    """A builtin encoder saved with `BuiltinTextEncoder.save` (same vocabulary, same weights)."""
    folder = Path(folder)
    meta_path = folder / "text_encoder.json"
    if not meta_path.is_file():
        raise UserError(f"{folder}: no saved builtin text encoder ({meta_path.name} not found)")
    meta = json.loads(meta_path.read_text())
    meta.pop("kind", None)
    vocabulary = json.loads((folder / "vocabulary.json").read_text())
    if not isinstance(vocabulary, list) or not all(isinstance(w, str) for w in vocabulary):
        raise UserError(f"{folder / 'vocabulary.json'}: expected a list of words")
    encoder = BuiltinTextEncoder(TextEncoderConfig(kind="builtin", **meta), vocabulary)
    encoder.load_state_dict(load_file(str(folder / "model.safetensors")))
    return encoder


class PretrainedTextEncoder(TextEncoder):
    """A transformers encoder + tokenizer from local folders (see the module docstring)."""

    def __init__(self, cfg: TextEncoderConfig):
        super().__init__()
        try:
            from transformers import AutoModel, AutoTokenizer  # optional: pretrained text encoders
        except ImportError as exc:
            raise MissingDependencyError("transformers", "image", "A pretrained text encoder") from exc
        if not cfg.path:
            raise ConfigError("key 'text_encoder.path': set it to a local transformers model folder")
        model_dir = _local_folder(cfg.path, "transformers model")
        tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else model_dir
        if not cfg.tokenizer and not (tok_dir / "tokenizer_config.json").is_file():
            tok_dir = model_dir.parent / "tokenizer"  # the diffusers pipeline layout
        _local_folder(tok_dir, "tokenizer", "tokenizer_config.json")
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
        model = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        self._attach(tokenizer, model, cfg.max_length)
        self.cfg = cfg

    @classmethod
    def from_parts(cls, tokenizer: Any, model: nn.Module, *, max_length: int) -> PretrainedTextEncoder:
        """An encoder around an already loaded tokenizer and model (a diffusers Sana folder's)."""
        encoder = cls.__new__(cls)
        TextEncoder.__init__(encoder)
        encoder._attach(tokenizer, model, max_length)
        encoder.cfg = None
        return encoder

    def _attach(self, tokenizer: Any, model: nn.Module, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.max_length = max_length
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        texts = [p.lower().strip() for p in prompts]
        full = self.tokenizer(texts, padding=False, truncation=False)["input_ids"]
        self._warn_truncated(sum(len(ids) > self.max_length for ids in full))
        tokens = self.tokenizer(
            texts, max_length=self.max_length, padding="max_length", truncation=True, return_tensors="pt"
        )
        device = next(self.model.parameters()).device
        ids, mask = tokens["input_ids"].to(device), tokens["attention_mask"].to(device)
        embeds = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return embeds.float(), mask.bool()


def build_text_encoder(
    cfg: TextEncoderConfig, *, captions: Iterable[str] | None = None, folder: str | Path | None = None
) -> TextEncoder:
    """builtin: from a saved `folder`, else a new one with the vocabulary of `captions`
    (sorted, so the same captions give the same encoder); pretrained: from `cfg.path`."""
    if cfg.kind == "pretrained":
        return PretrainedTextEncoder(cfg)
    if folder is not None:
        return load_builtin_text_encoder(folder)
    words = sorted({w for caption in captions or () for w in tokenize_words(caption)})
    return BuiltinTextEncoder(cfg, words)
