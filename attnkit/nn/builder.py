"""``build_attention``: make an attention layer from a kind and an attribute mapping.

For model builders that read layers from a config file (zerfoo's ``Build*`` functions): the
attributes are the layer's constructor arguments, plus RoPE keys turned into a
``RotaryEmbedding``. Unknown or missing keys raise, naming them and the accepted ones.

Kinds and their keys (``*`` = required):

- ``GroupedQueryAttention``: ``hidden_size*``, ``num_heads*``, ``num_kv_heads``, ``head_dim``,
  ``causal``, ``window``, ``qk_norm_eps``, ``qkv_bias``, ``out_bias``, ``dropout``, ``softcap``,
  ``scale``, ``kv_hidden_size`` and the RoPE keys.
- ``GlobalAttention``: causal GQA over the whole context: the GQA keys except ``causal`` and
  ``window``.
- ``LocalAttention``: causal GQA over the last ``window*`` positions.
- ``CausalSelfAttention``: ``hidden_size*``, ``num_heads*``, ``num_kv_heads*``, ``head_dim*``,
  ``rope_theta``.
- ``MultiHeadLatentAttention``: ``hidden_size*``, ``num_heads*``, ``kv_lora_rank*``,
  ``qk_nope_head_dim*``, ``qk_rope_head_dim*``, ``v_head_dim*``, ``q_lora_rank``, ``causal``,
  ``norm_eps``, ``bias``, ``dropout``, ``scale`` and the RoPE keys (RoPE always on).

RoPE keys: ``rope_theta`` (GQA kinds: RoPE is on exactly when it is given), ``rope_style``
(``"half"``/``"interleaved"``), ``rotary_dim``, ``rope_scaling`` (a Hugging Face
``rope_scaling`` dict, read by ``scaling_from_hf``), ``max_positions``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from attnkit.nn.config import AttentionConfig, CausalSelfAttention
from attnkit.nn.gqa import GroupedQueryAttention
from attnkit.nn.mla import MultiHeadLatentAttention
from attnkit.nn.rotary import RotaryEmbedding
from attnkit.ops.rope_scaling import scaling_from_hf

__all__ = ["build_attention", "KINDS"]

_ROPE_KEYS = ("rope_theta", "rope_style", "rotary_dim", "rope_scaling", "max_positions")
_GQA_OPTIONAL = ("num_kv_heads", "head_dim", "causal", "window", "qk_norm_eps", "qkv_bias",
                 "out_bias", "dropout", "softcap", "scale", "kv_hidden_size", *_ROPE_KEYS)


def _rope(attrs: dict[str, Any], head_dim: int, *, required: bool) -> RotaryEmbedding | None:
    if not required and "rope_theta" not in attrs:
        extra = [k for k in _ROPE_KEYS if k in attrs]
        if extra:
            raise ValueError(f"RoPE keys {extra} need rope_theta (RoPE is on only when "
                             "rope_theta is given)")
        return None
    scaling = scaling_from_hf(attrs.pop("rope_scaling", None),
                              max_position_embeddings=attrs.get("max_positions"))
    return RotaryEmbedding(head_dim, theta=attrs.pop("rope_theta", 10000.0),
                           style=attrs.pop("rope_style", "half"),
                           rotary_dim=attrs.pop("rotary_dim", None), scaling=scaling,
                           max_positions=attrs.pop("max_positions", None))


def _gqa(attrs: dict[str, Any], **fixed: Any) -> GroupedQueryAttention:
    rope_attrs = {k: attrs.pop(k) for k in _ROPE_KEYS if k in attrs}
    layer = GroupedQueryAttention(**attrs, **fixed)  # validates the sizes first
    layer.rope = _rope(rope_attrs, layer.head_dim, required=False)
    return layer


def _causal_gqa(attrs: dict[str, Any]) -> GroupedQueryAttention:
    return _gqa(attrs, causal=True)


def _causal_self(attrs: dict[str, Any]) -> CausalSelfAttention:
    return CausalSelfAttention(AttentionConfig(**attrs))


def _mla(attrs: dict[str, Any]) -> MultiHeadLatentAttention:
    rope = _rope(attrs, attrs["qk_rope_head_dim"], required=True)
    return MultiHeadLatentAttention(**attrs, rope=rope)


# kind -> (factory, required keys, optional keys)
KINDS: dict[str, tuple[Callable[[dict[str, Any]], nn.Module], tuple[str, ...], tuple[str, ...]]] = {
    "GroupedQueryAttention": (_gqa, ("hidden_size", "num_heads"), _GQA_OPTIONAL),
    "GlobalAttention": (_causal_gqa, ("hidden_size", "num_heads"),
                        tuple(k for k in _GQA_OPTIONAL if k not in ("causal", "window"))),
    "LocalAttention": (_causal_gqa, ("hidden_size", "num_heads", "window"),
                       tuple(k for k in _GQA_OPTIONAL if k not in ("causal", "window"))),
    "CausalSelfAttention": (_causal_self, ("hidden_size", "num_heads", "num_kv_heads",
                                           "head_dim"), ("rope_theta",)),
    "MultiHeadLatentAttention": (_mla, ("hidden_size", "num_heads", "kv_lora_rank",
                                        "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"),
                                 ("q_lora_rank", "causal", "norm_eps", "bias", "dropout",
                                  "scale", *_ROPE_KEYS)),
}


def build_attention(kind: str, attributes: Mapping[str, Any]) -> nn.Module:
    """Build the attention layer ``kind`` from ``attributes`` (e.g. parsed from a config file).

    Args:
        kind: one of ``KINDS`` (see the module docstring for each kind's keys).
        attributes: a mapping from attribute name to value.

    Returns:
        The layer, freshly initialised.

    Raises:
        TypeError: ``attributes`` is not a mapping, a key is not a string, or a value has the
            wrong type (raised by the layer).
        ValueError: unknown ``kind``; missing or unknown keys (named, with the accepted ones);
            an invalid value (raised by the layer).

    >>> layer = build_attention("LocalAttention", {"hidden_size": 64, "num_heads": 8,
    ...                                            "num_kv_heads": 2, "window": 16,
    ...                                            "rope_theta": 10000.0})
    >>> layer.window, layer.causal
    ((15, 0), True)
    """
    if kind not in KINDS:
        listed = ", ".join(repr(k) for k in KINDS)
        raise ValueError(f"kind must be one of {listed}, got {kind!r}")
    if not isinstance(attributes, Mapping):
        raise TypeError(f"attributes must be a mapping, got {type(attributes).__name__}")
    for key in attributes:
        if not isinstance(key, str):
            raise TypeError(f"attribute names must be strings, got {key!r}")
    factory, required, optional = KINDS[kind]
    missing = [k for k in required if k not in attributes]
    if missing:
        raise ValueError(f"{kind} is missing required attributes {missing} (required: "
                         f"{list(required)})")
    unknown = sorted(k for k in attributes if k not in required and k not in optional)
    if unknown:
        raise ValueError(f"{kind} got unknown attributes {unknown} (accepted: "
                         f"{sorted((*required, *optional))})")
    return factory(dict(attributes))
