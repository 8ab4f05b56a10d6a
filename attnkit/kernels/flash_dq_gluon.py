"""The dQ kernel of the flash backward for Hopper, warp-specialised, written in Gluon.

``flash_bwd`` launches it in place of ``_bwd_dq_kernel`` where ``flash_bwd._gluon_dq`` says so
(where it measured faster on an H200: from 4k tokens, without windows; the probe is
``benchmarks/gluon_dq.py``). It takes what the Gluon forward takes (dense
MHA or GQA/MQA, head dim 128 or MLA's 192 for q and k with 128 for v, 16-bit, causal or not,
sliding windows, no masks, softcap or dropout; sm90 and a Triton of
``flash_common.GLUON_TRITON``). MLA's 192 columns are read as two column tiles of 128 and 64
(``flash_fwd_gluon._qk_tiles``: Gluon's block shapes are powers of two), its dQ as two
accumulators. Head dim 64 works too, sent only on request: it measured slower than the
Triton dQ kernel (``flash_bwd.GLUON_DQ_D64``, off).

Grid ``(query tiles, batch x query heads)``, the forward's split: each program owns one
``[BLOCK_M, D]`` tile of Q and dO and walks the key tiles it sees (``_key_tiles``), in
partitions:

- a loader (1 warp, 24 registers) TMA-loads the Q and dO tiles once, then each
  ``[BLOCK_N, D]`` tile of K and V into a ring of ``STAGES`` slots;
- two compute warpgroups (240 registers each), one per half of the query tile: per key tile
  ``S = Q K^T`` and ``dP = dO V^T`` (asynchronous wgmma, issued together),
  ``P = exp2(S - lse)`` with ``flash_fwd_gluon.masked_scores``'s masks,
  ``dS = P (dP - delta)``, then ``dQ += dS K`` with ``dS`` from registers, and the slot goes
  back to the loader; dQ is scaled and stored at the end.

The base-2 LSE (``+inf`` on rows that saw no key, and past the sequence) and ``delta`` come
from ``flash_bwd._bwd_preprocess``, so rows that see no key get exactly zero. No atomics: the
result is bitwise reproducible.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from attnkit.kernels import fast_launch
from attnkit.kernels.flash_common import LOG2E, _ensure_allocator, cdiv
from attnkit.kernels.flash_fwd_gluon import (
    _key_tiles,
    _load_kv,
    _qk_tiles,
    _scores,
    _unmasked_tiles,
    kv_ring_barriers,
    masked_scores,
    query_tile_of_program,
)
from attnkit.kernels.gluon_sm90 import (
    COMPUTE_REGS,
    LOADER_REGS,
    LOADER_WARPS,
    MAXNREG,
    column_split,
    mma_layout,
    walk_part,
    window_constexprs,
)

# The shipped configuration: 128 queries (two partitions of 64) per tile, two slots, and keys
# per tile by ``causal`` and head dim (``block_n_for``; with 64, S, dP and dQ take 32 + 32 +
# 64 registers per thread of a partition).
BLOCK_M, STAGES = 128, 2
BLOCK_N_FULL, BLOCK_N_CAUSAL, BLOCK_N_MLA = 128, 128, 64
# Whether the key tiles that need no mask skip ``masked_scores`` (the forward's
# ``SPLIT_MASKS``). Measured on an H200 (step 13 of benchmarks/NOTES-flash.md,
# ``results/gluon-dq-h200-2026-12-01-step13.json``, kernel us, split against not): d 128 4k
# causal 745 against 791 (128 keys; 754 with 64), 16k causal 2267 against 2528 (2327 with
# 64); 1k causal 295 against 305, where Triton's dQ kernel serves (282).
SPLIT_MASKS = True
# Launches so far in this process, and the tiling of the last one (``attnkit.bench.subject``).
calls = 0
tiling = f"{BLOCK_M}x{BLOCK_N_FULL} s{STAGES} wg2"


def block_n_for(causal: bool, head_dim: int = 128) -> int:
    """The key tile the dQ kernel ships with: measured on an H200 (steps 11 and 13 of
    benchmarks/NOTES-flash.md, ``results/gluon-dq-h200-2026-12-01-step1[13].json``, us of the
    kernel), 128 keys without a causal mask (4k 1306 against 1356 with 64, 16k 4807 against
    5043) and with one, on the split walk (``SPLIT_MASKS``: 16k causal 2267 against 2327 with
    64, 4k causal 745 against 754; on the plain walk 64 was faster, 2474 against 2543). MLA's
    head dim (192) takes 64 (``BLOCK_N_MLA``): its two dQ accumulators (128 + 64 columns)
    leave no room for 128-key scores. Head dim 64 follows 128 (step 13, split walk: 128 keys 904 against 965 us
    at 4k causal).

    Example:
        >>> block_n_for(False), block_n_for(True), block_n_for(False, 192)
        (128, 128, 64)
    """
    if head_dim == 192:
        return BLOCK_N_MLA
    return BLOCK_N_CAUSAL if causal else BLOCK_N_FULL


@gluon.jit
def _loader(q_desc, q1_desc, do_desc, k_desc, k1_desc, v_desc, q_smem, q1_smem, do_smem, q_bar,
            k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, start_m, lo, hi,
            D0: gl.constexpr, D1: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """The loader partition: the Q tile (``D0`` columns, and the next ``D1`` where
    ``D1 > 0``) and the dO tile on one barrier, then the K and V tiles of keys
    ``[lo, hi)``."""
    q_bytes: gl.constexpr = q_desc.block_type.nbytes + do_desc.block_type.nbytes + (
        q1_desc.block_type.nbytes if D1 > 0 else 0)
    mbarrier.expect(q_bar, q_bytes)
    tma.async_copy_global_to_shared(q_desc, [start_m, 0], q_bar, q_smem)
    if D1 > 0:
        tma.async_copy_global_to_shared(q1_desc, [start_m, D0], q_bar, q1_smem)
    tma.async_copy_global_to_shared(do_desc, [start_m, 0], q_bar, do_smem)
    _load_kv(k_desc, k1_desc, v_desc, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty,
             gl.to_tensor(0), lo, hi, 0, 0, 0, D0, D1, BLOCK_N, STAGES)


@gluon.jit
def _store_dq(dq, dq_ptr, stride_dqs, first, col, seqlen_q, scale, ROWS: gl.constexpr,
              W: gl.constexpr):
    """``scale * dq`` (``[ROWS, W]``) to rows ``first ..`` and columns ``col ..`` of
    ``dq_ptr`` (rows past ``seqlen_q`` left out)."""
    acc_layout: gl.constexpr = dq.type.layout
    o_rows = first + gl.arange(0, ROWS, layout=gl.SliceLayout(1, acc_layout))
    o_cols = col + gl.arange(0, W, layout=gl.SliceLayout(0, acc_layout))
    gl.store(dq_ptr + o_rows.to(gl.int64)[:, None] * stride_dqs + o_cols[None, :],
             (dq * scale).to(dq_ptr.dtype.element_ty), mask=(o_rows < seqlen_q)[:, None])


@gluon.jit
def _dq_tile(q_rows, q1_rows, do_rows, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, c, j,
             dq, dq1, rows, lse, delta, zero_s, first, offset, seqlen_k, qk_scale,
             a_layout: gl.constexpr, a1_layout: gl.constexpr, col_layout: gl.constexpr,
             BLOCK_N: gl.constexpr, D1: gl.constexpr, STAGES: gl.constexpr,
             IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr,
             MASK: gl.constexpr):
    """Key tile ``j``, the ring's ``c``-th, of ``_compute``: ``S = Q K^T`` and ``dP = dO
    V^T`` (``MASK``: ``S`` through ``masked_scores``), ``dS``, ``dQ += dS K`` (and ``dq1 +=
    dS K1`` where ``D1 > 0``), and the slot freed: ``(dq, dq1)``."""
    dtype: gl.constexpr = q_rows.dtype
    slot = c % STAGES
    phase = (c // STAGES) & 1
    mbarrier.wait(k_ready.index(slot), phase)
    s = _scores(q_rows, q1_rows, k_bufs, k1_bufs, slot, zero_s, D1)  # Q K^T
    mbarrier.wait(v_ready.index(slot), phase)
    dp = warpgroup_mma(do_rows, v_bufs.index(slot).permute((1, 0)), zero_s, use_acc=False,
                       is_async=True)  # dO V^T: [ROWS, BLOCK_N]
    s, dp = warpgroup_mma_wait(0, deps=(s, dp))
    if MASK:
        cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=col_layout)
        s = masked_scores(s, cols, rows, j * BLOCK_N, first, offset, seqlen_k, qk_scale,
                          IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    else:
        s = s * qk_scale
    p = gl.exp2(s - lse[:, None])
    ds_f = (p * (dp - delta[:, None])).to(dtype)  # dS: [ROWS, BLOCK_N]
    ds = gl.convert_layout(ds_f, a_layout)
    dq = warpgroup_mma(ds, k_bufs.index(slot), dq, is_async=True)  # += dS K: [ROWS, D0]
    if D1 > 0:
        ds1 = gl.convert_layout(ds_f, a1_layout)
        dq1 = warpgroup_mma(ds1, k1_bufs.index(slot), dq1, is_async=True)  # [ROWS, D1]
        dq, dq1, ds, ds1 = warpgroup_mma_wait(0, deps=(dq, dq1, ds, ds1))
    else:
        dq, ds = warpgroup_mma_wait(0, deps=(dq, ds))
    mbarrier.arrive(empty.index(slot))
    return dq, dq1


@gluon.jit
def _compute(q_smem, q1_smem, do_smem, q_bar, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty,
             lse_ptr, delta_ptr, dq_ptr, stride_dqs, start_m, lo, hi, seqlen_q, seqlen_k,
             qk_scale, scale, ROWS: gl.constexpr, BLOCK_N: gl.constexpr, D0: gl.constexpr,
             D1: gl.constexpr, STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr,
             WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr, SPLIT_MASKS: gl.constexpr,
             WG: gl.constexpr, num_warps: gl.constexpr):
    """One compute partition: dQ of the ``ROWS`` queries from ``start_m + WG * ROWS`` over
    the key tiles of ``[lo, hi)``, scaled and stored at the end (rows past ``seqlen_q`` left
    out); with ``D1 > 0`` (MLA's 192 = 128 + 64) the scores take both column tiles of Q and
    K, and dQ is two accumulators, ``dS K`` over each. With ``SPLIT_MASKS`` the key tiles
    that need no mask (``flash_fwd_gluon._unmasked_tiles``) skip ``masked_scores``."""
    s_layout: gl.constexpr = mma_layout(BLOCK_N, num_warps)  # [ROWS, BLOCK_N] scores
    acc_layout: gl.constexpr = mma_layout(D0, num_warps)  # [ROWS, D0] accumulator
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    acc1_layout: gl.constexpr = mma_layout(max(D1, 8), num_warps)  # [ROWS, D1] accumulator
    a1_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc1_layout,
                                                  k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    first = start_m + WG * ROWS
    rows = first + gl.arange(0, ROWS, layout=row_layout)
    ok = rows < seqlen_q
    lse = gl.load(lse_ptr + rows, mask=ok, other=float("inf"))  # base 2: zero probabilities
    delta = gl.load(delta_ptr + rows, mask=ok, other=0.0)
    offset = seqlen_k - seqlen_q
    q_rows = q_smem.slice(WG * ROWS, ROWS)  # [ROWS, D0]
    q1_rows = q1_smem.slice(WG * ROWS, ROWS)  # [ROWS, D1] (q_rows again where D1 == 0)
    do_rows = do_smem.slice(WG * ROWS, ROWS)  # [ROWS, DV]
    dq = gl.zeros([ROWS, D0], gl.float32, acc_layout)
    dq1 = gl.zeros([ROWS, max(D1, 8)], gl.float32, acc1_layout)  # unused where D1 == 0
    zero_s = gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout)
    j0, j1, j2, j3 = _unmasked_tiles(first, lo, hi, offset, seqlen_k, ROWS, BLOCK_N,
                                     IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    if not SPLIT_MASKS:  # one walk, every tile through masked_scores
        j1 = j3
        j2 = j3
    mbarrier.wait(q_bar, 0)
    c = gl.to_tensor(0)
    # key tiles [j0, j1) masked (a left window edge), [j1, j2) not, [j2, j3) masked (the
    # diagonal, a right window edge, the keys' end)
    for part in gl.static_range(3):
        j_lo, j_hi = walk_part(part, j0, j1, j2, j3)
        for j in range(j_lo, j_hi):
            dq, dq1 = _dq_tile(q_rows, q1_rows, do_rows, k_bufs, k1_bufs, v_bufs, k_ready,
                               v_ready, empty, c, j, dq, dq1, rows, lse, delta, zero_s, first,
                               offset, seqlen_k, qk_scale, a_layout, a1_layout, col_layout,
                               BLOCK_N, D1, STAGES, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, part != 1)
            c += 1
    _store_dq(dq, dq_ptr, stride_dqs, first, 0, seqlen_q, scale, ROWS, D0)
    if D1 > 0:
        _store_dq(dq1, dq_ptr, stride_dqs, first, D0, seqlen_q, scale, ROWS, D1)


@gluon.jit
def gluon_dq_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
                    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                    stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                    stride_dqb, stride_dqs, stride_dqh, stride_lb, stride_lh,
                    seq_q, seq_k, qk_scale, scale,
                    HQ: gl.constexpr, GROUP: gl.constexpr, D: gl.constexpr, D1: gl.constexpr,
                    DV: gl.constexpr, IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr,
                    WIN_RIGHT: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                    STAGES: gl.constexpr, SPLIT_MASKS: gl.constexpr, num_warps: gl.constexpr):
    """dQ of one ``[BLOCK_M, D]`` query tile (grid axis 0) of one batch x query head (axis 1).

    q, dq: ``[b, seq_q, HQ, D]``; k: ``[b, seq_k, HQ / GROUP, D]`` (``D1``: the width of a
    second column tile, ``flash_fwd_gluon._qk_tiles``; 64 for MLA's 192); do:
    ``[b, seq_q, HQ, DV]``, v: ``[b, seq_k, HQ / GROUP, DV]``; unit stride in the head dim
    and 16-byte aligned rows; lse (base 2) and delta: float32 ``[b, HQ, seq_q]``;
    ``qk_scale = scale * log2(e)``; a window ``(WIN_LEFT, WIN_RIGHT)`` as ``_key_tiles`` has
    it.
    """
    b, h, hk, start_m = query_tile_of_program(HQ, GROUP, BLOCK_M, IS_CAUSAL)
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    q_desc, q1_desc, k_desc, k1_desc, q_smem, q1_smem, k_bufs, k1_bufs = _qk_tiles(
        q_ptr + b * stride_qb + h * stride_qh, k_ptr + b * stride_kb + hk * stride_kh, seq_q, D,
        seq_k, D, stride_qs, stride_ks, BLOCK_M, BLOCK_N, D, D1, STAGES)
    do_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, DV], dtype)
    v_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, DV], dtype)
    do_desc = tma.make_tensor_descriptor(do_ptr + b * stride_dob + h * stride_doh,
                                         [seq_q, DV], [stride_dos, 1], [BLOCK_M, DV], do_layout)
    v_desc = tma.make_tensor_descriptor(v_ptr + b * stride_vb + hk * stride_vh, [seq_k, DV],
                                        [stride_vs, 1], [BLOCK_N, DV], v_layout)
    do_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, DV], do_layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, DV], v_layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready, v_ready, empty = kv_ring_barriers(STAGES, 2)  # both compute partitions free
    mbarrier.init(q_bar, count=1)
    fence_async_shared()
    lo, hi = _key_tiles(start_m, seq_q, seq_k, BLOCK_M, BLOCK_N, IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    l_off = b * stride_lb + h.to(gl.int64) * stride_lh
    dq_base = dq_ptr + b * stride_dqb + h * stride_dqh
    ROWS: gl.constexpr = BLOCK_M // 2
    gl.warp_specialize([
        (_compute, (q_smem, q1_smem, do_smem, q_bar, k_bufs, k1_bufs, v_bufs, k_ready,
                    v_ready, empty, lse_ptr + l_off, delta_ptr + l_off, dq_base, stride_dqs,
                    start_m, lo, hi, seq_q, seq_k, qk_scale, scale, ROWS, BLOCK_N, D - D1, D1,
                    STAGES, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, SPLIT_MASKS, 0, num_warps)),
        (_compute, (q_smem, q1_smem, do_smem, q_bar, k_bufs, k1_bufs, v_bufs, k_ready,
                    v_ready, empty, lse_ptr + l_off, delta_ptr + l_off, dq_base, stride_dqs,
                    start_m, lo, hi, seq_q, seq_k, qk_scale, scale, ROWS, BLOCK_N, D - D1, D1,
                    STAGES, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, SPLIT_MASKS, 1, num_warps)),
        (_loader, (q_desc, q1_desc, do_desc, k_desc, k1_desc, v_desc, q_smem, q1_smem, do_smem,
                   q_bar, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, start_m, lo, hi,
                   D - D1, D1, BLOCK_N, STAGES)),
    ], [num_warps, LOADER_WARPS], [COMPUTE_REGS, LOADER_REGS])


def gluon_dq(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor,
             lse2: torch.Tensor, delta: torch.Tensor, dq: torch.Tensor, *, causal: bool,
             scale: float, window: tuple[int, int] = (-1, -1), block_n: int | None = None,
             stages: int = STAGES, split_masks: bool | None = None) -> None:
    """Write dQ of dense MHA, GQA or MQA attention into ``dq`` (CUDA, sm90).

    Args:
        q, dq: ``[b, seq_q, hq, d]``; k: ``[b, seq_k, hk, d]``; do: ``[b, seq_q, hq, dv]``;
            v: ``[b, seq_k, hk, dv]`` (``(d, dv)`` ``(128, 128)``, ``(64, 64)`` or MLA's
            ``(192, 128)``; ``hq`` a multiple of ``hk``); all bf16 or all fp16, last dim
            contiguous, 16-byte aligned (``flash_common.tma_aligned``).
        lse2, delta: float32 ``[b, hq, seq_q]`` (unit stride along the sequence): the base-2
            LSE with ``+inf`` on rows that saw no key, and ``sum(out * dO, -1)``, as
            ``flash_bwd._bwd_preprocess`` writes them.
        causal: bottom-right causal attention.
        scale: the softmax scale of the forward.
        window: ``(left, right)`` as ``flash_fwd_gluon.gluon_fwd`` takes it.
        block_n, stages: the key tile (default ``block_n_for(causal, d)``) and the ring's
            slots (``STAGES``).
        split_masks: the key tiles that need no mask in a walk of their own (default
            ``SPLIT_MASKS``, but not at MLA's 192, whose split walk passed its GPU tests but
            has not been timed).

    The caller checks ``flash_bwd._gluon_dq`` first; nothing is checked here.

    Example (on an H100/H200, inside ``flash_bwd``)::

        gluon_dq(q, k, v, do, lse2, delta, dq, causal=True, scale=128 ** -0.5)
    """
    global calls, tiling
    calls += 1
    block_n = block_n or block_n_for(causal, q.shape[-1])
    if split_masks is None:
        split_masks = SPLIT_MASKS and not column_split(q.shape[-1])
    tiling = f"{BLOCK_M}x{block_n} s{stages} wg2" + (" split" if split_masks else "")
    _ensure_allocator()  # device-side descriptors live in global scratch
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    left, right = window_constexprs(window, causal)
    grid = (cdiv(sq, BLOCK_M), b * hq)
    fast_launch.run(gluon_dq_kernel, grid, (
        q, k, v, do, lse2, delta, dq, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *do.stride()[:3], *dq.stride()[:3], lse2.stride(0), lse2.stride(1), sq, sk,
        scale * LOG2E, scale), dict(
        HQ=hq, GROUP=hq // hk, D=d, D1=column_split(d), DV=v.shape[-1], IS_CAUSAL=causal,
        WIN_LEFT=left, WIN_RIGHT=right, BLOCK_M=BLOCK_M, BLOCK_N=block_n, STAGES=stages,
        SPLIT_MASKS=split_masks, num_warps=4, maxnreg=MAXNREG))
