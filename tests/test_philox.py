"""attnkit's PyTorch Philox against Triton's own Philox (run by the interpreter on the CPU).

The dropout contract says every backend draws the same numbers; Triton's
``tl.random.philox`` is an implementation written independently of ours, so agreement on random
counters and seeds checks both the algorithm and the word order.
"""

from __future__ import annotations

import os

import pytest
import torch

from attnkit.reference.philox import dropout_keep, philox_first_word

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a GPU or TRITON_INTERPRET=1", allow_module_level=True)


@triton.jit
def _philox_kernel(seed, c0_ptr, c1_ptr, c2_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < n
    c0 = tl.load(c0_ptr + offs, mask=valid, other=0).to(tl.uint32)
    c1 = tl.load(c1_ptr + offs, mask=valid, other=0).to(tl.uint32)
    c2 = tl.load(c2_ptr + offs, mask=valid, other=0).to(tl.uint32)
    zero = c0 * 0
    w0, _, _, _ = tl.random.philox(seed, c0, c1, c2, zero)
    tl.store(out_ptr + offs, w0.to(tl.int64) & 0xFFFFFFFF, mask=valid)


@pytest.mark.parametrize("seed", [0, 1, 2**32 + 5, 2**62 - 17])
def test_philox_matches_triton(seed):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(seed % 1000)
    n = 300
    c0 = torch.randint(0, 2**31, (n,), generator=g).to(torch.int32)
    c1 = torch.randint(0, 2**31, (n,), generator=g).to(torch.int32)
    c2 = torch.randint(0, 2**31, (n,), generator=g).to(torch.int32)
    out = torch.empty(n, dtype=torch.int64, device=device)
    _philox_kernel[(triton.cdiv(n, 128),)](seed, c0.to(device), c1.to(device), c2.to(device), out,
                                           n, BLOCK=128)
    ours = philox_first_word(seed, c0.long(), c1.long(), c2.long())
    assert torch.equal(out.cpu(), ours)


def test_keep_rate_and_independence():
    keep = dropout_keep(12345, 0.25, batch_head=torch.arange(4).view(4, 1, 1),
                        rows=torch.arange(64).view(1, 64, 1), cols=torch.arange(64).view(1, 1, 64))
    rate = keep.double().mean().item()
    assert abs(rate - 0.75) < 0.01
    # Neighbouring heads and rows draw different masks.
    assert not torch.equal(keep[0], keep[1])
    assert not torch.equal(keep[0, 0], keep[0, 1])
