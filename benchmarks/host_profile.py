"""Host time of the flash launchers and of ``attnkit.attention`` on CUDA, and where it goes.

At 1k tokens the forward kernel runs for about 0.22 ms on an H200 and the backward's kernels
for about 0.73 ms; when the host needs longer than that (plus ``do_bench``'s cache flush) to
issue one call, the benchmark measures the host, not the kernels (NOTES-flash.md steps 5 and
7). For one prefill case (default d128 1k causal) this times the host microseconds per call
of ``flash_fwd``, ``flash_bwd``, the public forward without and with autograd and the public
forward + backward, and profiles each with cProfile (top functions by own time).

Usage (CUDA)::

    PYTHONPATH=. OUT=/tmp python benchmarks/host_profile.py ["mha d128 s1k causal"] [--top 30]
    # -> $OUT/probe-host.json, $OUT/probe-host.txt (ATTNKIT_FAST_LAUNCH=0: without kept
    #    kernels, attnkit/kernels/fast_launch.py)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import time

import torch

import attnkit
from attnkit.kernels import flash_bwd, flash_fwd
from benchmarks.probe_step5 import _dense_case

OUT = os.environ.get("OUT", "/tmp")


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


def profile(fn, top: int, calls: int = 200) -> str:
    """cProfile's ``top`` functions by own time over ``calls`` calls."""
    prof = cProfile.Profile()
    torch.cuda.synchronize()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(top)
    return text.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", nargs="?", default="mha d128 s1k causal")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    q, k, v, opts = _dense_case(args.case)
    out, lse = flash_fwd.flash_fwd(q, k, v, **opts)
    do = torch.randn_like(out)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    public = dict(causal=opts["causal"], window=opts["window"])

    def api_fwd_bwd():
        attnkit.attention(qg, kg, vg, **public).backward(do)

    def api_no_grad():
        with torch.no_grad():
            return attnkit.attention(q, k, v, **public)

    paths = {
        "flash_fwd": lambda: flash_fwd.flash_fwd(q, k, v, **opts),
        "flash_bwd": lambda: flash_bwd.flash_bwd(do, q, k, v, out, lse, deterministic=False,
                                                 **opts),
        "api_fwd_nograd": api_no_grad,
        "api_fwd": lambda: attnkit.attention(qg, kg, vg, **public),
        "api_fwd_bwd": api_fwd_bwd,
    }
    result, texts = {"case": args.case}, []
    for label, fn in paths.items():
        for _ in range(3):
            fn()  # tune and warm
        us = result[f"{label}_host_us"] = round(host_us(fn), 1)
        texts.append(f"===== {label}: {us} us per call\n{profile(fn, args.top)}")
        print(label, us, flush=True)
    with open(os.path.join(OUT, "probe-host.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(OUT, "probe-host.txt"), "w") as fh:
        fh.write("\n".join(texts))


if __name__ == "__main__":
    main()
