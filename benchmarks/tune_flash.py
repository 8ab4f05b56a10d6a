"""Quick timing of attnkit's Triton flash attention against SDPA's FA2 and cuDNN backends.

Not the benchmark harness (``attnkit bench``): a tuning aid. For each prefill shape (bf16,
hidden 2048, 16k tokens per batch) it checks the output against SDPA, then times forward and
backward (CUDA-event medians through ``triton.testing.do_bench``) of attnkit (both backward
modes), SDPA flash and SDPA cuDNN, and prints TFLOP/s. Also the extra shapes (GQA 32:8, packed
varlen, sliding window 1024, d=192/128) and peak memory of a single long sequence.

FLOPs: forward ``4 * b * h * sq * sk * d`` (halved for causal), backward 2.5x forward.

Usage: ``PYTHONPATH=. python benchmarks/tune_flash.py --json out.json [--quick] [--memory]``
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import triton
import triton.testing
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.functional import scaled_dot_product_attention as sdpa

import attnkit

TOKENS = 16384
HIDDEN = 2048


def _bench(fn) -> float:
    """Median milliseconds of ``fn``, after ~1 s of busy warm-up.

    Compiling and autotuning leave the GPU idle for seconds; its clocks drop and
    ``do_bench``'s own 25 ms warm-up does not bring them back (NOTES-flash.md, step 1b).
    """
    fn()
    torch.cuda.synchronize()
    start = time.time()
    while time.time() - start < 1.0:
        fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def _best_configs() -> str:
    """The autotuner's picks of the last launches (fwd, dkdv, dq), for the notes."""
    from attnkit.kernels import flash_bwd, flash_fwd
    picks = []
    for kernel in (flash_fwd._flash_fwd_kernel, flash_bwd._bwd_dkdv_kernel,
                   flash_bwd._bwd_dq_kernel):
        cfg = getattr(kernel, "best_config", None)
        picks.append("-" if cfg is None else
                     f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']}w{cfg.num_warps}s{cfg.num_stages}")
    return " ".join(picks)


def _kernel_only(q, k, v, do, causal):
    """TFLOP/s of the launchers alone (no validation, no autograd): the host-overhead check."""
    from attnkit.kernels.flash_bwd import flash_bwd
    from attnkit.kernels.flash_fwd import flash_fwd
    b, s, hq, d = q.shape
    opts = dict(causal=causal, window=(-1, -1), scale=d ** -0.5, softcap=0.0,
                key_padding_mask=None, attn_mask=None, cu_seqlens_q=None, cu_seqlens_k=None,
                max_seqlen_q=s, max_seqlen_k=s, dropout_p=0.0, dropout_seed=0)
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    out, lse = flash_fwd(qd, kd, vd, **opts)
    fwd = _bench(lambda: flash_fwd(qd, kd, vd, **opts))
    bwd = _bench(lambda: flash_bwd(do, qd, kd, vd, out, lse, deterministic=False, **opts))
    flops = _flops(b, hq, s, s, d, v.shape[-1], causal)
    return flops / fwd / 1e9, 2.5 * flops / bwd / 1e9


def _flops(b, hq, sq, sk, d, dv, causal, window=None):
    if window is not None:  # visible keys per query: min(i + 1, window)
        visible = sum(min(i + 1, window) for i in range(0, sq, 64)) * 64
        pairs = b * hq * visible
    else:
        pairs = b * hq * sq * sk * (0.5 if causal else 1.0)
    return 2 * pairs * (d + dv)


def _time_attnkit(q, k, v, do, *, deterministic, **kw):
    out = attnkit.attention(q, k, v, backend="triton", deterministic=deterministic, **kw)
    fwd = _bench(lambda: attnkit.attention(q, k, v, backend="triton", **kw))
    bwd = _bench(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True))
    return out, fwd, bwd


def _time_sdpa(backend, q, k, v, do, causal, gqa=False):
    qt, kt, vt = (t.detach().transpose(1, 2).contiguous().requires_grad_() for t in (q, k, v))
    dot = do.transpose(1, 2).contiguous()
    try:
        with sdpa_kernel(backend):
            out = sdpa(qt, kt, vt, is_causal=causal, enable_gqa=gqa)
            fwd = _bench(lambda: sdpa(qt, kt, vt, is_causal=causal, enable_gqa=gqa))
            bwd = _bench(lambda: torch.autograd.grad(out, (qt, kt, vt), dot, retain_graph=True))
        return out.transpose(1, 2), fwd, bwd
    except RuntimeError as err:  # backend cannot serve the shape
        return None, str(err).splitlines()[0][:80], None


def prefill(d, seq, causal, hq=None, hk=None, dv=None, peers=True, modes=(False, True)):
    hq = hq or HIDDEN // d
    hk = hk or hq
    dv = dv or d
    b = TOKENS // seq
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, seq, hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(b, seq, hk, d, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(b, seq, hk, dv, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    do = torch.randn(b, seq, hq, dv, device="cuda", dtype=torch.bfloat16, generator=g)
    flops = _flops(b, hq, seq, seq, d, dv, causal)
    row = dict(d=d, dv=dv, seq=seq, batch=b, hq=hq, hk=hk, causal=causal)
    for det in modes:
        t0 = time.time()
        out, fwd, bwd = _time_attnkit(q, k, v, do, deterministic=det, causal=causal)
        tag = "det" if det else "atomic"
        row[f"attnkit_{tag}_fwd"] = flops / fwd / 1e9
        row[f"attnkit_{tag}_bwd"] = 2.5 * flops / bwd / 1e9
        row[f"attnkit_{tag}_wall_s"] = round(time.time() - t0, 1)
        row[f"cfg_{tag}"] = _best_configs()
    row["kernel_fwd"], row["kernel_bwd"] = _kernel_only(q, k, v, do, causal)
    if peers and dv == d:
        for name, backend in (("fa2", SDPBackend.FLASH_ATTENTION),
                              ("cudnn", SDPBackend.CUDNN_ATTENTION)):
            ref, fwd, bwd = _time_sdpa(backend, q, k, v, do, causal, gqa=hk != hq)
            if ref is None:
                row[f"{name}_error"] = fwd
                continue
            row[f"{name}_fwd"] = flops / fwd / 1e9
            row[f"{name}_bwd"] = 2.5 * flops / bwd / 1e9
            if name == "fa2":
                row["max_err_vs_fa2"] = float((out - ref).detach().abs().max())
    return row


def packed(d=128, hq=16, causal=True):
    lengths = [4096, 1000, 3000, 512, 2048, 4096, 1500, 228]  # 16384 tokens
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32,
                      device="cuda")
    total = sum(lengths)
    q, k, v = (torch.randn(total, hq, d, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    kw = dict(causal=causal, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max(lengths),
              max_seqlen_k=max(lengths))
    out, fwd, bwd = _time_attnkit(q, k, v, do, deterministic=False, **kw)
    flops = sum(_flops(1, hq, n, n, d, d, causal) for n in lengths)
    # FA2 through SDPA has no varlen entry point; peers: a dense loop is not comparable.
    return dict(case="packed-varlen", d=d, hq=hq, lengths=lengths,
                attnkit_atomic_fwd=flops / fwd / 1e9, attnkit_atomic_bwd=2.5 * flops / bwd / 1e9,
                fwd_ms=fwd, bwd_ms=bwd)


def window_vs_causal(d=128, hq=16, seq=16384, window=1024):
    g = torch.Generator(device="cuda").manual_seed(1)
    q, k, v = (torch.randn(1, seq, hq, d, device="cuda", dtype=torch.bfloat16, generator=g)
               .requires_grad_() for _ in range(3))
    do = torch.randn_like(q)
    _, f_full, b_full = _time_attnkit(q, k, v, do, deterministic=False, causal=True)
    _, f_win, b_win = _time_attnkit(q, k, v, do, deterministic=False, causal=True,
                                    window=(window - 1, 0))
    return dict(case="window-1024-vs-causal-16k", causal_fwd_ms=f_full, causal_bwd_ms=b_full,
                window_fwd_ms=f_win, window_bwd_ms=b_win, speedup_fwd=f_full / f_win,
                speedup_bwd=b_full / b_win,
                window_fwd_tflops=_flops(1, hq, seq, seq, d, d, True, window) / f_win / 1e9)


def memory(d=128, hq=16, lengths=(8192, 32768, 131072)):
    rows = []
    for n in lengths:
        torch.cuda.empty_cache()
        q, k, v = (torch.randn(1, n, hq, d, device="cuda", dtype=torch.bfloat16,
                               requires_grad=True) for _ in range(3))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.time()
        out = attnkit.attention(q, k, v, causal=True, backend="triton")
        out.backward(torch.ones_like(out))
        torch.cuda.synchronize()
        rows.append(dict(case="memory", tokens=n, peak_extra_mib=(torch.cuda.max_memory_allocated()
                                                                   - base) / 2**20,
                         inputs_mib=3 * q.numel() * 2 / 2**20, seconds=time.time() - t0,
                         finite=bool(torch.isfinite(q.grad).all())))
        del q, k, v, out
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="d=128 seq 4k only")
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--extras", action="store_true")
    args = parser.parse_args()
    results = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                   triton=triton.__version__, date=time.strftime("%Y-%m-%d %H:%M"), rows=[])

    def emit(row):
        results["rows"].append(row)
        print(json.dumps({k: (round(v, 1) if isinstance(v, float) else v)
                          for k, v in row.items()}), flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)

    shapes = [(128, 4096, c) for c in (False, True)] if args.quick else [
        (d, s, c) for d in (64, 128) for s in (1024, 4096, 16384) for c in (False, True)]
    for d, s, c in shapes:
        try:
            emit(prefill(d, s, c))
        except Exception as err:  # keep going: report the failing shape
            emit(dict(d=d, seq=s, causal=c, error=f"{type(err).__name__}: {err}"[:300]))
    if args.extras:
        for name, fn in (("gqa-32:8", lambda: prefill(128, 4096, True, hq=32, hk=8)),
                         ("d192-dv128", lambda: prefill(192, 4096, True, hq=16, dv=128)),
                         ("packed", packed), ("window", window_vs_causal)):
            try:
                row = fn()
                row.setdefault("case", name)
                emit(row)
            except Exception as err:
                emit(dict(case=name, error=f"{type(err).__name__}: {err}"[:300]))
    if args.memory:
        try:
            for row in memory():
                emit(row)
        except Exception as err:
            emit(dict(case="memory", error=f"{type(err).__name__}: {err}"[:300]))
    print("\n d  seq  c | ours fwd/bwd(atomic) bwd(det) | FA2 fwd/bwd | cuDNN fwd/bwd")
    for r in results["rows"]:
        if "attnkit_atomic_fwd" in r and "seq" in r:
            print(f"{r['d']:3d} {r['seq']:5d} {int(r['causal'])} | "
                  f"{r['attnkit_atomic_fwd']:5.0f} / {r['attnkit_atomic_bwd']:5.0f} "
                  f"{r.get('attnkit_det_bwd', math.nan):5.0f} | "
                  f"{r.get('fa2_fwd', math.nan):5.0f} / {r.get('fa2_bwd', math.nan):5.0f} | "
                  f"{r.get('cudnn_fwd', math.nan):5.0f} / {r.get('cudnn_bwd', math.nan):5.0f}")


if __name__ == "__main__":
    main()
