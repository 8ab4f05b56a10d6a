"""``AttentionConfig`` and ``CausalSelfAttention``: the plain decoder attention in one config object.

Meganeura's shape: a bias-free causal self-attention with GQA and RoPE, described by a small
config. It is ``GroupedQueryAttention`` with those options fixed; everything else (positions,
padding masks, packed documents, merged QKV, late init) works the same.
"""

from __future__ import annotations

from dataclasses import dataclass

from attnkit.nn.gqa import GroupedQueryAttention
from attnkit.nn.rotary import RotaryEmbedding
from attnkit.ops._checks import check_int
from attnkit.ops.rope_scaling import check_theta

__all__ = ["AttentionConfig", "CausalSelfAttention"]


@dataclass(frozen=True)
class AttentionConfig:
    """Sizes of a causal GQA self-attention with RoPE.

    Attributes:
        hidden_size: model width (input/output of the layer; query and output projections).
        num_heads: query heads.
        num_kv_heads: key/value heads, dividing ``num_heads``.
        head_dim: dims per head.
        rope_theta: RoPE base (10000 standard, 500000 Llama 3).

    Raises:
        TypeError / ValueError: a size that is not an int >= 1, ``num_heads`` not a multiple of
            ``num_kv_heads``, ``rope_theta <= 1``.

    >>> AttentionConfig(hidden_size=64, num_heads=8, num_kv_heads=2, head_dim=8).kv_dim
    16
    """

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_heads", "num_kv_heads", "head_dim"):
            check_int(f"AttentionConfig.{name}", getattr(self, name), minimum=1)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"AttentionConfig.num_heads ({self.num_heads}) must be a multiple "
                             f"of num_kv_heads ({self.num_kv_heads})")
        object.__setattr__(self, "rope_theta", check_theta(self.rope_theta))

    @property
    def kv_dim(self) -> int:
        """Width of the key and value projections: ``num_kv_heads * head_dim``."""
        return self.num_kv_heads * self.head_dim


class CausalSelfAttention(GroupedQueryAttention):
    """Bias-free causal self-attention with GQA and RoPE, built from an ``AttentionConfig``.

    Parameters ``q_proj [hidden -> heads*head_dim]``, ``k_proj``/``v_proj [hidden -> kv_dim]``,
    ``o_proj [heads*head_dim -> hidden]``; RoPE (rotate-half) with ``config.rope_theta``. The
    forward is ``GroupedQueryAttention.forward`` (x ``[b, s, hidden]`` -> ``[b, s, hidden]``).

    Args:
        config: the sizes.

    Raises:
        TypeError: config is not an AttentionConfig.

    >>> import torch
    >>> cfg = AttentionConfig(hidden_size=64, num_heads=8, num_kv_heads=2, head_dim=8)
    >>> CausalSelfAttention(cfg)(torch.randn(1, 5, 64)).shape
    torch.Size([1, 5, 64])
    """

    def __init__(self, config: AttentionConfig) -> None:
        if not isinstance(config, AttentionConfig):
            raise TypeError(f"config must be an AttentionConfig, got {type(config).__name__}")
        super().__init__(hidden_size=config.hidden_size, num_heads=config.num_heads,
                         num_kv_heads=config.num_kv_heads, head_dim=config.head_dim,
                         causal=True, rope=RotaryEmbedding(config.head_dim,
                                                           theta=config.rope_theta))
        self.config = config
