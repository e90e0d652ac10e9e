"""Neural-network primitives shared by the model families (see each module's docstring)."""

from voxforge.nn.attention import VarLen, attention, flash_attn_available, key_padding_mask, varlen_attention
from voxforge.nn.embeddings import TimestepEmbedder, sincos_position_embedding, timestep_embedding
from voxforge.nn.norms import GroupNorm32, LayerNorm32, MultiHeadRMSNorm, RMSNorm
from voxforge.nn.rope import RopeFreqs, RotaryEmbedding, apply_rope, grid_coords
from voxforge.nn.shuffle import pixel_shuffle_3d, pixel_unshuffle_3d
from voxforge.nn.transformer import MLP, CrossAttention, DiTBlock, SelfAttention, TransformerBlock, modulate

__all__ = [
    "MLP",
    "CrossAttention",
    "DiTBlock",
    "GroupNorm32",
    "LayerNorm32",
    "MultiHeadRMSNorm",
    "RMSNorm",
    "RopeFreqs",
    "RotaryEmbedding",
    "SelfAttention",
    "TimestepEmbedder",
    "TransformerBlock",
    "VarLen",
    "apply_rope",
    "attention",
    "flash_attn_available",
    "grid_coords",
    "key_padding_mask",
    "modulate",
    "pixel_shuffle_3d",
    "pixel_unshuffle_3d",
    "sincos_position_embedding",
    "timestep_embedding",
    "varlen_attention",
]
