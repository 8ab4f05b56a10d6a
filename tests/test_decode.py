"""attnkit.decode_attention on the reference backend: semantics against the float64 oracle, errors."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from tests.decode_cases import make_case, truth
from tests.tolerance import assert_exact64

LAYOUTS = {"contiguous": None, "paged4": 4, "paged16": 16}
WINDOWS = {"none": (-1, -1), "last4": (3, 0), "left2-right1": (2, 1)}


@pytest.mark.parametrize("block_size", LAYOUTS.values(), ids=LAYOUTS.keys())
@pytest.mark.parametrize("window", WINDOWS.values(), ids=WINDOWS.keys())
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_reference_matches_oracle(block_size, window, causal):
    case = make_case(lengths=[1, 9, 23, 0, 17], n=3, hq=6, hk=2, d=16, dv=8,
                     block_size=block_size, dtype=torch.float64)
    out, lse = attnkit.decode_attention(**case, causal=causal, window=window, softcap=0.9,
                                        return_lse=True, backend="reference")
    ref_out, ref_lse = truth(case, causal=causal, window=window, softcap=0.9)
    assert_exact64("out", out, ref_out)
    assert_exact64("lse", lse, ref_lse)


def test_rows_without_keys_give_zeros_and_minus_inf():
    case = make_case(lengths=[0, 2], n=4, hq=2, hk=1, d=8, dtype=torch.float64)
    out, lse = attnkit.decode_attention(**case, return_lse=True)
    assert torch.all(out[0] == 0) and torch.all(lse[0] == -math.inf)
    # L = 2 < n = 4: the first two new tokens sit before the cache start and see nothing.
    assert torch.all(lse[1, :, :2] == -math.inf) and torch.isfinite(lse[1, :, 2:]).all()
    assert not torch.isnan(out).any()


def test_single_token_equals_full_attention_last_row():
    """Decoding the last token over a full cache is the last row of causal attention."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(2, 11, 4, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 11, 2, 16, generator=g, dtype=torch.float64)
    v = torch.randn(2, 11, 2, 16, generator=g, dtype=torch.float64)
    full = attnkit.attention(q, k, v, causal=True)
    lens = torch.full((2,), 11, dtype=torch.int32)
    step = attnkit.decode_attention(q[:, -3:], k, v, cache_seqlens=lens)
    assert_exact64("last rows", step, full[:, -3:])


def _base():
    return make_case(lengths=[3, 5], n=1, hq=4, hk=2, d=8)


def _paged():
    return make_case(lengths=[3, 5], n=1, hq=4, hk=2, d=8, block_size=4)


ERRORS = {
    "q-not-tensor": (lambda c: c.update(q=[1.0]), TypeError, "q must be a torch.Tensor"),
    "q-int": (lambda c: c.update(q=c["q"].long()), TypeError, "q must be float16"),
    "dtype-mismatch": (lambda c: c.update(k_cache=c["k_cache"].double()), TypeError,
                       "k_cache must have the dtype of q"),
    "q-rank": (lambda c: c.update(q=c["q"][:, 0]), ValueError, r"q must be \[batch, n_new"),
    "heads": (lambda c: c.update(q=c["q"][:, :, :3]), ValueError,
              r"q's heads \(3\) must be a multiple of the cache's kv heads \(2\)"),
    "head-dim": (lambda c: c.update(q=c["q"][..., :4]), ValueError,
                 r"k_cache's head_dim must equal q's \(4\), got 8"),
    "batch": (lambda c: c.update(k_cache=c["k_cache"][:1], v_cache=c["v_cache"][:1]),
              ValueError, r"k_cache must have q's batch size \(2\) when contiguous, got 1"),
    "v-shape": (lambda c: c.update(v_cache=c["v_cache"][:, :4]), ValueError,
                "v_cache must match k_cache in its first three dims"),
    "seqlens-dtype": (lambda c: c.update(cache_seqlens=c["cache_seqlens"].long()), TypeError,
                      "cache_seqlens must be int32, got torch.int64"),
    "seqlens-shape": (lambda c: c.update(cache_seqlens=c["cache_seqlens"][:1]), ValueError,
                      r"cache_seqlens must be \[batch\] = \[2\], got \[1\]"),
    "seqlens-over": (lambda c: c.update(cache_seqlens=torch.tensor([3, 99], dtype=torch.int32)),
                     ValueError, r"cache_seqlens must lie in \[0, 10\].*got values in \[3, 99\]"),
    "seqlens-negative": (lambda c: c.update(cache_seqlens=torch.tensor([-1, 2],
                                                                       dtype=torch.int32)),
                         ValueError, r"got values in \[-1, 2\]"),
    "window-shape": (lambda c: c.update(window=(1,)), ValueError, "window must be a"),
    "window-low": (lambda c: c.update(window=(-2, 0)), ValueError, "window left must be >= -1"),
    "causal-type": (lambda c: c.update(causal=1), TypeError, "causal must be a bool, got int"),
    "softcap": (lambda c: c.update(softcap=-1.0), ValueError, "softcap must be >= 0.0"),
    "scale": (lambda c: c.update(scale=0.0), ValueError, "scale must be a positive finite"),
    "backend": (lambda c: c.update(backend="cuda"), ValueError, "backend must be one of"),
}


@pytest.mark.parametrize("mutate,error,message", ERRORS.values(), ids=ERRORS.keys())
def test_errors_name_argument_expected_received(mutate, error, message):
    case = _base()
    mutate(case)
    with pytest.raises(error, match=message):
        attnkit.decode_attention(**case)


PAGED_ERRORS = {
    "table-dtype": (lambda c: c.update(block_table=c["block_table"].long()), TypeError,
                    "block_table must be int32, got torch.int64"),
    "table-rows": (lambda c: c.update(block_table=c["block_table"][:1]), ValueError,
                   r"block_table must have one row per sequence \(2\), got 1"),
    "table-range": (lambda c: c["block_table"].__setitem__((0, 0), 99), ValueError,
                    r"block_table entries must be pages in \[0, "),
    "over-capacity": (lambda c: c.update(cache_seqlens=torch.tensor([3, 13], dtype=torch.int32)),
                      ValueError, r"cache_seqlens must lie in \[0, 12\]"),
}


@pytest.mark.parametrize("mutate,error,message", PAGED_ERRORS.values(), ids=PAGED_ERRORS.keys())
def test_paged_errors(mutate, error, message):
    case = _paged()
    mutate(case)
    with pytest.raises(error, match=message):
        attnkit.decode_attention(**case)


def test_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="triton: needs CUDA tensors"):
        attnkit.decode_attention(**_base(), backend="triton")


def test_auto_on_cpu_uses_the_reference():
    case = make_case(lengths=[4, 6], n=2, hq=4, hk=2, d=8, dtype=torch.float64)
    got = attnkit.decode_attention(**case)
    assert_exact64("auto", got, truth(case)[0])
