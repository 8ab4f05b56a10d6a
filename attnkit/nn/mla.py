"""``MultiHeadLatentAttention``: DeepSeek-V2/V3's attention with a low-rank KV latent (MLA)."""

from __future__ import annotations

import math

import torch
from torch import nn

from attnkit.nn._inputs import (
    check_dropout,
    check_hidden,
    check_packed,
    check_rope,
    key_padding,
    resolve_positions,
)
from attnkit.nn.norms import RMSNorm
from attnkit.nn.rotary import RotaryEmbedding
from attnkit.ops._checks import check_int, check_scale
from attnkit.ops.attention import attention
from attnkit.ops.mla_decode import mla_decode_attention
from attnkit.ops.rope_scaling import YarnScaling

__all__ = ["MultiHeadLatentAttention", "yarn_softmax_scale"]


def yarn_softmax_scale(scaling: object) -> float:
    """The factor DeepSeek multiplies the softmax scale by under YaRN: ``m(factor, mscale_all_dim)^2``.

    ``m(s, a) = 0.1 * a * ln(s) + 1`` for ``s > 1``, else 1. It is 1.0 unless ``scaling`` is a
    ``YarnScaling`` with ``mscale_all_dim > 0`` (as in DeepSeek-V2/V3 configs). The cos/sin
    tables carry the other part of YaRN's scale (``RotaryEmbedding.attention_factor``).

    >>> round(yarn_softmax_scale(YarnScaling(factor=40.0, original_max_positions=4096,
    ...                                      mscale=1.0, mscale_all_dim=1.0)), 4)
    1.8739
    """
    if not isinstance(scaling, YarnScaling) or not scaling.mscale_all_dim or scaling.factor <= 1:
        return 1.0
    m = 0.1 * scaling.mscale_all_dim * math.log(scaling.factor) + 1.0
    return m * m


class MultiHeadLatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3), parameter names as Hugging Face's.

    Queries: ``q_proj(x)``, or with ``q_lora_rank`` the low-rank path
    ``q_b_proj(q_a_layernorm(q_a_proj(x)))``; each head is ``[nope | rope]`` dims.
    Keys/values: ``kv_a_proj_with_mqa(x)`` gives a latent ``[kv_lora_rank]`` plus one rope key
    ``[qk_rope_head_dim]`` shared by all heads; the latent goes through ``kv_a_layernorm`` and
    ``kv_b_proj`` to per-head ``[k_nope | v]``. RoPE (decoupled) rotates only the rope parts of q and
    of the shared key; each head's key is ``[k_nope | k_rope]``. Scores are scaled by
    ``(qk_nope_head_dim + qk_rope_head_dim) ** -0.5``, times ``yarn_softmax_scale(rope.scaling)``
    under YaRN with ``mscale_all_dim`` (DeepSeek-V3).

    Hugging Face's ``rope_interleave=True`` (DeepSeek's checkpoints) pairs dims ``(2i, 2i + 1)``:
    use ``RotaryEmbedding(..., style="interleaved")``. (Hugging Face writes the rotated pairs out
    de-interleaved; since q and k are permuted alike, the scores and outputs are the same.)

    Args:
        hidden_size: width of x and of the output.
        num_heads: attention heads.
        q_lora_rank: rank of the query path (``q_a_proj``/``q_a_layernorm``/``q_b_proj``), or
            None for a direct ``q_proj``.
        kv_lora_rank: rank of the KV latent (required).
        qk_nope_head_dim: per-head q/k dims without position (>= 1).
        qk_rope_head_dim: per-head q/k dims with RoPE (even, >= 2).
        v_head_dim: per-head value dims.
        rope: a ``RotaryEmbedding`` with ``head_dim == qk_rope_head_dim`` rotating all of it.
        causal: mask future keys.
        norm_eps: epsilon of ``q_a_layernorm`` and ``kv_a_layernorm``.
        bias: biases on ``q_a_proj``, ``kv_a_proj_with_mqa`` and ``o_proj`` (HF ``attention_bias``).
        dropout: attention-probability dropout in training mode.
        scale: explicit score scale (overrides the default above).
        layer_idx: this layer's index in a ``LatentKVCache`` (``forward(..., cache=)``).

    Raises:
        TypeError: arguments of the wrong type.
        ValueError: kv_lora_rank missing; odd qk_rope_head_dim; rope for another head dim or
            rotating only part of it; sizes < 1; dropout outside [0, 1); scale <= 0.

    Example:
        >>> import torch
        >>> from attnkit.nn import MultiHeadLatentAttention, RotaryEmbedding
        >>> mla = MultiHeadLatentAttention(hidden_size=64, num_heads=4, q_lora_rank=32,
        ...     kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16,
        ...     rope=RotaryEmbedding(8, style="interleaved"))
        >>> mla(torch.randn(2, 5, 64)).shape
        torch.Size([2, 5, 64])
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        q_lora_rank: int | None = None,
        kv_lora_rank: int | None = None,
        qk_nope_head_dim: int,
        qk_rope_head_dim: int,
        v_head_dim: int,
        rope: RotaryEmbedding,
        causal: bool = True,
        norm_eps: float = 1e-6,
        bias: bool = False,
        dropout: float = 0.0,
        scale: float | None = None,
        layer_idx: int | None = None,
    ) -> None:
        super().__init__()
        if layer_idx is not None:
            check_int("layer_idx", layer_idx, minimum=0)
        self.layer_idx = layer_idx
        check_int("hidden_size", hidden_size, minimum=1)
        check_int("num_heads", num_heads, minimum=1)
        if kv_lora_rank is None:
            raise ValueError("kv_lora_rank is required for MultiHeadLatentAttention (the rank of "
                             "the KV latent, e.g. 512 in DeepSeek-V3), got None")
        check_int("kv_lora_rank", kv_lora_rank, minimum=1)
        if q_lora_rank is not None:
            check_int("q_lora_rank", q_lora_rank, minimum=1)
        check_int("qk_nope_head_dim", qk_nope_head_dim, minimum=1)
        check_int("qk_rope_head_dim", qk_rope_head_dim, minimum=2)
        if qk_rope_head_dim % 2:
            raise ValueError(f"qk_rope_head_dim must be even (RoPE rotates pairs), got "
                             f"{qk_rope_head_dim}")
        check_int("v_head_dim", v_head_dim, minimum=1)
        if rope is None:
            raise ValueError("rope is required for MultiHeadLatentAttention: a RotaryEmbedding "
                             f"with head_dim={qk_rope_head_dim}, got None")
        rope = check_rope(rope, qk_rope_head_dim, what="qk_rope_head_dim")
        if rope.rotary_dim != rope.head_dim:
            raise ValueError(f"rope must rotate all of qk_rope_head_dim ({qk_rope_head_dim}), got "
                             f"rotary_dim={rope.rotary_dim}")
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be a bool, got {type(bias).__name__}")

        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.q_lora_rank, self.kv_lora_rank = q_lora_rank, kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim = qk_nope_head_dim, qk_rope_head_dim
        self.qk_head_dim = qk_nope_head_dim + qk_rope_head_dim
        self.v_head_dim = v_head_dim
        self.causal = causal
        self.rope = rope
        self.dropout = check_dropout(dropout)
        if scale is None:
            scale = self.qk_head_dim ** -0.5 * yarn_softmax_scale(rope.scaling)
        self.scale = check_scale(scale, self.qk_head_dim)

        q_out = num_heads * self.qk_head_dim
        if q_lora_rank is None:
            self.q_proj = nn.Linear(hidden_size, q_out, bias=False)
            self.q_a_proj = self.q_a_layernorm = self.q_b_proj = None
        else:
            self.q_proj = None
            self.q_a_proj = nn.Linear(hidden_size, q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(q_lora_rank, eps=norm_eps)
            self.q_b_proj = nn.Linear(q_lora_rank, q_out, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden_size, kv_lora_rank + qk_rope_head_dim,
                                            bias=bias)
        self.kv_a_layernorm = RMSNorm(kv_lora_rank, eps=norm_eps)
        self.kv_b_proj = nn.Linear(kv_lora_rank, num_heads * (qk_nope_head_dim + v_head_dim),
                                   bias=False)
        self.o_proj = nn.Linear(num_heads * v_head_dim, hidden_size, bias=bias)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (Linear init, norms to ones) and the RoPE tables."""
        for module in (self.q_proj, self.q_a_proj, self.q_a_layernorm, self.q_b_proj,
                       self.kv_a_proj_with_mqa, self.kv_a_layernorm, self.kv_b_proj, self.o_proj,
                       self.rope):
            if module is not None:
                module.reset_parameters()

    def forward(
        self,
        x: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cu_seqlens: torch.Tensor | None = None,
        cache=None,
    ) -> torch.Tensor:
        """Latent attention over ``x``.

        Args:
            x: ``[b, s, hidden_size]``; with ``cu_seqlens``, ``[1, total, hidden_size]``.
            positions: int RoPE positions ``[s]`` or ``[b, s]`` (default ``0 .. s-1``; with
                ``cu_seqlens``, restarting in each document).
            attention_mask: key padding ``[b, s]``, bool or 0/1 ints, True/1 = keep.
            cu_seqlens: int32 ``[n_docs + 1]``: documents packed along x's sequence.
            cache: an ``attnkit.cache.LatentKVCache`` on which ``begin_step(n)`` was called:
                the step's latent and rope key are written at layer ``layer_idx`` and the
                queries attend in latent space with the absorbed weights
                (``attnkit.mla_decode_attention``); per-head K/V are never formed.

        Returns:
            ``[b, s, hidden_size]`` in x's dtype.

        Raises:
            TypeError / ValueError: wrong types or shapes; cu_seqlens with attention_mask.
        """
        check_hidden("x", x, self.hidden_size)
        if cache is not None:
            return self._forward_cached(x, cache, positions, attention_mask, cu_seqlens)
        b, s, _ = x.shape
        if cu_seqlens is not None:
            if attention_mask is not None:
                raise ValueError("cu_seqlens cannot be combined with attention_mask: pack only "
                                 "the valid tokens of each document instead")
            check_packed(x, cu_seqlens)
        padding = key_padding(attention_mask, b, s, x.device)
        h, nope, rdim = self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim

        q = self._queries(x).view(b, s, h, self.qk_head_dim)  # [b, s, h, nope + r]
        q_nope, q_rot = q.split([nope, rdim], dim=-1)
        latent, k_rot = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, rdim], dim=-1)
        latent = self.kv_a_layernorm(latent)  # [b, s, kv_lora_rank]
        pos = resolve_positions(positions, b, s, x.device, cu_seqlens)  # [s] or [b, s]
        q_rot = self.rope.rotate(q_rot, pos)  # [b, s, h, r]
        k_rot = self.rope.rotate(k_rot.view(b, s, 1, rdim), pos)  # [b, s, 1, r], shared

        k, v = self._expand(latent, k_rot)  # [b, s_k, h, nope + r], [b, s_k, h, dv]
        q = torch.cat((q_nope, q_rot), dim=-1)  # [b, s, h, nope + r]
        out = self._attend(q, k, v, padding, cu_seqlens)  # [b, s, h, dv]
        return self.o_proj(out.reshape(b, s, h * self.v_head_dim))

    def _forward_cached(self, x, cache, positions, attention_mask, cu_seqlens):
        """Absorbed-weight decoding over a latent cache.

        ``q_latent[h] = q_nope[h] @ W_uk[h]`` (``[b, n, h, kv_lora_rank]``), attention against
        the cached ``[latent, rope_key]`` with the latent as value, then ``out[h] @ W_uv[h]^T``.
        """
        if self.layer_idx is None:
            raise ValueError("cache was given but the layer has no layer_idx: build it with "
                             "layer_idx=<its index in the cache>")
        if attention_mask is not None or cu_seqlens is not None:
            raise ValueError("cache cannot be combined with attention_mask or cu_seqlens")
        b, s, _ = x.shape
        h, nope, rdim = self.num_heads, self.qk_nope_head_dim, self.qk_rope_head_dim
        pos = cache.step_positions if positions is None else positions  # [b, s]
        if pos is None:
            raise ValueError("call cache.begin_step(n) before the layers of a step")
        q = self._queries(x).view(b, s, h, self.qk_head_dim)
        q_nope, q_rot = q.split([nope, rdim], dim=-1)  # [b, s, h, nope], [b, s, h, r]
        latent, k_rot = self.kv_a_proj_with_mqa(x).split([self.kv_lora_rank, rdim], dim=-1)
        latent = self.kv_a_layernorm(latent)  # [b, s, kv_lora_rank]
        q_rot = self.rope.rotate(q_rot, pos)
        k_rot = self.rope.rotate(k_rot.view(b, s, 1, rdim), pos).view(b, s, rdim)
        cache.write(self.layer_idx, latent, k_rot)
        w = self.kv_b_proj.weight.view(h, nope + self.v_head_dim, self.kv_lora_rank)
        w_uk, w_uv = w[:, :nope], w[:, nope:]  # [h, nope, c], [h, dv, c]
        q_latent = torch.einsum("bshn,hnc->bshc", q_nope, w_uk)  # [b, s, h, c]
        out = mla_decode_attention(q_latent, q_rot, *cache.layer(self.layer_idx),
                                   **cache.decode_kwargs(), causal=self.causal,
                                   scale=self.scale)  # [b, s, h, c]
        out = torch.einsum("bshc,hvc->bshv", out, w_uv)  # [b, s, h, dv]
        return self.o_proj(out.reshape(b, s, h * self.v_head_dim))

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, s, h * (nope + r)]`` from the direct or the low-rank query path."""
        if self.q_proj is not None:
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))

    def _expand(self, latent: torch.Tensor, k_rot: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys and values from the normalised latent and the rotated shared rope key.

        latent ``[b, s_k, kv_lora_rank]``, k_rot ``[b, s_k, 1, r]`` -> k ``[b, s_k, h, nope + r]``,
        v ``[b, s_k, h, dv]``.
        """
        b, sk, _ = latent.shape
        h = self.num_heads
        kv = self.kv_b_proj(latent).view(b, sk, h, self.qk_nope_head_dim + self.v_head_dim)
        k_nope, v = kv.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        k = torch.cat((k_nope, k_rot.expand(b, sk, h, self.qk_rope_head_dim)), dim=-1)
        return k, v

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                padding: torch.Tensor | None, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        opts = dict(causal=self.causal, scale=self.scale,
                    dropout_p=self.dropout if self.training else 0.0)
        if cu_seqlens is None:
            return attention(q, k, v, key_padding_mask=padding, **opts)
        return attention(q[0], k[0], v[0], cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens,
                         **opts)[None]

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, "
                f"q_lora_rank={self.q_lora_rank}, kv_lora_rank={self.kv_lora_rank}, "
                f"qk_nope_head_dim={self.qk_nope_head_dim}, "
                f"qk_rope_head_dim={self.qk_rope_head_dim}, v_head_dim={self.v_head_dim}, "
                f"causal={self.causal}")
