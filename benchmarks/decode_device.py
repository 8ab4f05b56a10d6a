"""One device run for decode: sweep kernel launch options, run the decode suites, write JSON.

Usage on a GPU machine: ``PYTHONPATH=. python benchmarks/decode_device.py OUT_DIR [--sweep]
[--suites decode,mla-decode]``. Prints a table per suite (TB/s and the ratio to each peer) and
writes ``OUT_DIR/decode-<date>.json`` naming the GPU, torch and triton versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import statistics

import torch
import triton
import triton.testing

from attnkit.bench import registry
from attnkit.bench.registry import Settings, Unsupported

COPY_CEILING = 3.02e12  # PEERS.md, d2d copy on our H100


def _time_ms(fn, rep=60) -> float:
    return triton.testing.do_bench(fn, warmup=15, rep=rep, return_mode="median")


def copy_ceiling(device) -> float:
    x = torch.randn(1 << 28, device=device, dtype=torch.bfloat16)
    y = torch.empty_like(x)
    ms = _time_ms(lambda: y.copy_(x))
    return 2 * x.numel() * 2 / (ms * 1e-3)


def sweep(device) -> list[dict]:
    """Decode launch options on the 2k/8k/32k paged cases and the MLA kernel at 8k."""
    from attnkit.kernels import decode as dk
    from attnkit.kernels import mla_decode as mk
    from attnkit.ops import decode as dop
    from attnkit.ops import mla_decode as mop
    suite = registry.get("decode")
    rows = []
    for case in suite.cases(True):
        inputs = suite.make_inputs(case, device, 0)
        call = dop.validate(inputs["q"], inputs["k_cache"], inputs["v_cache"],
                            cache_seqlens=inputs["cache_seqlens"],
                            block_table=inputs["block_table"], causal=True, window=(-1, -1),
                            softcap=0.0, scale=None, return_lse=False, backend="triton")
        nbytes = suite.work(case, "fwd").bytes
        for bn, w, s in ((32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 4, 4), (64, 8, 3),
                         (128, 4, 2), (128, 4, 3), (128, 8, 3), (32, 2, 4), (64, 2, 3)):
            for splits in (1, 2, 4):
                cfg = dict(BLOCK_N=bn, num_warps=w, num_stages=s)
                try:
                    ms = _time_ms(lambda c=call, n=splits, f=cfg: dk.decode_fwd(c, num_splits=n, config=f),
                                  rep=30)
                except Exception as exc:  # noqa: BLE001 - a config that fails to compile
                    rows.append(dict(case=case.name, cfg=cfg, splits=splits, error=str(exc)[:80]))
                    continue
                rows.append(dict(case=case.name, cfg=cfg, splits=splits, ms=ms,
                                 tbps=nbytes / ms / 1e9))
        del inputs
        torch.cuda.empty_cache()
    msuite = registry.get("mla-decode")
    for case in msuite.cases(True):
        inputs = msuite.make_inputs(case, device, 0)
        q, k, r = inputs["q"], inputs["k_cache"][:, :, 0], case.latent
        call = mop.validate(q[..., :r], q[..., r:], k[..., :r], k[..., r:],
                            cache_seqlens=inputs["cache_seqlens"],
                            block_table=inputs["block_table"], causal=True, scale=0.07,
                            backend="triton", return_lse=False)
        nbytes = msuite.work(case, "fwd").bytes
        for bm, bn, w, s in ((64, 32, 8, 2), (64, 16, 4, 2), (32, 32, 4, 2), (64, 32, 4, 2),
                             (32, 64, 8, 2), (64, 64, 8, 1), (128, 32, 8, 1), (64, 32, 8, 3),
                             (16, 64, 4, 2), (32, 32, 4, 3)):
            for splits in (None, 1, 2, 4):
                cfg = dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=s)
                try:
                    ms = _time_ms(lambda c=call, n=splits, f=cfg: mk.mla_decode_fwd(c, num_splits=n, config=f),
                                  rep=30)
                except Exception as exc:  # noqa: BLE001
                    rows.append(dict(case=case.name, cfg=cfg, splits=splits, error=str(exc)[:80]))
                    continue
                rows.append(dict(case=case.name, cfg=cfg, splits=splits, ms=ms,
                                 tbps=nbytes / ms / 1e9))
        del inputs
        torch.cuda.empty_cache()
    return rows


def splits_check(device) -> list[dict]:
    """Split counts at 32k (paged 64, batch 64, GQA 32:8): three medians each."""
    from attnkit.kernels import decode as dk
    from attnkit.ops import decode as dop
    suite = registry.get("decode")
    case = suite.cases(True)[2]
    inputs = suite.make_inputs(case, device, 0)
    call = dop.validate(inputs["q"], inputs["k_cache"], inputs["v_cache"],
                        cache_seqlens=inputs["cache_seqlens"], block_table=inputs["block_table"],
                        causal=True, window=(-1, -1), softcap=0.0, scale=None,
                        return_lse=False, backend="triton")
    nbytes = suite.work(case, "fwd").bytes
    rows = []
    for splits in (1, 2, 3, 4, 6, 8):
        for cfg in (None, dict(BLOCK_N=128, num_warps=4, num_stages=3)):
            rates = [nbytes / _time_ms(lambda n=splits, f=cfg: dk.decode_fwd(call, num_splits=n,
                                                                             config=f)) / 1e9
                     for _ in range(3)]
            rows.append(dict(splits=splits, cfg=cfg, tbps=rates))
            print(f"32k splits={splits} cfg={cfg} TB/s={[round(r, 3) for r in rates]}",
                  flush=True)
    return rows


def run_suite(name: str, settings: Settings) -> list[dict]:
    suite = registry.get(name)
    results = []
    for case in suite.cases(settings.quick):
        inputs = suite.make_inputs(case, settings.device, settings.seed)
        row = dict(case=case.describe(), rates={}, errors={})
        work = suite.work(case, "fwd")
        for op in suite.ops:
            try:
                fn = op.build(case, inputs, settings)
                if op.subject:
                    chk = suite.check(case, inputs, fn, settings)
                    row["check"] = dict(ok=chk.ok, errors=chk.errors, detail=chk.detail)
                ms = _time_ms(fn)
                row["rates"][op.name] = dict(ms=ms, tbps=work.bytes / ms / 1e9)
            except Unsupported as exc:
                row["errors"][op.name] = f"unsupported: {exc}"
            except Exception as exc:  # noqa: BLE001 - a failing peer is recorded, not fatal
                row["errors"][op.name] = f"{type(exc).__name__}: {str(exc)[:200]}"
        results.append(row)
        sub = row["rates"].get("attnkit")
        ratios = {k: sub["tbps"] / v["tbps"] for k, v in row["rates"].items()
                  if sub and k != "attnkit"}
        row["ratios"] = ratios
        print(f"{name:10s} {case.name:28s} "
              + " ".join(f"{k}={v['tbps']:.2f}" for k, v in row["rates"].items())
              + " | " + " ".join(f"x{k}={v:.2f}" for k, v in ratios.items())
              + f" | check={row.get('check', {}).get('ok')}"
              + (f" | errors={row['errors']}" if row["errors"] else ""), flush=True)
        del inputs
        torch.cuda.empty_cache()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--suites", default="decode,mla-decode")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--splits-check", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda")
    out = pathlib.Path(args.out)
    report = dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__,
                  triton=triton.__version__, date=datetime.date.today().isoformat())
    report["copy_ceiling_tbps"] = copy_ceiling(device) / 1e12
    print("copy ceiling TB/s", report["copy_ceiling_tbps"], flush=True)
    if args.sweep:
        rows = sweep(device)
        report["sweep"] = rows
        best = {}
        for r in rows:
            if "tbps" in r and r["tbps"] > best.get(r["case"], {}).get("tbps", 0):
                best[r["case"]] = r
        for r in rows:
            if "tbps" in r:
                print(f"sweep {r['case']:26s} {r['cfg']} splits={r['splits']} {r['tbps']:.2f}")
        print("BEST", json.dumps(best), flush=True)
    if args.splits_check:
        report["splits_check"] = splits_check(device)
    settings = Settings(device=device, backend="auto", quick=args.quick)
    for name in filter(None, args.suites.split(",")):
        report[name] = run_suite(name, settings)
    path = out / f"decode-{report['date']}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print("median of attnkit rates:", statistics.median(
        r["rates"]["attnkit"]["tbps"] for n in args.suites.split(",") if n
        for r in report[n] if "attnkit" in r["rates"]))


if __name__ == "__main__":
    main()
