"""Compile attnkit's flash kernels for sm90 on any machine (no GPU) and print their resources.

Triton compiles to a cubin without a device when given a target; ``cuobjdump`` (shipped with
Triton) then reports registers per thread, stack (register spills) and shared memory. A
kernel that spills (STACK > 0) or needs more than 227 KiB of shared memory is slow or does
not launch on an H100: this check costs no device time. Arguments are marked divisible by 16,
as the GPU's JIT specialises them for aligned tensors and sizes (``--no-specialise``: unknown
divisibility, which gives other code and far more spills; the figures of steps 4-5 of
``NOTES-flash.md`` were made that way).

Usage::

    python benchmarks/sm90_resources.py                    # the default table below
    python benchmarks/sm90_resources.py --kernel dkdv --blocks 64,128 --warps 8 \\
        --stages 3 --d 128 --causal
    python benchmarks/sm90_resources.py --kernel dkdv --blocks 32,64 --warps 4 --stages 1 \\
        --d 64 --dtype fp32                                # float32 inputs (tf32x3 products)

The figures depend on the Triton version: compile with the one the GPU machine has (Triton
3.6.0 on the lent H100/H200 in 2026-11/12; a scratch venv with ``pip install triton==3.6.0``).

Prints one line per compiled variant: kernel, head dims, flags, blocks, warps, stages,
REG, STACK, SHARED (bytes of dynamic shared memory from Triton's metadata).
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from attnkit.kernels import flash_bwd, flash_fwd

KERNELS = {
    "fwd": (flash_fwd._flash_fwd_kernel, ("BLOCK_M", "BLOCK_N")),
    "dkdv": (flash_bwd._bwd_dkdv_kernel, ("BLOCK_M", "BLOCK_N")),
    "dq": (flash_bwd._bwd_dq_kernel, ("BLOCK_M", "BLOCK_N")),
}
POINTER_TYPES = {"lse_ptr": "*fp32", "delta_ptr": "*fp32", "cu_q_ptr": "*i32",
                 "cu_k_ptr": "*i32", "seed_ptr": "*i64", "kpm_ptr": "*u8", "mask_ptr": "*u8"}


def compile_sm90(kernel: str, *, blocks: tuple[int, ...], warps: int, stages: int, d: int = 128,
                 dv: int | None = None, causal: bool = False, window: tuple[int, int] = (-1, -1),
                 group: int = 1, atomic: bool = False, mask_kind: int = 0,
                 dtype: str = "bf16", tma: bool = False, specialise: bool = True) -> dict:
    """Compile one kernel variant for sm90 (``dtype`` inputs: bf16, fp16 or fp32); return its
    resource figures.

    ``specialise``: mark every pointer and integer argument divisible by 16, as Triton's JIT
    does on the GPU for aligned tensors and sizes like the prefill suite's (without it, strides
    of unknown alignment give other code: the dK/dV kernel on pointers then spills 928 bytes
    per thread at 64x128 w8 s3, d 128, where the GPU's build keeps K and V in shared memory).
    """
    dv = dv or d
    jit, names = KERNELS[kernel]
    fn = jit.fn
    params = list(inspect.signature(fn.fn).parameters)
    left, right = window
    if causal:
        right = 0
    const = dict(HQ=16 * group, HK=16, GROUP=group, D=d, DV=dv,
                 BLOCK_D=max(16, triton.next_power_of_2(d)),
                 BLOCK_DV=max(16, triton.next_power_of_2(dv)), VARLEN=False, IS_CAUSAL=causal,
                 WIN_LEFT=left, WIN_RIGHT=right,
                 HAS_KPM=False, MASK_KIND=mask_kind, SOFTCAP=False, DROPOUT=False,
                 DOT_PREC="tf32x3" if dtype == "fp32" else "tf32", ATOMIC_DQ=atomic, TMA=tma, **dict(zip(names, blocks)))
    const = {k: v for k, v in const.items() if k in params}
    sig = {}
    for p in params:
        if p in const:
            sig[p] = "constexpr"
        elif p.endswith("_ptr"):
            sig[p] = POINTER_TYPES.get(p, "*fp32" if p == "dq_ptr" and atomic else f"*{dtype}")
        elif p.startswith("stride") or p in ("seq_q", "seq_k", "SEQ_BUCKET"):
            sig[p] = "i32"
        else:
            sig[p] = "fp32"
    attrs = {}
    if specialise:  # what the GPU's JIT assumes of 16-byte aligned pointers and sizes
        attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(params)
                 if sig[p].startswith("*") or sig[p] == "i32"}
    src = ASTSource(fn, sig, constexprs={(params.index(k),): v for k, v in const.items()},
                    attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=warps, num_stages=stages))
    return dict(kernel=kernel, d=d, dv=dv, causal=causal, window=window, group=group, tma=tma,
                blocks=blocks, warps=warps, stages=stages, **cubin_usage(compiled.asm["cubin"]),
                shared=compiled.metadata.shared)


def cubin_usage(cubin: bytes) -> dict:
    """``{"reg": registers per thread, "stack": bytes of stack (spills)}`` of a cubin, read by
    the ``cuobjdump`` that ships with Triton."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as fh:
            fh.write(cubin)
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                            "cuobjdump")
        text = subprocess.run([tool, "--dump-resource-usage", path], capture_output=True,
                              text=True, check=True).stdout
    usage = dict(re.findall(r"(REG|STACK):(\d+)", text))
    return {"reg": int(usage.get("REG", -1)), "stack": int(usage.get("STACK", -1))}


def _table_rows():
    """The tables the autotuner draws from (dense causal bf16 variants)."""
    for width, rows in flash_fwd.FWD_TILES.items():
        for *blocks, w, st in rows:
            yield "fwd", tuple(blocks), w, st, {64: 64, 128: 128, 256: 192}[width]
    for kernel, table in (("dkdv", flash_bwd.DKDV_TILES), ("dq", flash_bwd.DQ_TILES)):
        for width, rows in table.items():
            for *blocks, w, st in rows:
                yield kernel, tuple(blocks), w, st, {64: 64, 128: 128, 256: 192}[width]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", choices=sorted(KERNELS))
    parser.add_argument("--blocks", help="comma-separated block sizes")
    parser.add_argument("--warps", type=int, default=8)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--d", type=int, default=128)
    parser.add_argument("--dv", type=int, default=None)
    parser.add_argument("--causal", action="store_true")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--tma", action="store_true", help="tiles through TMA descriptors")
    parser.add_argument("--atomic", action="store_true", help="dK/dV kernel with atomic dQ")
    parser.add_argument("--no-specialise", action="store_true",
                        help="integer and pointer arguments of unknown divisibility")
    args = parser.parse_args()
    if args.kernel:
        rows = [(args.kernel, tuple(int(x) for x in args.blocks.split(",")), args.warps,
                 args.stages, args.d)]
    else:
        rows = list(_table_rows())
    for kernel, blocks, warps, stages, d in rows:
        dv = args.dv or (128 if d == 192 else d)
        try:
            r = compile_sm90(kernel, blocks=blocks, warps=warps, stages=stages, d=d, dv=dv,
                             causal=args.causal or not args.kernel, dtype=args.dtype,
                             tma=args.tma, atomic=args.atomic,
                             specialise=not args.no_specialise)
            print(f"{kernel:6s} d{d}/{dv} blocks={blocks} w{warps} s{stages}"
                  f"{' tma' if args.tma else ''}: REG {r['reg']} STACK {r['stack']} SHARED {r['shared']}", flush=True)
        except Exception as err:  # report and go on: a config that does not compile
            print(f"{kernel:6s} d{d}/{dv} blocks={blocks} w{warps} s{stages}"
                  f"{' tma' if args.tma else ''}: {type(err).__name__}: {str(err).splitlines()[0][:100]}", flush=True)


if __name__ == "__main__":
    main()
