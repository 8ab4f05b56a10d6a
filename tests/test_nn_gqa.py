"""``GroupedQueryAttention`` against a functional float64 oracle: outputs and every gradient.

The oracle recomputes the layer from its parameters with plain matmuls, its own RMSNorm and RoPE
(complex rotation) and ``tests/oracle.py``'s attention, in float64 (truth) and in float32 (the
baseline of the tolerance rule).
"""

from __future__ import annotations

import math

import pytest
import torch

from attnkit.nn import GroupedQueryAttention, RotaryEmbedding
from tests.oracle import attention64, packed_attention64
from tests.tolerance import assert_within_rule, max_error

HIDDEN = 64


def _rms(x, w, eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rotate(x, positions, *, theta, style):
    """RoPE as a complex rotation; x ``[b, s, h, d]``, positions ``[s]`` or ``[b, s]``."""
    d = x.shape[-1]
    freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # [d/2]
    pos = positions.to(torch.float64)
    pos = pos[None] if pos.ndim == 1 else pos  # [1 or b, s]
    angles = (pos[..., None] * freq)[:, :, None, :]  # [1 or b, s, 1, d/2]
    turn = torch.polar(torch.ones_like(angles), angles).to(x.device)
    dtype = x.dtype
    if dtype != torch.float64:  # complex math needs float32 at least (as attnkit's RoPE)
        x, turn = x.float(), turn.to(torch.complex64)
    if style == "interleaved":  # pairs (2i, 2i + 1)
        pairs = torch.view_as_complex(x.unflatten(-1, (d // 2, 2)).contiguous())
        return torch.view_as_real(pairs * turn).flatten(-2).to(dtype)
    pairs = torch.complex(x[..., : d // 2], x[..., d // 2:])  # pairs (i, i + d/2)
    rotated = pairs * turn
    return torch.cat((rotated.real, rotated.imag), dim=-1).to(dtype)


def _oracle(layer: GroupedQueryAttention, x, *, dtype, positions=None, keep=None, context=None,
            cu=None):
    """The layer's function in ``dtype`` from its parameters (autograd-enabled)."""
    p = {name: t.to(dtype) for name, t in layer.named_parameters()}

    def linear(name, inp):
        out = inp @ p[f"{name}.weight"].T
        return out + p[f"{name}.bias"] if f"{name}.bias" in p else out

    x = x.to(dtype)
    src = x if context is None else context.to(dtype)
    b, s, sk = x.shape[0], x.shape[1], src.shape[1]
    hq, hk, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
    q = linear("q_proj", x).view(b, s, hq, d)
    k = linear("k_proj", src).view(b, sk, hk, d)
    v = linear("v_proj", src).view(b, sk, hk, d)
    if layer.q_norm is not None:
        q = _rms(q, p["q_norm.weight"], layer.q_norm.eps)
        k = _rms(k, p["k_norm.weight"], layer.k_norm.eps)
    if layer.rope is not None:
        if positions is None:
            positions = torch.arange(s)
        r = layer.rope.rotary_dim  # partial rotary: the leading r dims turn, the rest pass
        opts = dict(theta=layer.rope.theta, style=layer.rope.style)
        q = torch.cat((_rotate(q[..., :r], positions, **opts), q[..., r:]), dim=-1)
        k = torch.cat((_rotate(k[..., :r], positions, **opts), k[..., r:]), dim=-1)
    opts = dict(causal=layer.causal, window=layer.window, scale=layer.scale,
                softcap=layer.softcap, dtype=dtype)
    if cu is None:
        out, _ = attention64(q, k, v, key_padding_mask=keep, **opts)
    else:
        out, _ = packed_attention64(q[0], k[0], v[0], cu, cu, **opts)
        out = out[None]
    return linear("o_proj", out.reshape(b, s, hq * d))


def _randomise(layer, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in layer.named_parameters():
            base = 1.0 if "norm" in name else 0.0
            t.copy_(base + torch.randn(t.shape, generator=gen) / math.sqrt(t.shape[-1]))


def _check(layer, x, *, grads=True, **kw):
    """Forward and every gradient (parameters and x) against the oracle, by the tolerance rule."""
    layer = layer.float()
    x32 = x.float().requires_grad_(grads)
    context = kw.get("context")
    ctx32 = ctx64 = None
    if context is not None:
        ctx32 = context.float().requires_grad_(grads)
        ctx64 = context.double().requires_grad_(grads)
    got = layer(x32, positions=kw.get("positions"), attention_mask=kw.get("keep"),
                cu_seqlens=kw.get("cu_seqlens"), context=ctx32)
    x64 = x.double().requires_grad_(grads)
    opts = dict(positions=kw.get("positions"), keep=kw.get("keep"), cu=kw.get("cu_seqlens"))
    truth = _oracle(layer, x64, dtype=torch.float64, context=ctx64, **opts)
    base = _oracle(layer, x32, dtype=torch.float32, context=ctx32, **opts)
    assert_within_rule("output", got, truth, base, dtype=torch.float32)
    assert max_error(got, truth) > 0
    if not grads:
        return
    weight = torch.randn(got.shape, generator=torch.Generator().manual_seed(99),
                         dtype=torch.float64)
    params = dict(layer.named_parameters())
    names = [*params, "x"] + (["context"] if context is not None else [])
    ins32 = [*params.values(), x32] + ([ctx32] if context is not None else [])
    ins64 = [*params.values(), x64] + ([ctx64] if context is not None else [])
    g_got = torch.autograd.grad((got * weight.float()).sum(), ins32)
    g_base = torch.autograd.grad((base * weight.float()).sum(), ins32)
    g_truth = torch.autograd.grad((truth * weight).sum(), ins64)
    for name, a, c, t in zip(names, g_got, g_base, g_truth):
        assert_within_rule(f"grad {name}", a, t, c, dtype=torch.float32)


def _x(b, s, seed, width=HIDDEN):
    return torch.randn(b, s, width, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _layer(seed=0, **kw):
    torch.manual_seed(seed)
    layer = GroupedQueryAttention(**{"hidden_size": HIDDEN, "num_heads": 8, **kw})
    _randomise(layer, seed)
    return layer


def _padding(b, s):
    keep = torch.ones(b, s, dtype=torch.bool)
    keep[-1, s - 3:] = False
    return keep


def test_causal_gqa_with_rope_qk_norm_padding_and_positions():
    layer = _layer(num_kv_heads=2, rope=RotaryEmbedding(8, theta=500.0), qk_norm_eps=1e-6,
                   qkv_bias=True, out_bias=True)
    positions = torch.tensor([[3, 4, 5, 6, 7, 8, 9], [0, 1, 2, 3, 4, 5, 6]])
    _check(layer, _x(2, 7, 1), positions=positions, keep=_padding(2, 7))


def test_encoder_bidirectional_with_padding_mqa_and_interleaved_rope():
    layer = _layer(num_kv_heads=1, causal=False, rope=RotaryEmbedding(8, style="interleaved"))
    _check(layer, _x(2, 9, 2), keep=_padding(2, 9))


@pytest.mark.parametrize("window, causal", [(3, True), ((2, 1), False)],
                         ids=["last3_causal", "bidirectional_2_1"])
def test_local_sliding_window(window, causal):
    layer = _layer(num_kv_heads=4, window=window, causal=causal, softcap=2.0,
                   rope=RotaryEmbedding(8))
    assert layer.window == ((2, 0) if window == 3 else window)  # int N: the last N positions
    assert layer.scale == pytest.approx(8 ** -0.5, rel=1e-15)
    _check(layer, _x(2, 10, 3))


def test_cross_attention_other_length_and_width():
    layer = _layer(num_kv_heads=2, causal=False, kv_hidden_size=48, head_dim=12)
    context = _x(2, 5, 4, width=48)
    keep = torch.tensor([[True] * 5, [True, True, False, True, False]])
    _check(layer, _x(2, 7, 5), context=context, keep=keep)


def test_packed_documents_are_block_diagonal_with_restarting_rope():
    layer = _layer(num_kv_heads=2, rope=RotaryEmbedding(8))
    cu = torch.tensor([0, 4, 4, 9, 12], dtype=torch.int32)
    positions = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 2])
    _check(layer, _x(1, 12, 6), cu_seqlens=cu, grads=False)
    x = _x(1, 12, 6).float()
    with torch.no_grad():
        packed = layer(x, cu_seqlens=cu)
        second = layer(x[:, 4:9])  # the second document alone, positions from 0
        explicit = layer(x, cu_seqlens=cu, positions=positions)
    truth = _oracle(layer, x[:, 4:9].double(), dtype=torch.float64)
    base = _oracle(layer, x[:, 4:9], dtype=torch.float32)
    assert_within_rule("packed doc", packed[:, 4:9], truth, base, dtype=torch.float32)
    assert torch.equal(packed, explicit)
    assert torch.equal(second, layer(x[:, 4:9]))


def test_head_dim_override_partial_rotary_and_explicit_scale():
    layer = _layer(num_heads=4, num_kv_heads=2, head_dim=32, scale=0.05,
                   rope=RotaryEmbedding(32, rotary_dim=16))
    assert layer.q_proj.weight.shape == (128, HIDDEN)
    _check(layer, _x(2, 9, 7), positions=torch.arange(4, 13))


def test_merge_qkv_is_numerically_identical():
    layer = _layer(num_kv_heads=2, qkv_bias=True, rope=RotaryEmbedding(8)).float()
    x = _x(2, 6, 8).float()
    with torch.no_grad():
        before = layer(x)
        layer.merge_qkv()
        after = layer(x)
    assert set(layer.state_dict()) == {"qkv_proj.weight", "qkv_proj.bias", "o_proj.weight"}
    truth = _oracle_from_state(before, layer, x)
    assert_within_rule("merged", after, truth, before, dtype=torch.float32)
    assert layer.qkv_proj.weight.shape == (64 + 2 * 16, HIDDEN)
    with pytest.raises(ValueError, match="already merged"):
        layer.merge_qkv()


def _oracle_from_state(before, layer, x):
    """float64 truth of the merged layer, by splitting the merged weight back."""
    hq, hk, d = layer.num_heads, layer.num_kv_heads, layer.head_dim
    twin = GroupedQueryAttention(hidden_size=HIDDEN, num_heads=hq, num_kv_heads=hk,
                                 qkv_bias=True, rope=RotaryEmbedding(8)).double()
    w = layer.qkv_proj.weight.double().split([hq * d, hk * d, hk * d])
    bias = layer.qkv_proj.bias.double().split([hq * d, hk * d, hk * d])
    with torch.no_grad():
        for proj, wi, bi in zip((twin.q_proj, twin.k_proj, twin.v_proj), w, bias):
            proj.weight.copy_(wi)
            proj.bias.copy_(bi)
        twin.o_proj.weight.copy_(layer.o_proj.weight.double())
        return twin(x.double())


def test_merged_cross_attention_uses_each_slice():
    layer = _layer(num_kv_heads=2, causal=False).float()
    x, ctx = _x(2, 4, 9).float(), _x(2, 6, 10).float()
    with torch.no_grad():
        before = layer(x, context=ctx)
        after = layer.merge_qkv()(x, context=ctx)
    assert max_error(after, before) <= 1e-6


def test_dropout_only_in_training_and_seeded():
    layer = _layer(num_kv_heads=2, dropout=0.4).float()
    x = _x(2, 6, 11).float()
    with torch.no_grad():
        layer.eval()
        plain = layer(x)
        layer.train()
        torch.manual_seed(5)
        first = layer(x)
        torch.manual_seed(5)
        again = layer(x)
    assert torch.equal(first, again)
    assert max_error(first, plain) > 0.01
    layer.eval()
    assert torch.equal(layer(x), plain)


def test_meta_device_build_then_materialise():
    with torch.device("meta"):
        layer = GroupedQueryAttention(hidden_size=HIDDEN, num_heads=8, num_kv_heads=2,
                                      qk_norm_eps=1e-5, rope=RotaryEmbedding(8, theta=1e4))
    assert layer.q_proj.weight.is_meta
    layer = layer.to_empty(device="cpu")
    layer.reset_parameters()
    assert torch.equal(layer.rope.inv_freq, RotaryEmbedding(8, theta=1e4).inv_freq)
    assert torch.equal(layer.q_norm.weight, torch.ones(8))
    assert layer.q_proj.weight.std() > 0
    out = layer(_x(1, 5, 12).float())
    assert torch.isfinite(out).all()


def test_reset_parameters_reinitialises_every_projection():
    layer = _layer(num_kv_heads=2, qk_norm_eps=1e-6)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer.reset_parameters()
    for name, value in layer.state_dict().items():
        assert not torch.equal(value, before[name]), name


def test_attention_mask_accepts_integers():
    layer = _layer(num_kv_heads=2, causal=False).float()
    x = _x(2, 5, 13).float()
    keep = _padding(2, 5)
    with torch.no_grad():
        assert torch.equal(layer(x, attention_mask=keep), layer(x, attention_mask=keep.long()))


# ---- invalid configurations and inputs ----

@pytest.mark.parametrize("kwargs, error, match", [
    (dict(num_heads=8, num_kv_heads=3), ValueError,
     r"num_heads \(8\) must be a multiple of num_kv_heads \(3\)"),
    (dict(num_heads=6), ValueError,
     r"hidden_size \(64\) must be divisible by num_heads \(6\), or give head_dim"),
    (dict(num_heads=8, rope=RotaryEmbedding(16)), ValueError,
     r"rope.head_dim \(16\) must equal the layer's head_dim \(8\)"),
    (dict(num_heads=8, rope="llama"), TypeError, "rope must be None or an attnkit.nn.Rotary"),
    (dict(num_heads=8, window=4, causal=False), ValueError, "needs causal=True"),
    (dict(num_heads=8, window=(1, -2)), ValueError, "window right must be >= -1"),
    (dict(num_heads=8, window=(1, 2, 3)), ValueError, "window must be None, an int"),
    (dict(num_heads=8, dropout=1.0), ValueError, r"dropout must be < 1.0, got 1.0"),
    (dict(num_heads=8, softcap=-1.0), ValueError, r"softcap must be >= 0.0"),
    (dict(num_heads=8, scale=0.0), ValueError, "scale must be a positive finite number"),
    (dict(num_heads=8, causal=1), TypeError, "causal must be a bool, got int"),
    (dict(num_heads=0), ValueError, "num_heads must be >= 1, got 0"),
    (dict(num_heads=8, head_dim=8.0), TypeError, "head_dim must be an int"),
])
def test_invalid_configurations(kwargs, error, match):
    with pytest.raises(error, match=match):
        GroupedQueryAttention(hidden_size=HIDDEN, **kwargs)


def test_rope_dims_odd_or_larger_than_head_dim():
    with pytest.raises(ValueError, match=r"rotary_dim must be even, got 5"):
        GroupedQueryAttention(hidden_size=HIDDEN, num_heads=8,
                              rope=RotaryEmbedding(8, rotary_dim=5))
    with pytest.raises(ValueError, match=r"rotary_dim \(16\) must be <= head dim \(8\)"):
        GroupedQueryAttention(hidden_size=HIDDEN, num_heads=8,
                              rope=RotaryEmbedding(8, rotary_dim=16))


def test_invalid_inputs():
    layer = _layer(num_kv_heads=2, rope=RotaryEmbedding(8)).float()
    cross = _layer(num_kv_heads=2, causal=False, kv_hidden_size=32).float()
    plain = _layer(num_kv_heads=2, causal=False).float()
    x = _x(2, 5, 14).float()
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    cases = [
        (lambda: layer(x[..., :32]), ValueError, r"x must be \[batch, seq, 64\], got shape"),
        (lambda: layer(x.long()), TypeError, "x must be float16, bfloat16, float32 or float64"),
        (lambda: layer(x, context=x), ValueError,
         "context was given to a causal layer: cross-attention needs causal=False"),
        (lambda: _layer(causal=False, rope=RotaryEmbedding(8))(x, context=x), ValueError,
         "context was given to a layer with rope"),
        (lambda: cross(x), ValueError, r"reads K/V from a context of width 32"),
        (lambda: cross(x, context=_x(3, 4, 1, width=32).float()), ValueError,
         r"context must have x's batch size \(2\), got 3"),
        (lambda: cross(x, context=x), ValueError, r"context must be \[batch, seq, 32\]"),
        (lambda: plain(x, positions=torch.arange(5)), ValueError,
         "positions were given but the layer has no rope"),
        (lambda: layer(x, positions=torch.arange(4)), ValueError,
         r"positions must be \[seq\] = \[5\] or \[batch, seq\] = \[2, 5\], got \[4\]"),
        (lambda: layer(x, positions=torch.arange(5.0)), TypeError,
         "positions must be an integer tensor"),
        (lambda: layer(x, attention_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError,
         r"attention_mask must be a key padding mask \[batch, seq_k\] = \[2, 5\], got \[2, 4\]"),
        (lambda: layer(x, attention_mask=torch.ones(2, 5)), TypeError,
         "attention_mask must be bool or integer"),
        (lambda: layer(x, cu_seqlens=cu), ValueError, r"x must be \[1, total_tokens, hidden\]"),
        (lambda: layer(x[:1], cu_seqlens=cu.long()), TypeError, "cu_seqlens must be int32"),
        (lambda: layer(x[:1], cu_seqlens=torch.tensor([0, 4], dtype=torch.int32)), ValueError,
         r"cu_seqlens must end at the number of packed tokens \(5\), got 4"),
        (lambda: layer(x[:1], cu_seqlens=cu, attention_mask=torch.ones(1, 5, dtype=torch.bool)),
         ValueError, "cu_seqlens cannot be combined with attention_mask or context"),
        (lambda: cross.merge_qkv(), ValueError, r"merge_qkv needs kv_hidden_size \(32\)"),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()
