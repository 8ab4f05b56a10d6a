"""Layers built on ``attnkit.ops``."""

from attnkit.nn.builder import build_attention
from attnkit.nn.config import AttentionConfig, CausalSelfAttention
from attnkit.nn.gqa import GroupedQueryAttention
from attnkit.nn.mla import MultiHeadLatentAttention
from attnkit.nn.norms import RMSNorm
from attnkit.nn.nsa import NativeSparseAttention
from attnkit.nn.projections import LowRankProjection
from attnkit.nn.rotary import RotaryEmbedding
from attnkit.nn.routed import SparseRoutedAttention

__all__ = [
    "RotaryEmbedding",
    "GroupedQueryAttention",
    "MultiHeadLatentAttention",
    "RMSNorm",
    "LowRankProjection",
    "AttentionConfig",
    "CausalSelfAttention",
    "build_attention",
    "NativeSparseAttention",
    "SparseRoutedAttention",
]
