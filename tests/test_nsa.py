"""``NativeSparseAttention``: causality, dense limits, documents, gates, gradients, errors."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

import attnkit
from attnkit.nn.block_compressor import BlockCompressor
from attnkit.nn.nsa import NativeSparseAttention
from attnkit.nn.rotary import RotaryEmbedding
from tests.oracle import attention64
from tests.test_sparse_ops import (
    _index_tensor,
    oracle_block_choice,
    oracle_compressed,
    oracle_selected,
    oracle_topk,
)
from tests.tolerance import assert_exact64

F64 = torch.float64


def _layer(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(hidden_size=16, num_heads=4, num_kv_heads=2, head_dim=4, compress_block=4,
               compress_stride=2, select_block=4, select_blocks=3, window=5,
               rope=RotaryEmbedding(4))
    cfg.update(overrides)
    return NativeSparseAttention(**cfg).to(F64)


VARIANTS = {
    "paper": dict(),
    "mean-static": dict(compressor="mean", gate="static", independent_kv=False),
    "fine-tokens": dict(fine_tokens=3, compressor="mean"),
    "group4-no-rope": dict(num_heads=8, num_kv_heads=2, rope=None, select_block=6,
                           compress_block=6, compress_stride=3),
}


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_nsa_is_causal(variant):
    layer = _layer(**VARIANTS[variant])
    x = torch.randn(2, 29, 16, dtype=F64)
    out = layer(x)
    for t in (0, 13, 26):
        changed = x.clone()
        changed[:, t + 1:] = torch.randn(2, 28 - t, 16, dtype=F64)
        again = layer(changed)
        assert_exact64(f"rows <= {t}", again[:, :t + 1], out[:, :t + 1])
        assert not torch.allclose(again[:, t + 1:], out[:, t + 1:])  # the test can fail


def test_nsa_matches_oracle_composition():
    """The whole layer, rebuilt from the projections with the tests' per-query oracles."""
    layer = _layer(seed=1, num_heads=8, num_kv_heads=2)
    x = torch.randn(2, 23, 16, dtype=F64)
    out = layer(x)
    parts = layer.branches(x)
    q = parts.q
    # per-branch keys and values: slices of the fused projections, keys RoPE'd
    k_all = layer.rope.rotate(layer.k_proj(x).view(2, 23, 6, 4), torch.arange(23))
    v_all = layer.v_proj(x).view(2, 23, 6, 4)
    for n in range(3):
        assert_exact64(f"k[{n}]", parts.k[n], k_all[:, :, 2 * n:2 * n + 2])
        assert_exact64(f"v[{n}]", parts.v[n], v_all[:, :, 2 * n:2 * n + 2])
    # summaries: the MLP compressor on explicit windows of the compressed branch's tokens
    for name, src, phi, got in (("k_cmp", parts.k[0], layer.k_compress, parts.k_cmp),
                                ("v_cmp", parts.v[0], layer.v_compress, parts.v_cmp)):
        rows = [phi(src[:, i * 2:i * 2 + 4].transpose(1, 2)) for i in range(10)]
        assert_exact64(name, got, torch.stack(rows, dim=1))
    scale = 0.5
    cmp, _ = oracle_compressed(q, parts.k_cmp, parts.v_cmp, 4, 2, scale)
    choice = oracle_block_choice(q, parts.k_cmp, block=4, stride=2, sel=4, n=3, init=1, local=2,
                                 scale=scale)
    idx = _index_tensor(choice, 2, 23, 2, 3)
    assert torch.equal(parts.block_indices, idx)
    slc, _ = oracle_selected(q, parts.k[1], parts.v[1], idx, 4, scale)
    win, _ = attention64(q, parts.k[2], parts.v[2], causal=True, window=(4, 0))
    gates = torch.sigmoid(layer.gate_proj(x)).view(2, 23, 3, 8, 1)
    mixed = gates[:, :, 0] * cmp + gates[:, :, 1] * slc + gates[:, :, 2] * win
    assert_exact64("out", out, layer.o_proj(mixed.reshape(2, 23, 32)))


def test_nsa_fine_tokens_matches_oracle():
    layer = _layer(seed=2, fine_tokens=3)
    x = torch.randn(1, 17, 16, dtype=F64)
    parts = layer.branches(x)
    want, _ = oracle_topk(parts.q, parts.k[1], parts.v[1], 3, 0.5)
    assert parts.block_indices is None
    assert_exact64("selected", parts.selected, want)


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_full_selection_and_window_are_dense_causal(packed):
    # 31 tokens: 8 selection blocks of 4, all selected; window 31 covers the sequence
    layer = _layer(seed=3, select_blocks=8, window=31)
    x = torch.randn(2, 31, 16, dtype=F64)
    if packed:
        x = x.reshape(1, 62, 16)
        cu = torch.tensor([0, 31, 62], dtype=torch.int32)
        parts = layer.branches(x, cu_seqlens=cu)
        opts = dict(cu_seqlens_q=cu, cu_seqlens_k=cu)
    else:
        parts = layer.branches(x)
        opts = {}
    for n, name in ((1, "selected"), (2, "window")):
        dense = attnkit.attention(parts.q, parts.k[n], parts.v[n], causal=True, **opts)
        assert_exact64(name, getattr(parts, name), dense)
    fine = _layer(seed=3, fine_tokens=31, window=31).branches(x[:1, :31])
    assert_exact64("fine", fine.selected,
                   attnkit.attention(fine.q, fine.k[1], fine.v[1], causal=True))


def test_documents_are_separate_sequences():
    layer = _layer(seed=4)
    x = torch.randn(1, 30, 16, dtype=F64)
    cu = torch.tensor([0, 11, 11, 30], dtype=torch.int32)
    packed = layer(x, cu_seqlens=cu)
    separate = torch.cat([layer(x[:, :11]), layer(x[:, 11:])], dim=1)
    assert_exact64("cu_seqlens", packed, separate)
    assert_exact64("boundaries", layer(x, boundaries=[11]), separate)
    mask = torch.zeros(1, 30, dtype=torch.bool)
    mask[0, 11] = True
    assert_exact64("mask", layer(x, boundaries=mask), separate)


def test_shared_kv_variant():
    layer = _layer(seed=9, independent_kv=False)
    assert layer.k_proj.out_features == layer.v_proj.out_features == 8
    assert _layer(seed=9).k_proj.out_features == 24  # compressed, selected, window
    parts = layer.branches(torch.randn(1, 12, 16, dtype=F64))
    assert parts.k[0] is parts.k[1] is parts.k[2] and parts.v[0] is parts.v[2]


def test_static_gates_start_at_one_half():
    layer = _layer(seed=5, gate="static")
    x = torch.randn(2, 13, 16, dtype=F64)
    parts = layer.branches(x)
    assert torch.equal(parts.gates, torch.full((3, 4), 0.5, dtype=F64))
    mixed = 0.5 * (parts.compressed + parts.selected + parts.window)
    assert_exact64("out", layer(x), layer.o_proj(mixed.reshape(2, 13, 16)))


def test_selection_passes_no_gradient_but_selected_kv_get_one():
    layer = _layer(seed=6)  # MLP compressor: the summaries have parameters
    x = torch.randn(1, 21, 16, dtype=F64)
    parts = layer.branches(x)
    assert not parts.block_indices.requires_grad
    k_grad, v_grad = torch.autograd.grad(parts.selected.sum(), (parts.k[1], parts.v[1]),
                                         retain_graph=True)
    assert k_grad.abs().sum() > 0 and v_grad.abs().sum() > 0
    # the summaries decide the selection but receive no gradient through it
    phi = list(layer.k_compress.parameters())
    grads = torch.autograd.grad(parts.selected.sum(), phi, allow_unused=True)
    assert all(g is None for g in grads)
    grads = torch.autograd.grad(parts.compressed.sum(), phi, allow_unused=True)
    assert all(g is not None for g in grads)


def _gradcheck_layer(layer, x, **kwargs):
    names = [n for n, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in layer.named_parameters()]

    def run(x_, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x_,), kwargs)

    assert torch.autograd.gradcheck(run, (x.requires_grad_(True), *params), eps=1e-6,
                                    atol=1e-7, rtol=1e-5, fast_mode=True)
    return names


@pytest.mark.parametrize("variant", ["paper", "mean-static", "fine-tokens"])
def test_nsa_gradcheck_every_parameter(variant):
    layer = _layer(seed=7, hidden_size=8, **VARIANTS[variant])
    x = torch.randn(1, 11, 8, dtype=F64)
    names = _gradcheck_layer(layer, x)
    expected = {"paper": {"k_compress.fc1.weight", "v_compress.pos", "gate_proj.weight"},
                "mean-static": {"gate_logits"}, "fine-tokens": {"gate_proj.bias"}}[variant]
    assert expected <= set(names)


def test_nsa_gradcheck_packed():
    layer = _layer(seed=8, hidden_size=8, select_blocks=2, local_blocks=1)
    x = torch.randn(1, 14, 8, dtype=F64)
    _gradcheck_layer(layer, x, cu_seqlens=torch.tensor([0, 5, 14], dtype=torch.int32))


def test_block_compressor_mean_and_mlp():
    w = torch.randn(3, 2, 4, 5, dtype=F64)
    assert_exact64("mean", BlockCompressor(5, 4, kind="mean")(w), w.mean(dim=-2))
    phi = BlockCompressor(5, 4).to(F64)
    flat = (w + phi.pos).reshape(3, 2, 20)
    want = phi.fc2(torch.nn.functional.silu(phi.fc1(flat)))
    assert_exact64("mlp", phi(w), want)
    with pytest.raises(ValueError, match=r"windows must be \[\.\.\., block=4, head_dim=5\], got "
                                         r"shape \(3, 2, 5, 5\)"):
        phi(torch.randn(3, 2, 5, 5, dtype=F64))


@pytest.mark.parametrize("overrides,exc,match", [
    (dict(compress_block=4, compress_stride=8), ValueError,
     r"compress_stride \(8\) must be <= compress_block \(4\)"),
    (dict(compress_block=6, compress_stride=4), ValueError,
     r"compress_block \(6\) must be a multiple of compress_stride \(4\)"),
    (dict(select_block=5), ValueError,
     r"select_block \(5\) must be a multiple of compress_stride \(2\)"),
    (dict(select_blocks=2), ValueError,
     r"select_blocks \(2\) must be >= init_blocks \+ local_blocks \(1 \+ 2\)"),
    (dict(window=0), ValueError, r"window must be >= 1, got 0"),
    (dict(fine_tokens=0), ValueError, r"fine_tokens must be >= 1, got 0"),
    (dict(compressor="max"), ValueError, r"compressor must be one of 'mlp', 'mean', got 'max'"),
    (dict(gate="soft"), ValueError, r"gate must be one of 'input', 'static', got 'soft'"),
    (dict(num_kv_heads=3), ValueError, r"num_heads \(4\) must be a multiple of num_kv_heads "
                                       r"\(3\)"),
    (dict(rope=RotaryEmbedding(8)), ValueError, r"rope.head_dim \(8\) must equal the layer's "
                                                r"head_dim \(4\)"),
    (dict(rope=10000.0), TypeError, r"rope must be None or an attnkit.nn.RotaryEmbedding"),
    (dict(scale=-1.0), ValueError, r"scale must be a positive finite number, got -1.0"),
    (dict(independent_kv=1), TypeError, r"independent_kv must be a bool, got int"),
], ids=["stride-gt-block", "block-not-multiple", "select-not-multiple", "too-few-blocks",
        "window-zero", "fine-zero", "compressor", "gate", "heads", "rope-dim", "rope-type",
        "scale", "independent-kv"])
def test_nsa_config_errors(overrides, exc, match):
    with pytest.raises(exc, match=match):
        _layer(**overrides)


def test_nsa_forward_errors():
    layer = _layer()
    x = torch.randn(2, 9, 16, dtype=F64)
    with pytest.raises(ValueError, match=r"x must be \[batch, seq, 16\], got shape \(2, 9, 8\)"):
        layer(x[..., :8])
    with pytest.raises(ValueError, match=r"give cu_seqlens .* or boundaries .*, not both"):
        layer(x[:1], cu_seqlens=torch.tensor([0, 9], dtype=torch.int32), boundaries=[3])
    with pytest.raises(ValueError, match=r"boundaries must lie in \[0, seq=9\), got 9"):
        layer(x, boundaries=[9])
    with pytest.raises(ValueError, match=r"positions and boundaries cannot be combined"):
        layer(x, boundaries=[3], positions=torch.arange(9))
    with pytest.raises(ValueError, match=r"x must be \[1, total_tokens, hidden\] with cu_seqlens"):
        layer(x, cu_seqlens=torch.tensor([0, 9], dtype=torch.int32))
    no_rope = _layer(rope=None)
    with pytest.raises(ValueError, match=r"positions were given but the layer has no rope"):
        no_rope(x, positions=torch.arange(9))
