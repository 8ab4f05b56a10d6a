"""Probe for the Gluon dQ kernel of the flash backward (``attnkit/kernels/flash_dq_gluon.py``).

``--compile`` compiles every configuration of ``CONFIGS`` for sm90 without a GPU (a Triton
with Gluon: 3.6.0, as on the lent H200) and prints the register split, the spills and the
shared memory. ``--check`` (CUDA, sm90) times the whole deterministic backward and its
kernels with the Triton dQ kernel and with each configuration of the Gluon one
(``flash_bwd.GLUON_DQ``) at the prefill shapes of head dim 128 and MLA's 192/128, with the
largest difference of the gradients;
correctness is held to the float64 oracle by ``tests/gpu/test_flash_gluon_gpu.py``. JSON to
``$OUT/gluon-dq.json``.

Usage::

    PYTHONPATH=. /tmp/t36/bin/python benchmarks/gluon_dq.py --compile   # no GPU
    PYTHONPATH=. python benchmarks/gluon_dq.py --check                  # CUDA, sm90
"""

from __future__ import annotations

import functools

from attnkit.kernels import flash_dq_gluon as fdg
from attnkit.kernels.gluon_sm90 import column_split
from benchmarks.gluon_common import (
    D64_CASES,
    run_jobs,
    serving_backward,
    time_backward_configs,
)
from benchmarks.gluon_common import compile_sm90 as _compile
from benchmarks.gluon_common import main as _main

# (key tile, slots)
CONFIGS = {128: [dict(block_m=fdg.BLOCK_M, block_n=n, stages=st, split_masks=sp)
                 for n, st, sp in ((64, 2, False), (64, 3, False), (128, 2, False),
                                   (64, 2, True), (128, 2, True))],
           192: [dict(block_m=fdg.BLOCK_M, block_n=64, stages=st) for st in (2, 3)],
           64: [dict(block_m=fdg.BLOCK_M, block_n=n, stages=st, split_masks=sp)
                for n, st, sp in ((64, 2, False), (64, 3, False), (128, 2, False),
                                  (128, 3, False), (64, 2, True), (128, 2, True))]}

SIGNATURE = {"q_ptr": "*{dt}", "k_ptr": "*{dt}", "v_ptr": "*{dt}", "do_ptr": "*{dt}",
             "lse_ptr": "*fp32", "delta_ptr": "*fp32", "dq_ptr": "*{dt}",
             **{f"stride_{t}{a}": "i32" for t in ("q", "k", "v", "do", "dq") for a in "bsh"},
             "stride_lb": "i32", "stride_lh": "i32", "seq_q": "i32", "seq_k": "i32",
             "qk_scale": "fp32", "scale": "fp32"}


def compile_sm90(*, d: int = 128, causal: bool = False, block_m: int = fdg.BLOCK_M,
                 block_n: int = fdg.BLOCK_N_CAUSAL, stages: int = fdg.STAGES, dtype: str = "bf16",
                 window: tuple[int, int] = (-1, -1), split_masks: bool = False) -> dict:
    """Compile the kernel for sm90 without a GPU (16 heads; ``d`` 128, or 192 with v's 128
    as MLA's; ``window`` as ``flash_dq_gluon.gluon_dq`` passes it); the register split and
    cubin resources."""
    const = dict(HQ=16, GROUP=1, D=d, D1=column_split(d), DV=min(d, 128), IS_CAUSAL=causal, WIN_LEFT=window[0],
                 WIN_RIGHT=window[1], BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
                 SPLIT_MASKS=split_masks, num_warps=4)
    return _compile(fdg.gluon_dq_kernel, SIGNATURE, const, warps=4, maxnreg=fdg.MAXNREG,
                    dtype=dtype)


# The Gluon dQ kernel in a configuration wherever it applies, or the Triton one for None
_serving = functools.partial(serving_backward, module=fdg, launcher="gluon_dq",
                             rule="_gluon_dq", options=("block_n", "stages", "split_masks"))


def _time_case(name: str) -> dict:
    """The whole deterministic backward and its kernels with the Triton dQ kernel and with
    each configuration of the Gluon one at the case's head dim (``time_backward_configs``)."""
    return time_backward_configs(name, CONFIGS, _serving, ("dkdv", "_dq"))


def check(out_path: str) -> dict:
    """``_time_case`` at the prefill shapes of head dims 64 (first: not yet measured), 128
    and MLA's, written to ``out_path`` as it goes (``PROBE_CASES`` picks some)."""
    return run_jobs([(n, _time_case, (n,)) for n in (
        *D64_CASES,
        "mla d192/128 s4k full", "mla d192/128 s4k causal", "mha d128 s4k causal",
        "mha d128 s4k full", "mha d128 s16k causal", "mha d128 s1k causal",
        "gqa 32:8 d128 s4k full", "window 1024 d128 s16k causal", "mha d128 s16k full")],
        out_path)


def main() -> None:
    _main(__doc__, CONFIGS, compile_sm90, check, "gluon-dq.json")


if __name__ == "__main__":
    main()
