"""Probes left open by step 4 of benchmarks/NOTES-flash.md, for one short device call.

1. ``spread``: the 1k forward rows whose time has varied by 1.4x from suite run to suite run
   (d128 1k causal, d64 1k full) with an unchanged kernel and tile. For each, in one process:
   the harness's own timing of ``attnkit.attention`` (``time_ms``, the suite's settings) right
   away and after 3 s of idle GPU, the launcher alone, the kernel's own duration from the
   profiler (no host gaps), the host time of one API call, and the GPU's SM clock, power and
   throttle reasons before and after (``nvidia-smi``); then the prefill suite itself on the
   d128 1k cases (attnkit then every peer, as in a full run).
2. ``mask``: a dense bool mask with TMA descriptors forced on the forward alone at d 128
   (the suspect of step 4: dK/dV alone and dQ alone passed).
3. ``dkdv``: extra dK/dV tile candidates at d 128 (dense MHA 4k and 16k, two launches), the
   autotuner's timing of each.
4. ``dkdv_tma`` (not run by default): two launches with the dK/dV kernel on descriptors and its
   least-spilling candidates, against the shipped atomic path, at d128 16k and 4k full.

Usage (CUDA)::

    PYTHONPATH=. OUT=/tmp python benchmarks/probe_step5.py [spread] [mask] [dkdv] [dkdv_tma]
    # -> $OUT/probe5.json (default: all three)
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import torch
import triton.testing

from attnkit.bench import registry
from attnkit.bench.cases import make_inputs
from attnkit.bench.harness import run_suite, time_ms
from attnkit.bench.subject import ATTNKIT
from attnkit.bench.suites.prefill import cases as prefill_cases
from attnkit.kernels import flash_bwd, flash_common, flash_fwd
from benchmarks.flash_sweep import options

OUT = os.environ.get("OUT", "/tmp")
QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active"


def gpu_state() -> str:
    """``sm MHz, W, C, throttle mask`` from nvidia-smi (read only)."""
    try:
        return subprocess.run(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"nvidia-smi failed: {exc!r}"


def kernels_us(fn, names: tuple[str, ...]) -> dict:
    """Mean device time per call (us) of each kernel whose name holds one of ``names``, over
    10 calls (profiler: no host gaps)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    got = {}
    for event in prof.key_averages():
        if any(n in event.key for n in names):
            total = getattr(event, "device_time_total", None) or event.cuda_time_total
            got[event.key[:40]] = round(float(total) / 10, 1)
    return got


def kernel_us(fn, name: str) -> float | None:
    """Mean device time per call (us) of the first kernel whose name contains ``name``."""
    return next(iter(kernels_us(fn, (name,)).values()), None)


def host_us(fn, calls: int = 20) -> float:
    """Host time of one call (us), the queue kept from filling."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def spread() -> dict:
    settings = registry.Settings(device=torch.device("cuda"), backend="auto")
    found = {c.name: c for c in prefill_cases()}
    results = {}
    for name in ("mha d128 s1k causal", "mha d64 s1k full"):
        case = found[name]
        inputs = make_inputs(case, settings.device, settings.seed)
        forward = ATTNKIT.build(case, inputs, settings)
        forward()
        q, k, v = (inputs[n].detach() for n in ("q", "k", "v"))
        opts = options(case, inputs)

        def launcher(q=q, k=k, v=v, opts=opts):
            return flash_fwd.flash_fwd(q, k, v, **opts)

        rows = []
        for idle in (0, 3, 0, 3):
            time.sleep(idle)
            before = gpu_state()
            api = time_ms(forward, settings)
            after = gpu_state()
            rows.append({"idle_s": idle, "api_ms": round(api, 4), "before": before,
                         "after": after,
                         "launcher_ms": round(time_ms(launcher, settings), 4),
                         "api_long_warm_ms": round(triton.testing.do_bench(
                             forward, warmup=1000, rep=100, return_mode="median"), 4)})
        results[name] = {
            "series": rows,
            "kernel_us": kernel_us(forward, "_flash_fwd_kernel"),
            "api_host_us": round(host_us(forward), 1),
            "launcher_host_us": round(host_us(launcher), 1),
            "pick": str(flash_fwd._flash_fwd_kernel.best_config),
        }
        del inputs, forward
        torch.cuda.empty_cache()
    suite = run_suite(registry.get("prefill"), settings, cases=["mha d128 s1k"], ceilings=False)
    results["suite"] = [{k: row.get(k) for k in ("case", "op", "fwd_ms", "bwd_ms", "detail")}
                        for row in suite["rows"]]
    results["gpu_after_suite"] = gpu_state()
    return results


def mask_fwd_d128() -> dict:
    from tests.flash_check import Case, check

    real = flash_common.use_tma

    def forced(kernel, *tensors, mask_kind=0):  # ignore the dense-mask refusal
        return real(kernel, *tensors, mask_kind=0)

    out = {}
    for mask in ("bool", "additive"):
        flash_fwd.use_tma = flash_bwd.use_tma = forced
        try:
            check(Case((2, 130, 170, 4, 2, 128, 128), mask=(mask, "full")), dtype=torch.bfloat16,
                  device="cuda", deterministic=True, dq_mode="kernel", tma="fwd")
            out[f"mask-{mask}-fwd-d128"] = "ok"
        except AssertionError as err:
            out[f"mask-{mask}-fwd-d128"] = str(err)[:400]
        finally:
            flash_fwd.use_tma = flash_bwd.use_tma = real
    return out


EXTRA_DKDV = ((128, 64, 8, 3), (128, 64, 8, 2), (128, 64, 4, 2))
# Descriptor-path candidates that spill least offline (sm90_resources.py --tma: STACK 136 and 128
# bytes against 216 for the table's 64x128 w8 s3).
EXTRA_DKDV_TMA = ((64, 128, 8, 4), (32, 128, 8, 4))


def _dense_case(name: str):
    case = {c.name: c for c in prefill_cases()}[name]
    inputs = make_inputs(case, torch.device("cuda"), 0)
    q, k, v = (inputs[n].detach() for n in ("q", "k", "v"))
    return q, k, v, options(case, inputs)


def _dkdv_one(name: str, extra, tma: str, time_backward: bool) -> dict:
    table = flash_bwd.DKDV_TILES
    saved = table[128]
    q, k, v, opts = _dense_case(name)
    o, lse = flash_fwd.flash_fwd(q, k, v, **opts)
    do = torch.randn_like(o)

    def backward(deterministic):
        return flash_bwd.flash_bwd(do, q, k, v, o, lse, deterministic=deterministic, **opts)

    row = {}
    if time_backward:  # the shipped default first, with the shipped table
        row["shipped_bwd_ms"] = triton.testing.do_bench(
            lambda: backward(False), warmup=200, rep=200, return_mode="median")
    table[128] = tuple(saved) + tuple(extra)
    os.environ["ATTNKIT_FLASH_DQ"] = "kernel"
    os.environ["ATTNKIT_FLASH_TMA"] = tma
    try:
        backward(True)
        torch.cuda.synchronize()
        tuner = flash_bwd._bwd_dkdv_kernel
        row.update(pick=str(tuner.best_config),
                   cand={str(c): (t[0] if isinstance(t, (list, tuple)) else t)
                         for c, t in (tuner.configs_timings or {}).items()})
        if time_backward:
            row["two_launch_bwd_ms"] = triton.testing.do_bench(
                lambda: backward(True), warmup=200, rep=200, return_mode="median")
    finally:
        table[128] = saved
        os.environ.pop("ATTNKIT_FLASH_DQ", None)
        os.environ.pop("ATTNKIT_FLASH_TMA", None)
    return row


def dkdv_candidates(extra=EXTRA_DKDV, tma="none",
                    names=("mha d128 s4k full", "mha d128 s16k full", "mha d128 s4k causal"),
                    time_backward=False) -> dict:
    """The autotuner's timing of the dK/dV table plus ``extra`` rows at d 128 (two launches,
    ``ATTNKIT_FLASH_TMA=tma``); with ``time_backward`` also the whole backward on that path
    against the shipped default (atomic dQ on pointers for these shapes)."""
    out = {}
    for name in names:
        out[name] = _dkdv_one(name, extra, tma, time_backward)
        torch.cuda.empty_cache()
    return out


def dkdv_tma() -> dict:
    """Two launches with the dK/dV kernel on descriptors (and its low-spill candidates) against
    the shipped atomic path, at the two dense d 128 shapes furthest behind Flex's backward."""
    return dkdv_candidates(EXTRA_DKDV_TMA, "dkdv", ("mha d128 s16k full", "mha d128 s4k full"),
                           time_backward=True)


def main() -> None:
    import sys

    wanted = sys.argv[1:] or ["spread", "mask", "dkdv"]  # which probes, by name
    out = {"gpu_start": gpu_state()}
    probes = {"spread": spread, "mask": mask_fwd_d128, "dkdv": dkdv_candidates,
              "dkdv_tma": dkdv_tma}
    for name, probe in ((n, probes[n]) for n in wanted):
        start = time.perf_counter()
        try:
            out[name] = probe()
        except Exception as exc:  # one probe's failure must not lose the others
            out[name] = f"failed: {type(exc).__name__}: {exc}"[:800]
        out[f"{name}_s"] = round(time.perf_counter() - start, 1)
        with open(os.path.join(OUT, "probe5.json"), "w") as fh:
            json.dump(out, fh, indent=1, default=str)
        print(name, json.dumps(out[name], default=str)[:3000], flush=True)


if __name__ == "__main__":
    main()
