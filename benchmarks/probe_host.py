"""Host-time probe (benchmarks/NOTES-flash.md step 7): where the launchers' host time goes.

The 1k causal forward takes 0.22 ms on the GPU and 0.1-0.2 ms of host time per call on the
H200 machine's CPU (``probe-h200-2026-12-01-step7.json``), so in ``do_bench`` (which flushes
the L2 between calls) it is timed host-bound whenever the host is slow. This probe times the
host side of ``flash_fwd``, ``flash_bwd`` and the public ``attnkit.attention`` forward and
backward at one case, and profiles each with cProfile (top functions by own time).

Usage (CUDA)::

    PYTHONPATH=. OUT=/tmp python benchmarks/probe_host.py ["mha d128 s1k causal"]
    # -> $OUT/probe-host.json, $OUT/probe-host.txt
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import sys

import torch

import attnkit
from attnkit.kernels import flash_bwd, flash_fwd
from benchmarks.probe_step5 import _dense_case, host_us

OUT = os.environ.get("OUT", "/tmp")


def profile(fn, calls: int = 200) -> str:
    """cProfile's top 30 functions by own time over ``calls`` calls."""
    prof = cProfile.Profile()
    torch.cuda.synchronize()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
    return text.getvalue()


def main() -> None:
    name = sys.argv[1] if sys.argv[1:] else "mha d128 s1k causal"
    q, k, v, opts = _dense_case(name)
    out, lse = flash_fwd.flash_fwd(q, k, v, **opts)
    do = torch.randn_like(out)
    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    public = dict(causal=opts["causal"], window=opts["window"])

    def fwd():
        return flash_fwd.flash_fwd(q, k, v, **opts)

    def bwd():
        return flash_bwd.flash_bwd(do, q, k, v, out, lse, deterministic=False, **opts)

    def api_fwd():
        return attnkit.attention(qg, kg, vg, **public)

    def api_fwd_bwd():
        o = attnkit.attention(qg, kg, vg, **public)
        o.backward(do)

    def api_nograd():
        with torch.no_grad():
            return attnkit.attention(q, k, v, **public)

    result, texts = {"case": name}, []
    for label, fn in (("flash_fwd", fwd), ("flash_bwd", bwd), ("api_fwd_nograd", api_nograd),
                      ("api_fwd", api_fwd), ("api_fwd_bwd", api_fwd_bwd)):
        for _ in range(3):
            fn()  # tune and warm
        torch.cuda.synchronize()
        result[f"{label}_host_us"] = round(host_us(fn, calls=200), 1)
        texts.append(f"===== {label}: {result[f'{label}_host_us']} us per call\n{profile(fn)}")
        print(label, result[f"{label}_host_us"], flush=True)
    with open(os.path.join(OUT, "probe-host.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(OUT, "probe-host.txt"), "w") as fh:
        fh.write("\n".join(texts))


if __name__ == "__main__":
    main()
