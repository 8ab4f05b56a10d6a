"""What the Gluon probes (``benchmarks/gluon_fwd.py``, ``gluon_dkdv.py``, ``gluon_dq.py``)
share: the offline sm90 compile, the configs' names, the timing of the whole backward with
each config, the job runner and the command line.

Usage: imported by those scripts (a Triton with Gluon, 3.6.0 on the lent H200).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
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
            f"{' overlapped' if cfg.get('overlap') else ''}"
            f"{' q' + str(cfg['q_slots']) if cfg.get('q_slots', 1) > 1 else ''}"
            f"{' split' if cfg.get('split_masks') else ''}"
            f"{' early' if cfg.get('early_q') else ''}")


# The six d 64 prefill shapes, which every probe times first (first measured in step 12).
D64_CASES = tuple(f"mha d64 s{s} {m}" for s in ("1k", "4k", "16k") for m in ("full", "causal"))


@contextlib.contextmanager
def serving_backward(cfg, *, module, launcher: str, rule: str, options: tuple[str, ...]):
    """A Gluon backward kernel in configuration ``cfg`` wherever it applies: ``flash_bwd``'s
    choice ``rule`` (``_gluon_dkdv``, ``_gluon_dq``) patched to take every plain input, and
    ``module``'s ``launcher`` given those of ``options`` that ``cfg`` names. With ``cfg``
    ``None`` the rule takes nothing (the Triton kernel serves). Both come back after."""
    from attnkit.kernels import flash_bwd
    real, real_rule = getattr(module, launcher), getattr(flash_bwd, rule)

    def serves(q, k, v, do, *, plain, **rest):
        return cfg is not None and plain

    setattr(flash_bwd, rule, serves)
    if cfg is not None:
        setattr(module, launcher, functools.partial(
            real, **{key: cfg[key] for key in options if key in cfg}))
    try:
        yield
    finally:
        setattr(module, launcher, real)
        setattr(flash_bwd, rule, real_rule)


def time_backward_configs(name: str, configs: dict[int, list[dict]], serve,
                          kernels: tuple[str, ...]) -> dict:
    """The whole deterministic backward of the prefill case ``name`` (ms) and the device times
    (us) of its kernels whose names hold one of ``kernels``: first with the Triton kernels,
    then with each config of the case's head dim (``configs[head_dim(name)]``), with the
    largest difference of dq, dk and dv from the first run relative to its largest value.

    ``serve(cfg)``: a context manager under which ``cfg`` serves (``None``: the Triton
    kernels). A config that fails is reported and the others go on.
    """
    import functools

    import torch
    import triton.testing

    from attnkit.kernels import flash_bwd, flash_fwd
    from benchmarks.probe_step5 import _dense_case, kernels_us

    q, k, v, opts = _dense_case(name)
    out, lse = flash_fwd.flash_fwd(q, k, v, **opts)
    do = torch.randn_like(out)
    run = functools.partial(flash_bwd.flash_bwd, do, q, k, v, out, lse, deterministic=True,
                            **opts)

    def timed() -> dict:
        return {"bwd_ms": triton.testing.do_bench(run, warmup=50, rep=200, return_mode="median"),
                "kernels_us": kernels_us(run, kernels)}

    with serve(None):
        want = run()
        shipped = timed()
    row = {"triton_bwd_ms": shipped["bwd_ms"], "triton_kernels_us": shipped["kernels_us"]}
    for cfg in configs[head_dim(name)]:
        try:
            with serve(cfg):
                got = run()
                row[label(cfg)] = {**timed(), "max_rel_diff": {
                    n: float((a.float() - b.float()).abs().max() / (b.float().abs().max() + 1e-6))
                    for n, a, b in zip(("dq", "dk", "dv"), got, want)}}
        except Exception as exc:  # report and go on
            row[label(cfg)] = f"failed: {type(exc).__name__}: {exc}"[:400]
    return row


def head_dim(case: str) -> int:
    """The q/k head dim of a prefill case's name: 192 for MLA's, else its ``d`` field.

    Example:
        >>> head_dim("mla d192/128 s4k full"), head_dim("mha d64 s1k causal")
        (192, 64)
    """
    return int(re.search(r"\bd(\d+)", case).group(1))


def run_jobs(jobs, out_path: str) -> dict:
    """Run ``(name, fn, args)`` jobs in order, each result (or its failure) printed and the
    whole JSON rewritten to ``out_path`` after each, so that a call cut short keeps what ran.
    ``PROBE_CASES`` (names joined by commas) keeps only those jobs.

    Raises:
        ValueError: where ``PROBE_CASES`` names a job that is not there.
    """
    only = [n for n in os.environ.get("PROBE_CASES", "").split(",") if n]
    unknown = sorted(set(only) - {name for name, _, _ in jobs})
    if unknown:
        raise ValueError(f"PROBE_CASES: expected names of {[n for n, _, _ in jobs]}, "
                         f"got {unknown}")
    result = {}
    for name, fn, args in jobs:
        if only and name not in only:
            continue
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
