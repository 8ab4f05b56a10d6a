"""Host time of one ``attnkit.attention`` call on CUDA, and where it goes (cProfile).

At 1k tokens the forward kernel runs for about 0.22 ms on an H200; when the host needs longer
than that (plus ``do_bench``'s cache flush) to issue one call, the benchmark measures the host,
not the kernel (NOTES-flash.md step 5). This prints, for the d128 1k causal prefill shape
(16 x 1024 tokens, 16 heads, bf16): the host microseconds per call of the public forward with
autograd, the forward without autograd, the launcher alone and the backward, then the top
functions by own time for the public forward with autograd.

Usage (CUDA): ``PYTHONPATH=. python benchmarks/host_profile.py [--top 30]``
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

import attnkit
from attnkit.kernels import flash_fwd


def host_us(fn, calls: int = 50, rounds: int = 5) -> float:
    """Best of ``rounds`` host times per call (us) over ``calls`` calls, synchronised between
    rounds (50 calls never fill the launch queue)."""
    best = float("inf")
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
        torch.cuda.synchronize()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    q = torch.randn(16, 1024, 16, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn_like(q, requires_grad=True)
    v = torch.randn_like(q, requires_grad=True)
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    opts = dict(causal=True, window=(-1, -1), scale=128 ** -0.5, softcap=0.0,
                key_padding_mask=None, attn_mask=None, cu_seqlens_q=None, cu_seqlens_k=None,
                max_seqlen_q=1024, max_seqlen_k=1024, dropout_p=0.0, dropout_seed=0)
    out = attnkit.attention(q, k, v, causal=True)
    dout = torch.randn_like(out)
    out.backward(dout, retain_graph=True)

    def backward():
        q.grad = k.grad = v.grad = None
        out.backward(dout, retain_graph=True)

    timings = {
        "api_fwd_autograd": host_us(lambda: attnkit.attention(q, k, v, causal=True)),
        "api_fwd_no_grad": host_us(lambda: attnkit.attention(qd, kd, vd, causal=True)),
        "launcher": host_us(lambda: flash_fwd.flash_fwd(qd, kd, vd, **opts)),
        "empty_x2": host_us(lambda: (torch.empty_like(qd), torch.empty(16, 16, 1024,
                                                                        device="cuda"))),
        "api_bwd": host_us(backward, calls=20),
    }
    for name, us in timings.items():
        print(f"host {name:18s} {us:8.1f} us", flush=True)
    prof = cProfile.Profile()
    torch.cuda.synchronize()
    prof.enable()
    for i in range(400):
        attnkit.attention(q, k, v, causal=True)
        if i % 50 == 49:
            torch.cuda.synchronize()
    prof.disable()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(args.top)
    print(text.getvalue())


if __name__ == "__main__":
    main()
