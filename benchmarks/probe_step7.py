"""Step 7 probe of benchmarks/NOTES-flash.md: why the 1k causal cases slowed from run 6 to
run 7 (d128: forward 0.229 -> 0.360 ms, backward 0.776 -> 0.930 ms, same tiles picked).

For each case, with the kernels of HEAD and, when ``benchmarks/old_run6`` holds run 6's
``flash_fwd.py``/``flash_bwd.py`` (commit 3c5a949; not committed, copied in for the call),
with those: the forward's autotune (every candidate's timing and the pick), the forward and
the whole backward launcher timed by ``do_bench`` (median), their kernels' device time from
the profiler and their host time per call.

Usage (CUDA)::

    PYTHONPATH=. OUT=/tmp python benchmarks/probe_step7.py [case substring ...]
    # -> $OUT/probe7.json
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

import torch
import triton.testing

from benchmarks.probe_step5 import _dense_case, gpu_state, host_us, kernels_us

OUT = os.environ.get("OUT", "/tmp")
CASES = ("mha d128 s1k causal", "mha d64 s1k causal", "mha d128 s1k full")


def _impls() -> dict:
    impls = {"head": (importlib.import_module("attnkit.kernels.flash_fwd"),
                      importlib.import_module("attnkit.kernels.flash_bwd"))}
    try:
        impls["run6"] = (importlib.import_module("benchmarks.old_run6.flash_fwd"),
                         importlib.import_module("benchmarks.old_run6.flash_bwd"))
    except ImportError:
        pass
    return impls


def _timings(kernel) -> dict:
    return {str(c): round(t[0] if isinstance(t, (list, tuple)) else t, 4)
            for c, t in (getattr(kernel, "configs_timings", None) or {}).items()}


def one_case(name: str, fwd_mod, bwd_mod) -> dict:
    q, k, v, opts = _dense_case(name)
    fwd_mod._flash_fwd_kernel.cache.clear()

    def forward():
        return fwd_mod.flash_fwd(q, k, v, **opts)

    out, lse = forward()
    torch.cuda.synchronize()
    row = {"fwd_pick": str(fwd_mod._flash_fwd_kernel.best_config),
           "fwd_candidates_ms": _timings(fwd_mod._flash_fwd_kernel)}
    do = torch.randn_like(out)

    def backward():
        return bwd_mod.flash_bwd(do, q, k, v, out, lse, deterministic=False, **opts)

    backward()
    torch.cuda.synchronize()
    row["dkdv_pick"] = str(bwd_mod._bwd_dkdv_kernel.best_config)
    row["dkdv_candidates_ms"] = _timings(bwd_mod._bwd_dkdv_kernel)
    row["dq_pick"] = str(bwd_mod._bwd_dq_kernel.best_config)
    row["dq_candidates_ms"] = _timings(bwd_mod._bwd_dq_kernel)
    for label, fn, names in (("fwd", forward, ("_flash_fwd",)), ("bwd", backward, ("_bwd",))):
        row[f"{label}_ms"] = round(triton.testing.do_bench(fn, warmup=100, rep=300,
                                                           return_mode="median"), 4)
        row[f"{label}_kernels_us"] = kernels_us(fn, names)
        row[f"{label}_host_us"] = round(host_us(fn), 1)
    return row


def main() -> None:
    wanted = [c for c in CASES if not sys.argv[1:] or any(a in c for a in sys.argv[1:])]
    result = {"gpu_start": gpu_state()}
    start = time.perf_counter()
    for impl, (fwd_mod, bwd_mod) in _impls().items():
        for name in wanted:
            try:
                got = one_case(name, fwd_mod, bwd_mod)
            except Exception as exc:  # one case's failure must not lose the others
                got = f"failed: {type(exc).__name__}: {exc}"[:800]
            result[f"{impl} {name}"] = got
            torch.cuda.empty_cache()
            print(impl, name, json.dumps(got), flush=True)
            result["elapsed_s"] = round(time.perf_counter() - start, 1)
            with open(os.path.join(OUT, "probe7.json"), "w") as fh:
                json.dump(result, fh, indent=1)
    result["gpu_end"] = gpu_state()
    with open(os.path.join(OUT, "probe7.json"), "w") as fh:
        json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
