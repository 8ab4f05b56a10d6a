"""attnkit.attention on the reference backend against the independent float64 oracle."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit.reference import attention as reference_attention
from attnkit.reference.philox import dropout_keep
from tests.oracle import attention64, packed_attention64
from tests.tolerance import assert_exact64, assert_within_rule

# (batch, seq_q, seq_k, heads_q, heads_k, head_dim, head_dim_v)
SHAPES = {
    "mha": (2, 17, 17, 4, 4, 64, 64),
    "gqa-cross": (2, 17, 23, 8, 2, 80, 80),
    "mqa": (1, 13, 13, 4, 1, 128, 128),
    "decode-sq1": (2, 1, 29, 4, 2, 64, 64),
    "sq-gt-sk": (1, 23, 9, 4, 2, 64, 64),
    "dv-ne-d": (2, 11, 19, 4, 2, 64, 32),
}
WINDOWS = {"none": (-1, -1), "left3": (3, -1), "left2-right0": (2, 0), "both4-3": (4, 3),
           "right2": (-1, 2)}


def _qkv(shape, dtype=torch.float64, seed=0):
    b, sq, sk, hq, hk, d, dv = shape
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, sq, hq, d, generator=g, dtype=torch.float64).to(dtype)
    k = torch.randn(b, sk, hk, d, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn(b, sk, hk, dv, generator=g, dtype=torch.float64).to(dtype)
    return q, k, v


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("window", WINDOWS.values(), ids=WINDOWS.keys())
def test_dense_matches_oracle(shape, causal, window):
    q, k, v = _qkv(shape)
    out, lse = attnkit.attention(q, k, v, causal=causal, window=window, return_lse=True,
                                 backend="reference")
    ref_out, ref_lse = attention64(q, k, v, causal=causal, window=window)
    assert_exact64("out", out, ref_out)
    assert_exact64("lse", lse, ref_lse)


@pytest.mark.parametrize("softcap", [0.5, 30.0])
def test_softcap_and_scale(softcap):
    q, k, v = _qkv(SHAPES["gqa-cross"])
    q = q * 4  # large scores so the cap bites
    out, lse = attnkit.attention(q, k, v, causal=True, softcap=softcap, scale=0.3,
                                 return_lse=True)
    ref_out, ref_lse = attention64(q, k, v, causal=True, softcap=softcap, scale=0.3)
    assert_exact64("out", out, ref_out)
    assert_exact64("lse", lse, ref_lse)


def test_key_padding_mask_with_fully_masked_batch():
    q, k, v = _qkv(SHAPES["gqa-cross"], seed=3)
    g = torch.Generator().manual_seed(1)
    kpm = torch.rand(k.shape[0], k.shape[1], generator=g) > 0.3
    kpm[1] = False  # the second sequence sees nothing at all
    out, lse = attnkit.attention(q, k, v, key_padding_mask=kpm, return_lse=True)
    ref_out, ref_lse = attention64(q, k, v, key_padding_mask=kpm)
    assert_exact64("out", out, ref_out)
    assert_exact64("lse", lse, ref_lse)
    assert torch.all(out[1] == 0)
    assert torch.all(lse[1] == -math.inf)


MASK_SHAPES = {"2d": lambda b, h, sq, sk: (sq, sk), "heads": lambda b, h, sq, sk: (1, h, sq, sk),
               "batch": lambda b, h, sq, sk: (b, 1, sq, sk),
               "3d-rowvec": lambda b, h, sq, sk: (1, 1, sk)}


@pytest.mark.parametrize("mask_shape", MASK_SHAPES.values(), ids=MASK_SHAPES.keys())
@pytest.mark.parametrize("kind", ["bool", "additive"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_dense_attn_mask_broadcast(mask_shape, kind, causal):
    q, k, v = _qkv(SHAPES["gqa-cross"], seed=5)
    b, sq, hq, _ = q.shape
    sk = k.shape[1]
    g = torch.Generator().manual_seed(7)
    shape = mask_shape(b, hq, sq, sk)
    if kind == "bool":
        mask = torch.rand(shape, generator=g) > 0.4
    else:
        mask = torch.randn(shape, generator=g, dtype=torch.float64)
        mask = mask.masked_fill(torch.rand(shape, generator=g) > 0.8, -math.inf)
    kpm = torch.ones(b, sk, dtype=torch.bool)
    kpm[0, -3:] = False
    out, lse = attnkit.attention(q, k, v, causal=causal, attn_mask=mask, key_padding_mask=kpm,
                                 return_lse=True)
    ref_mask = mask if mask.ndim == 4 else mask.reshape((1,) * (4 - mask.ndim) + shape)
    ref_out, ref_lse = attention64(q, k, v, causal=causal, attn_mask=ref_mask,
                                   key_padding_mask=kpm)
    assert_exact64("out", out, ref_out)
    assert_exact64("lse", lse, ref_lse)


def test_alibi_additive_mask_matches_slopes():
    """A float mask built as ALiBi (slope * (j - i)) per head, broadcast over batch."""
    q, k, v = _qkv((2, 9, 9, 4, 4, 64, 64), seed=9)
    slopes = torch.tensor([2.0 ** (-8 * (h + 1) / 4) for h in range(4)], dtype=torch.float64)
    rel = (torch.arange(9).view(1, 9) - torch.arange(9).view(9, 1)).double()
    alibi = slopes.view(1, 4, 1, 1) * rel  # [1, h, sq, sk]
    out = attnkit.attention(q, k, v, causal=True, attn_mask=alibi)
    ref_out, _ = attention64(q, k, v, causal=True, attn_mask=alibi)
    assert_exact64("out", out, ref_out)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("window", [(-1, -1), (2, 1)], ids=["nowin", "win"])
def test_packed_with_empty_segments(causal, window):
    lens_q = [5, 0, 7, 3, 1]
    lens_k = [5, 4, 9, 0, 6]  # segment 3 has queries but no key: zeros, lse -inf
    cu_q = torch.tensor([0, *torch.tensor(lens_q).cumsum(0).tolist()], dtype=torch.int32)
    cu_k = torch.tensor([0, *torch.tensor(lens_k).cumsum(0).tolist()], dtype=torch.int32)
    g = torch.Generator().manual_seed(11)
    q = torch.randn(sum(lens_q), 6, 64, generator=g, dtype=torch.float64)
    k = torch.randn(sum(lens_k), 2, 64, generator=g, dtype=torch.float64)
    v = torch.randn(sum(lens_k), 2, 48, generator=g, dtype=torch.float64)
    out, lse = attnkit.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, causal=causal,
                                 window=window, return_lse=True, max_seqlen_q=7, max_seqlen_k=9)
    ref_out, ref_lse = packed_attention64(q, k, v, cu_q, cu_k, causal=causal, window=window)
    assert out.shape == (sum(lens_q), 6, 48) and lse.shape == (6, sum(lens_q))
    assert_exact64("out", out, ref_out)
    assert_exact64("lse", lse, ref_lse)
    seg3 = slice(12, 15)
    assert torch.all(out[seg3] == 0) and torch.all(lse[:, seg3] == -math.inf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_inputs_follow_tolerance_rule(dtype):
    q, k, v = _qkv((2, 33, 40, 8, 2, 64, 64), dtype=dtype, seed=13)
    out, lse = attnkit.attention(q, k, v, causal=True, window=(20, 0), return_lse=True)
    assert out.dtype == dtype and lse.dtype == torch.float32
    truth, truth_lse = attention64(q, k, v, causal=True, window=(20, 0))
    base, base_lse = attention64(q, k, v, causal=True, window=(20, 0), dtype=dtype)
    assert_within_rule("out", out, truth, base, dtype=dtype)
    assert_within_rule("lse", lse, truth_lse, base_lse, dtype=dtype)


def test_query_blocks_give_the_same_result(monkeypatch):
    """Small score budget: many query blocks, recomputed in backward (checkpointing)."""
    q, k, v = _qkv((1, 70, 70, 2, 1, 16, 16), seed=17)
    q.requires_grad_(True)
    k.requires_grad_(True)
    v.requires_grad_(True)
    out_one = attnkit.attention(q, k, v, causal=True)
    grads_one = torch.autograd.grad(out_one.square().sum(), (q, k, v))
    monkeypatch.setattr(reference_attention, "_SCORE_BUDGET", 16 * 2 * 70)
    assert reference_attention._block_rows(1, 2, 70) == 16
    out_blocks = attnkit.attention(q, k, v, causal=True)
    grads_blocks = torch.autograd.grad(out_blocks.square().sum(), (q, k, v))
    assert_exact64("out", out_blocks, out_one)
    for name, a, b in zip("qkv", grads_blocks, grads_one):
        assert_exact64(f"d{name}", a, b)


def test_fully_masked_rows_zero_output_and_finite_gradients():
    q, k, v = _qkv((1, 6, 4, 2, 1, 16, 16), seed=19)
    for t in (q, k, v):
        t.requires_grad_(True)
    # sq > sk with causal: queries 0 and 1 see no key (j <= i - 2).
    out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    assert torch.all(out[:, :2] == 0)
    assert torch.all(lse[:, :, :2] == -math.inf)
    finite_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    (out.sum() + finite_lse.sum()).backward()
    for name, t in zip("qkv", (q, k, v)):
        assert torch.isfinite(t.grad).all(), name
    assert torch.all(q.grad[:, :2] == 0)


def test_lse_gradient_through_masked_rows_is_finite():
    q, k, v = _qkv((1, 3, 3, 1, 1, 8, 8), seed=23)
    q.requires_grad_(True)
    kpm = torch.tensor([[False, False, False]])
    _, lse = attnkit.attention(q, k, v, key_padding_mask=kpm, return_lse=True)
    lse.masked_fill(torch.isinf(lse), 0).sum().backward()
    assert torch.isfinite(q.grad).all()


GRAD_CASES = {
    "gqa-causal-window-softcap": dict(shape=(1, 5, 7, 4, 2, 8, 6),
                                      opts=dict(causal=True, window=(3, 0), softcap=2.0)),
    "mqa-bidirectional-window": dict(shape=(2, 4, 6, 2, 1, 8, 8), opts=dict(window=(2, 1))),
    "sq-gt-sk-causal": dict(shape=(1, 6, 4, 2, 2, 8, 8), opts=dict(causal=True)),
}


@pytest.mark.parametrize("case", GRAD_CASES.values(), ids=GRAD_CASES.keys())
def test_gradcheck_dense(case):
    q, k, v = _qkv(case["shape"], seed=29)
    for t in (q, k, v):
        t.requires_grad_(True)

    def fn(q, k, v):
        out, lse = attnkit.attention(q, k, v, return_lse=True, **case["opts"])
        return out, torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))

    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_gradcheck_masks():
    q, k, v = _qkv((2, 4, 5, 2, 1, 8, 8), seed=31)
    for t in (q, k, v):
        t.requires_grad_(True)
    kpm = torch.tensor([[True, True, False, True, True], [True, False, False, False, False]])
    bias = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda q, k, v: attnkit.attention(q, k, v, key_padding_mask=kpm, attn_mask=bias),
        (q, k, v))


def test_gradcheck_packed():
    cu_q = torch.tensor([0, 3, 3, 7], dtype=torch.int32)
    cu_k = torch.tensor([0, 4, 6, 9], dtype=torch.int32)
    g = torch.Generator().manual_seed(37)
    q = torch.randn(7, 4, 8, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(9, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(9, 2, 8, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: attnkit.attention(q, k, v, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                                          causal=True), (q, k, v))


def test_dropout_matches_oracle_with_philox_mask_and_is_reproducible():
    q, k, v = _qkv((2, 9, 11, 4, 2, 16, 16), seed=41)
    p = 0.3
    gen = torch.Generator().manual_seed(1234)
    out = attnkit.attention(q, k, v, causal=True, dropout_p=p, generator=gen)
    seed = int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(1234)))
    keep = dropout_keep(seed, p, batch_head=torch.arange(8).view(8, 1, 1),
                        rows=torch.arange(9).view(1, 9, 1),
                        cols=torch.arange(11).view(1, 1, 11)).view(2, 4, 9, 11)
    ref_out, _ = attention64(q, k, v, causal=True, keep=keep, dropout_p=p)
    assert_exact64("out", out, ref_out)
    kept = keep.double().mean().item()
    assert abs(kept - (1 - p)) < 0.06
    again = attnkit.attention(q, k, v, causal=True, dropout_p=p,
                              generator=torch.Generator().manual_seed(1234))
    assert torch.equal(out, again)
    other = attnkit.attention(q, k, v, causal=True, dropout_p=p,
                              generator=torch.Generator().manual_seed(99))
    assert not torch.equal(out, other)


def test_dropout_gradcheck():
    q, k, v = _qkv((1, 4, 5, 2, 1, 8, 8), seed=43)
    for t in (q, k, v):
        t.requires_grad_(True)

    def fn(q, k, v):
        return attnkit.attention(q, k, v, dropout_p=0.4,
                                 generator=torch.Generator().manual_seed(5))

    assert torch.autograd.gradcheck(fn, (q, k, v))
