"""Probe for the Gluon flash forward (``attnkit/kernels/flash_fwd_gluon.py``).

``--compile`` compiles every configuration of ``CONFIGS`` for sm90 without a GPU (a Triton
with Gluon: 3.6.0, as on the lent H200) and prints the register split, spills and shared
memory. ``--check`` (CUDA, sm90) times the Triton forward (``ATTNKIT_FLASH_GLUON=0``) and each
configuration of the Gluon one at the d 128 prefill shapes, with their largest difference;
correctness is held to the float64 oracle by ``tests/gpu/test_flash_gluon_gpu.py``. JSON to
``$OUT/gluon-fwd.json``.

Step 8 of benchmarks/NOTES-flash.md timed a one-partition version of this kernel (8 compute
warps, optionally issuing the next tile's scores before the softmax): 3-29% slower than the
Triton forward (results/gluon-fwd-h200-2026-12-01-step9.json).

Usage::

    PYTHONPATH=. /tmp/t36/bin/python benchmarks/gluon_fwd.py --compile   # no GPU
    PYTHONPATH=. python benchmarks/gluon_fwd.py --check                  # CUDA, sm90
"""

from __future__ import annotations

import os

from attnkit.kernels import flash_fwd_gluon as ffg
from attnkit.kernels.gluon_sm90 import column_split
from benchmarks.gluon_common import D64_CASES, head_dim, run_jobs
from benchmarks.gluon_common import compile_sm90 as _compile
from benchmarks.gluon_common import main as _main

# (query tile, key tile, slots, compute partitions, persistent, softmax overlapping P V)
CONFIGS = {128: [dict(block_m=128, block_n=n, stages=st, warpgroups=w, persistent=p, overlap=o)
                 for n, st, w, p, o in ((128, 2, 1, False, False), (128, 2, 2, False, False),
                                        (64, 3, 2, False, False), (128, 2, 2, True, False),
                                        (128, 3, 2, True, False), (128, 2, 2, True, True),
                                        (128, 3, 2, True, True))]}
# two Q slots (the next tile's Q loads while this one runs), 2 K/V slots (d 128: 196 KB)
CONFIGS[128] += [dict(block_m=128, block_n=128, stages=2, warpgroups=2, persistent=True,
                      overlap=o, q_slots=2) for o in (False, True)]
# the key tiles that need no mask in a walk of their own (``_unmasked_tiles``), also with the
# overlapped softmax (3 slots: its measured best)
CONFIGS[128] += [dict(block_m=128, block_n=128, stages=st, warpgroups=2, persistent=True,
                      overlap=o, q_slots=q, split_masks=True)
                 for st, o, q in ((2, False, 1), (2, False, 2), (3, True, 1), (2, True, 2))]
# the Q slot handed back after the walk's last Q K^T (``EARLY_Q``), on the two shipped walks
CONFIGS[128] += [dict(block_m=128, block_n=128, stages=st, warpgroups=2, persistent=True,
                      overlap=o, split_masks=True, early_q=True)
                 for st, o in ((2, False), (3, True))]
# head dim 64 (half the shared memory per slot): the persistent kernel with 4 slots too
CONFIGS[64] = CONFIGS[128] + [dict(block_m=128, block_n=128, stages=4, warpgroups=2,
                                   persistent=True, overlap=o, q_slots=q)
                              for o in (False, True) for q in (1, 2)]

PERSISTENT_SIGNATURE = {"q_ptr": "*{dt}", "k_ptr": "*{dt}", "v_ptr": "*{dt}",
                        "out_ptr": "*{dt}", "lse_ptr": "*fp32",
                        **{n: "i32" for n in ("stride_qs", "stride_ks", "stride_vs",
                                              "stride_ob", "stride_os", "stride_oh",
                                              "stride_lb", "stride_lh", "batch", "seq_q",
                                              "seq_k")},
                        "qk_scale": "fp32"}

SIGNATURE = {"q_ptr": "*{dt}", "k_ptr": "*{dt}", "v_ptr": "*{dt}", "out_ptr": "*{dt}",
             "lse_ptr": "*fp32",
             **{f"stride_{t}{a}": "i32" for t in ("q", "k", "v", "o") for a in "bsh"},
             "stride_lb": "i32", "stride_lh": "i32", "seq_q": "i32", "seq_k": "i32",
             "qk_scale": "fp32"}


def compile_sm90(*, d: int = 128, causal: bool = False, block_m: int = ffg.BLOCK_M,
                 block_n: int = ffg.BLOCK_N, stages: int = ffg.STAGES,
                 warpgroups: int = ffg.WARPGROUPS, persistent: bool = False,
                 dtype: str = "bf16", window: tuple[int, int] = (-1, -1),
                 overlap: bool = False, dv: int | None = None, q_slots: int = 1,
                 split_masks: bool = False, early_q: bool = False) -> dict:
    """Compile the kernel for sm90 without a GPU (``window`` as ``flash_fwd_gluon.gluon_fwd``
    passes it; V's head dim ``dv``, default ``d``; ``d`` 128 or 192); the register split
    and cubin resources."""
    warps = 8 // warpgroups
    if persistent:
        const = dict(HQ=16, GROUP=1, D=d, D1=column_split(d), DV=dv or d, IS_CAUSAL=causal,
                     WIN_LEFT=window[0],
                     WIN_RIGHT=window[1], BLOCK_M=block_m, BLOCK_N=block_n,
                     STAGES=stages, PAIR=2, OVERLAP=overlap, Q_SLOTS=q_slots,
                     SPLIT_MASKS=split_masks, EARLY_Q=early_q, num_warps=4)
        return _compile(ffg.gluon_fwd_persistent_kernel, PERSISTENT_SIGNATURE, const, warps=4,
                        maxnreg=ffg.MAXNREG, dtype=dtype)
    const = dict(HQ=16, GROUP=1, D=d, D1=column_split(d), DV=dv or d, IS_CAUSAL=causal,
                 WIN_LEFT=window[0],
                 WIN_RIGHT=window[1], BLOCK_M=block_m, BLOCK_N=block_n,
                 STAGES=stages, WARPGROUPS=warpgroups, SPLIT_MASKS=split_masks,
                 num_warps=warps)
    return _compile(ffg.gluon_fwd_kernel, SIGNATURE, const, warps=warps,
                    maxnreg=ffg.MAXNREG, dtype=dtype)


def _time_case(name: str) -> dict:
    """The Triton forward's time (ms) and each Gluon configuration's, with its largest
    difference from the Triton output relative to the output's largest value."""
    import functools

    import torch
    import triton.testing

    from attnkit.kernels import flash_fwd
    from benchmarks.gluon_common import label
    from benchmarks.probe_step5 import _dense_case

    q, k, v, opts = _dense_case(name)
    os.environ["ATTNKIT_FLASH_GLUON"] = "0"
    try:
        shipped = functools.partial(flash_fwd.flash_fwd, q, k, v, **opts)
        want, _ = shipped()
        row = {"triton_ms": triton.testing.do_bench(shipped, warmup=50, rep=200,
                                                    return_mode="median")}
    finally:
        os.environ.pop("ATTNKIT_FLASH_GLUON")
    out, lse = torch.empty_like(want), torch.empty(q.shape[0], q.shape[2], q.shape[1],
                                                   device=q.device, dtype=torch.float32)
    for cfg in CONFIGS.get(head_dim(name), CONFIGS[128]):  # MLA's 192: d 128's tiles
        run = functools.partial(ffg.gluon_fwd, q, k, v, out, lse, causal=opts["causal"],
                                scale=opts["scale"], window=opts["window"],
                                **{"split_masks": False, "q_slots": 1, **cfg})  # as labelled
        try:
            run()
            err = float((out.float() - want.float()).abs().max()
                        / (want.float().abs().max() + 1e-6))
            row[label(cfg)] = {"ms": triton.testing.do_bench(run, warmup=50, rep=200,
                                                             return_mode="median"),
                               "rel_diff": err}
        except Exception as exc:  # report and go on
            row[label(cfg)] = f"failed: {type(exc).__name__}: {exc}"[:400]
    return row


def check(out_path: str) -> dict:
    """``_time_case`` at the prefill shapes of head dims 64, 128 and MLA's 192/128 (d 64
    first: not yet measured), written to ``out_path`` as it goes (``PROBE_CASES`` picks
    some)."""
    return run_jobs([(n, _time_case, (n,)) for n in (
        *D64_CASES,
        "window 1024 d128 s16k causal", "mla d192/128 s4k full", "mla d192/128 s4k causal",
        "mha d128 s1k full", "gqa 32:8 d128 s4k full", "mha d128 s1k causal",
        "mha d128 s4k full", "mha d128 s4k causal", "mha d128 s16k full",
        "mha d128 s16k causal", "gqa 32:8 d128 s4k causal")], out_path)


def main() -> None:
    _main(__doc__, CONFIGS, compile_sm90, check, "gluon-fwd.json")


if __name__ == "__main__":
    main()
