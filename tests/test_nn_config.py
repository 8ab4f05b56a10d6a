"""``AttentionConfig``, ``CausalSelfAttention`` and ``build_attention``."""

from __future__ import annotations

import pytest
import torch

from attnkit.nn import (
    AttentionConfig,
    CausalSelfAttention,
    GroupedQueryAttention,
    MultiHeadLatentAttention,
    build_attention,
)
from attnkit.ops.rope_scaling import LinearScaling, YarnScaling


def test_causal_self_attention_is_bias_free_gqa_with_rope():
    cfg = AttentionConfig(hidden_size=64, num_heads=8, num_kv_heads=2, head_dim=8,
                          rope_theta=500000.0)
    layer = CausalSelfAttention(cfg)
    assert cfg.kv_dim == 16
    assert set(layer.state_dict()) == {"q_proj.weight", "k_proj.weight", "v_proj.weight",
                                       "o_proj.weight"}
    assert layer.k_proj.weight.shape == (16, 64) and layer.causal
    assert layer.rope.theta == 500000.0 and layer.rope.head_dim == 8
    # the same function as the general layer with the same weights
    twin = build_attention("GroupedQueryAttention", {"hidden_size": 64, "num_heads": 8,
                                                     "num_kv_heads": 2,
                                                     "rope_theta": 500000.0})
    twin.load_state_dict(layer.state_dict(), strict=True)
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        assert torch.equal(layer(x), twin(x))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_heads=8, num_kv_heads=3), ValueError,
     r"AttentionConfig.num_heads \(8\) must be a multiple of num_kv_heads \(3\)"),
    (dict(num_heads=8, num_kv_heads=2, head_dim=0), ValueError,
     "AttentionConfig.head_dim must be >= 1"),
    (dict(num_heads=8, num_kv_heads=2, rope_theta=1.0), ValueError,
     "theta must be a finite number > 1"),
])
def test_attention_config_errors(kwargs, error, match):
    args = {"hidden_size": 64, "head_dim": 8, **kwargs}
    with pytest.raises(error, match=match):
        AttentionConfig(**args)


def test_causal_self_attention_needs_a_config():
    with pytest.raises(TypeError, match="config must be an AttentionConfig, got dict"):
        CausalSelfAttention({"hidden_size": 64})


def test_build_every_kind():
    gqa = build_attention("GroupedQueryAttention", {
        "hidden_size": 64, "num_heads": 4, "num_kv_heads": 1, "head_dim": 32, "causal": False,
        "qk_norm_eps": 1e-6, "qkv_bias": True, "rope_theta": 1e4, "rope_style": "interleaved",
        "rotary_dim": 16, "rope_scaling": {"rope_type": "linear", "factor": 2.0}})
    assert isinstance(gqa, GroupedQueryAttention) and not gqa.causal
    assert (gqa.head_dim, gqa.rope.rotary_dim, gqa.rope.style) == (32, 16, "interleaved")
    assert gqa.rope.scaling == LinearScaling(factor=2.0) and gqa.q_norm is not None
    assert build_attention("GroupedQueryAttention", {"hidden_size": 64, "num_heads": 4}).rope \
        is None  # no rope_theta: no RoPE (GPT-2 style)
    glob = build_attention("GlobalAttention", {"hidden_size": 64, "num_heads": 4,
                                               "num_kv_heads": 2, "rope_theta": 1e4})
    assert glob.causal and glob.window == (-1, -1)
    local = build_attention("LocalAttention", {"hidden_size": 64, "num_heads": 4,
                                               "window": 8})
    assert local.causal and local.window == (7, 0)
    csa = build_attention("CausalSelfAttention", {"hidden_size": 64, "num_heads": 4,
                                                  "num_kv_heads": 2, "head_dim": 16})
    assert isinstance(csa, CausalSelfAttention)
    mla = build_attention("MultiHeadLatentAttention", {
        "hidden_size": 64, "num_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 24,
        "qk_nope_head_dim": 12, "qk_rope_head_dim": 8, "v_head_dim": 10,
        "rope_style": "interleaved", "rope_scaling": {
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
            "mscale": 1.0, "mscale_all_dim": 1.0}})
    assert isinstance(mla, MultiHeadLatentAttention)
    assert isinstance(mla.rope.scaling, YarnScaling) and mla.rope.theta == 10000.0
    for layer in (gqa, glob, local, csa, mla):
        assert layer(torch.randn(1, 3, 64)).shape == (1, 3, 64)


@pytest.mark.parametrize("kind, attrs, error, match", [
    ("GroupedQueryAttention", {"hidden_size": 64}, ValueError,
     r"GroupedQueryAttention is missing required attributes \['num_heads'\]"),
    ("GroupedQueryAttention", {"hidden_size": 64, "num_heads": 4, "n_heads": 4}, ValueError,
     r"GroupedQueryAttention got unknown attributes \['n_heads'\] \(accepted: "),
    ("LocalAttention", {"hidden_size": 64, "num_heads": 4}, ValueError,
     r"LocalAttention is missing required attributes \['window'\]"),
    ("GlobalAttention", {"hidden_size": 64, "num_heads": 4, "window": 8}, ValueError,
     r"GlobalAttention got unknown attributes \['window'\]"),
    ("MultiHeadLatentAttention", {"hidden_size": 64, "num_heads": 4, "qk_nope_head_dim": 8,
                                  "qk_rope_head_dim": 8, "v_head_dim": 8}, ValueError,
     r"missing required attributes \['kv_lora_rank'\]"),
    ("GroupedQueryAttention", {"hidden_size": 64, "num_heads": 4, "rope_style": "half"},
     ValueError, r"RoPE keys \['rope_style'\] need rope_theta"),
    ("GroupedQueryAttention", {"hidden_size": 64, "num_heads": 5}, ValueError,
     r"hidden_size \(64\) must be divisible by num_heads \(5\)"),
    ("Attention", {}, ValueError, "kind must be one of 'GroupedQueryAttention'"),
    ("GroupedQueryAttention", [("hidden_size", 64)], TypeError,
     "attributes must be a mapping, got list"),
    ("GroupedQueryAttention", {"hidden_size": 64, "num_heads": 4, 3: 1}, TypeError,
     "attribute names must be strings, got 3"),
])
def test_builder_rejects_bad_attributes(kind, attrs, error, match):
    with pytest.raises(error, match=match):
        build_attention(kind, attrs)


def test_every_layer_builds_on_meta_then_materialises():
    from attnkit.nn import LowRankProjection, RMSNorm

    cfg = AttentionConfig(hidden_size=64, num_heads=8, num_kv_heads=2, head_dim=8)
    mla_attrs = {"hidden_size": 64, "num_heads": 4, "kv_lora_rank": 16, "q_lora_rank": 24,
                 "qk_nope_head_dim": 12, "qk_rope_head_dim": 8, "v_head_dim": 10}
    with torch.device("meta"):
        layers = [CausalSelfAttention(cfg), LowRankProjection(64, 8, 32), RMSNorm(64),
                  build_attention("LocalAttention", {"hidden_size": 64, "num_heads": 4,
                                                     "window": 4, "rope_theta": 1e4}),
                  build_attention("MultiHeadLatentAttention", mla_attrs)]
    x = torch.randn(1, 5, 64)
    for layer in layers:
        assert all(p.is_meta for p in layer.parameters())
        layer = layer.to_empty(device="cpu")
        layer.reset_parameters()
        out = layer(x)
        assert torch.isfinite(out).all() and not any(p.is_meta for p in layer.parameters())
