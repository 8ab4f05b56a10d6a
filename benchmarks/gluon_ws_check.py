"""Offline check (no GPU): does this Triton's Gluon build a warp-specialised sm90 kernel with
register reallocation?

The dense d 128 backward's dK/dV kernel is limited by one 8-warp program per SM, products
waited on at once and CTA barriers (benchmarks/NOTES-flash.md, steps 5-7); Triton's automatic
warp specialisation does not apply on sm90 with Triton 3.6 (step 7). The remaining route is a
kernel whose producer warp issues the TMA loads while consumer warpgroups run the products,
each partition with its own register budget (``setmaxnreg``), written in Gluon. This script
compiles the smallest kernel of that shape for sm90 and reports whether the PTX has the
warp-specialised partitions and the register reallocation, with the cubin's resources:

- a loader partition (1 warp, ``LOADER_REGS`` registers) TMA-loads ``[BM, BK]`` and
  ``[BK, BN]`` bf16 tiles of A and B into a ring of ``STAGES`` shared-memory slots, each slot
  guarded by a ready and an empty mbarrier;
- the default partition (``num_warps`` warps) waits for each slot, runs an asynchronous
  ``wgmma`` into a float32 ``[BM, BN]`` accumulator, keeps one in flight, frees the slot
  of the product before, and stores the result.

It is a feasibility check of the toolchain, not one of attnkit's kernels: nothing imports it.

Usage (a scratch venv with the GPU machine's Triton, 3.6.0 in 2026-12)::

    PYTHONPATH=. /tmp/t36/bin/python benchmarks/gluon_ws_check.py [--stages 3] [--warps 4]
"""

from __future__ import annotations

import argparse
import re

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from benchmarks.sm90_resources import cubin_usage

LOADER_REGS = gl.constexpr(24)


@gluon.jit
def _loader(a_desc, b_desc, a_bufs, b_bufs, ready, empty, off_m, off_n, k_tiles,
            BK: gl.constexpr, STAGES: gl.constexpr):
    for i in range(k_tiles):
        slot = i % STAGES
        phase = (i // STAGES) & 1
        mbarrier.wait(empty.index(slot), phase ^ 1)  # slots start free
        mbarrier.expect(ready.index(slot), a_desc.block_type.nbytes + b_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(a_desc, [off_m, i * BK], ready.index(slot),
                                        a_bufs.index(slot))
        tma.async_copy_global_to_shared(b_desc, [i * BK, off_n], ready.index(slot),
                                        b_bufs.index(slot))


@gluon.jit
def _compute(a_bufs, b_bufs, ready, empty, c_desc, c_smem, off_m, off_n, k_tiles,
             BM: gl.constexpr, BN: gl.constexpr, STAGES: gl.constexpr,
             num_warps: gl.constexpr):
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(
        version=[3, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, BN, 16])
    acc = gl.zeros([BM, BN], gl.float32, acc_layout)
    for i in range(k_tiles):
        slot = i % STAGES
        mbarrier.wait(ready.index(slot), (i // STAGES) & 1)
        acc = warpgroup_mma(a_bufs.index(slot), b_bufs.index(slot), acc, is_async=True)
        # one product in flight: the one before is done, so its slot is free
        acc, _, _ = warpgroup_mma_wait(1, deps=(acc, a_bufs.index(slot), b_bufs.index(slot)))
        mbarrier.arrive(empty.index((i + STAGES - 1) % STAGES), pred=i > 0)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    c_smem.store(acc.to(gl.bfloat16))
    fence_async_shared()
    tma.async_copy_shared_to_global(c_desc, [off_m, off_n], c_smem)
    tma.store_wait(0)


@gluon.jit
def ws_gemm_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                   BM: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr,
                   STAGES: gl.constexpr, num_warps: gl.constexpr):
    """``c [M, N] = a [M, K] @ b [K, N]`` (bf16, row-major), one ``[BM, BN]`` tile per
    program, warp-specialised."""
    a_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, BK], gl.bfloat16)
    b_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BK, BN], gl.bfloat16)
    c_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM, BN], gl.bfloat16)
    a_desc = tma.make_tensor_descriptor(a_ptr, [M, K], [K, 1], [BM, BK], a_layout)
    b_desc = tma.make_tensor_descriptor(b_ptr, [K, N], [N, 1], [BK, BN], b_layout)
    c_desc = tma.make_tensor_descriptor(c_ptr, [M, N], [N, 1], [BM, BN], c_layout)
    a_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BM, BK], a_layout)
    b_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BK, BN], b_layout)
    c_smem = gl.allocate_shared_memory(gl.bfloat16, [BM, BN], c_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    off_m = gl.program_id(0) * BM
    off_n = gl.program_id(1) * BN
    k_tiles = gl.cdiv(K, BK)
    gl.warp_specialize([
        (_compute, (a_bufs, b_bufs, ready, empty, c_desc, c_smem, off_m, off_n, k_tiles,
                    BM, BN, STAGES, num_warps)),
        (_loader, (a_desc, b_desc, a_bufs, b_bufs, ready, empty, off_m, off_n, k_tiles,
                   BK, STAGES)),
    ], [1], [LOADER_REGS])


def compile_sm90(*, stages: int, warps: int, bm: int = 128, bn: int = 128, bk: int = 64,
                 maxnreg: int | None = None) -> dict:
    """Compile ``ws_gemm_kernel`` for sm90; return PTX facts and the cubin's resources."""
    sig = {"a_ptr": "*bf16", "b_ptr": "*bf16", "c_ptr": "*bf16", "M": "i32", "N": "i32",
           "K": "i32", "BM": "constexpr", "BN": "constexpr", "BK": "constexpr",
           "STAGES": "constexpr", "num_warps": "constexpr"}
    names = list(sig)
    const = {"BM": bm, "BN": bn, "BK": bk, "STAGES": stages, "num_warps": warps}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
             if sig[n] in ("*bf16", "i32")}
    src = GluonASTSource(ws_gemm_kernel, sig,
                         constexprs={(names.index(k),): v for k, v in const.items()},
                         attrs=attrs)
    options = dict(num_warps=warps)
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    ptx = compiled.asm["ptx"]
    usage = cubin_usage(compiled.asm["cubin"])
    return {"setmaxnreg": sorted(set(re.findall(r"setmaxnreg\.(\w+)\.sync\.aligned\.u32\s+(\d+)",
                                                  ptx))),
            "wgmma": len(re.findall(r"wgmma\.mma_async", ptx)),
            "tma_loads": len(re.findall(r"cp\.async\.bulk\.tensor", ptx)),
            "threads": compiled.metadata.num_warps * 32,
            **usage, "shared": compiled.metadata.shared}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--maxnreg", type=int, default=None)
    args = parser.parse_args()
    print(f"triton {triton.__version__}", compile_sm90(stages=args.stages, warps=args.warps,
                                                       maxnreg=args.maxnreg))


if __name__ == "__main__":
    main()
