"""What the Gluon probes (``benchmarks/gluon_fwd.py``, ``benchmarks/gluon_dkdv.py``) share: the
offline sm90 compile, the configs' names, the job runner and the command line.

Usage: imported by those two scripts (a Triton with Gluon, 3.6.0 on the lent H200).
"""

from __future__ import annotations

import argparse
import json
import os
import re

import triton


def compile_sm90(kernel, signature: dict, const: dict, *, warps: int, maxnreg: int | None,
                 dtype: str) -> dict:
    """Compile a ``gluon.jit`` kernel for sm90 without a GPU.

    ``signature`` maps each runtime argument to its Triton type (``{dt}`` stands for
    ``dtype``); ``const`` the constexpr arguments. Pointers and ``i32`` arguments are marked
    divisible by 16, as the GPU's JIT does for aligned tensors and sizes. Returns the
    ``setmaxnreg`` pairs of the PTX (the partitions' register budgets), the number of wgmma
    instructions, the threads, the cubin's registers and stack (spills) per thread, and the
    shared memory in bytes.
    """
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    from benchmarks.sm90_resources import cubin_usage

    sig = {k: v.format(dt=dtype) for k, v in signature.items()}
    sig.update({k: "constexpr" for k in const})
    names = [p.name for p in kernel.params]  # the kernel's order, whatever the dicts' order
    if sorted(names) != sorted(sig):
        raise ValueError(f"signature and const must name the kernel's parameters {names}, "
                         f"got {sorted(sig)}")
    sig = {n: sig[n] for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n].startswith("*") or sig[n] == "i32"}
    src = GluonASTSource(kernel, sig, constexprs={(names.index(k),): v for k, v in const.items()},
                         attrs=attrs)
    options = dict(num_warps=warps)
    if maxnreg:
        options["maxnreg"] = maxnreg
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    ptx = compiled.asm["ptx"]
    return {"setmaxnreg": sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)",
                                                  ptx))),
            "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
            "threads": compiled.metadata.num_warps * 32, **cubin_usage(compiled.asm["cubin"]),
            "shared": compiled.metadata.shared}


def label(cfg: dict) -> str:
    """A config of the experiments' ``CONFIGS`` as a short name (``64x128 s3 pipelined``,
    ``64x128 s2 wg2 pingpong``)."""
    return (f"{cfg['block_m']}x{cfg.get('block_n', 128)} s{cfg['stages']}"
            f"{' pipelined' if cfg.get('pipeline') else ''}"
            f"{' wg' + str(cfg['warpgroups']) if 'warpgroups' in cfg else ''}"
            f"{' pingpong' if cfg.get('pingpong') else ''}"
            f"{' persistent' if cfg.get('persistent') else ''}"
            f"{' overlapped' if cfg.get('overlap') else ''}")


def run_jobs(jobs, out_path: str) -> dict:
    """Run ``(name, fn, args)`` jobs in order, each result (or its failure) printed and the
    whole JSON rewritten to ``out_path`` after each, so that a call cut short keeps what ran."""
    result = {}
    for name, fn, args in jobs:
        try:
            result[name] = fn(*args)
        except Exception as exc:  # one case's failure must not lose the others
            result[name] = f"failed: {type(exc).__name__}: {exc}"[:600]
        print(name, json.dumps(result[name]), flush=True)
        with open(out_path, "w") as fh:
            json.dump(result, fh, indent=1)
    return result


def main(doc: str, configs: dict, compile_one, check, out_name: str) -> None:
    """The experiments' command line: ``--compile`` compiles every config of ``configs``
    (head dim -> list of keyword dicts) for sm90, full and causal, through
    ``compile_one(d=, causal=, **cfg)``; ``--check`` runs ``check(path)`` on a GPU, the JSON
    going to ``$OUT/out_name``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="sm90 offline compile")
    parser.add_argument("--check", action="store_true", help="GPU: oracle and timing")
    args = parser.parse_args()
    if args.compile:
        for d, rows in configs.items():
            for cfg in rows:
                for causal in (False, True):
                    try:
                        r = compile_one(d=d, causal=causal, **cfg)
                    except Exception as exc:  # report and go on
                        r = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                    print(f"d{d} {'causal' if causal else 'full'} {label(cfg)}:", r,
                          flush=True)
    if args.check:
        check(os.path.join(os.environ.get("OUT", "/tmp"), out_name))
