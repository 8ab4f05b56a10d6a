"""Step 6 probe of benchmarks/NOTES-flash.md: the backward's dQ path, for one short device
call.

For each prefill shape with a dense backward (every case of the prefill suite but the packed
one), the whole backward launcher (``flash_bwd.flash_bwd``: preprocess, dK/dV kernel, dQ
kernel) timed by ``do_bench`` (median) under each path the environment overrides select:

- ``atomic``: dQ added with atomics from the dK/dV kernel, which then reads through pointers
  (the shipped path for MHA at 4k+ tokens and head dims up to 128 before step 6);
- ``two``: two launches one after the other, the dK/dV kernel on descriptors at 4k+ tokens;
- ``two_overlap``: the same with the dQ kernel on a side stream (``_overlap``);
- ``auto``: whatever the launcher picks with no override.

``results/probe-h200-2026-12-01-step6.json`` also has ``atomic_direct`` and ``two_direct``
rows, and ``auto`` there is ``two_direct`` at 4k+: they were measured at commit e29d9dd, where
the dK/dV kernel could load each query tile's LSE and delta with volatile loads, outside
Triton's software pipeline (``ATTNKIT_FLASH_ROWS=direct``). Offline (unspecialised
arguments) that cut the kernel's spills on descriptors from 216 to 56 bytes per thread, but it
ran slower at 9 of 11 shapes (by up to 14%; within 1.5% at the other two), so it was taken out
again.

Each path's gradients are compared with the ``auto`` path's on the same inputs
(``rel_err_vs_auto``: max abs difference over max abs value; rounding only, about 1e-3).

Usage (CUDA)::

    PYTHONPATH=. OUT=/tmp python benchmarks/probe_step6.py [case substring ...]
    # -> $OUT/probe6.json
    PYTHONPATH=. OUT=/tmp python benchmarks/probe_step6.py window_tiles
    # -> $OUT/probe6-window.json: the window case's backward with fixed tile pairs
"""

from __future__ import annotations

import json
import os
import sys
import time

import torch
import triton.testing

from attnkit.kernels import flash_bwd, flash_fwd
from benchmarks.probe_step5 import _dense_case, gpu_state

OUT = os.environ.get("OUT", "/tmp")
PATHS = {
    "auto": {},
    "atomic": {"ATTNKIT_FLASH_DQ": "atomic"},
    "two": {"ATTNKIT_FLASH_DQ": "kernel", "ATTNKIT_FLASH_OVERLAP": "0"},
    "two_overlap": {"ATTNKIT_FLASH_DQ": "kernel", "ATTNKIT_FLASH_OVERLAP": "1"},
}
CASES = ("mha d128 s16k full", "mha d128 s4k full", "mha d128 s1k full", "mha d128 s4k causal",
         "mha d128 s16k causal", "mha d128 s1k causal", "window 1024 d128 s16k causal",
         "gqa 32:8 d128 s4k full", "mha d64 s16k full", "mha d64 s4k causal",
         "mha d64 s16k causal", "gqa 32:8 d128 s4k causal", "mla d192/128 s4k full")


def _with_env(env: dict, fn):
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return fn()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def time_paths(name: str, paths: dict, *, reference: str, extra=None) -> dict:
    """The whole backward of prefill case ``name`` under each environment of ``paths``
    (path -> variables): ``do_bench`` median ms and the largest gradient difference from the
    ``reference`` path's (``rel_err_vs_<reference>``: max abs difference over max abs value),
    plus what ``extra(backward)`` returns, called under the path's environment."""
    q, k, v, opts = _dense_case(name)
    out, lse = flash_fwd.flash_fwd(q, k, v, **opts)
    do = torch.randn_like(out)

    def backward():
        return flash_bwd.flash_bwd(do, q, k, v, out, lse, deterministic=False, **opts)

    row = {}
    want = _with_env(paths[reference], backward)
    for path, env in paths.items():
        got = _with_env(env, backward)
        err = max(float((g.float() - w.float()).abs().max() / (w.float().abs().max() + 1e-6))
                  for g, w in zip(got, want))
        ms = _with_env(env, lambda: triton.testing.do_bench(
            backward, warmup=100, rep=200, return_mode="median"))
        row[path] = {"ms": round(ms, 4), f"rel_err_vs_{reference}": round(err, 5)}
        if extra is not None:
            row[path].update(_with_env(env, lambda: extra(backward)))
    return row


def run_cases(names, one_case, path: str) -> dict:
    """``one_case(name)`` for each name, a failure recorded in its place; the JSON (with the
    GPU's state at the start and end and the elapsed time) rewritten to ``path`` after each
    case, so that a call cut short keeps what ran."""
    result = {"gpu_start": gpu_state()}
    start = time.perf_counter()
    for name in names:
        try:
            result[name] = one_case(name)
        except Exception as exc:  # one case's failure must not lose the others
            result[name] = f"failed: {type(exc).__name__}: {exc}"[:800]
        torch.cuda.empty_cache()
        print(name, json.dumps(result[name]), flush=True)
        result["elapsed_s"] = round(time.perf_counter() - start, 1)
        with open(path, "w") as fh:
            json.dump(result, fh, indent=1)
    result["gpu_end"] = gpu_state()
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)
    return result


def one_case(name: str) -> dict:
    return time_paths(name, PATHS, reference="auto", extra=lambda backward: {
        "dkdv_pick": str(flash_bwd._bwd_dkdv_kernel.best_config)})


WINDOW_TILES = {"dkdv 64x128 w8 s3, dq 128x64 w8 s3": ((64, 128, 8, 3), (128, 64, 8, 3)),
                "dkdv 64x64 w4 s2, dq 64x64 w4 s2": ((64, 64, 4, 2), (64, 64, 4, 2)),
                "dkdv 64x64 w4 s2, dq 128x64 w8 s3": ((64, 64, 4, 2), (128, 64, 8, 3)),
                "dkdv 64x128 w8 s3, dq 64x64 w4 s2": ((64, 128, 8, 3), (64, 64, 4, 2))}


def window_tiles(name: str = "window 1024 d128 s16k causal") -> dict:
    """The whole backward of ``name`` with each pair of tiles the autotuner picked in runs 5
    and 6 (and the two mixes), sequential and overlapped."""
    q, k, v, opts = _dense_case(name)
    out, lse = flash_fwd.flash_fwd(q, k, v, **opts)
    do = torch.randn_like(out)
    saved = flash_bwd.DKDV_TILES[128], flash_bwd.DQ_TILES[128]
    row = {}
    try:
        for label, (dkdv, dq) in WINDOW_TILES.items():
            flash_bwd.DKDV_TILES[128], flash_bwd.DQ_TILES[128] = (dkdv,), (dq,)
            flash_bwd._bwd_dkdv_kernel.cache.clear()
            flash_bwd._bwd_dq_kernel.cache.clear()
            for overlap in ("0", "1"):
                row[f"{label}, overlap {overlap}"] = round(_with_env(
                    {"ATTNKIT_FLASH_OVERLAP": overlap}, lambda: triton.testing.do_bench(
                        lambda: flash_bwd.flash_bwd(do, q, k, v, out, lse, deterministic=False,
                                                    **opts),
                        warmup=100, rep=200, return_mode="median")), 4)
            print(label, row, flush=True)
    finally:
        flash_bwd.DKDV_TILES[128], flash_bwd.DQ_TILES[128] = saved
        flash_bwd._bwd_dkdv_kernel.cache.clear()
        flash_bwd._bwd_dq_kernel.cache.clear()
    return row


def main() -> None:
    if sys.argv[1:] == ["window_tiles"]:
        result = {"gpu_start": gpu_state(), "window_tiles": window_tiles(),
                  "gpu_end": gpu_state()}
        with open(os.path.join(OUT, "probe6-window.json"), "w") as fh:
            json.dump(result, fh, indent=1)
        return
    wanted = [c for c in CASES if not sys.argv[1:] or any(a in c for a in sys.argv[1:])]
    run_cases(wanted, one_case, os.path.join(OUT, "probe6.json"))

if __name__ == "__main__":
    main()
