"""Where the persistent Gluon forward with two Q slots goes wrong (GPU only; step 12 of
NOTES-flash.md): per shape, Q slots, plain or overlapped walk, split walk or not (step 13:
two slots fail with the plain split walk at every causal shape, and with the plain unsplit
walk only at these two) and grid (``programs``), the
largest error of the output against the float64 oracle, and each ``(batch, head, first row)``
block of 64 rows whose error passes 0.05; then the GPU tests' path at the shapes where they
failed (``tests/flash_check.check``), three times each. Writes ``$OUT/debug-q2.json``.

    PYTHONPATH=. python benchmarks/debug_q2.py   # on an H100/H200
"""
import functools
import itertools
import json
import os

import torch

from attnkit.kernels import flash_fwd_gluon as ffg
from tests.flash_check import Case, check
from tests.oracle import attention64

torch.manual_seed(0)
res = {}
for name, (b, sq, sk, h, window) in {"300x256": (2, 300, 256, 4, (-1, -1)),
                                     "1000-left255": (1, 1000, 1000, 4, (255, -1))}.items():
    q = torch.randn(b, sq, h, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, sk, h, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(b, sk, h, 128, device="cuda", dtype=torch.bfloat16)
    want, _ = attention64(q, k, v, causal=True, window=window)
    for qs, overlap, split, programs in itertools.product((1, 2), (False, True), (False, True),
                                                          (None, 1, 12)):
        out = torch.full_like(q, float("nan"))
        lse = torch.empty(b, h, sq, device="cuda")
        ffg.gluon_fwd(q, k, v, out, lse, causal=True, scale=128 ** -0.5,
                      window=window, q_slots=qs, overlap=overlap, programs=programs,
                      stages=2, split_masks=split)
        torch.cuda.synchronize()
        err = (out.double() - want).abs().nan_to_num(1e9)  # [b, sq, h, d]
        bad = []
        for bi in range(b):
            for hi in range(h):
                for r0 in range(0, sq, 64):
                    e = float(err[bi, r0:r0 + 64, hi].max())
                    if e > 0.05:
                        bad.append([bi, hi, r0, round(e, 2)])
        key = (f"{name} q{qs} {'ov' if overlap else 'plain'}{' split' if split else ''}"
               f" p{programs}")
        res[key] = {"max": float(err.max()), "bad": bad[:12], "nbad": len(bad)}
        print(key, res[key]["max"], len(bad), bad[:6], flush=True)
# the tests' own path (``tests/flash_check.check``: attnkit.attention, then its backward),
# three times each, to tell the tests' failures from this script's passes
for name, case in {"check 300x256": Case((2, 300, 256, 4, 4, 128, 128), causal=True),
                   "check 1000-left255": Case((1, 1000, 1000, 4, 4, 128, 128), causal=True,
                                              window=(255, -1))}.items():
    for qs, split in ((1, False), (2, False), (2, True)):
        plain = functools.partial(ffg.gluon_fwd, stages=2, overlap=False, q_slots=qs,
                                  split_masks=split)
        kept, ffg.gluon_fwd = ffg.gluon_fwd, plain
        os.environ["ATTNKIT_FLASH_GLUON"] = "1"
        try:
            for rep in range(3):
                key = f"{name} q{qs}{' split' if split else ''} #{rep}"
                try:
                    check(case, dtype=torch.bfloat16, device="cuda", deterministic=True,
                          dq_mode="kernel")
                    res[key] = "passed"
                except AssertionError as exc:
                    res[key] = f"failed: {str(exc)[:200]}"
                print(key, res[key], flush=True)
        finally:
            ffg.gluon_fwd = kept
            os.environ.pop("ATTNKIT_FLASH_GLUON")
with open(os.path.join(os.environ.get("OUT", "/tmp"), "debug-q2.json"), "w") as fh:
    json.dump(res, fh, indent=1)
