"""``SparseRoutedAttention``: causality, the dense limit, routing before RoPE, documents,
gradients, errors."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import attnkit
from attnkit.nn.rotary import RotaryEmbedding
from attnkit.nn.routed import SparseRoutedAttention
from attnkit.ops.positions import positions_from_cu_seqlens
from tests.test_sparse_ops import _run_oracle, oracle_routes
from tests.tolerance import assert_exact64

F64 = torch.float64


def _layer(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(hidden_size=16, num_heads=4, num_kv_heads=2, head_dim=4, segment_size=4,
               top_k=2, rope=RotaryEmbedding(4))
    cfg.update(overrides)
    return SparseRoutedAttention(**cfg).to(F64)


def _heads(layer, x, positions=None):
    """The layer's q, k, v before and after RoPE, ``[b, s, h, d]``."""
    b, s, _ = x.shape
    q = layer.q_proj(x).view(b, s, layer.num_heads, layer.head_dim)
    k = layer.k_proj(x).view(b, s, layer.num_kv_heads, layer.head_dim)
    v = layer.v_proj(x).view(b, s, layer.num_kv_heads, layer.head_dim)
    pos = torch.arange(s) if positions is None else positions
    return q, k, v, layer.rope.rotate(q, pos), layer.rope.rotate(k, pos)


@pytest.mark.parametrize("groups", [(4, 4), (8, 2), (16, 1)], ids=["g1", "g4", "g16"])
def test_routed_is_causal(groups):
    layer = _layer(num_heads=groups[0], num_kv_heads=groups[1])
    x = torch.randn(2, 27, 16, dtype=F64)
    out = layer(x)
    for t in (0, 5, 12, 25):
        changed = x.clone()
        changed[:, t + 1:] = torch.randn(2, 26 - t, 16, dtype=F64)
        again = layer(changed)
        assert_exact64(f"rows <= {t}", again[:, :t + 1], out[:, :t + 1])
        assert not torch.allclose(again[:, t + 1:], out[:, t + 1:])  # the test can fail


def test_routed_matches_oracle_with_routing_before_rope():
    layer = _layer(seed=1, num_heads=8, num_kv_heads=2)
    x = torch.randn(2, 22, 16, dtype=F64)
    q, k, v, qr, kr = _heads(layer, x)
    routes = oracle_routes(q, k, seg=4, top_k=2)  # unrotated projections decide
    want, _ = _run_oracle(qr, kr, v, lambda bi, t, h: [j for j in range(t + 1)
                                                       if j // 4 in routes[(bi, t)][h // 4]],
                          0.5)
    assert_exact64("out", layer(x), layer.o_proj(want.reshape(2, 22, 32)))


def test_routing_every_segment_is_dense_causal():
    layer = _layer(seed=2, top_k=7)  # 29 tokens: 8 segments, at most 7 past
    x = torch.randn(2, 29, 16, dtype=F64)
    _, _, v, qr, kr = _heads(layer, x)
    dense = attnkit.attention(qr, kr, v, causal=True)
    assert_exact64("out", layer(x), layer.o_proj(dense.reshape(2, 29, 16)))


def test_positions_restart_at_document_boundaries():
    layer = _layer(seed=3)
    x = torch.randn(1, 30, 16, dtype=F64)
    cu = torch.tensor([0, 7, 19, 30], dtype=torch.int32)
    separate = torch.cat([layer(x[:, a:b]) for a, b in ((0, 7), (7, 19), (19, 30))], dim=1)
    assert_exact64("cu_seqlens", layer(x, cu_seqlens=cu), separate)
    assert_exact64("boundaries", layer(x, boundaries=[7, 19]), separate)
    assert_exact64("tensor", layer(x, boundaries=torch.tensor([19, 7])), separate)
    # explicit document-wise positions with cu_seqlens are the default ones
    assert_exact64("positions", layer(x, cu_seqlens=cu,
                                      positions=positions_from_cu_seqlens(cu)), separate)
    # a batch with a bool mask of starts: each row split on its own
    x2 = torch.randn(2, 12, 16, dtype=F64)
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 5] = mask[1, 9] = True
    rows = [torch.cat([layer(x2[:1, :5]), layer(x2[:1, 5:])], dim=1),
            torch.cat([layer(x2[1:, :9]), layer(x2[1:, 9:])], dim=1)]
    assert_exact64("mask", layer(x2, boundaries=mask), torch.cat(rows))


def test_routed_gradcheck_every_parameter():
    # full (not fast-mode) gradcheck: tiny, so every input's column is checked
    layer = _layer(seed=4, hidden_size=6, num_heads=2, num_kv_heads=1, head_dim=2,
                   segment_size=2, top_k=1, rope=RotaryEmbedding(2))
    x = torch.randn(1, 7, 6, dtype=F64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]
    assert set(names) == {"q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"}

    def run(x_, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x_,),
                               {"boundaries": [3]})

    assert torch.autograd.gradcheck(run, (x, *params), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("overrides,exc,match", [
    (dict(top_k=0), ValueError, r"top_k must be >= 1, got 0"),
    (dict(segment_size=0), ValueError, r"segment_size must be >= 1, got 0"),
    (dict(top_k=1.5), TypeError, r"top_k must be an int, got float"),
    (dict(num_kv_heads=3), ValueError, r"num_heads \(4\) must be a multiple of num_kv_heads "
                                       r"\(3\)"),
    (dict(head_dim=None, hidden_size=10), ValueError,
     r"hidden_size \(10\) must be divisible by num_heads \(4\)"),
    (dict(rope=RotaryEmbedding(8)), ValueError, r"rope.head_dim \(8\) must equal the layer's "
                                                r"head_dim \(4\)"),
], ids=["top-k-zero", "segment-zero", "top-k-float", "heads", "hidden", "rope-dim"])
def test_routed_config_errors(overrides, exc, match):
    with pytest.raises(exc, match=match):
        _layer(**overrides)


def test_routed_forward_errors():
    layer = _layer()
    x = torch.randn(2, 9, 16, dtype=F64)
    with pytest.raises(ValueError, match=r"boundaries as a bool mask must be \[batch, seq\] = "
                                         r"\[2, 9\], got \[1, 9\]"):
        layer(x, boundaries=torch.zeros(1, 9, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"boundaries must be a sequence of ints"):
        layer(x, boundaries="3")
    with pytest.raises(TypeError, match=r"boundaries\[0\] must be an int"):
        layer(x, boundaries=[2.0])
    with pytest.raises(ValueError, match=r"positions must be \[seq\] = \[9\]"):
        layer(x, positions=torch.arange(8))
