"""``Decoder``: a small Llama-style language model built from ``attnkit.nn``.

``tokens -> embed -> [RMSNorm -> attention -> + -> RMSNorm -> SwiGLU -> +] x L -> RMSNorm ->
lm_head``. The attention of every layer is ``GroupedQueryAttention`` (MHA, GQA, MQA, sliding
window) or ``MultiHeadLatentAttention``, chosen by ``DecoderConfig.attention``. Without a cache
the forward is the full causal forward (training, scoring); with a cache it runs one step of
incremental decoding (prefill or new tokens): each layer writes its keys and values (or the MLA
latent) and attends over everything cached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.cache import LatentKVCache, PagedKVCache, PagedLatentKVCache, StaticKVCache
from attnkit.models.config import DecoderConfig
from attnkit.nn import GroupedQueryAttention, MultiHeadLatentAttention, RMSNorm, RotaryEmbedding
from attnkit.ops._checks import check_choice, check_int, check_tensor


class _Block(nn.Module):
    def __init__(self, config: DecoderConfig, index: int) -> None:
        super().__init__()
        c = config
        self.attn_norm = RMSNorm(c.hidden_size, eps=c.norm_eps)
        if c.attention == "mla":
            self.attn = MultiHeadLatentAttention(
                hidden_size=c.hidden_size, num_heads=c.num_heads, q_lora_rank=c.q_lora_rank,
                kv_lora_rank=c.kv_lora_rank, qk_nope_head_dim=c.qk_nope_head_dim,
                qk_rope_head_dim=c.qk_rope_head_dim, v_head_dim=c.v_head_dim,
                rope=RotaryEmbedding(c.qk_rope_head_dim, theta=c.rope_theta), layer_idx=index)
        else:
            self.attn = GroupedQueryAttention(
                hidden_size=c.hidden_size, num_heads=c.num_heads, num_kv_heads=c.num_kv_heads,
                head_dim=c.head_dim, window=c.window,
                rope=RotaryEmbedding(c.head_dim, theta=c.rope_theta), layer_idx=index)
        self.mlp_norm = RMSNorm(c.hidden_size, eps=c.norm_eps)
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cache) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cache=cache)  # [b, s, hidden]
        h = self.mlp_norm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Decoder(nn.Module):
    """A Llama-style decoder language model.

    Args:
        config: a ``DecoderConfig``.

    Raises:
        TypeError: config is not a DecoderConfig.

    Example:
        >>> import torch
        >>> from attnkit.models import Decoder, DecoderConfig
        >>> model = Decoder(DecoderConfig(vocab_size=50, hidden_size=32, num_layers=2,
        ...                               num_heads=4, num_kv_heads=2))
        >>> model(torch.randint(0, 50, (2, 7))).shape
        torch.Size([2, 7, 50])
    """

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        if not isinstance(config, DecoderConfig):
            raise TypeError(f"config must be a DecoderConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(_Block(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor, *, cache=None,
                seq_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Logits ``[b, s, vocab]`` of ``tokens [b, s]``.

        Without ``cache``: the full causal forward over ``tokens``. With ``cache`` (from
        ``make_cache``): ``tokens`` are the next ``s`` tokens of each sequence; the step is
        begun here (``cache.begin_step(s[, seq_ids])``), every layer writes its keys/values and
        attends over the whole cache. ``seq_ids`` picks the sequences of a paged cache.

        Raises:
            TypeError: tokens not an int tensor.
            ValueError: tokens not 2-D; seq_ids without a paged cache.
            CacheOverflowError: the cache cannot hold ``s`` more tokens (nothing written).
        """
        check_tensor("tokens", tokens)
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an int tensor, got {tokens.dtype}")
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [batch, seq], got shape {list(tokens.shape)}")
        if cache is not None:
            if isinstance(cache, PagedKVCache):
                cache.begin_step(tokens.shape[1], seq_ids)
            elif seq_ids is not None:
                raise ValueError("seq_ids applies to a PagedKVCache, got "
                                 f"{type(cache).__name__}")
            else:
                cache.begin_step(tokens.shape[1])
        x = self.embed(tokens)  # [b, s, hidden]
        for block in self.layers:
            x = block(x, cache)
        return self.lm_head(self.norm(x))  # [b, s, vocab]

    def make_cache(self, *, kind: str = "paged", batch: int = 1, max_seq: int = 256,
                   block_size: int = 16, num_blocks: int | None = None,
                   dtype: torch.dtype | None = None,
                   device: torch.device | str | None = None):
        """A KV cache for this model.

        GQA layers: ``"static"`` (``StaticKVCache [batch, max_seq]``) or ``"paged"``
        (``PagedKVCache``, ``num_blocks`` default enough for ``batch`` sequences of
        ``max_seq``; with a sliding window, pages out of the window are released). MLA layers
        cache the latent: ``"static"``/``"latent"`` (``LatentKVCache``) or ``"paged"``
        (``PagedLatentKVCache``).

        Raises:
            ValueError: unknown kind, or a kind the attention variant has no cache for.
        """
        check_choice("kind", kind, ["static", "paged", "latent"])
        for name, value in (("batch", batch), ("max_seq", max_seq), ("block_size", block_size)):
            check_int(name, value, minimum=1)
        c = self.config
        weight = self.embed.weight
        dtype = dtype or weight.dtype
        device = device or weight.device
        if num_blocks is None:
            num_blocks = batch * -(-max_seq // block_size)
        if c.attention == "mla":
            if kind == "paged":
                return PagedLatentKVCache(num_layers=c.num_layers, num_blocks=num_blocks,
                                          block_size=block_size, kv_lora_rank=c.kv_lora_rank,
                                          rope_dim=c.qk_rope_head_dim, dtype=dtype,
                                          device=device)
            return LatentKVCache(num_layers=c.num_layers, batch=batch, max_seq=max_seq,
                                 kv_lora_rank=c.kv_lora_rank, rope_dim=c.qk_rope_head_dim,
                                 dtype=dtype, device=device)
        if kind == "latent":
            raise ValueError("kind='latent' is the MLA cache; this model's attention is gqa")
        sizes = dict(num_layers=c.num_layers, kv_heads=c.num_kv_heads, head_dim=c.head_dim,
                     dtype=dtype, device=device)
        if kind == "static":
            return StaticKVCache(batch=batch, max_seq=max_seq, **sizes)
        return PagedKVCache(num_blocks=num_blocks, block_size=block_size, window=c.window,
                            **sizes)
