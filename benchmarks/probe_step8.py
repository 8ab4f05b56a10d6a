"""Step 8 probe of benchmarks/NOTES-flash.md: dQ by TMA bulk reductions from the dK/dV
kernel against the separate dQ kernel, for one short device call.

For each prefill shape with a dense backward, the whole backward launcher
(``flash_bwd.flash_bwd``) timed by ``do_bench`` (median, L2 flushed) under each dQ path:

- ``split``: the dK/dV kernel, then (or beside it, ``_overlap``) the dQ kernel
  (``ATTNKIT_FLASH_DQ=kernel``): the shipped path of runs 6-8 wherever atomics did not pay;
- ``atomic_tma``: the dK/dV kernel on descriptors adds each dQ tile into a float32 buffer by
  one TMA bulk reduction (``ATTNKIT_FLASH_DQ=atomic ATTNKIT_FLASH_TMA=all``).

Both were tried and taken out again (benchmarks/NOTES-flash.md, step 8): the ``atomic_tma``
kernel exists at commit fada21b only (``results/probe-h200-2026-12-01-step8-atomic-tma.json``);
at later commits that environment runs atomics on pointers. The probe's first version, at
commit 735d164, measured a one-launch backward (dK/dV and dQ programs in one grid) against
``split`` (``results/probe-h200-2026-12-01-step8-fused.json``).

Each path's gradients are compared with the ``split`` path's on the same inputs
(``rel_err_vs_split``: max abs difference over max abs value; rounding only). The tiles the
autotuner picked are recorded per path, and the device time of each kernel (profiler) for
each path.

Usage (CUDA)::

    PYTHONPATH=. OUT=/tmp python benchmarks/probe_step8.py [case substring ...]
    # -> $OUT/probe8.json
"""

from __future__ import annotations

import os
import sys

from attnkit.kernels import flash_bwd
from benchmarks.probe_step5 import kernels_us
from benchmarks.probe_step6 import run_cases, time_paths

OUT = os.environ.get("OUT", "/tmp")
PATHS = {"split": {"ATTNKIT_FLASH_DQ": "kernel"},
         "atomic_tma": {"ATTNKIT_FLASH_DQ": "atomic", "ATTNKIT_FLASH_TMA": "all"}}
CASES = ("mha d128 s16k full", "mha d128 s4k full", "mha d128 s1k full", "mha d128 s4k causal",
         "mha d128 s16k causal", "mha d128 s1k causal", "gqa 32:8 d128 s4k full",
         "gqa 32:8 d128 s4k causal", "window 1024 d128 s16k causal", "mha d64 s16k full",
         "mha d64 s4k full", "mha d64 s1k full", "mha d64 s16k causal", "mha d64 s4k causal",
         "mha d64 s1k causal")


def one_case(name: str) -> dict:
    def extra(backward):
        return {"picks": {n: str(getattr(flash_bwd, n).best_config)
                          for n in ("_bwd_dkdv_kernel", "_bwd_dq_kernel")},
                "kernels_us": kernels_us(backward, ("_bwd_dkdv", "_bwd_dq", "_bwd_pre", "copy",
                                                    "elementwise"))}

    row = time_paths(name, PATHS, reference="split", extra=extra)
    row["atomic_tma_over_split"] = round(row["atomic_tma"]["ms"] / row["split"]["ms"], 4)
    return row


def main() -> None:
    wanted = [c for c in CASES if not sys.argv[1:] or any(a in c for a in sys.argv[1:])]
    run_cases(wanted, one_case, os.path.join(OUT, "probe8.json"))

if __name__ == "__main__":
    main()
