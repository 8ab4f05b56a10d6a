"""Hugging Face transformers integration.

Two directions:

- ``register()`` adds ``"attnkit"`` to transformers' ``AttentionInterface`` (and its mask
  interface), so a stock model built with ``attn_implementation="attnkit"`` runs every attention
  call through ``attnkit.attention``.
- ``rotary_from_hf_config`` / ``attention_from_hf_config`` build attnkit layers from a Hugging Face
  config, ready for ``load_state_dict(hf_attention.state_dict(), strict=True)``.

transformers is imported only by ``register()``; building layers from a config reads attributes.

Example:
    >>> from attnkit.integrations.transformers import register
    >>> register()                                          # doctest: +SKIP
    >>> from transformers import AutoModelForCausalLM       # doctest: +SKIP
    >>> model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="attnkit")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from attnkit.nn.gqa import GroupedQueryAttention
from attnkit.nn.mla import MultiHeadLatentAttention
from attnkit.nn.rotary import RotaryEmbedding
from attnkit.ops.attention import attention
from attnkit.ops.rope_scaling import scaling_from_hf

__all__ = [
    "attention_from_hf_config",
    "attnkit_attention_forward",
    "register",
    "rotary_from_hf_config",
]

NAME = "attnkit"
_UNSUPPORTED_KWARGS = {
    "s_aux": "attention sinks (s_aux, gpt-oss)",
    "position_bias": "additive position bias tensors (T5-style); fold them into attention_mask",
}


def attnkit_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """An attention function with transformers' ``AttentionInterface`` signature.

    Args:
        module: the calling attention module (its ``is_causal`` is read when ``is_causal`` is None).
        query: ``[b, hq, sq, d]`` (Hugging Face's layout; transposed views are passed on).
        key: ``[b, hk, sk, d]``; ``hq % hk == 0``, never repeated.
        value: ``[b, hk, sk, dv]``.
        attention_mask: None, or a 4-D mask ``[b, 1 or hq, sq, sk']`` (``sk' >= sk``, extra columns
            dropped) from transformers' mask builders: bool (True = attend) or float (added to
            the scores). It already holds causality, sliding windows, padding and packed
            documents, so nothing else is applied on top of it.
        dropout: attention-probability dropout (transformers passes 0.0 in eval mode).
        scaling: score scale (default ``d ** -0.5``).
        is_causal: causal when no mask is given (default ``module.is_causal``). As in
            transformers' SDPA path, a missing mask with ``sq > 1`` means top-left aligned
            causality (keys beyond ``sq`` are empty cache slots and are dropped); with
            ``sq == 1`` every key is visible.
        sliding_window: with no mask and causal attention, attend to the last N keys.
        softcap: Gemma 2's logit softcap (scores -> ``softcap * tanh(scores / softcap)``).
        kwargs: other keyword arguments transformers forwards (position ids, cache positions,
            ...); ignored, except features attnkit does not compute, which raise.

    Returns:
        ``(out, None)``: out ``[b, sq, hq, dv]`` in the query's dtype; no attention weights.

    Raises:
        ValueError: an unsupported feature was requested (attention sinks, position bias).
    """
    for name, what in _UNSUPPORTED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"attn_implementation='attnkit' does not support {what}; got "
                             f"{name}=<tensor>; use attn_implementation='eager' for this model")
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # [b, s, h, d]
    sq, sk = q.shape[1], k.shape[1]
    opts = dict(scale=scaling, softcap=float(softcap or 0.0), dropout_p=float(dropout))
    if attention_mask is not None:
        mask = attention_mask[..., :sk] if attention_mask.shape[-1] > sk else attention_mask
        out = attention(q, k, v, attn_mask=mask, **opts)  # [b, sq, hq, dv]
        return out, None
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    causal = causal and sq > 1
    window = (-1, -1)
    if causal:
        k, v = k[:, :sq], v[:, :sq]  # top-left alignment, as transformers' SDPA path
        if sliding_window:
            window = (int(sliding_window) - 1, 0)
    out = attention(q, k, v, causal=causal, window=window, **opts)  # [b, sq, hq, dv]
    return out, None


def register(name: str = NAME) -> str:
    """Register attnkit in transformers' attention and mask interfaces; returns the name.

    After this, ``attn_implementation=name`` (``from_pretrained``, ``from_config``,
    ``model.set_attn_implementation``) routes attention through ``attnkit.attention``. Masks are
    built as for SDPA (bool, True = attend, or None when plain causal/bidirectional suffices).
    Idempotent.

    Raises:
        ImportError: transformers is not installed.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(name, attnkit_attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    return name


def _rope_parameters(config: Any) -> dict[str, Any]:
    params = getattr(config, "rope_parameters", None)
    if params:
        return dict(params)
    legacy = dict(getattr(config, "rope_scaling", None) or {})
    legacy.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return legacy


def rotary_from_hf_config(config: Any, *, head_dim: int | None = None) -> RotaryEmbedding:
    """The ``RotaryEmbedding`` of a Hugging Face config (theta, scaling, partial rotary, style).

    Args:
        config: a transformers ``PretrainedConfig`` (Llama, Mistral, Qwen2/3, Gemma 2,
            DeepSeek-V3, ...).
        head_dim: the rotated head size (default: DeepSeek's ``qk_rope_head_dim``, else the
            config's ``head_dim`` or ``hidden_size // num_attention_heads``).

    Returns:
        A ``RotaryEmbedding``; ``style="interleaved"`` when the config sets ``rope_interleave``.

    Raises:
        ValueError: an unsupported ``rope_type``.
    """
    params = _rope_parameters(config)
    if head_dim is None:
        head_dim = getattr(config, "qk_rope_head_dim", None) or _head_dim(config)
    rotary_dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    scaling = scaling_from_hf(params, max_position_embeddings=getattr(
        config, "max_position_embeddings", None))
    style = "interleaved" if getattr(config, "rope_interleave", False) else "half"
    return RotaryEmbedding(head_dim, theta=float(params.get("rope_theta", 10000.0)),
                           rotary_dim=rotary_dim, style=style, scaling=scaling)


def _head_dim(config: Any) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _sliding_window(config: Any, layer_idx: int) -> int | None:
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if layer_types:
        return window if layer_types[layer_idx] == "sliding_attention" else None
    return window


def attention_from_hf_config(
    config: Any, *, layer_idx: int = 0, rope: RotaryEmbedding | None = None
) -> GroupedQueryAttention | MultiHeadLatentAttention:
    """The attnkit layer equivalent to layer ``layer_idx``'s self-attention of a Hugging Face model.

    Supported ``model_type``: ``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``gemma2`` (a
    ``GroupedQueryAttention``) and ``deepseek_v3`` (a ``MultiHeadLatentAttention``). The result
    loads the Hugging Face module's ``state_dict`` with ``strict=True``.

    Args:
        config: the model's transformers config.
        layer_idx: which layer (sliding-window layers differ from global ones).
        rope: a RotaryEmbedding to share between layers (default: built from the config).

    Returns:
        The layer, in float32 on the default device.

    Raises:
        ValueError: an unsupported ``model_type``.

    >>> from transformers import Qwen3Config                              # doctest: +SKIP
    >>> cfg = Qwen3Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
    ...                   head_dim=16)                                    # doctest: +SKIP
    >>> attention_from_hf_config(cfg).q_norm is not None                  # doctest: +SKIP
    True
    """
    kind = getattr(config, "model_type", None)
    rope = rope if rope is not None else rotary_from_hf_config(config)
    dropout = float(getattr(config, "attention_dropout", 0.0) or 0.0)
    if kind == "deepseek_v3":
        return MultiHeadLatentAttention(
            hidden_size=config.hidden_size, num_heads=config.num_attention_heads,
            q_lora_rank=config.q_lora_rank, kv_lora_rank=config.kv_lora_rank,
            qk_nope_head_dim=config.qk_nope_head_dim, qk_rope_head_dim=config.qk_rope_head_dim,
            v_head_dim=config.v_head_dim, rope=rope, causal=True,
            bias=bool(config.attention_bias), dropout=dropout)
    common = dict(hidden_size=config.hidden_size, num_heads=config.num_attention_heads,
                  num_kv_heads=config.num_key_value_heads, head_dim=_head_dim(config),
                  rope=rope, dropout=dropout, window=_sliding_window(config, layer_idx))
    bias = bool(getattr(config, "attention_bias", False))
    if kind in ("llama", "mistral"):
        return GroupedQueryAttention(**common, qkv_bias=bias, out_bias=bias)
    if kind == "qwen2":
        return GroupedQueryAttention(**common, qkv_bias=True, out_bias=False)
    if kind == "qwen3":
        return GroupedQueryAttention(**common, qkv_bias=bias, out_bias=bias,
                                     qk_norm_eps=config.rms_norm_eps)
    if kind == "gemma2":
        return GroupedQueryAttention(**common, qkv_bias=bias, out_bias=bias,
                                     scale=config.query_pre_attn_scalar ** -0.5,
                                     softcap=float(config.attn_logit_softcapping or 0.0))
    raise ValueError(f"config.model_type must be one of 'llama', 'mistral', 'qwen2', 'qwen3', "
                     f"'gemma2', 'deepseek_v3', got {kind!r}")
