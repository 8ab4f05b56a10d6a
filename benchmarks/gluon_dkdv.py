"""Probe for the Gluon dK/dV kernel of the flash backward (``attnkit/kernels/flash_bwd_gluon.py``).

``--compile`` compiles it for sm90 without a GPU (a Triton with Gluon: 3.6.0, as on the lent
H200) and prints the partitions' register split, the spills and the shared memory.
``--check`` (CUDA, sm90) times the whole backward and its kernels with each configuration of
the Gluon kernel and with the Triton one at the d 128 and MLA prefill shapes; its correctness
is held to the float64 oracle by ``tests/gpu/test_flash_gluon_gpu.py``. JSON to
``$OUT/gluon-dkdv.json``.

Step 8 of benchmarks/NOTES-flash.md tried a variant with two query tiles in flight (32x128,
four stages): wrong dK on the GPU and slower (results/gluon-dkdv-h200-2026-12-01-step9.json),
so it was dropped.

Usage::

    PYTHONPATH=. /tmp/t36/bin/python benchmarks/gluon_dkdv.py --compile   # no GPU
    PYTHONPATH=. python benchmarks/gluon_dkdv.py --check                  # CUDA, sm90
"""

from __future__ import annotations

import functools

from attnkit.kernels import flash_bwd_gluon as fbg
from attnkit.kernels.gluon_sm90 import column_split
from benchmarks.gluon_common import (
    D64_CASES,
    run_jobs,
    serving_backward,
    time_backward_configs,
)
from benchmarks.gluon_common import compile_sm90 as _compile
from benchmarks.gluon_common import main as _main

# the compute partitions: one of 8 warps; two of 4 warps; two taking turns
CONFIGS = {128: [dict(block_m=fbg.BLOCK_M, stages=fbg.STAGES, warpgroups=w, pingpong=p,
                      split_masks=sp)
                 for w, p, sp in ((1, False, False), (2, False, False), (2, True, False),
                                  (2, False, True))],
           192: [dict(block_m=m, stages=st, warpgroups=2, pingpong=False, split_masks=False)
                 for m, st in ((32, 2), (32, 3), (64, 2))],
           64: [dict(block_m=64, stages=st, warpgroups=2, pingpong=False, split_masks=sp)
                for st, sp in ((2, False), (3, False), (2, True))]}

SIGNATURE = {"q_ptr": "*{dt}", "k_ptr": "*{dt}", "v_ptr": "*{dt}", "do_ptr": "*{dt}",
             "lse_ptr": "*fp32", "delta_ptr": "*fp32", "dk_ptr": "*{dt}", "dv_ptr": "*{dt}",
             **{f"stride_{t}{a}": "i32" for t in ("q", "k", "v", "do", "dk", "dv")
                for a in "bsh"},
             "stride_lb": "i32", "stride_lh": "i32", "seq_q": "i32", "seq_k": "i32",
             "qk_scale": "fp32", "scale": "fp32"}


def compile_sm90(*, d: int = 128, causal: bool = False, block_m: int = fbg.BLOCK_M,
                 stages: int = fbg.STAGES, dtype: str = "bf16", warpgroups: int = fbg.WARPGROUPS,
                 pingpong: bool = fbg.PINGPONG, group: int = 1,
                 window: tuple[int, int] = (-1, -1), split_masks: bool = False) -> dict:
    """Compile the kernel for sm90 without a GPU (16 query heads, ``group`` per K/V head;
    ``window`` as ``flash_bwd_gluon.gluon_dkdv`` passes it); the register split and cubin
    resources."""
    warps = 8 // warpgroups
    const = dict(HK=16 // group, GROUP=group, D=d, D1=column_split(d), DV=min(d, 128),
                 WIN_LEFT=window[0], WIN_RIGHT=window[1], IS_CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=fbg.BLOCK_N,
                 STAGES=stages, WARPGROUPS=warpgroups, PINGPONG=pingpong,
                 SPLIT_MASKS=split_masks, num_warps=warps)
    return _compile(fbg.gluon_dkdv_kernel, SIGNATURE, const, warps=warps,
                    maxnreg=fbg.MAXNREG, dtype=dtype)


# The Gluon dK/dV kernel in a configuration wherever it applies, or the Triton one for None
_serving = functools.partial(serving_backward, module=fbg, launcher="gluon_dkdv",
                             rule="_gluon_dkdv", options=("warpgroups", "pingpong", "block_m", "stages", "split_masks"))


def _time_case(name: str) -> dict:
    """The whole deterministic backward and its kernels with the Triton dK/dV kernel and with
    each configuration of the Gluon one at the case's head dim (``time_backward_configs``)."""
    return time_backward_configs(name, CONFIGS, _serving, ("dkdv", "_dq"))


def check(out_path: str) -> dict:
    """``_time_case`` at the prefill shapes of head dim 64 (first: not yet measured), MLA's,
    the sliding window's, GQA's and MHA's d 128, written to ``out_path`` as it goes
    (``PROBE_CASES`` picks some)."""
    return run_jobs([(n, _time_case, (n,)) for n in (
        *D64_CASES,
        "mla d192/128 s4k full", "mla d192/128 s4k causal", "window 1024 d128 s16k causal",
        "gqa 32:8 d128 s4k full", "gqa 32:8 d128 s4k causal", "mha d128 s1k full",
        "mha d128 s1k causal", "mha d128 s4k full", "mha d128 s4k causal",
        "mha d128 s16k full", "mha d128 s16k causal")], out_path)


def main() -> None:
    _main(__doc__, CONFIGS, compile_sm90, check, "gluon-dkdv.json")


if __name__ == "__main__":
    main()
