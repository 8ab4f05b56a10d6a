"""The persistent Gluon forward's two schedules at the same prefill shapes, in one process and
in turns (GPU only; step 13 of NOTES-flash.md): ``attnkit.attention`` forward with the
overlapped softmax in 3 slots and with the plain walk in 2, chosen through
``flash_fwd_gluon.OVERLAP_MIN_CAUSAL_SEQ``, against SDPA cuDNN, as the prefill suite times
them (``attnkit.bench.harness.time_ms``). The suite's run 14 had 1k causal at d 128 8% slower
overlapped than run 13's plain walk, where the kernel probe had them even; this times both
alike. Writes ``$OUT/schedule-ab.json``.

    PYTHONPATH=. python benchmarks/schedule_ab.py                 # on an H100/H200
    AB_CASES="mha d128 s1k causal" AB_ROUNDS=5 python benchmarks/schedule_ab.py
"""
import functools
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import attnkit
from attnkit.bench.cases import make_inputs
from attnkit.bench.harness import time_ms
from attnkit.bench.registry import Settings
from attnkit.bench.suites import prefill
from attnkit.kernels import flash_fwd_gluon as ffg

WANTED = os.environ.get("AB_CASES", "mha d128 s1k causal,mha d128 s1k full,"
                        "mha d128 s4k causal").split(",")
ROUNDS = int(os.environ.get("AB_ROUNDS", "3"))
SCHEDULES = {"overlapped s3": 0, "plain s2": 1 << 30}  # OVERLAP_MIN_CAUSAL_SEQ
settings = Settings(device=torch.device("cuda"), warmup_ms=25, rep_ms=100)
res = {}
for case in [c for c in prefill.cases() if c.name in WANTED]:
    x = make_inputs(case, settings.device, seed=0)
    q, k, v = (x[n].detach() for n in "qkv")
    outs, times = {}, {name: [] for name in (*SCHEDULES, "sdpa-cudnn")}
    for _ in range(ROUNDS):
        for name, min_seq in SCHEDULES.items():
            ffg.OVERLAP_MIN_CAUSAL_SEQ = min_seq
            fn = functools.partial(attnkit.attention, q, k, v, causal=case.causal)
            outs[name] = fn()
            times[name].append(time_ms(fn, settings))
            res.setdefault(case.name, {})[f"{name} tiling"] = ffg.tiling
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [b, h, s, d]
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            times["sdpa-cudnn"].append(time_ms(functools.partial(
                F.scaled_dot_product_attention, qt, kt, vt, is_causal=case.causal), settings))
    a, b = outs.values()
    res[case.name].update({name: {"ms": t, "min_ms": min(t)} for name, t in times.items()})
    res[case.name]["max_abs_diff"] = float((a.float() - b.float()).abs().max())
    print(case.name, json.dumps(res[case.name]), flush=True)
with open(os.path.join(os.environ.get("OUT", "/tmp"), "schedule-ab.json"), "w") as fh:
    json.dump(res, fh, indent=1)
