"""Experiment (step 8 of benchmarks/NOTES-flash.md): a warp-specialised forward in Gluon.

Not one of attnkit's kernels: nothing in ``attnkit`` imports this file. It compiles for sm90
offline (``--compile``) and, on a GPU, holds itself to the float64 oracle and times itself
against the shipped forward (``--check``).

Scope: dense MHA or GQA/MQA (``HQ`` a multiple of ``HK``), d = dv in {64, 128}, bf16/fp16,
causal (bottom-right) or not, no masks, windows, softcap or dropout; ``[b, s, h, d]`` tensors
with 16-byte aligned rows (TMA). Grid ``(query tiles, batch x query heads)``; each program
owns a ``[BLOCK_M, D]`` query tile:

- a loader partition (1 warp, 24 registers) TMA-loads the Q tile once, then each
  ``[BLOCK_N, D]`` tile of K and of V into rings of ``STAGES`` slots (K and V have their own
  ready barriers, so the scores of a tile start before its V has arrived);
- the default partition (``num_warps`` warps, the registers ``maxnreg`` leaves it) runs the
  online softmax in base 2: ``S = Q K^T`` (asynchronous wgmma), the running max and sum, then
  ``O += P V`` with ``P`` from registers. With ``PIPELINE`` the next tile's ``Q K^T`` is
  issued before this tile's softmax, so the tensor cores work while the registers do the
  exponentials (FA3's intra-warpgroup overlap).

Outputs as ``flash_fwd``'s: ``out`` in q's layout and dtype, LSE float32 ``[b, hq, sq]`` in
natural log, ``-inf`` (and zero output) on rows that see no key.

Usage::

    PYTHONPATH=. /tmp/t36/bin/python benchmarks/gluon_fwd.py --compile   # no GPU
    PYTHONPATH=. python benchmarks/gluon_fwd.py --check                  # CUDA, sm90
"""

from __future__ import annotations

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

LN2 = gl.constexpr(0.6931471805599453)

# (block_m, block_n, stages, pipeline) per head dim: candidates for ``--check``
CONFIGS = {
    128: [dict(block_m=128, block_n=128, stages=2, pipeline=False),
          dict(block_m=128, block_n=64, stages=3, pipeline=False),
          dict(block_m=128, block_n=64, stages=3, pipeline=True),
          dict(block_m=128, block_n=128, stages=2, pipeline=True)],
    64: [dict(block_m=128, block_n=128, stages=2, pipeline=False),
         dict(block_m=128, block_n=128, stages=3, pipeline=True)],
}


@gluon.jit
def _key_tiles(start_m, seqlen_q, seqlen_k, BLOCK_M: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """``hi``: the keys ``[0, hi)`` that some query of ``[start_m, start_m + BLOCK_M)`` sees
    (causal, bottom-right: query ``i`` sees key ``j`` when ``j <= i + seqlen_k - seqlen_q``)."""
    hi = seqlen_k
    if IS_CAUSAL:
        last = gl.minimum(start_m + BLOCK_M, seqlen_q) - 1 + (seqlen_k - seqlen_q)
        hi = gl.maximum(gl.minimum(last + 1, seqlen_k), 0)
    return hi


@gluon.jit
def _loader(q_desc, k_desc, v_desc, q_smem, q_bar, k_bufs, v_bufs, k_ready, v_ready, empty,
            start_m, hi, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    mbarrier.expect(q_bar, q_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [start_m, 0], q_bar, q_smem)
    for j in range(gl.cdiv(hi, BLOCK_N)):
        slot = j % STAGES
        mbarrier.wait(empty.index(slot), ((j // STAGES) & 1) ^ 1)  # every slot starts free
        mbarrier.expect(k_ready.index(slot), k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [j * BLOCK_N, 0], k_ready.index(slot),
                                        k_bufs.index(slot))
        mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [j * BLOCK_N, 0], v_ready.index(slot),
                                        v_bufs.index(slot))


@gluon.jit
def _softmax_step(s, m_i, l_i, acc, cols, rows, start_n, start_m, offset, seqlen_k, qk_scale,
                  p_layout: gl.constexpr, dtype: gl.constexpr, IS_CAUSAL: gl.constexpr,
                  BLOCK_M: gl.constexpr):
    """One key tile of the online softmax (base 2): the new running max and sum, the
    accumulator rescaled, and ``P`` as the register A operand of ``P V``. Keys past
    ``seqlen_k`` (TMA's zero rows of the last tile) are masked."""
    s = s * qk_scale
    if start_n + s.shape[1] > seqlen_k:
        s = gl.where(cols[None, :] < seqlen_k, s, float("-inf"))
    if IS_CAUSAL:  # only tiles that cross the diagonal hide some pairs
        if start_n + s.shape[1] - 1 > start_m + offset:
            s = gl.where(cols[None, :] <= rows[:, None] + offset, s, float("-inf"))
    m_new = gl.maximum(m_i, gl.max(s, 1))
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw no key yet
    alpha = gl.exp2(m_i - m_safe)
    p = gl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + gl.sum(p, 1)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, acc.type.layout))[:, None]
    return m_new, l_i, acc, gl.convert_layout(p.to(dtype), p_layout)


@gluon.jit
def _pv_tile(s, m_i, l_i, acc, v_bufs, v_ready, empty, j, rows, start_m, offset, seqlen_k,
             qk_scale, col_layout: gl.constexpr, p_layout: gl.constexpr, dtype: gl.constexpr,
             IS_CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
             STAGES: gl.constexpr):
    """Key tile ``j`` after its scores ``s``: the softmax step, ``O += P V`` waited on (with
    every product issued before it: in the pipelined loop the next tile's scores, which ran
    beside the softmax), and its slot handed back to the loader."""
    slot = j % STAGES
    cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=col_layout)
    m_i, l_i, acc, p = _softmax_step(s, m_i, l_i, acc, cols, rows, j * BLOCK_N, start_m,
                                     offset, seqlen_k, qk_scale, p_layout, dtype,
                                     IS_CAUSAL, BLOCK_M)
    mbarrier.wait(v_ready.index(slot), (j // STAGES) & 1)
    acc = warpgroup_mma(p, v_bufs.index(slot), acc, is_async=True)
    acc, p = warpgroup_mma_wait(0, deps=(acc, p))
    mbarrier.arrive(empty.index(slot))
    return m_i, l_i, acc


@gluon.jit
def _compute(q_smem, q_bar, k_bufs, v_bufs, k_ready, v_ready, empty, out_ptr, lse_ptr,
             stride_os, start_m, hi, seqlen_q, seqlen_k, qk_scale,
             BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr,
             STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, PIPELINE: gl.constexpr,
             num_warps: gl.constexpr):
    dtype: gl.constexpr = q_smem.dtype
    s_layout: gl.constexpr = mma_layout(BLOCK_N, num_warps)  # [BLOCK_M, BLOCK_N] scores
    o_layout: gl.constexpr = mma_layout(D, num_warps)  # [BLOCK_M, D] accumulator
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    rows = start_m + gl.arange(0, BLOCK_M, layout=row_layout)
    offset = seqlen_k - seqlen_q
    m_i = gl.full([BLOCK_M], float("-inf"), gl.float32, row_layout)
    l_i = gl.zeros([BLOCK_M], gl.float32, row_layout)
    acc = gl.zeros([BLOCK_M, D], gl.float32, o_layout)
    zero_s = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, s_layout)
    n = gl.cdiv(hi, BLOCK_N)
    mbarrier.wait(q_bar, 0)
    if PIPELINE:
        if n > 0:
            mbarrier.wait(k_ready.index(0), 0)
            s = warpgroup_mma(q_smem, k_bufs.index(0).permute((1, 0)), zero_s, use_acc=False,
                              is_async=True)
            s = warpgroup_mma_wait(0, deps=(s,))
            for j in range(n - 1):
                nxt = (j + 1) % STAGES
                # the next tile's scores run while this tile's softmax does
                mbarrier.wait(k_ready.index(nxt), ((j + 1) // STAGES) & 1)
                s_next = warpgroup_mma(q_smem, k_bufs.index(nxt).permute((1, 0)), zero_s,
                                       use_acc=False, is_async=True)
                m_i, l_i, acc = _pv_tile(s, m_i, l_i, acc, v_bufs, v_ready, empty, j, rows,
                                         start_m, offset, seqlen_k, qk_scale, col_layout,
                                         p_layout, dtype, IS_CAUSAL, BLOCK_M, BLOCK_N, STAGES)
                s = warpgroup_mma_wait(0, deps=(s_next,))
            m_i, l_i, acc = _pv_tile(s, m_i, l_i, acc, v_bufs, v_ready, empty, n - 1, rows,
                                     start_m, offset, seqlen_k, qk_scale, col_layout, p_layout,
                                     dtype, IS_CAUSAL, BLOCK_M, BLOCK_N, STAGES)
    else:
        for j in range(n):
            mbarrier.wait(k_ready.index(j % STAGES), (j // STAGES) & 1)
            s = warpgroup_mma(q_smem, k_bufs.index(j % STAGES).permute((1, 0)), zero_s,
                              use_acc=False, is_async=True)
            s = warpgroup_mma_wait(0, deps=(s,))
            m_i, l_i, acc = _pv_tile(s, m_i, l_i, acc, v_bufs, v_ready, empty, j, rows,
                                     start_m, offset, seqlen_k, qk_scale, col_layout, p_layout,
                                     dtype, IS_CAUSAL, BLOCK_M, BLOCK_N, STAGES)
    # epilogue: out = acc / l, lse = ln 2 * (m + log2 l); rows that saw no key: 0 and -inf
    seen = l_i > 0.0
    inv = gl.where(seen, 1.0 / gl.where(seen, l_i, 1.0), 0.0)
    out = acc * gl.convert_layout(inv, gl.SliceLayout(1, o_layout))[:, None]
    lse = gl.where(seen, (m_i + gl.log2(gl.where(seen, l_i, 1.0))) * LN2, float("-inf"))
    o_rows = start_m + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, o_layout))
    o_cols = gl.arange(0, D, layout=gl.SliceLayout(0, o_layout))
    gl.store(out_ptr + o_rows[:, None] * stride_os + o_cols[None, :], out.to(dtype),
             mask=(o_rows < seqlen_q)[:, None])
    gl.store(lse_ptr + rows, lse, mask=rows < seqlen_q)


@gluon.jit
def gluon_fwd_kernel(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
                     stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                     stride_lb, stride_lh, seq_q, seq_k, qk_scale,
                     HQ: gl.constexpr, GROUP: gl.constexpr, D: gl.constexpr,
                     IS_CAUSAL: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                     STAGES: gl.constexpr, PIPELINE: gl.constexpr, num_warps: gl.constexpr):
    """One ``[BLOCK_M, D]`` query tile (grid axis 0) of one batch x query head (axis 1).

    q, out: ``[b, sq, hq, D]``; k, v: ``[b, sk, hq / GROUP, D]`` with the same strides
    (v as k); lse: float32 ``[b, hq, sq]``; qk_scale = scale * log2(e).
    """
    pid_m = gl.program_id(0)
    if IS_CAUSAL:  # the last query tiles see the most keys: start them first
        pid_m = gl.num_programs(0) - 1 - pid_m
    pid_bh = gl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    hk = h // GROUP
    start_m = pid_m * BLOCK_M
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, D], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, D], dtype)
    q_off = b.to(gl.int64) * stride_qb + h * stride_qh
    k_off = b.to(gl.int64) * stride_kb + hk * stride_kh
    q_desc = tma.make_tensor_descriptor(q_ptr + q_off, [seq_q, D], [stride_qs, 1], [BLOCK_M, D],
                                        q_layout)
    k_desc = tma.make_tensor_descriptor(k_ptr + k_off, [seq_k, D], [stride_ks, 1], [BLOCK_N, D],
                                        kv_layout)
    v_desc = tma.make_tensor_descriptor(v_ptr + k_off, [seq_k, D], [stride_ks, 1], [BLOCK_N, D],
                                        kv_layout)
    q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, D], q_layout)
    k_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], kv_layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, D], kv_layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    mbarrier.init(q_bar, count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=1)
    fence_async_shared()
    hi = _key_tiles(start_m, seq_q, seq_k, BLOCK_M, IS_CAUSAL)
    o_ptr = out_ptr + q_off
    l_ptr = lse_ptr + b.to(gl.int64) * stride_lb + h.to(gl.int64) * stride_lh
    gl.warp_specialize([
        (_compute, (q_smem, q_bar, k_bufs, v_bufs, k_ready, v_ready, empty, o_ptr, l_ptr,
                    stride_qs, start_m, hi, seq_q, seq_k, qk_scale, BLOCK_M, BLOCK_N, D,
                    STAGES, IS_CAUSAL, PIPELINE, num_warps)),
        (_loader, (q_desc, k_desc, v_desc, q_smem, q_bar, k_bufs, v_bufs, k_ready, v_ready,
                   empty, start_m, hi, BLOCK_N, STAGES)),
    ], [LOADER_WARPS], [LOADER_REGS])


SIGNATURE = {"q_ptr": "*{dt}", "k_ptr": "*{dt}", "v_ptr": "*{dt}", "out_ptr": "*{dt}",
             "lse_ptr": "*fp32",
             **{n: "i32" for n in ("stride_qb", "stride_qs", "stride_qh", "stride_kb",
                                   "stride_ks", "stride_kh", "stride_lb", "stride_lh", "seq_q",
                                   "seq_k")},
             "qk_scale": "fp32"}


def compile_sm90(*, d: int = 128, causal: bool = False, block_m: int = 128,
                 block_n: int = 128, stages: int = 2, pipeline: bool = False, warps: int = 8,
                 maxnreg: int | None = 168, dtype: str = "bf16") -> dict:
    """Compile for sm90 without a GPU; return the register split and the cubin's resources."""
    const = dict(HQ=16, GROUP=1, D=d, IS_CAUSAL=causal, BLOCK_M=block_m, BLOCK_N=block_n,
                 STAGES=stages, PIPELINE=pipeline, num_warps=warps)
    return _compile(gluon_fwd_kernel, SIGNATURE, const, warps=warps, maxnreg=maxnreg, dtype=dtype)


def gluon_fwd(q, k, v, *, causal: bool, scale: float, block_m: int = 128, block_n: int = 128,
              stages: int = 2, pipeline: bool = False, warps: int = 8, maxnreg: int = 168):
    """``(out, lse)`` from this kernel (CUDA, sm90).

    Raises:
        ValueError: not dense ``[b, s, h, d]`` 16-bit q, k, v with v in k's strides and the
            query heads a multiple of the KV heads.
    """
    import torch

    from attnkit.kernels.flash_common import LOG2E, _ensure_allocator

    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    if not (k.shape == v.shape and k.shape[0] == b and k.shape[3] == d and hq % hk == 0
            and v.stride() == k.stride() and q.dtype in (torch.bfloat16, torch.float16)):
        raise ValueError(f"gluon_fwd: expected [b, s, h, d] 16-bit q, k, v (v in k's "
                         f"strides, hq a multiple of hk), got q {tuple(q.shape)} {q.dtype}, "
                         f"k {tuple(k.shape)} {k.stride()}, v {tuple(v.shape)} {v.stride()}")
    _ensure_allocator()  # device-side descriptors live in global scratch
    out = torch.empty_like(q)
    lse = torch.empty(b, hq, sq, device=q.device, dtype=torch.float32)
    grid = (triton.cdiv(sq, block_m), b * hq)
    gluon_fwd_kernel[grid](
        q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], lse.stride(0), lse.stride(1),
        sq, sk, scale * LOG2E, HQ=hq, GROUP=hq // hk, D=d, IS_CAUSAL=causal, BLOCK_M=block_m,
        BLOCK_N=block_n, STAGES=stages, PIPELINE=pipeline, num_warps=warps, maxnreg=maxnreg)
    return out, lse


# (batch, seq_q, seq_k, heads_q, heads_k, d, causal): awkward lengths for the oracle check
ORACLE_CASES = ((2, 1000, 1000, 4, 4, 128, True), (2, 113, 203, 4, 2, 128, True),
                (2, 203, 113, 4, 4, 128, True), (1, 333, 129, 4, 1, 64, False),
                (2, 17, 17, 2, 2, 128, False), (2, 1, 29, 2, 2, 64, True))


def _oracle_case(b: int, sq: int, sk: int, hq: int, hk: int, d: int, causal: bool) -> dict:
    """``out`` and LSE of every config against the float64 oracle by the test suite's
    tolerance rule (``tests/tolerance.py``)."""
    import functools

    import torch

    from tests.flash_check import Case, _oracle
    from tests.tolerance import assert_within_rule

    gen = torch.Generator(device="cuda").manual_seed(sq * 7 + sk)
    q = torch.randn(b, sq, hq, d, device="cuda", dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(b, sk, hk, d, device="cuda", dtype=torch.bfloat16, generator=gen)
            for _ in range(2))
    case = Case((b, sq, sk, hq, hk, d, d), causal=causal)
    truth = _oracle(q.double(), k.double(), v.double(), case, kpm=None, mask=None, seed=0,
                    dtype=torch.float64)
    base = _oracle(q, k, v, case, kpm=None, mask=None, seed=0, dtype=torch.bfloat16)
    row = {}
    for cfg in CONFIGS[d]:
        try:
            out, lse = functools.partial(gluon_fwd, q, k, v, causal=causal, scale=d ** -0.5,
                                         **cfg)()
            assert_within_rule("out", out.float(), truth[0].float(), base[0].float(),
                               dtype=torch.bfloat16)
            assert_within_rule("lse", lse, truth[1].float(), base[1].float(),
                               dtype=torch.bfloat16)
            row[label(cfg)] = "passed"
        except Exception as exc:  # report and go on
            row[label(cfg)] = f"failed: {type(exc).__name__}: {exc}"[:400]
    return row


def _time_case(name: str) -> dict:
    """One prefill shape: each config's time and difference from the shipped forward, and
    the shipped forward's time (both through ``do_bench``, L2 flushed)."""
    import functools

    import triton.testing

    from attnkit.kernels import flash_fwd
    from benchmarks.probe_step5 import _dense_case

    q, k, v, opts = _dense_case(name)
    shipped = functools.partial(flash_fwd.flash_fwd, q, k, v, **opts)
    want, _ = shipped()
    row = {"shipped_ms": triton.testing.do_bench(shipped, warmup=50, rep=200,
                                                 return_mode="median")}
    for cfg in CONFIGS[q.shape[-1]]:
        run = functools.partial(gluon_fwd, q, k, v, causal=opts["causal"], scale=opts["scale"],
                                **cfg)
        try:
            out, _ = run()
            err = float((out.float() - want.float()).abs().max()
                        / (want.float().abs().max() + 1e-6))
            row[label(cfg)] = {"rel_err_vs_shipped": err,
                                "ms": triton.testing.do_bench(run, warmup=50, rep=200,
                                                              return_mode="median")}
        except Exception as exc:  # report and go on
            row[label(cfg)] = f"failed: {type(exc).__name__}: {exc}"[:600]
    return row


def check(out_path: str) -> dict:
    """On a GPU: ``_oracle_case`` at awkward lengths, then ``_time_case`` at the dense
    prefill shapes, written to ``out_path`` as it goes."""
    jobs = [(f"oracle b{s[0]} sq{s[1]} sk{s[2]} hq{s[3]} hk{s[4]} d{s[5]}"
             f" {'causal' if s[6] else 'full'}", _oracle_case, s) for s in ORACLE_CASES]
    jobs += [(name, _time_case, (name,)) for name in (
        "mha d128 s1k full", "mha d128 s4k full", "mha d128 s16k causal",
        "gqa 32:8 d128 s4k full", "mha d128 s1k causal", "mha d64 s4k full")]
    return run_jobs(jobs, out_path)


def main() -> None:
    _main(__doc__, CONFIGS, compile_sm90, check, "gluon-fwd.json")

if __name__ == "__main__":
    main()
