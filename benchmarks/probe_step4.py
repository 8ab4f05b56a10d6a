"""Two probes left open by step 4 of benchmarks/NOTES-flash.md (one short device call).

1. A dense bool mask with TMA descriptors forced on one kernel at a time (``fwd``, ``dkdv``,
   ``dq``; two launches): does the output match the oracle? ``use_tma`` normally refuses
   descriptors beside a dense mask (they failed in the GPU tests with all three kernels on
   descriptors). At d 64 and d 128: the forward takes descriptors at width 128 only (the
   committed result of 2026-12-01 ran d 64 alone, so its forward leg stayed on pointers).
2. The d128 1k causal forward launcher alone (16 x 1024 tokens, 16 heads, bf16, pointers):
   the autotuner's candidate timings, then twelve ``do_bench`` medians in a row. In the
   prefill suite this row has varied by 1.4x from run to run.

Usage (CUDA; under ``TRITON_INTERPRET=1`` only the first probe runs, in fp16)::

    PYTHONPATH=. OUT=/tmp python benchmarks/probe_step4.py   # -> $OUT/probe.json
"""

from __future__ import annotations

import json
import os

import torch
import triton.testing

from attnkit.kernels import flash_bwd, flash_common, flash_fwd
from tests.flash_check import Case, check


def mask_with_descriptors(device: str, dtype: torch.dtype) -> dict:
    """Probe 1: ``{"mask-<kernel>[-d128]": "ok" or the failed assertion}``."""
    real = flash_common.use_tma

    def forced(kernel, *tensors, mask_kind=0):  # ignore the dense-mask refusal
        return real(kernel, *tensors, mask_kind=0)

    results = {}
    for d in (64, 128):
        for kernel in ("fwd", "dkdv", "dq"):
            key = f"mask-{kernel}" if d == 64 else f"mask-{kernel}-d{d}"
            flash_fwd.use_tma = flash_bwd.use_tma = forced
            try:
                check(Case((2, 130, 170, 4, 2, d, d), mask=("bool", "full")), dtype=dtype,
                      device=device, deterministic=True, dq_mode="kernel", tma=kernel)
                results[key] = "ok"
            except AssertionError as err:
                results[key] = str(err)[:400]
            finally:
                flash_fwd.use_tma = flash_bwd.use_tma = real
    return results


def causal_1k_forward() -> dict:
    """Probe 2: the autotuner's pick and candidates, then a series of medians (ms)."""
    q = torch.randn(16, 1024, 16, 128, device="cuda", dtype=torch.bfloat16)
    k, v = torch.randn_like(q), torch.randn_like(q)
    opts = dict(causal=True, window=(-1, -1), scale=128 ** -0.5, softcap=0.0,
                key_padding_mask=None, attn_mask=None, cu_seqlens_q=None, cu_seqlens_k=None,
                max_seqlen_q=1024, max_seqlen_k=1024, dropout_p=0.0, dropout_seed=0)
    os.environ["ATTNKIT_FLASH_TMA"] = "none"
    try:
        def run():
            return flash_fwd.flash_fwd(q, k, v, **opts)

        run()
        torch.cuda.synchronize()
        tuner = flash_fwd._flash_fwd_kernel
        candidates = {str(c): (t[0] if isinstance(t, (list, tuple)) else t)
                      for c, t in (tuner.configs_timings or {}).items()}
        series = [triton.testing.do_bench(run, warmup=25 if i < 6 else 200, rep=100,
                                          return_mode="median") for i in range(12)]
    finally:
        os.environ.pop("ATTNKIT_FLASH_TMA", None)
    return {"pick": str(tuner.best_config), "cand": candidates,
            "fwd_ms_series": [round(t, 4) for t in series]}


def main() -> None:
    cuda = torch.cuda.is_available()
    out = mask_with_descriptors("cuda" if cuda else "cpu",
                                torch.bfloat16 if cuda else torch.float16)
    if cuda:
        out.update(causal_1k_forward())
    print(json.dumps(out, indent=1))
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "probe.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
