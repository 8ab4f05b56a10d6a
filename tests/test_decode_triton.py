"""The Triton split-KV decode kernel under the interpreter (tiny shapes), by the tolerance rule."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.ops import decode as decode_op
from tests.decode_cases import make_case, truth
from tests.tolerance import assert_within_rule

pytest.importorskip("triton")

CASES = {
    # name: lengths, n, hq, hk, d, dv, block_size, window, causal, softcap
    "mha-contig-1tok": ([1, 9, 40], 1, 2, 2, 16, 16, None, (-1, -1), True, 0.0),
    "gqa4-paged4-ragged": ([37, 1, 0, 20], 1, 8, 2, 32, 32, 4, (-1, -1), True, 0.0),
    "gqa2-paged16-spec3": ([33, 3, 50], 3, 4, 2, 24, 16, 16, (-1, -1), True, 0.0),
    "mqa-contig-window": ([45, 12], 2, 4, 1, 16, 16, None, (7, 0), True, 0.0),
    "window-both-noncausal": ([30, 19], 2, 4, 2, 16, 16, 8, (5, 2), False, 0.0),
    "softcap-paged": ([26, 9], 4, 4, 2, 16, 16, 8, (-1, -1), True, 0.8),
    "d80-dv-ne-d": ([17, 29], 1, 6, 3, 80, 48, None, (-1, -1), True, 0.0),
}


@pytest.mark.parametrize("splits", [None, 3], ids=["auto-splits", "3-splits"])
@pytest.mark.parametrize("params", CASES.values(), ids=CASES.keys())
def test_kernel_matches_oracle(params, splits):
    lengths, n, hq, hk, d, dv, bs, window, causal, softcap = params
    case = make_case(lengths=lengths, n=n, hq=hq, hk=hk, d=d, dv=dv, block_size=bs, seed=len(lengths))
    opts = dict(causal=causal, window=window, softcap=softcap)
    call = decode_op.validate(**case, scale=None, return_lse=True, backend="triton", **opts)
    from attnkit.kernels import decode as kernel
    out, lse = kernel.decode_fwd(call, num_splits=splits)
    ref_out, ref_lse = truth(case, **opts)
    base_out, base_lse = truth(case, dtype=torch.float32, **opts)
    assert_within_rule("out", out, ref_out, base_out, dtype=torch.float32)
    assert_within_rule("lse", lse, ref_lse, base_lse, dtype=torch.float32)


def test_public_op_with_triton_backend_half_precision():
    case = make_case(lengths=[21, 6], n=2, hq=4, hk=2, d=32, block_size=8, dtype=torch.float16)
    out, lse = attnkit.decode_attention(**case, return_lse=True, backend="triton")
    ref_out, ref_lse = truth(case)
    base_out, base_lse = truth(case, dtype=torch.float16)
    assert out.dtype == torch.float16
    assert_within_rule("out", out, ref_out, base_out, dtype=torch.float16)
    assert_within_rule("lse", lse, ref_lse, base_lse, dtype=torch.float16)


def test_split_heuristic_fills_the_gpu_and_respects_short_caches():
    from attnkit.kernels.decode import choose_splits
    cpu = torch.device("cpu")
    assert choose_splits(programs=512, keys=8192, device=cpu) == 1
    assert choose_splits(programs=512, keys=32768, device=cpu) == 4
    assert choose_splits(programs=8, keys=32768, device=cpu) == 33
    assert choose_splits(programs=8, keys=300, device=cpu) == 1
    assert choose_splits(programs=1, keys=4096, device=cpu) == 16


@pytest.mark.parametrize("paged", [False, True], ids=["contig", "paged8"])
@pytest.mark.parametrize("splits", [None, 3], ids=["auto-splits", "3-splits"])
def test_mla_kernel_matches_oracle(paged, splits):
    from attnkit.kernels import mla_decode as kernel
    from attnkit.ops import mla_decode as mla_op
    g = torch.Generator().manual_seed(int(paged))
    b, n, h, r, p = 3, 2, 5, 32, 16
    lengths = torch.tensor([7, 40, 1], dtype=torch.int32)
    ql = torch.randn(b, n, h, r, generator=g)
    qr = torch.randn(b, n, h, p, generator=g)
    if paged:
        cache = torch.randn(20, 8, r + p, generator=g)
        table = torch.randperm(20, generator=g)[:18].view(3, 6).int()
    else:
        cache = torch.randn(b, 41, r + p, generator=g)
        table = None
    call = mla_op.validate(ql, qr, cache[..., :r], cache[..., r:], cache_seqlens=lengths,
                           block_table=table, causal=True, scale=0.2, backend="triton",
                           return_lse=True)
    out, lse = kernel.mla_decode_fwd(call, num_splits=splits)
    case = dict(q=torch.cat([ql, qr], -1), k_cache=cache.unsqueeze(2),
                v_cache=cache[..., :r].unsqueeze(2), cache_seqlens=lengths, block_table=table)
    ref_out, ref_lse = truth(case, scale=0.2)
    base_out, base_lse = truth(case, scale=0.2, dtype=torch.float32)
    assert_within_rule("out", out, ref_out, base_out, dtype=torch.float32)
    assert_within_rule("lse", lse, ref_lse, base_lse, dtype=torch.float32)


def test_mla_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"latent_cache's last dim must equal q_latent's "
                                         r"kv_lora_rank \(16\), got 8"):
        attnkit.mla_decode_attention(torch.randn(1, 1, 2, 16), torch.randn(1, 1, 2, 4),
                                     torch.randn(1, 3, 8), torch.randn(1, 3, 4),
                                     cache_seqlens=torch.tensor([3], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"cache_seqlens must lie in \[0, 3\]"):
        attnkit.mla_decode_attention(torch.randn(1, 1, 2, 16), torch.randn(1, 1, 2, 4),
                                     torch.randn(1, 3, 16), torch.randn(1, 3, 4),
                                     cache_seqlens=torch.tensor([4], dtype=torch.int32))
