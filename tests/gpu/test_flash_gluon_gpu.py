"""The Gluon dK/dV kernel of the flash backward (``attnkit/kernels/flash_bwd_gluon.py``) on a GPU.

Every gradient against the float64 oracle by the tolerance rule (``tests/flash_check.py``) with
the kernel forced on (``ATTNKIT_FLASH_GLUON=1``, any length) and checked to have run: awkward
lengths, unequal query/key lengths with causal rows that see no key, bf16 and fp16, the LSE
gradient, q/k/v as views of one merged QKV tensor (atomic dQ keeps the Triton dK/dV kernel);
then the launcher's own choice at the lengths where it switches, and bitwise reproducibility.
Runs on sm90 with a Triton of ``flash_bwd.GLUON_TRITON``; skipped elsewhere.
Run with ``pytest -m gpu tests/gpu/test_flash_gluon_gpu.py``.
"""

from __future__ import annotations

import pytest
import torch
import triton

from tests.flash_check import Case, check
from tests.oracle import attention64
from tests.tolerance import assert_within_rule


def _gluon_gpu() -> bool:
    from attnkit.kernels.flash_bwd import GLUON_TRITON
    return (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
            and triton.__version__.startswith(GLUON_TRITON))


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _gluon_gpu(), reason="needs sm90 and a Gluon Triton")]

BF16, FP16 = torch.bfloat16, torch.float16
CASES = {
    "1x29-causal": Case((2, 1, 29, 2, 2, 128, 128), causal=True),
    "17x17-full": Case((2, 17, 17, 2, 2, 128, 128)),
    "113x203-causal": Case((2, 113, 203, 4, 4, 128, 128), causal=True),
    "203x113-causal": Case((2, 203, 113, 4, 4, 128, 128), causal=True),  # rows see no key
    "333x129-full": Case((1, 333, 129, 4, 4, 128, 128)),
    "1000x1000-causal": Case((1, 1000, 1000, 4, 4, 128, 128), causal=True),
    "lse-grad": Case((2, 140, 150, 4, 4, 128, 128), causal=True, lse_grad=True),
}


@pytest.fixture
def gluon_calls(monkeypatch):
    """Force the Gluon kernel on and count its launches."""
    from attnkit.kernels import flash_bwd_gluon
    calls = []
    real = flash_bwd_gluon.gluon_dkdv

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(flash_bwd_gluon, "gluon_dkdv", counted)
    monkeypatch.setenv("ATTNKIT_FLASH_GLUON", "1")
    return calls


@pytest.mark.parametrize("dtype", [BF16, FP16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_gradients_match_the_oracle(case, dtype, gluon_calls):
    check(case, dtype=dtype, device="cuda", deterministic=True, dq_mode="kernel")
    assert gluon_calls, "the Gluon dK/dV kernel did not run"


@pytest.mark.parametrize("layout", [(1, False), (2, False), (2, True)],
                         ids=["wg1", "wg2", "wg2-pingpong"])
@pytest.mark.parametrize("case", ["113x203-causal", "333x129-full"])
def test_every_partition_layout_matches_the_oracle(case, layout, gluon_calls, monkeypatch):
    """Each arrangement of the compute partitions (``flash_bwd_gluon.WARPGROUPS``,
    ``PINGPONG``), not only the one that ships."""
    import functools

    from attnkit.kernels import flash_bwd_gluon
    monkeypatch.setattr(flash_bwd_gluon, "gluon_dkdv",
                        functools.partial(flash_bwd_gluon.gluon_dkdv, warpgroups=layout[0],
                                          pingpong=layout[1]))
    check(CASES[case], dtype=BF16, device="cuda", deterministic=True, dq_mode="kernel")
    assert gluon_calls


def test_atomic_dq_keeps_the_triton_kernel(gluon_calls):
    """Atomic dQ is added from the Triton dK/dV kernel: the Gluon kernel stays out."""
    check(CASES["113x203-causal"], dtype=BF16, device="cuda", dq_mode="atomic")
    assert not gluon_calls


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_merged_qkv_views(causal, gluon_calls):
    """q, k, v as views of one ``[b, s, 3, h, d]`` tensor (strides not those of dk / dv)."""
    import attnkit
    gen = torch.Generator(device="cuda").manual_seed(3)
    qkv64 = torch.randn(2, 300, 3, 4, 128, device="cuda", dtype=torch.float64, generator=gen)
    grad = torch.randn(2, 300, 4, 128, device="cuda", dtype=torch.float64, generator=gen)

    def grads(dtype, fn):
        qkv = qkv64.to(dtype).requires_grad_()
        out = fn(*qkv.unbind(2))
        return torch.autograd.grad(out, qkv, grad.to(dtype))[0]

    got = grads(BF16, lambda q, k, v: attnkit.attention(q, k, v, causal=causal,
                                                        backend="triton"))
    truth = grads(torch.float64, lambda q, k, v: attention64(q, k, v, causal=causal)[0])
    base = grads(BF16, lambda q, k, v: attention64(q, k, v, causal=causal, dtype=BF16)[0])
    assert gluon_calls, "the Gluon dK/dV kernel did not run"
    for i, name in enumerate(("dq", "dk", "dv")):
        assert_within_rule(name, got[:, :, i].float(), truth[:, :, i], base[:, :, i].float(),
                           dtype=BF16)


@pytest.mark.parametrize("seq,hk,window,expect", [
    (1024, 8, (-1, -1), True), (512, 8, (-1, -1), False), (2048, 2, (-1, -1), False),
    (2048, 8, (255, 0), False)], ids=["mha-1k", "mha-512", "gqa-2k", "window-2k"])
def test_launcher_choice(seq, hk, window, expect, monkeypatch):
    """Without the override the kernel runs for dense MHA from 1k tokens only."""
    import attnkit
    from attnkit.kernels import flash_bwd_gluon
    calls = []
    real = flash_bwd_gluon.gluon_dkdv
    monkeypatch.setattr(flash_bwd_gluon, "gluon_dkdv",
                        lambda *a, **kw: (calls.append(1), real(*a, **kw)))
    monkeypatch.delenv("ATTNKIT_FLASH_GLUON", raising=False)
    q = torch.randn(1, seq, 8, 128, device="cuda", dtype=BF16, requires_grad=True)
    k, v = (torch.randn(1, seq, hk, 128, device="cuda", dtype=BF16, requires_grad=True)
            for _ in range(2))
    attnkit.attention(q, k, v, causal=True, window=window, backend="triton").sum().backward()
    assert bool(calls) == expect


def test_backward_is_bitwise_reproducible(gluon_calls):
    case = Case((2, 1000, 1000, 4, 4, 128, 128), causal=True)
    first = check(case, dtype=BF16, device="cuda", deterministic=True, dq_mode="kernel")
    again = check(case, dtype=BF16, device="cuda", deterministic=True, dq_mode="kernel")
    for name in ("dq", "dk", "dv"):
        assert torch.equal(first[name], again[name]), name
    assert gluon_calls
