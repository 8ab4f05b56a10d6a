"""Kernel-level sweep of attnkit's flash kernels: every prefill shape, every backward mode.

A tuning aid beside the harness (``attnkit bench``), made for one short device call:

- ``--warm I/N`` compiles (and autotunes, untimed) slice I of N of the work list; run N such
  processes in parallel first so the timed pass finds every binary in Triton's disk cache.
- the timed pass, for each shape of the prefill suite: the forward launcher alone
  (``flash_fwd``, autotuned), the backward launcher alone in each dQ mode (``atomic``,
  ``kernel``), the public ``attnkit.attention`` forward and autograd backward (host
  overhead included), and SDPA's FlashAttention-2 and cuDNN backends on the same inputs. It
  records the autotuner's pick and its timing of every candidate config.

``--wide`` adds candidate configs to the tile tables (for exploring; the tables in the kernel
modules are what ships). Rates are TFLOP/s with the harness's FLOP count (visible pairs,
backward 2.5x forward). JSON rows are written after every shape.

``--tma none/all`` times the kernels once per ``ATTNKIT_FLASH_TMA`` value (pointer loads
against TMA descriptors; keys get a ``_none``/``_all`` suffix); ``--no-peers`` skips the API and
SDPA timings.

Usage: ``PYTHONPATH=. python benchmarks/flash_sweep.py --json out.json [--wide] [--only TEXT]
[--tma none/all] [--no-peers]``
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import triton
import triton.testing

from attnkit.bench.cases import make_inputs
from attnkit.bench.suites.prefill import cases as prefill_cases
from attnkit.kernels import flash_bwd as bwd_mod
from attnkit.kernels import flash_fwd as fwd_mod

MODES = ("atomic", "kernel")
# Extra candidates for --wide, by padded head-dim width.
WIDE = {
    "fwd": {64: ((128, 128, 4, 3), (64, 128, 4, 3), (128, 64, 4, 3), (64, 64, 4, 4)),
            128: ((128, 128, 8, 2), (64, 128, 4, 3), (128, 64, 4, 3), (64, 64, 4, 4),
                  (128, 32, 4, 3), (64, 32, 4, 3)),
            256: ((64, 32, 4, 2), (64, 64, 4, 3))},
    "dkdv": {128: ((64, 128, 8, 4), (128, 128, 8, 2))},
}


def widen() -> None:
    """Add the ``WIDE`` candidates to the kernel modules' tables (in place: the pruners hold
    the dict objects)."""
    tables = {"fwd": fwd_mod.FWD_TILES, "dkdv": bwd_mod.DKDV_TILES}
    for name, extra in WIDE.items():
        for width, rows in extra.items():
            tables[name][width] = tuple(tables[name][width]) + tuple(
                r for r in rows if r not in tables[name][width])


def bench(fn, warm_s: float) -> float:
    """Median ms of ``fn`` (CUDA events, L2 flushed), after ``warm_s`` of busy warm-up."""
    fn()
    torch.cuda.synchronize()
    start = time.time()
    while time.time() - start < warm_s:
        fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def picks(kernel) -> dict:
    """The autotuner's best config and every candidate's median ms for the last key."""
    best = getattr(kernel, "best_config", None)
    timings = getattr(kernel, "configs_timings", None) or {}

    def label(cfg):
        blocks = "x".join(str(v) for k, v in cfg.kwargs.items() if k.startswith("BLOCK"))
        return f"{blocks}w{cfg.num_warps}s{cfg.num_stages}"

    out = {"best": None if best is None else label(best)}
    for cfg, t in timings.items():
        t = t[0] if isinstance(t, (list, tuple)) else t
        out[label(cfg)] = round(float(t), 4)
    return out


def options(case, inputs) -> dict:
    """Launcher keyword arguments of a case."""
    d = case.head_dim
    packed = case.packed
    return dict(causal=case.causal, window=case.window, scale=d ** -0.5, softcap=0.0,
                key_padding_mask=None, attn_mask=None,
                cu_seqlens_q=inputs.get("cu_seqlens"), cu_seqlens_k=inputs.get("cu_seqlens"),
                max_seqlen_q=inputs["max_seqlen"] if packed else case.seq,
                max_seqlen_k=inputs["max_seqlen"] if packed else case.seq,
                dropout_p=0.0, dropout_seed=0)


def sdpa_times(case, inputs, warm_s) -> dict:
    """FA2 and cuDNN (SDPA) fwd/bwd ms for dense MHA/GQA cases without window, dv == d."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    if case.packed or case.window != (-1, -1):
        return {}
    q, k, v, do = (inputs[n].detach().transpose(1, 2) for n in ("q", "k", "v", "dout"))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = {}
    for name, backend in (("fa2", SDPBackend.FLASH_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(backend):
                kw = dict(is_causal=case.causal, enable_gqa=case.heads_q != case.heads_kv)
                o = sdpa(q, k, v, **kw)
                out[f"{name}_fwd_ms"] = bench(lambda kw=kw: sdpa(q, k, v, **kw), warm_s)
                out[f"{name}_bwd_ms"] = bench(
                    lambda o=o: torch.autograd.grad(o, (q, k, v), do, retain_graph=True), warm_s)
        except RuntimeError as err:
            out[f"{name}_error"] = str(err).splitlines()[0][:120]
    return out


def _kernels(row, case, inputs, opts, *, warm_s, timed, modes, tag) -> None:
    """Time the forward and each backward mode into ``row`` (keys suffixed ``tag``)."""
    q, k, v, do = (inputs[n].detach() for n in ("q", "k", "v", "dout"))
    flops = row["fwd_gflop"] * 1e9
    try:
        out, lse = fwd_mod.flash_fwd(q, k, v, **opts)
        if timed:
            row[f"fwd{tag}_ms"] = bench(lambda: fwd_mod.flash_fwd(q, k, v, **opts), warm_s)
            row[f"fwd{tag}_tflops"] = flops / row[f"fwd{tag}_ms"] / 1e9
        row[f"fwd{tag}_cfg"] = picks(fwd_mod._flash_fwd_kernel)
    except Exception as err:
        row[f"fwd{tag}_error"] = f"{type(err).__name__}: {err}"[:300]
        return
    for mode in modes:
        os.environ["ATTNKIT_FLASH_DQ"] = mode
        try:
            def call(det=mode != "atomic"):
                return bwd_mod.flash_bwd(do, q, k, v, out, lse, deterministic=det, **opts)
            call()
            if timed:
                ms = bench(call, warm_s)
                row[f"bwd_{mode}{tag}_ms"] = ms
                row[f"bwd_{mode}{tag}_tflops"] = 2.5 * flops / ms / 1e9
            kern = {"atomic": bwd_mod._bwd_dkdv_kernel, "kernel": bwd_mod._bwd_dq_kernel}[mode]
            row[f"bwd_{mode}{tag}_cfg"] = picks(kern)
            if mode == "kernel":
                row[f"bwd_kernel_dkdv{tag}_cfg"] = picks(bwd_mod._bwd_dkdv_kernel)
        except Exception as err:  # keep going: report the failing mode
            row[f"bwd_{mode}{tag}_error"] = f"{type(err).__name__}: {err}"[:300]
        finally:
            os.environ.pop("ATTNKIT_FLASH_DQ", None)


def run_case(case, *, warm_s: float, timed: bool, modes=MODES, device: str = "cuda",
             tma=("auto",), peers: bool = True) -> dict:
    """One shape: the kernels under each ``ATTNKIT_FLASH_TMA`` value of ``tma`` (keys tagged
    ``_<value>`` unless it is the only ``auto``), then (``peers``) the API and SDPA."""
    import attnkit
    inputs = make_inputs(case, torch.device(device), seed=0)
    opts = options(case, inputs)
    flops = 2 * case.visible_pairs() * case.heads_q * (case.head_dim + case.dv)
    row = {"case": case.name, "fwd_gflop": flops / 1e9}
    t0 = time.time()
    for value in tma:
        os.environ["ATTNKIT_FLASH_TMA"] = value
        try:
            tag = "" if tuple(tma) == ("auto",) else f"_{value.replace(',', '+')}"
            _kernels(row, case, inputs, opts, warm_s=warm_s, timed=timed, modes=modes, tag=tag)
        finally:
            os.environ.pop("ATTNKIT_FLASH_TMA", None)
    if timed and peers:
        # The public API (host overhead included), default dQ choice.
        qg, kg, vg = (inputs[n] for n in ("q", "k", "v"))
        kw = dict(causal=case.causal, window=case.window)
        if case.packed:
            kw.update(cu_seqlens_q=inputs["cu_seqlens"], cu_seqlens_k=inputs["cu_seqlens"],
                      max_seqlen_q=inputs["max_seqlen"], max_seqlen_k=inputs["max_seqlen"])
        o = attnkit.attention(qg, kg, vg, **kw)
        row["api_fwd_ms"] = bench(lambda: attnkit.attention(qg, kg, vg, **kw), warm_s)
        row["api_bwd_ms"] = bench(
            lambda: torch.autograd.grad(o, (qg, kg, vg), inputs["dout"], retain_graph=True),
            warm_s)
        seq = inputs["max_seqlen"] if case.packed else case.seq  # what the launcher sees
        tma = bwd_mod._dkdv_tma(qg, kg, vg, inputs["dout"], mask_kind=0, seq=seq)
        row["api_dq_mode"] = "atomic" if bwd_mod._atomic_dq_pays(
            case.heads_q // case.heads_kv, seq, case.head_dim, tma=tma,
            window=case.window[0] >= 0) else "kernel"
        row.update(sdpa_times(case, inputs, warm_s))
        for key in [k for k in row if k.endswith("_ms") and k.startswith(("fa2", "cudnn"))]:
            mult = 1.0 if "_fwd_" in key else 2.5
            row[key.replace("_ms", "_tflops")] = mult * flops / row[key] / 1e9
    row["seconds"] = round(time.time() - t0, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--wide", action="store_true", help="more candidate configs")
    parser.add_argument("--warm", default=None, help="I/N: compile slice I of N, untimed")
    parser.add_argument("--only", action="append", default=[], help="case name substring")
    parser.add_argument("--warm-s", type=float, default=0.3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--tma", default="auto",
                        help="ATTNKIT_FLASH_TMA values to compare, separated by '/'")
    parser.add_argument("--no-peers", action="store_true", help="kernels only: no API, SDPA")
    args = parser.parse_args()
    tma = tuple(args.tma.split("/"))
    if args.wide:
        widen()
    todo = [c for c in prefill_cases() if not args.only or any(s in c.name for s in args.only)]
    # Most informative first (the shapes furthest from their bars).
    first = ("mha d128 s1k causal", "window", "mha d128 s4k", "gqa", "mla", "mha d128 s16k")
    todo.sort(key=lambda c: next((i for i, s in enumerate(first) if s in c.name), len(first)))
    modes = tuple(args.modes.split(","))
    if args.warm:
        part, parts = (int(x) for x in args.warm.split("/"))
        for i, case in enumerate(todo):
            for mode in modes:
                if (i * len(modes) + modes.index(mode)) % parts == part:
                    try:
                        run_case(case, warm_s=0, timed=False, modes=(mode,), tma=tma,
                                 peers=False)
                    except Exception as err:
                        print(f"warm {case.name} {mode}: {type(err).__name__}: {err}"[:300])
        return
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
               "wide": args.wide, "rows": []}
    for case in todo:
        try:
            row = run_case(case, warm_s=args.warm_s, timed=True, modes=modes, tma=tma,
                           peers=not args.no_peers)
        except Exception as err:
            row = {"case": case.name, "error": f"{type(err).__name__}: {err}"[:300]}
        results["rows"].append(row)
        short = {k: round(v, 1) for k, v in row.items() if k.endswith("tflops")}
        best = {k[:-4]: v.get("best") for k, v in row.items() if k.endswith("_cfg")}
        errors = {k: v for k, v in row.items() if k.endswith("error")}
        print(case.name, short, best, errors or "", flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
