"""Experiment (step 8 of benchmarks/NOTES-flash.md): a warp-specialised dK/dV kernel in Gluon.

Not one of attnkit's kernels: nothing in ``attnkit`` imports this file. It compiles for sm90
offline (``--compile``) and, on a GPU, checks itself against the shipped dK/dV kernel's
gradients and times both (``--check``). It becomes a kernel of the package only after it has
passed the oracle tests and measured faster.

Scope: dense MHA (one query head per KV head), d = dv in {64, 128}, bf16/fp16, causal
(bottom-right) or not, no masks, windows, softcap or dropout; ``[b, s, h, d]`` tensors whose
rows are 16-byte aligned (TMA). Grid ``(key tiles, batch x heads)``; each program owns one
``[BLOCK_N, D]`` tile of K and V and loops over the query tiles that see it:

- a loader partition (1 warp, 24 registers) TMA-loads each ``[BLOCK_M, D]`` tile of Q and dO
  into a ring of ``STAGES`` shared-memory slots (``ready`` / ``empty`` mbarriers);
- the default partition (``num_warps`` warps, the register budget ``maxnreg`` leaves it)
  holds the dK and dV accumulators and per query tile issues ``K Q^T`` and ``V dO^T``
  together (asynchronous wgmma, one wait), forms ``P^T`` and ``dS^T`` in registers, and
  issues ``P^T dO`` and ``dS^T Q`` from registers, frees the slot and goes on.

The base-2 LSE (``+inf`` on rows that saw no key) and ``delta`` come from the shipped
preprocess (``flash_bwd._bwd_preprocess``); rows past the sequence load ``+inf`` there, so
their probabilities are zero, and TMA fills their Q and dO rows with zeros.

Usage::

    PYTHONPATH=. /tmp/t36/bin/python benchmarks/gluon_dkdv.py --compile   # no GPU
    PYTHONPATH=. python benchmarks/gluon_dkdv.py --check                  # CUDA, sm90
"""

from __future__ import annotations

import os

import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from benchmarks.gluon_common import LOADER_REGS, LOADER_WARPS, label, mma_layout, run_jobs
from benchmarks.gluon_common import compile_sm90 as _compile
from benchmarks.gluon_common import main as _main


@gluon.jit
def _query_tiles(start_n, seqlen_q, seqlen_k, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                 IS_CAUSAL: gl.constexpr):
    """``(lo, hi)``: the query tiles ``[lo, hi)`` (``lo`` a multiple of BLOCK_M) that see some
    key of ``[start_n, start_n + BLOCK_N)``; with causal (bottom-right) attention query ``i``
    sees key ``j`` when ``j <= i + seqlen_k - seqlen_q``."""
    lo = 0
    if IS_CAUSAL:
        lo = gl.maximum(start_n - (seqlen_k - seqlen_q), 0)
        lo = gl.minimum(lo, seqlen_q)
        lo = (lo // BLOCK_M) * BLOCK_M
    return lo, seqlen_q


@gluon.jit
def _loader(q_desc, do_desc, q_bufs, do_bufs, ready, empty, lo, hi,
            BLOCK_M: gl.constexpr, STAGES: gl.constexpr):
    for i in range(gl.cdiv(hi - lo, BLOCK_M)):
        slot = i % STAGES
        mbarrier.wait(empty.index(slot), ((i // STAGES) & 1) ^ 1)  # every slot starts free
        mbarrier.expect(ready.index(slot),
                        q_desc.block_type.nbytes + do_desc.block_type.nbytes)
        start = lo + i * BLOCK_M
        tma.async_copy_global_to_shared(q_desc, [start, 0], ready.index(slot),
                                        q_bufs.index(slot))
        tma.async_copy_global_to_shared(do_desc, [start, 0], ready.index(slot),
                                        do_bufs.index(slot))


@gluon.jit
def _probabilities(s_t, dp_t, lse, delta, cols, rows, start, start_n, offset, qk_scale,
                   a_layout: gl.constexpr, dtype: gl.constexpr, IS_CAUSAL: gl.constexpr,
                   BLOCK_N: gl.constexpr):
    """``P^T`` and ``dS^T`` of one tile (queries from ``start``) as the register A operands of
    the dV and dK products. With causal attention only the tiles that cross the diagonal
    (some query before the key tile's last key, ``start + offset < start_n + BLOCK_N - 1``)
    are masked."""
    s_t = s_t * qk_scale
    if IS_CAUSAL:
        if start + offset < start_n + BLOCK_N - 1:
            s_t = gl.where(cols[:, None] <= rows[None, :] + offset, s_t, float("-inf"))
    p_t = gl.exp2(s_t - lse[None, :])
    ds_t = p_t * (dp_t - delta[None, :])
    return gl.convert_layout(p_t.to(dtype), a_layout), gl.convert_layout(ds_t.to(dtype), a_layout)


@gluon.jit
def _row_stats(lse_ptr, delta_ptr, rows, seqlen_q):
    """Base-2 LSE (``+inf`` past the sequence: zero probabilities) and delta of ``rows``."""
    ok = rows < seqlen_q
    return (gl.load(lse_ptr + rows, mask=ok, other=float("inf")),
            gl.load(delta_ptr + rows, mask=ok, other=0.0))


@gluon.jit
def _store_dkdv(dk, dv, dk_ptr, dv_ptr, stride_dks, stride_dvs, start_n, seqlen_k, scale,
                BLOCK_N: gl.constexpr, D: gl.constexpr):
    """The ``[BLOCK_N, D]`` rows of dK (times ``scale``) and dV; keys past ``seqlen_k`` are
    left out."""
    acc_layout: gl.constexpr = dk.type.layout
    dtype: gl.constexpr = dk_ptr.dtype.element_ty
    out_rows = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, acc_layout))
    out_cols = gl.arange(0, D, layout=gl.SliceLayout(0, acc_layout))
    keep = (out_rows < seqlen_k)[:, None]
    gl.store(dk_ptr + out_rows[:, None] * stride_dks + out_cols[None, :],
             (dk * scale).to(dtype), mask=keep)
    gl.store(dv_ptr + out_rows[:, None] * stride_dvs + out_cols[None, :], dv.to(dtype),
             mask=keep)


@gluon.jit
def _compute(k_smem, v_smem, q_bufs, do_bufs, ready, empty, lse_ptr, delta_ptr,
             dk_ptr, dv_ptr, stride_dks, stride_dvs, lo, hi, start_n, seqlen_q, seqlen_k,
             qk_scale, scale,
             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr,
             STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, num_warps: gl.constexpr):
    dtype: gl.constexpr = k_smem.dtype
    s_layout: gl.constexpr = mma_layout(BLOCK_M, num_warps)  # [BLOCK_N, BLOCK_M] scores
    acc_layout: gl.constexpr = mma_layout(D, num_warps)  # [BLOCK_N, D] accumulators
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    query_layout: gl.constexpr = gl.SliceLayout(0, s_layout)  # along the queries
    key_layout: gl.constexpr = gl.SliceLayout(1, s_layout)  # along the keys
    dk = gl.zeros([BLOCK_N, D], gl.float32, acc_layout)
    dv = gl.zeros([BLOCK_N, D], gl.float32, acc_layout)
    zero_s = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)
    cols = start_n + gl.arange(0, BLOCK_N, layout=key_layout)  # the tile's keys
    offset = seqlen_k - seqlen_q
    for i in range(gl.cdiv(hi - lo, BLOCK_M)):
        slot = i % STAGES
        start = lo + i * BLOCK_M
        rows = start + gl.arange(0, BLOCK_M, layout=query_layout)
        lse, delta = _row_stats(lse_ptr, delta_ptr, rows, seqlen_q)
        mbarrier.wait(ready.index(slot), (i // STAGES) & 1)
        q_s = q_bufs.index(slot)  # [BLOCK_M, D]
        do_s = do_bufs.index(slot)  # [BLOCK_M, D]
        s_t = warpgroup_mma(k_smem, q_s.permute((1, 0)), zero_s, use_acc=False,
                            is_async=True)  # K Q^T: [BLOCK_N, BLOCK_M]
        dp_t = warpgroup_mma(v_smem, do_s.permute((1, 0)), zero_s, use_acc=False,
                             is_async=True)  # V dO^T
        s_t, dp_t = warpgroup_mma_wait(0, deps=(s_t, dp_t))
        p_a, ds_a = _probabilities(s_t, dp_t, lse, delta, cols, rows, start, start_n, offset,
                                   qk_scale, a_layout, dtype, IS_CAUSAL, BLOCK_N)
        dv = warpgroup_mma(p_a, do_s, dv, is_async=True)  # += P^T dO
        dk = warpgroup_mma(ds_a, q_s, dk, is_async=True)  # += dS^T Q
        dv, dk, _, _ = warpgroup_mma_wait(0, deps=(dv, dk, p_a, ds_a))  # A read from registers
        mbarrier.arrive(empty.index(slot))  # both products done: the loader may refill
    _store_dkdv(dk, dv, dk_ptr, dv_ptr, stride_dks, stride_dvs, start_n, seqlen_k, scale,
                BLOCK_N, D)



@gluon.jit
def _compute_pipelined(k_smem, v_smem, q_bufs, do_bufs, ready, empty, lse_ptr, delta_ptr,
                       dk_ptr, dv_ptr, stride_dks, stride_dvs, lo, hi, start_n, seqlen_q,
                       seqlen_k, qk_scale, scale,
                       BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr,
                       STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr,
                       num_warps: gl.constexpr):
    """``_compute`` with the products of two query tiles in flight: tile ``i``'s ``K Q^T`` and
    ``V dO^T`` are issued before tile ``i - 1``'s ``P^T dO`` and ``dS^T Q``, so the tensor
    cores run those while the registers turn tile ``i``'s scores into probabilities. A slot
    is freed once the products of the tile two back are done (``STAGES >= 3``)."""
    dtype: gl.constexpr = k_smem.dtype
    s_layout: gl.constexpr = mma_layout(BLOCK_M, num_warps)  # [BLOCK_N, BLOCK_M] scores
    acc_layout: gl.constexpr = mma_layout(D, num_warps)  # [BLOCK_N, D] accumulators
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    query_layout: gl.constexpr = gl.SliceLayout(0, s_layout)  # along the queries
    key_layout: gl.constexpr = gl.SliceLayout(1, s_layout)  # along the keys
    dk = gl.zeros([BLOCK_N, D], gl.float32, acc_layout)
    dv = gl.zeros([BLOCK_N, D], gl.float32, acc_layout)
    zero_s = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, s_layout)
    cols = start_n + gl.arange(0, BLOCK_N, layout=key_layout)
    offset = seqlen_k - seqlen_q
    gl.static_assert(STAGES >= 3, "two tiles in flight and one loading: STAGES >= 3")
    n = gl.cdiv(hi - lo, BLOCK_M)
    if n > 0:  # (causal, keys past every query's reach: no query tile)
        # tile 0: scores and probabilities, no product of another tile in flight
        rows = lo + gl.arange(0, BLOCK_M, layout=query_layout)
        lse, delta = _row_stats(lse_ptr, delta_ptr, rows, seqlen_q)
        mbarrier.wait(ready.index(0), 0)
        s_t = warpgroup_mma(k_smem, q_bufs.index(0).permute((1, 0)), zero_s, use_acc=False,
                            is_async=True)
        dp_t = warpgroup_mma(v_smem, do_bufs.index(0).permute((1, 0)), zero_s, use_acc=False,
                             is_async=True)
        s_t, dp_t = warpgroup_mma_wait(0, deps=(s_t, dp_t))
        p_a, ds_a = _probabilities(s_t, dp_t, lse, delta, cols, rows, lo, start_n, offset,
                                   qk_scale, a_layout, dtype, IS_CAUSAL, BLOCK_N)
        for i in range(1, n):
            slot = i % STAGES
            prev = (i - 1) % STAGES
            rows = lo + i * BLOCK_M + gl.arange(0, BLOCK_M, layout=query_layout)
            lse, delta = _row_stats(lse_ptr, delta_ptr, rows, seqlen_q)
            mbarrier.wait(ready.index(slot), (i // STAGES) & 1)
            s_t = warpgroup_mma(k_smem, q_bufs.index(slot).permute((1, 0)), zero_s, use_acc=False,
                                is_async=True)
            dp_t = warpgroup_mma(v_smem, do_bufs.index(slot).permute((1, 0)), zero_s,
                                 use_acc=False, is_async=True)
            dv = warpgroup_mma(p_a, do_bufs.index(prev), dv, is_async=True)
            dk = warpgroup_mma(ds_a, q_bufs.index(prev), dk, is_async=True)
            # the two products of tile i are done (those of tile i - 1 may run on)
            s_t, dp_t, dv, dk, p_a, ds_a = warpgroup_mma_wait(2, deps=(s_t, dp_t, dv, dk, p_a, ds_a))
            # tile i - 2's slot: its products finished before tile i - 1's were issued
            mbarrier.arrive(empty.index((i + STAGES - 2) % STAGES), pred=i >= 2)
            p_a, ds_a = _probabilities(s_t, dp_t, lse, delta, cols, rows, lo + i * BLOCK_M,
                                       start_n, offset, qk_scale, a_layout, dtype, IS_CAUSAL,
                                       BLOCK_N)
        last = (n - 1) % STAGES
        dv = warpgroup_mma(p_a, do_bufs.index(last), dv, is_async=True)
        dk = warpgroup_mma(ds_a, q_bufs.index(last), dk, is_async=True)
        dv, dk, _, _ = warpgroup_mma_wait(0, deps=(dv, dk, p_a, ds_a))
    _store_dkdv(dk, dv, dk_ptr, dv_ptr, stride_dks, stride_dvs, start_n, seqlen_k, scale,
                BLOCK_N, D)

@gluon.jit
def gluon_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                      stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                      stride_dob, stride_dos, stride_doh, stride_lb, stride_lh,
                      seq_q, seq_k, qk_scale, scale,
                      H: gl.constexpr, D: gl.constexpr, IS_CAUSAL: gl.constexpr,
                      BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                      PIPELINE: gl.constexpr, num_warps: gl.constexpr):
    """dK and dV of one ``[BLOCK_N, D]`` key tile (grid axis 0) of one batch x head (axis 1).

    q, k, v, do, dk, dv: ``[b, s, h, D]`` with unit stride in D (dk / dv with k's strides);
    lse (base 2) and delta: float32 ``[b, h, seq_q]``; qk_scale = scale * log2(e).
    ``PIPELINE``: ``_compute_pipelined`` (two query tiles' products in flight, ``STAGES >= 3``)
    instead of ``_compute``. Every program sees at least one query tile (``seq_q >= 1``).
    """
    pid_n = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    start_n = pid_n * BLOCK_N
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, D], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D], dtype)
    q_base = q_ptr + b.to(gl.int64) * stride_qb + h * stride_qh
    do_base = do_ptr + b.to(gl.int64) * stride_dob + h * stride_doh
    k_off = b.to(gl.int64) * stride_kb + h * stride_kh
    q_desc = tma.make_tensor_descriptor(q_base, [seq_q, D], [stride_qs, 1], [BLOCK_M, D],
                                        q_layout)
    do_desc = tma.make_tensor_descriptor(do_base, [seq_q, D], [stride_dos, 1], [BLOCK_M, D],
                                         q_layout)
    k_desc = tma.make_tensor_descriptor(k_ptr + k_off, [seq_k, D], [stride_ks, 1],
                                        [BLOCK_N, D], kv_layout)
    v_desc = tma.make_tensor_descriptor(v_ptr + k_off, [seq_k, D], [stride_ks, 1],
                                        [BLOCK_N, D], kv_layout)
    k_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, D], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, D], kv_layout)
    q_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, D], q_layout)
    do_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, D], q_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    mbarrier.init(kv_bar, count=1)
    fence_async_shared()
    mbarrier.expect(kv_bar, k_desc.block_type.nbytes + v_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(k_desc, [start_n, 0], kv_bar, k_smem)
    tma.async_copy_global_to_shared(v_desc, [start_n, 0], kv_bar, v_smem)
    mbarrier.wait(kv_bar, 0)
    lo, hi = _query_tiles(start_n, seq_q, seq_k, BLOCK_M, BLOCK_N, IS_CAUSAL)
    l_off = b.to(gl.int64) * stride_lb + h.to(gl.int64) * stride_lh
    dk_base = dk_ptr + k_off
    dv_base = dv_ptr + k_off
    # (one call per branch: a tuple built beforehand would carry the constexprs as values)
    if PIPELINE:
        gl.warp_specialize([
            (_compute_pipelined, (k_smem, v_smem, q_bufs, do_bufs, ready, empty, lse_ptr + l_off,
                                  delta_ptr + l_off, dk_base, dv_base, stride_ks, stride_ks, lo,
                                  hi, start_n, seq_q, seq_k, qk_scale, scale, BLOCK_M, BLOCK_N,
                                  D, STAGES, IS_CAUSAL, num_warps)),
            (_loader, (q_desc, do_desc, q_bufs, do_bufs, ready, empty, lo, hi, BLOCK_M, STAGES)),
        ], [LOADER_WARPS], [LOADER_REGS])
    else:
        gl.warp_specialize([
            (_compute, (k_smem, v_smem, q_bufs, do_bufs, ready, empty, lse_ptr + l_off,
                        delta_ptr + l_off, dk_base, dv_base, stride_ks, stride_ks, lo, hi,
                        start_n, seq_q, seq_k, qk_scale, scale, BLOCK_M, BLOCK_N, D, STAGES,
                        IS_CAUSAL, num_warps)),
            (_loader, (q_desc, do_desc, q_bufs, do_bufs, ready, empty, lo, hi, BLOCK_M, STAGES)),
        ], [LOADER_WARPS], [LOADER_REGS])


# (block_m, stages, pipeline) per head dim: the rows that compile without spills or with few
# (``--compile``; ptxas: 64x128 pipelined at d 128 spills 280 bytes and serialises its wgmma
# for want of registers, 32x128 pipelined with 4 stages spills nothing).
CONFIGS = {
    128: [dict(block_m=64, stages=2, pipeline=False), dict(block_m=32, stages=3, pipeline=False),
          dict(block_m=32, stages=4, pipeline=True), dict(block_m=64, stages=3, pipeline=False)],
    64: [dict(block_m=64, stages=2, pipeline=False), dict(block_m=64, stages=3, pipeline=True)],
}

SIGNATURE = {"q_ptr": "*{dt}", "k_ptr": "*{dt}", "v_ptr": "*{dt}", "do_ptr": "*{dt}",
             "lse_ptr": "*fp32", "delta_ptr": "*fp32", "dk_ptr": "*{dt}", "dv_ptr": "*{dt}",
             **{n: "i32" for n in ("stride_qb", "stride_qs", "stride_qh", "stride_kb",
                                   "stride_ks", "stride_kh", "stride_dob", "stride_dos",
                                   "stride_doh", "stride_lb", "stride_lh", "seq_q", "seq_k")},
             "qk_scale": "fp32", "scale": "fp32"}


def compile_sm90(*, d: int = 128, causal: bool = False, block_m: int = 64, block_n: int = 128,
                 stages: int = 2, warps: int = 8, maxnreg: int | None = 168,
                 dtype: str = "bf16", pipeline: bool = False) -> dict:
    """Compile for sm90 without a GPU; return the register split and the cubin's resources."""
    const = dict(H=16, D=d, IS_CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n,
                 STAGES=stages, PIPELINE=pipeline, num_warps=warps)
    return _compile(gluon_dkdv_kernel, SIGNATURE, const, warps=warps, maxnreg=maxnreg, dtype=dtype)


def gluon_dkdv(q, k, v, do, lse2, delta, *, causal: bool, scale: float, block_m: int = 64,
               block_n: int = 128, stages: int = 2, warps: int = 8, maxnreg: int = 168,
               pipeline: bool = False):
    """dK, dV from this kernel (CUDA); ``lse2``/``delta`` as the shipped preprocess writes
    them (``[b, h, seq_q]`` float32)."""
    import torch

    from attnkit.kernels.flash_common import LOG2E, _ensure_allocator

    _ensure_allocator()  # device-side descriptors live in global scratch
    if not (k.shape == v.shape == q.shape[:1] + k.shape[1:2] + q.shape[2:]
            and v.stride() == k.stride() and q.dtype in (torch.bfloat16, torch.float16)):
        raise ValueError(f"gluon_dkdv: expected MHA [b, s, h, d] 16-bit q, k, v with k's "
                         f"strides for v, got q {tuple(q.shape)} {q.dtype}, k "
                         f"{tuple(k.shape)} {k.stride()}, v {tuple(v.shape)} {v.stride()}")
    b, sq, h, d = q.shape
    sk = k.shape[1]
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    grid = (triton.cdiv(sk, block_n), b * h)
    gluon_dkdv_kernel[grid](
        q, k, v, do, lse2, delta, dk, dv, *q.stride()[:3], *k.stride()[:3], *do.stride()[:3],
        lse2.stride(0), lse2.stride(1), sq, sk, scale * LOG2E, scale,
        H=h, D=d, IS_CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
        PIPELINE=pipeline, num_warps=warps, maxnreg=maxnreg)
    return dk, dv


def _row_inputs(out, do, lse):
    """``(lse2, delta)`` as the shipped preprocess writes them: the base-2 LSE with ``+inf``
    on rows that saw no key, and ``delta = sum(out * dO)`` over the head dim, float32
    ``[b, h, sq]``."""
    import torch

    delta = (out.float() * do.float()).sum(-1).transpose(1, 2).contiguous()
    lse2 = torch.where(torch.isinf(lse), torch.full_like(lse, float("inf")),
                       lse * 1.4426950408889634).contiguous()
    return lse2, delta


def _check_case(name: str) -> dict:
    """One prefill shape: each config of ``CONFIGS`` against the shipped backward's dK/dV
    (deterministic two-launch path), its time, and the shipped kernels' device times."""
    import functools

    import torch
    import triton.testing

    from attnkit.kernels import flash_bwd, flash_fwd
    from benchmarks.probe_step5 import _dense_case, kernels_us

    q, k, v, opts = _dense_case(name)
    out, lse = flash_fwd.flash_fwd(q, k, v, **opts)
    do = torch.randn_like(out)
    os.environ["ATTNKIT_FLASH_DQ"] = "kernel"
    shipped = functools.partial(flash_bwd.flash_bwd, do, q, k, v, out, lse, deterministic=True,
                                **opts)
    want = shipped()
    lse2, delta = _row_inputs(out, do, lse)
    row = {}
    for cfg in CONFIGS[q.shape[-1]]:
        tag = label(cfg)
        run = functools.partial(gluon_dkdv, q, k, v, do, lse2, delta, causal=opts["causal"],
                                scale=opts["scale"], **cfg)
        try:
            dk, dv = run()
            err = {n: float((g.float() - w.float()).abs().max() / (w.float().abs().max() + 1e-6))
                   for n, g, w in (("dk", dk, want[1]), ("dv", dv, want[2]))}
            row[tag] = {"rel_err_vs_shipped": err,
                          "ms": triton.testing.do_bench(run, warmup=50, rep=200,
                                                        return_mode="median")}
        except Exception as exc:  # report and go on
            row[tag] = f"failed: {type(exc).__name__}: {exc}"[:600]
    row["shipped_kernels_us"] = kernels_us(shipped, ("_bwd_dkdv", "_bwd_dq"))
    return row


# (batch, seq_q, seq_k, heads, d, causal): awkward lengths for the oracle check
ORACLE_CASES = ((2, 1000, 1000, 4, 128, True), (2, 113, 203, 4, 128, True),
                (2, 203, 113, 4, 128, True), (1, 333, 129, 4, 64, False),
                (2, 17, 17, 2, 128, False), (2, 1, 29, 2, 64, True))


def _oracle_case(b: int, sq: int, sk: int, h: int, d: int, causal: bool) -> dict:
    """dK/dV of every config of ``CONFIGS`` against the float64 oracle by the tolerance rule
    of the test suite (``tests/tolerance.py``: error at most twice the bf16 oracle's plus a
    floor), from the shipped forward's output and LSE."""
    import functools

    import torch

    from attnkit.kernels import flash_fwd
    from tests.flash_check import Case, _oracle
    from tests.tolerance import assert_within_rule

    gen = torch.Generator(device="cuda").manual_seed(sq * 7 + sk)
    q, k, v = (torch.randn(b, n, h, d, device="cuda", dtype=torch.bfloat16, generator=gen)
               for n in (sq, sk, sk))
    opts = dict(causal=causal, window=(-1, -1), scale=d ** -0.5, softcap=0.0,
                key_padding_mask=None, attn_mask=None, cu_seqlens_q=None, cu_seqlens_k=None,
                max_seqlen_q=sq, max_seqlen_k=sk, dropout_p=0.0, dropout_seed=0)
    out, lse = flash_fwd.flash_fwd(q, k, v, **opts)
    do = torch.randn(out.shape, device="cuda", dtype=out.dtype, generator=gen)
    lse2, delta = _row_inputs(out, do, lse)
    case = Case((b, sq, sk, h, h, d, d), causal=causal)
    grads = {}
    for dtype in (torch.float64, torch.bfloat16):  # the truth, the baseline
        ref = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        o, _ = _oracle(*ref, case, kpm=None, mask=None, seed=0, dtype=dtype)
        grads[dtype] = torch.autograd.grad(o, ref[1:], do.to(dtype))
    row = {}
    for cfg in CONFIGS[d]:
        tag = label(cfg)
        try:
            dk, dv = functools.partial(gluon_dkdv, q, k, v, do, lse2, delta, causal=causal,
                                       scale=opts["scale"], **cfg)()
            for name, got, truth, base in zip(("dk", "dv"), (dk, dv), grads[torch.float64],
                                              grads[torch.bfloat16]):
                assert_within_rule(name, got.float(), truth.float(), base.float(),
                                   dtype=torch.bfloat16)
            row[tag] = "passed"
        except Exception as exc:  # report and go on
            row[tag] = f"failed: {type(exc).__name__}: {exc}"[:400]
    return row


def check(out_path: str) -> dict:
    """On a GPU: ``_oracle_case`` at awkward lengths, then ``_check_case`` at the MHA prefill
    shapes, written to ``out_path`` as it goes."""
    jobs = [(f"oracle b{s[0]} sq{s[1]} sk{s[2]} h{s[3]} d{s[4]} {'causal' if s[5] else 'full'}",
             _oracle_case, s) for s in ORACLE_CASES]
    jobs += [(name, _check_case, (name,)) for name in (
        "mha d128 s16k full", "mha d128 s4k full", "mha d128 s4k causal", "mha d128 s1k full",
        "mha d128 s16k causal", "mha d64 s4k full")]
    return run_jobs(jobs, out_path)


def main() -> None:
    _main(__doc__, CONFIGS, compile_sm90, check, "gluon-dkdv.json")

if __name__ == "__main__":
    main()
