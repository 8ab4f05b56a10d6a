"""``DecoderConfig``: the sizes and the attention variant of attnkit's small Llama-style decoder."""

from __future__ import annotations

from dataclasses import dataclass

from attnkit.ops._checks import check_choice, check_int

ATTENTIONS = ("gqa", "mla")


@dataclass(frozen=True)
class DecoderConfig:
    """A Llama-style decoder: RMSNorm, attention, RMSNorm, SwiGLU MLP per layer.

    Attributes:
        vocab_size, hidden_size, num_layers, intermediate_size: sizes.
        attention: ``"gqa"`` (grouped-query, MHA/MQA by head counts) or ``"mla"`` (latent).
        num_heads, num_kv_heads, head_dim: GQA heads (``num_kv_heads`` also unused for MLA).
        window: sliding window of every GQA layer (the last ``window`` tokens), None = global.
        kv_lora_rank, q_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim: MLA sizes.
        rope_theta: RoPE base. norm_eps: RMSNorm epsilon.

    Raises:
        TypeError, ValueError: sizes not ints >= 1, unknown attention, heads not divisible,
            a window with MLA.

    >>> DecoderConfig(vocab_size=100, hidden_size=64, num_layers=2, num_heads=4,
    ...               num_kv_heads=2).head_dim
    16
    """

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    attention: str = "gqa"
    window: int | None = None
    kv_lora_rank: int = 32
    q_lora_rank: int | None = None
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads"):
            check_int(f"DecoderConfig.{name}", getattr(self, name), minimum=1)
        check_choice("DecoderConfig.attention", self.attention, ATTENTIONS)
        kv = self.num_heads if self.num_kv_heads is None else self.num_kv_heads
        check_int("DecoderConfig.num_kv_heads", kv, minimum=1)
        if self.num_heads % kv:
            raise ValueError(f"DecoderConfig.num_heads ({self.num_heads}) must be a multiple of "
                             f"num_kv_heads ({kv})")
        object.__setattr__(self, "num_kv_heads", kv)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        check_int("DecoderConfig.head_dim", self.head_dim, minimum=1)
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 4 * self.hidden_size)
        if self.window is not None:
            check_int("DecoderConfig.window", self.window, minimum=1)
            if self.attention != "gqa":
                raise ValueError(f"DecoderConfig.window applies to gqa attention, got attention="
                                 f"{self.attention!r}")
