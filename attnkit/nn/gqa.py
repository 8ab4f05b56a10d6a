"""``GroupedQueryAttention``: the dense attention layer of Llama, Mistral, Qwen, Gemma and BERT.

One module covers multi-head (``num_kv_heads == num_heads``), grouped-query and multi-query
(``num_kv_heads == 1``) attention; causal (decoder), bidirectional (encoder), sliding-window
(local) and cross-attention; optional RoPE, QK-norm, biases, softcap and dropout. Parameter names
follow Hugging Face (``q_proj, k_proj, v_proj, o_proj, q_norm, k_norm``) so a checkpoint's attention
weights load with ``load_state_dict(..., strict=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnkit.nn._inputs import (
    check_dropout,
    check_hidden,
    check_packed,
    check_rope,
    key_padding,
    resolve_heads,
    resolve_positions,
    resolve_window,
)
from attnkit.nn.norms import RMSNorm
from attnkit.nn.rotary import RotaryEmbedding
from attnkit.ops._checks import check_int, check_number, check_scale
from attnkit.ops.attention import attention
from attnkit.ops.decode import decode_attention
from attnkit.ops.rope_write import write_rotated

__all__ = ["GroupedQueryAttention"]


class GroupedQueryAttention(nn.Module):
    """Grouped-query attention with optional RoPE, QK-norm, sliding window and cross-attention.

    ``x -> q_proj, k_proj, v_proj -> (q_norm, k_norm) -> RoPE -> attnkit.attention -> o_proj``.
    Query head ``h`` reads KV head ``h // (num_heads // num_kv_heads)``; K/V are never repeated.

    Args:
        hidden_size: width of x and of the output.
        num_heads: query heads.
        num_kv_heads: key/value heads, dividing ``num_heads`` (default ``num_heads``: MHA; 1: MQA).
        head_dim: dims per head (default ``hidden_size // num_heads``; Gemma overrides it).
        causal: mask future keys (decoder). False for an encoder or cross-attention.
        window: local attention: an int ``N`` = the last ``N`` positions, query included (needs
            ``causal=True``; Mistral/Gemma ``sliding_window=N``), or a ``(left, right)`` pair in
            ``attnkit.attention``'s convention (``-1`` = unbounded). None = global.
        rope: a ``RotaryEmbedding`` with ``head_dim`` equal to this layer's, or None (no RoPE:
            GPT-2/BERT style). It may be shared between layers.
        qk_norm_eps: when given, per-head RMSNorm on q and k (``q_norm``, ``k_norm``, weight
            ``[head_dim]``) before RoPE, with this epsilon (Qwen3).
        qkv_bias: biases on q/k/v projections (Qwen2, BERT).
        out_bias: bias on the output projection (BERT).
        dropout: probability of dropping an attention probability, in training mode only.
        softcap: when > 0, scores become ``softcap * tanh(scores / softcap)`` (Gemma 2).
        scale: score scale (default ``head_dim ** -0.5``; Gemma 2: ``query_pre_attn_scalar ** -0.5``).
        kv_hidden_size: width of ``context`` for cross-attention (default ``hidden_size``).
        layer_idx: this layer's index in a KV cache (``forward(..., cache=)``).

    Raises:
        TypeError: an argument of the wrong type (e.g. rope not a RotaryEmbedding).
        ValueError: ``hidden_size`` not divisible by ``num_heads`` without ``head_dim``;
            ``num_heads`` not a multiple of ``num_kv_heads``; rope for another head dim; an int
            window without ``causal``; dropout outside [0, 1); negative softcap; scale <= 0.

    Example:
        >>> import torch
        >>> from attnkit.nn import GroupedQueryAttention, RotaryEmbedding
        >>> layer = GroupedQueryAttention(hidden_size=64, num_heads=8, num_kv_heads=2,
        ...                               rope=RotaryEmbedding(8, theta=10000.0))
        >>> layer(torch.randn(2, 5, 64)).shape
        torch.Size([2, 5, 64])
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        causal: bool = True,
        window: int | tuple[int, int] | None = None,
        rope: RotaryEmbedding | None = None,
        qk_norm_eps: float | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        dropout: float = 0.0,
        softcap: float = 0.0,
        scale: float | None = None,
        kv_hidden_size: int | None = None,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        if layer_idx is not None:
            check_int("layer_idx", layer_idx, minimum=0)
        self.layer_idx = layer_idx
        num_kv_heads, head_dim = resolve_heads(hidden_size, num_heads, num_kv_heads, head_dim)
        kv_hidden_size = hidden_size if kv_hidden_size is None else kv_hidden_size
        check_int("kv_hidden_size", kv_hidden_size, minimum=1)
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        for name, flag in (("qkv_bias", qkv_bias), ("out_bias", out_bias)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")

        self.hidden_size, self.kv_hidden_size = hidden_size, kv_hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.causal = causal
        self.window = resolve_window(window, causal)
        self.rope = check_rope(rope, head_dim, what="head_dim")
        self.dropout = check_dropout(dropout)
        self.softcap = check_number("softcap", softcap, minimum=0.0)
        scale = check_scale(scale, head_dim)
        self.scale = scale

        q_dim, kv_dim = num_heads * head_dim, num_kv_heads * head_dim
        self.q_proj: nn.Linear | None = nn.Linear(hidden_size, q_dim, bias=qkv_bias)
        self.k_proj: nn.Linear | None = nn.Linear(kv_hidden_size, kv_dim, bias=qkv_bias)
        self.v_proj: nn.Linear | None = nn.Linear(kv_hidden_size, kv_dim, bias=qkv_bias)
        self.qkv_proj: nn.Linear | None = None  # set by merge_qkv()
        self.o_proj = nn.Linear(q_dim, hidden_size, bias=out_bias)
        if qk_norm_eps is None:
            self.q_norm = self.k_norm = None
        else:
            self.q_norm = RMSNorm(head_dim, eps=qk_norm_eps)
            self.k_norm = RMSNorm(head_dim, eps=qk_norm_eps)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (PyTorch's Linear init, norms to ones) and RoPE tables.

        Use after building on the meta device and ``to_empty``:

        >>> with torch.device("meta"):
        ...     layer = GroupedQueryAttention(hidden_size=64, num_heads=4)
        >>> layer = layer.to_empty(device="cpu")
        >>> layer.reset_parameters()
        """
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.qkv_proj, self.o_proj):
            if proj is not None:
                proj.reset_parameters()
        for norm in (self.q_norm, self.k_norm):
            if norm is not None:
                norm.reset_parameters()
        if self.rope is not None:
            self.rope.reset_parameters()

    @torch.no_grad()
    def merge_qkv(self) -> GroupedQueryAttention:
        """Fuse ``q_proj``, ``k_proj``, ``v_proj`` into one ``qkv_proj`` (one GEMM instead of three).

        The merged weight is ``cat(q, k, v)`` along the output dim, so outputs are the same up to
        the GEMM's own rounding (bit-identical where the BLAS splits the output dim the same way).
        Afterwards the state_dict holds ``qkv_proj.*`` instead of the three projections. Needs
        ``kv_hidden_size == hidden_size``. Returns self.

        Raises:
            ValueError: already merged, or K/V read another width than queries.
        """
        if self.qkv_proj is not None:
            raise ValueError("merge_qkv: the projections are already merged into qkv_proj")
        if self.kv_hidden_size != self.hidden_size:
            raise ValueError(f"merge_qkv needs kv_hidden_size ({self.kv_hidden_size}) == "
                             f"hidden_size ({self.hidden_size}): K/V read another input width")
        parts = (self.q_proj, self.k_proj, self.v_proj)
        bias = parts[0].bias is not None
        merged = nn.Linear(self.hidden_size, sum(p.out_features for p in parts), bias=bias,
                           device=parts[0].weight.device, dtype=parts[0].weight.dtype)
        merged.weight.copy_(torch.cat([p.weight for p in parts], dim=0))
        if bias:
            merged.bias.copy_(torch.cat([p.bias for p in parts], dim=0))
        self.qkv_proj = merged
        self.q_proj = self.k_proj = self.v_proj = None
        return self

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        """Attend from ``x`` to itself (or to ``context``) and project back to ``hidden_size``.

        Args:
            x: ``[b, s, hidden_size]``; with ``cu_seqlens``, ``[1, total, hidden_size]``.
            positions: int RoPE positions ``[s]`` or ``[b, s]`` (default ``0 .. s-1``; with
                ``cu_seqlens``, restarting at 0 in each document). Only with ``rope``.
            attention_mask: key padding ``[b, s_k]``, bool or 0/1 ints, True/1 = keep
                (``s_k = s``, or ``s_ctx`` with ``context``).
            cu_seqlens: int32 ``[n_docs + 1]`` boundaries of documents packed along x's sequence:
                attention stays within each document (block-diagonal) and RoPE restarts.
            context: ``[b, s_ctx, kv_hidden_size]``: cross-attention (K/V from context; the layer
                must be non-causal and without RoPE).
            cache: an ``attnkit.cache`` KV cache (static or paged) on which ``begin_step(n)``
                was called for these ``n = s`` new tokens: their keys and values are written at
                layer ``layer_idx`` and x attends to everything cached through
                ``attnkit.decode_attention`` (positions default to the step's).

        Returns:
            ``[b, s, hidden_size]`` in x's dtype.

        Raises:
            TypeError: wrong types or dtypes.
            ValueError: wrong shapes; context given to a causal layer or to one with RoPE;
                positions without RoPE; cu_seqlens with attention_mask or context.
        """
        check_hidden("x", x, self.hidden_size)
        if cache is not None:
            return self._forward_cached(x, cache, positions, attention_mask, cu_seqlens, context)
        b, s, _ = x.shape
        kv_input = self._check_context(context, x)  # [b, s_k, kv_hidden]
        if cu_seqlens is not None:
            if attention_mask is not None or context is not None:
                raise ValueError("cu_seqlens cannot be combined with attention_mask or context: "
                                 "pack only the valid tokens of each document instead")
            check_packed(x, cu_seqlens)
        if positions is not None and self.rope is None:
            raise ValueError("positions were given but the layer has no rope (rope=None)")
        padding = key_padding(attention_mask, b, kv_input.shape[1], x.device)

        q, k, v = self._project(x, kv_input)  # [b, s, hq, d], [b, s_k, hk, d] x2
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            pos = resolve_positions(positions, b, s, x.device, cu_seqlens)  # [s] or [b, s]
            q, k = self.rope.rotate(q, pos), self.rope.rotate(k, pos)

        out = self._attend(q, k, v, padding, cu_seqlens)  # [b, s, hq, d]
        return self.o_proj(out.reshape(b, s, self.num_heads * self.head_dim))

    def _forward_cached(self, x, cache, positions, attention_mask, cu_seqlens, context):
        """Incremental decoding: write this step's K/V to ``cache``, attend over all of it."""
        if self.layer_idx is None:
            raise ValueError("cache was given but the layer has no layer_idx: build it with "
                             "layer_idx=<its index in the cache>")
        if attention_mask is not None or cu_seqlens is not None or context is not None:
            raise ValueError("cache cannot be combined with attention_mask, cu_seqlens or "
                             "context (ragged lengths live in the cache)")
        kept = getattr(cache, "window", None)  # a paged cache that releases old pages
        if kept is not None and not (self.causal and 0 <= self.window[0] < kept):
            raise ValueError(f"the cache keeps only the last {kept} tokens of each sequence, but "
                             f"this layer sees window={self.window} (causal={self.causal}); "
                             f"build the cache with window >= left + 1 or without a window")
        b, s, _ = x.shape
        q, k, v = self._project(x, x)  # [b, s, hq, d], [b, s, hk, d] x2
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            pos = cache.step_positions if positions is None else positions  # [b, s]
            if pos is None:
                raise ValueError("call cache.begin_step(n) before the layers of a step")
            q = self.rope.rotate(q, pos)
            cos, sin = self.rope(pos.expand(b, s) if pos.ndim == 1 else pos)  # [b, s, r/2]
            # RoPE on the keys fused with the cache write (one Triton pass on CUDA).
            write_rotated(cache, self.layer_idx, k, v, cos, sin, style=self.rope.style,
                          rotary_dim=self.rope.rotary_dim)
        else:
            cache.write(self.layer_idx, k, v)
        out = decode_attention(q, *cache.layer(self.layer_idx), **cache.decode_kwargs(),
                               causal=self.causal, window=self.window, softcap=self.softcap,
                               scale=self.scale)  # [b, s, hq, d]
        return self.o_proj(out.reshape(b, s, self.num_heads * self.head_dim))

    def _check_context(self, context: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
        if context is None:
            if self.kv_hidden_size != self.hidden_size:
                raise ValueError(f"this layer reads K/V from a context of width "
                                 f"{self.kv_hidden_size}: pass context=[b, s_ctx, "
                                 f"{self.kv_hidden_size}]")
            return x
        if self.causal:
            raise ValueError("context was given to a causal layer: cross-attention needs "
                             "causal=False")
        if self.rope is not None:
            raise ValueError("context was given to a layer with rope: cross-attention has no "
                             "shared positions; build it with rope=None")
        check_hidden("context", context, self.kv_hidden_size)
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"context must have x's batch size ({x.shape[0]}), got "
                             f"{context.shape[0]}")
        return context

    def _project(self, x: torch.Tensor, kv_input: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q ``[b, s, hq, d]``, k and v ``[b, s_k, hk, d]``."""
        hq, hk, d = self.num_heads, self.num_kv_heads, self.head_dim
        if self.qkv_proj is None:
            q, k, v = self.q_proj(x), self.k_proj(kv_input), self.v_proj(kv_input)
        elif kv_input is x:
            q, k, v = self.qkv_proj(x).split([hq * d, hk * d, hk * d], dim=-1)
        else:  # merged weights, cross-attention: each slice on its own input
            weights = self.qkv_proj.weight.split([hq * d, hk * d, hk * d], dim=0)
            biases = (self.qkv_proj.bias.split([hq * d, hk * d, hk * d]) if
                      self.qkv_proj.bias is not None else (None, None, None))
            q = F.linear(x, weights[0], biases[0])
            k = F.linear(kv_input, weights[1], biases[1])
            v = F.linear(kv_input, weights[2], biases[2])
        b, s, sk = x.shape[0], x.shape[1], kv_input.shape[1]
        return q.view(b, s, hq, d), k.view(b, sk, hk, d), v.view(b, sk, hk, d)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                padding: torch.Tensor | None, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        """``attnkit.attention`` with this layer's options; returns ``[b, s, hq, d]``."""
        opts = dict(causal=self.causal, window=self.window, scale=self.scale,
                    softcap=self.softcap, dropout_p=self.dropout if self.training else 0.0)
        if cu_seqlens is None:
            return attention(q, k, v, key_padding_mask=padding, **opts)
        out = attention(q[0], k[0], v[0], cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
                        **opts)  # [total, hq, d]
        return out[None]

    def extra_repr(self) -> str:
        parts = [f"hidden_size={self.hidden_size}", f"num_heads={self.num_heads}",
                 f"num_kv_heads={self.num_kv_heads}", f"head_dim={self.head_dim}",
                 f"causal={self.causal}"]
        if self.window != (-1, -1):
            parts.append(f"window={self.window}")
        if self.softcap:
            parts.append(f"softcap={self.softcap:g}")
        if self.dropout:
            parts.append(f"dropout={self.dropout:g}")
        if self.kv_hidden_size != self.hidden_size:
            parts.append(f"kv_hidden_size={self.kv_hidden_size}")
        return ", ".join(parts)
