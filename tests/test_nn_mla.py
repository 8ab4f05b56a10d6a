"""``MultiHeadLatentAttention`` against a functional float64 oracle; errors; late init."""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.nn import MultiHeadLatentAttention, RotaryEmbedding
from attnkit.nn.mla import yarn_softmax_scale
from attnkit.ops.rope_scaling import LinearScaling, YarnScaling
from tests.oracle import attention64, packed_attention64
from tests.test_nn_gqa import _randomise, _rms, _rotate
from tests.tolerance import assert_within_rule, max_error

HIDDEN = 64
DIMS = dict(hidden_size=HIDDEN, num_heads=4, kv_lora_rank=16, qk_nope_head_dim=12,
            qk_rope_head_dim=8, v_head_dim=10)


def _layer(seed=0, *, style="interleaved", **kw):
    torch.manual_seed(seed)
    layer = MultiHeadLatentAttention(**{**DIMS, "rope": RotaryEmbedding(8, style=style), **kw})
    _randomise(layer, seed)
    return layer.float()


def _oracle(layer, x, *, dtype, keep=None, cu=None, positions=None):
    p = {name: t.to(dtype) for name, t in layer.named_parameters()}

    def linear(name, inp):
        out = inp @ p[f"{name}.weight"].T
        return out + p[f"{name}.bias"] if f"{name}.bias" in p else out

    x = x.to(dtype)
    b, s, _ = x.shape
    h, nope, r, dv = layer.num_heads, layer.qk_nope_head_dim, layer.qk_rope_head_dim, \
        layer.v_head_dim
    if layer.q_lora_rank is None:
        q = linear("q_proj", x)
    else:
        q = linear("q_b_proj", _rms(linear("q_a_proj", x), p["q_a_layernorm.weight"],
                                    layer.q_a_layernorm.eps))
    q = q.view(b, s, h, nope + r)
    compressed = linear("kv_a_proj_with_mqa", x)
    latent = _rms(compressed[..., :layer.kv_lora_rank], p["kv_a_layernorm.weight"],
                  layer.kv_a_layernorm.eps)
    k_rope = compressed[..., layer.kv_lora_rank:].view(b, s, 1, r)
    if positions is None:
        positions = torch.arange(s)
    style, theta = layer.rope.style, layer.rope.theta
    q = torch.cat((q[..., :nope], _rotate(q[..., nope:], positions, theta=theta, style=style)),
                  dim=-1)
    k_rope = _rotate(k_rope, positions, theta=theta, style=style).expand(b, s, h, r)
    kv = linear("kv_b_proj", latent).view(b, s, h, nope + dv)
    k = torch.cat((kv[..., :nope], k_rope), dim=-1)  # [b, s, h, nope + r]
    v = kv[..., nope:]
    opts = dict(causal=layer.causal, scale=(nope + r) ** -0.5, dtype=dtype)
    if cu is None:
        out, _ = attention64(q, k, v, key_padding_mask=keep, **opts)
    else:
        out, _ = packed_attention64(q[0], k[0], v[0], cu, cu, **opts)
        out = out[None]
    return linear("o_proj", out.reshape(b, s, h * dv))


def _x(b, s, seed):
    return torch.randn(b, s, HIDDEN, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _check(layer, x, **kw):
    x32 = x.float().requires_grad_(True)
    x64 = x.double().requires_grad_(True)
    got = layer(x32, attention_mask=kw.get("keep"), cu_seqlens=kw.get("cu"),
                positions=kw.get("positions"))
    truth = _oracle(layer, x64, dtype=torch.float64, **kw)
    base = _oracle(layer, x32, dtype=torch.float32, **kw)
    rows = kw.get("keep") if kw.get("keep") is not None else slice(None)
    assert_within_rule("output", got[rows], truth[rows], base[rows], dtype=torch.float32)
    assert max_error(got, truth) > 0
    weight = torch.randn(got.shape, generator=torch.Generator().manual_seed(7),
                         dtype=torch.float64)
    params = dict(layer.named_parameters())
    g_got = torch.autograd.grad((got * weight.float()).sum(), [*params.values(), x32])
    g_base = torch.autograd.grad((base * weight.float()).sum(), [*params.values(), x32])
    g_truth = torch.autograd.grad((truth * weight).sum(), [*params.values(), x64])
    for name, a, c, t in zip([*params, "x"], g_got, g_base, g_truth):
        assert_within_rule(f"grad {name}", a, t, c, dtype=torch.float32)


@pytest.mark.parametrize("style", ["interleaved", "half"])
def test_low_rank_queries_with_padding(style):
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 6:] = False
    _check(_layer(q_lora_rank=24, style=style, bias=True), _x(2, 9, 1), keep=keep)


def test_direct_queries_with_positions():
    layer = _layer(1)
    assert layer.q_proj is not None and layer.q_a_proj is None
    _check(layer, _x(2, 7, 2), positions=torch.tensor([[5, 6, 7, 8, 9, 10, 11],
                                                       [0, 1, 2, 3, 4, 5, 6]]))


def test_encoder_mla():
    _check(_layer(2, q_lora_rank=24, causal=False), _x(2, 6, 3))


def test_packed_documents():
    cu = torch.tensor([0, 3, 10], dtype=torch.int32)
    positions = torch.tensor([0, 1, 2, 0, 1, 2, 3, 4, 5, 6])
    _check(_layer(3, q_lora_rank=24), _x(1, 10, 4), cu=cu, positions=positions)


def test_parameter_names_match_hugging_face():
    names = set(_layer(q_lora_rank=24, bias=True).state_dict())
    assert names == {"q_a_proj.weight", "q_a_proj.bias", "q_a_layernorm.weight",
                     "q_b_proj.weight", "kv_a_proj_with_mqa.weight", "kv_a_proj_with_mqa.bias",
                     "kv_a_layernorm.weight", "kv_b_proj.weight", "o_proj.weight",
                     "o_proj.bias"}
    assert set(_layer().state_dict()) == {"q_proj.weight", "kv_a_proj_with_mqa.weight",
                                          "kv_a_layernorm.weight", "kv_b_proj.weight",
                                          "o_proj.weight"}


def test_yarn_scale_enters_the_softmax_scale():
    yarn = YarnScaling(factor=40.0, original_max_positions=4096, mscale=1.0, mscale_all_dim=1.0)
    layer = MultiHeadLatentAttention(**DIMS, rope=RotaryEmbedding(8, scaling=yarn))
    m = 0.1 * math.log(40.0) + 1.0
    assert layer.scale == pytest.approx(20 ** -0.5 * m * m, rel=1e-12)
    assert yarn_softmax_scale(YarnScaling(factor=40.0, original_max_positions=4096)) == 1.0
    assert yarn_softmax_scale(LinearScaling(factor=2.0)) == 1.0
    assert yarn_softmax_scale(None) == 1.0
    explicit = MultiHeadLatentAttention(**DIMS, rope=RotaryEmbedding(8, scaling=yarn), scale=0.1)
    assert explicit.scale == 0.1


def test_meta_device_build_then_materialise():
    with torch.device("meta"):
        layer = MultiHeadLatentAttention(**DIMS, q_lora_rank=24,
                                         rope=RotaryEmbedding(8, style="interleaved"))
    layer = layer.to_empty(device="cpu")
    layer.reset_parameters()
    assert torch.equal(layer.kv_a_layernorm.weight, torch.ones(16))
    assert torch.equal(layer.rope.inv_freq, RotaryEmbedding(8).inv_freq)
    assert torch.isfinite(layer(_x(1, 4, 5).float())).all()


def test_dropout_only_in_training():
    layer = _layer(4, dropout=0.5)
    x = _x(1, 6, 6).float()
    with torch.no_grad():
        plain = layer.eval()(x)
        torch.manual_seed(1)
        dropped = layer.train()(x)
    assert max_error(dropped, plain) > 0.01


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kv_lora_rank=None), ValueError, "kv_lora_rank is required for MultiHeadLatentAttention"),
    (dict(qk_rope_head_dim=7, rope=RotaryEmbedding(8)), ValueError,
     r"qk_rope_head_dim must be even \(RoPE rotates pairs\), got 7"),
    (dict(rope=RotaryEmbedding(16)), ValueError,
     r"rope.head_dim \(16\) must equal the layer's qk_rope_head_dim \(8\)"),
    (dict(rope=RotaryEmbedding(8, rotary_dim=4)), ValueError,
     r"rope must rotate all of qk_rope_head_dim \(8\), got rotary_dim=4"),
    (dict(rope=None), ValueError, "rope is required for MultiHeadLatentAttention"),
    (dict(q_lora_rank=0), ValueError, "q_lora_rank must be >= 1, got 0"),
    (dict(v_head_dim=0), ValueError, "v_head_dim must be >= 1, got 0"),
    (dict(dropout=-0.1), ValueError, "dropout must be >= 0.0"),
    (dict(scale=-1.0), ValueError, "scale must be a positive finite number"),
    (dict(bias="yes"), TypeError, "bias must be a bool, got str"),
])
def test_invalid_configurations(kwargs, error, match):
    args = {**DIMS, "rope": RotaryEmbedding(8), **kwargs}
    with pytest.raises(error, match=match):
        MultiHeadLatentAttention(**args)


def test_invalid_inputs():
    layer = _layer()
    x = _x(2, 5, 8).float()
    with pytest.raises(ValueError, match=r"x must be \[batch, seq, 64\]"):
        layer(x[0])
    with pytest.raises(ValueError, match=r"attention_mask must be a key padding mask"):
        layer(x, attention_mask=torch.ones(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="cu_seqlens cannot be combined with attention_mask"):
        layer(x[:1], cu_seqlens=torch.tensor([0, 5], dtype=torch.int32),
              attention_mask=torch.ones(1, 5, dtype=torch.bool))
