"""The dK/dV kernel of the flash backward for Hopper, warp-specialised, written in Gluon.

``flash_bwd`` launches it in place of ``_bwd_dkdv_kernel`` where ``flash_bwd._gluon_dkdv`` says
so (dense MHA, GQA or MQA, head dim 128, 16-bit inputs, causal or not, no masks, softcap or
dropout, an sm90 GPU and the Triton release it was measured with); the preprocess and the dQ
kernel stay the same. It also takes sliding windows (``_query_tiles``: each key tile walks
only the query tiles its band touches, those that need no mask apart: ``split_for``), MLA's
head dims (K and Q 192 wide, read as column tiles of 128 and 64 through
``flash_fwd_gluon._qk_tiles``; V 128; 32-query tiles in 3 slots: ``block_m_for``,
``stages_for``) and head dim 64 (from 16k tokens: ``flash_bwd.GLUON_D64_MIN_SEQ``), each
where it measured faster (step 12 of benchmarks/NOTES-flash.md).
Measured on an H200 against the Triton dK/dV kernel (benchmarks/NOTES-flash.md, step 9,
``results/gluon-dkdv-h200-2026-12-01-step9-layouts.json``), kernel alone: 16k full 7.20
against 8.80 ms, 16k causal 3.57 against 4.58, 4k full 1.89 against 2.34, 4k causal 1.10
against 1.36, 1k full 0.61 against 0.68, 1k causal 0.43 against 0.44. At GQA 32:8 4k
(step 10, ``results/gluon-dkdv-h200-2026-12-01-step10-gqa.json``) it is even: 3.86 against
3.71 ms full, 2.21 against 2.28 causal (its 1024 programs of 128 keys fill 7.8 waves of 132
SMs), so the launcher uses it there only on request.

Grid ``(key tiles, batch x K/V heads)``; each program owns one ``[BLOCK_N, D]`` tile of K and
V and loops over the query tiles that see it, of each query head that shares it (GQA: the
group's dK and dV summed in registers, no atomics), split into partitions:

- a loader (1 warp, 24 registers) TMA-loads each ``[BLOCK_M, D]`` tile of Q and dO into a
  ring of ``STAGES`` shared-memory slots (``ready`` / ``empty`` mbarriers);
- two compute warpgroups (240 registers each), one per half of the key tile, each holding
  its float32 dK and dV rows: per query tile it issues ``K Q^T`` and ``V dO^T`` together
  (asynchronous wgmma), forms ``P^T`` and ``dS^T`` in registers, issues ``P^T dO`` and
  ``dS^T Q`` from registers, then frees the slot. Being separate partitions, the two drift
  apart, so one's softmax runs while the other's products do (one partition of 8 warps,
  ``WARPGROUPS = 1``, keeps them in step and ran 12-17% slower).

This is the split FlashAttention-3 uses on Hopper; Triton's own warp specialisation does not
give the compute warps the loader's registers on sm90 (NOTES-flash.md, step 7). The base-2
LSE (``+inf`` on rows that saw no key) and ``delta`` come from ``flash_bwd._bwd_preprocess``;
rows past the sequence read ``+inf`` there, so their probabilities are zero, and TMA fills
their Q and dO rows with zeros. No atomics: the result is bitwise reproducible.

Importing this module needs a Triton with Gluon (``triton.experimental.gluon``); ``flash_bwd``
imports it only when that holds.
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
from attnkit.kernels.flash_fwd_gluon import _qk_tiles
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

# The measured configuration (H200, d 128): 64 queries x 128 keys per tile pair, two slots of
# Q and dO (more stages or a 32-query tile ran slower: results/gluon-dkdv-h200-2026-12-01-
# step9.json). Compute partitions: 1 of 8 warps, or 2 of 4 warps (one per half of the key
# tile), optionally taking turns at the tensor cores (``_take_turn``); two without turns
# measured fastest (results/gluon-dkdv-h200-2026-12-01-step9-layouts.json, dK/dV kernel alone:
# 16k full 7.20 ms against 8.30 for one partition and 7.30 with turns; 1k full 0.614 against
# 0.685 and 0.626).
BLOCK_M, BLOCK_N, STAGES = 64, 128, 2
WARPGROUPS, PINGPONG = 2, False
# Whether the query tiles that need no mask skip the masks (``_unmasked_query_tiles``):
# always (``SPLIT_MASKS``), or with a window only (``SPLIT_MASKS_WINDOWS``, ``split_for``).
# Measured on an H200 (steps 12 and 13 of benchmarks/NOTES-flash.md, ``results/gluon-dkdv-
# h200-2026-12-01-step1[23].json``, kernel us, split against not): window 1024 at 16k 734
# against 846 (Triton's kernel: 763); d 128 4k causal 1139 against 1224, 16k causal 3838
# against 3857, 1k causal 445 against 442; d 64 4k causal 1506 against 1603 (Triton's: 1624),
# 16k full 8946 against 9496.
SPLIT_MASKS, SPLIT_MASKS_WINDOWS = True, True
# MLA's head dim (192 for q and k, 128 for v): 32 queries per tile (``block_m_for``) in
# ``STAGES_MLA`` slots (``stages_for``; step 12, kernel us, 3 slots against 2: 4k causal 1598
# against 1711, 4k full 2912 against 2913; Triton's kernel: 2496 and 4731).
BLOCK_M_MLA, STAGES_MLA = 32, 3
# Launches so far in this process, and the tiling of the last one as the benchmark reports it
# (``attnkit.bench.subject`` names the kernels that served a case).
calls = 0
tiling = f"{BLOCK_M}x{BLOCK_N} s{STAGES} wg{WARPGROUPS}"


def block_m_for(head_dim: int) -> int:
    """The query tile of the dK/dV kernel: ``BLOCK_M`` (64) at head dim 128, and
    ``BLOCK_M_MLA`` (32) at MLA's 192. There dK is two accumulators (128 + 64 columns) beside
    dV's 128, 160 of a partition's 240 registers per thread, which leaves room for 32-query
    scores and dP (16 + 16) but not for 64-query ones.

    Example:
        >>> block_m_for(128), block_m_for(192)
        (64, 32)
    """
    return BLOCK_M_MLA if head_dim == 192 else BLOCK_M


def stages_for(head_dim: int) -> int:
    """The slots of Q and dO of the dK/dV kernel: ``STAGES`` (2), and ``STAGES_MLA`` (3) at
    MLA's 192, whose 32-query tiles leave room for a third.

    Example:
        >>> stages_for(128), stages_for(192)
        (2, 3)
    """
    return STAGES_MLA if head_dim == 192 else STAGES


def split_for(window: tuple[int, int], head_dim: int = 128) -> bool:
    """Whether the dK/dV kernel walks the query tiles that need no mask apart:
    ``SPLIT_MASKS``, or ``SPLIT_MASKS_WINDOWS`` where ``window`` (``(left, right)``, -1:
    unbounded) has a side; never at MLA's 192 (two column tiles), whose split build spills
    registers (48-104 bytes compiled for sm90) and has not been timed.

    Example:
        >>> split_for((-1, -1)), split_for((1023, -1)), split_for((1023, -1), head_dim=192)
        (True, True, False)
    """
    return (SPLIT_MASKS or (SPLIT_MASKS_WINDOWS and max(window) >= 0)) and not column_split(
        head_dim)


@gluon.jit
def _query_tiles(start_n, seqlen_q, seqlen_k, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                 IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr):
    """``(lo, hi)``: the queries ``[lo, hi)`` (``lo`` a multiple of BLOCK_M, ``hi >= lo``) that
    may see a key of the tile ``[start_n, start_n + BLOCK_N)``. Bottom-right, with ``offset =
    seqlen_k - seqlen_q``, query ``i`` sees key ``j`` when ``j <= i + offset`` (causal) and
    ``i + offset - WIN_LEFT <= j <= i + offset + WIN_RIGHT`` (a window; -1: unbounded), as
    ``flash_bwd.tile_query_range`` has it for the Triton kernels."""
    offset = seqlen_k - seqlen_q
    lo = 0
    if IS_CAUSAL:
        lo = gl.maximum(start_n - offset, 0)
    if WIN_RIGHT >= 0:
        lo = gl.maximum(start_n - offset - WIN_RIGHT, lo)
    if IS_CAUSAL or WIN_RIGHT >= 0:
        lo = (gl.minimum(lo, seqlen_q) // BLOCK_M) * BLOCK_M
    hi = seqlen_q
    if WIN_LEFT >= 0:
        last = gl.minimum(start_n + BLOCK_N, seqlen_k) - 1  # the tile's last key
        hi = gl.maximum(gl.minimum(last - offset + WIN_LEFT + 1, seqlen_q), lo)
    return lo, hi


@gluon.jit
def _loader(q_desc, q1_desc, do_desc, q_bufs, q1_bufs, do_bufs, ready, empty, lo, hi,
            GROUP: gl.constexpr, BLOCK_M: gl.constexpr, D: gl.constexpr, D1: gl.constexpr,
            DV: gl.constexpr, STAGES: gl.constexpr):
    """The loader partition: for each query head of the group in turn, its Q and dO tiles
    ``lo, lo + BLOCK_M, ...`` into the ring (the descriptors' columns ``[g * D, (g + 1) * D)``
    of Q and ``[g * DV, (g + 1) * DV)`` of dO are head ``g`` of the group; with ``D1 > 0``
    Q's last ``D1`` columns go to ``q1_bufs``)."""
    q_bytes: gl.constexpr = q_desc.block_type.nbytes + do_desc.block_type.nbytes + (
        q1_desc.block_type.nbytes if D1 > 0 else 0)
    n = gl.cdiv(hi - lo, BLOCK_M)
    for j in range(GROUP * n):
        slot = j % STAGES
        mbarrier.wait(empty.index(slot), ((j // STAGES) & 1) ^ 1)  # every slot starts free
        mbarrier.expect(ready.index(slot), q_bytes)
        start = lo + (j % n) * BLOCK_M
        col = (j // n) * D
        tma.async_copy_global_to_shared(q_desc, [start, col], ready.index(slot),
                                        q_bufs.index(slot))
        if D1 > 0:
            tma.async_copy_global_to_shared(q1_desc, [start, col + D - D1], ready.index(slot),
                                            q1_bufs.index(slot))
        tma.async_copy_global_to_shared(do_desc, [start, (j // n) * DV], ready.index(slot),
                                        do_bufs.index(slot))


@gluon.jit
def _probabilities(s_t, dp_t, lse, delta, cols, rows, start, start_n, offset, qk_scale,
                   a_layout: gl.constexpr, dtype: gl.constexpr, IS_CAUSAL: gl.constexpr,
                   WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr, BLOCK_N: gl.constexpr,
                   MASK: gl.constexpr = True):
    """``P^T`` and ``dS^T`` (``[BLOCK_N, BLOCK_M]``) of one tile pair, keys from ``start_n``
    and queries from ``start``, as register A operands of the dV and dK products. Only the
    tiles that cross the causal diagonal (a query before the key tile's last key) or a
    window's edges (``_query_tiles``) are masked; without ``MASK`` (a tile pair of
    ``_unmasked_query_tiles``) none is."""
    s_t = s_t * qk_scale
    if MASK:
        s_t = _masked_scores_t(s_t, cols, rows, start, start_n, offset, IS_CAUSAL, WIN_LEFT,
                               WIN_RIGHT, BLOCK_N)
    p_t = gl.exp2(s_t - lse[None, :])
    ds_t = p_t * (dp_t - delta[None, :])
    return gl.convert_layout(p_t.to(dtype), a_layout), gl.convert_layout(ds_t.to(dtype), a_layout)


@gluon.jit
def _masked_scores_t(s_t, cols, rows, start, start_n, offset, IS_CAUSAL: gl.constexpr,
                     WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr, BLOCK_N: gl.constexpr):
    """``[keys, queries]`` scores with ``-inf`` where a key is not seen, in the tile pairs
    whose conditions say so (``_probabilities``)."""
    if IS_CAUSAL:
        if start + offset < start_n + BLOCK_N - 1:
            s_t = gl.where(cols[:, None] <= rows[None, :] + offset, s_t, float("-inf"))
    if WIN_RIGHT >= 0:
        if start + offset + WIN_RIGHT < start_n + BLOCK_N - 1:
            s_t = gl.where(cols[:, None] <= rows[None, :] + (offset + WIN_RIGHT), s_t,
                           float("-inf"))
    if WIN_LEFT >= 0:
        if start_n < start + s_t.shape[1] - 1 + offset - WIN_LEFT:
            s_t = gl.where(cols[:, None] >= rows[None, :] + (offset - WIN_LEFT), s_t,
                           float("-inf"))
    return s_t


@gluon.jit
def _unmasked_query_tiles(first, lo, n, offset, HALF: gl.constexpr, BLOCK_M: gl.constexpr,
                          IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr,
                          WIN_RIGHT: gl.constexpr):
    """``(t1, t2)``: of the ``n`` query tiles from ``lo``, the partition's ``HALF`` keys
    from ``first`` need no mask with tiles ``[t1, t2)`` (none of ``_masked_scores_t``'s
    conditions holds: the tile's first query at or past the last key's diagonal and right
    window edge, its last query's left edge at or before the first key), so that a walk
    masks only ``[0, t1)`` and ``[t2, n)``."""
    ta = gl.to_tensor(0)
    if IS_CAUSAL:
        ta = gl.maximum(ta, gl.cdiv(gl.maximum(first + HALF - 1 - offset - lo, 0), BLOCK_M))
    if WIN_RIGHT >= 0:
        ta = gl.maximum(ta, gl.cdiv(gl.maximum(first + HALF - 1 - offset - WIN_RIGHT - lo, 0),
                                    BLOCK_M))
    tb = n
    if WIN_LEFT >= 0:
        tb = gl.minimum(tb, gl.maximum(first + 1 - offset + WIN_LEFT - lo, 0) // BLOCK_M)
    t1 = gl.minimum(ta, n)
    return t1, gl.maximum(gl.minimum(tb, n), t1)


@gluon.jit
def _row_stats(lse_ptr, delta_ptr, rows, seqlen_q):
    """Base-2 LSE (``+inf`` past the sequence: zero probabilities) and delta of ``rows``."""
    ok = rows < seqlen_q
    return (gl.load(lse_ptr + rows, mask=ok, other=float("inf")),
            gl.load(delta_ptr + rows, mask=ok, other=0.0))


@gluon.jit
def _store_rows(acc, ptr, stride_s, start_n, seqlen_k, BLOCK_N: gl.constexpr, D: gl.constexpr):
    """Rows ``start_n ..`` of a ``[BLOCK_N, D]`` accumulator to ``ptr`` (keys past
    ``seqlen_k`` left out)."""
    acc_layout: gl.constexpr = acc.type.layout
    rows = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, acc_layout))
    cols = gl.arange(0, D, layout=gl.SliceLayout(0, acc_layout))
    gl.store(ptr + rows.to(gl.int64)[:, None] * stride_s + cols[None, :],
             acc.to(ptr.dtype.element_ty), mask=(rows < seqlen_k)[:, None])


@gluon.jit
def _take_turn(turns, k, WG: gl.constexpr):
    """Ping-pong between the two compute warpgroups: before issuing its ``k``-th group of
    products, warpgroup 0 waits until warpgroup 1 has issued its ``k - 1``-th, and warpgroup 1
    until warpgroup 0 has issued its ``k``-th, so that the tensor cores take the groups in
    turn and each warpgroup's softmax runs while the other's products do."""
    if WG == 0:
        mbarrier.wait(turns.index(0), (k - 1) & 1, pred=k > 0)
    else:
        mbarrier.wait(turns.index(1), k & 1)


@gluon.jit
def _dkdv_tile(k_rows, k1_rows, v_rows, q_bufs, q1_bufs, do_bufs, ready, empty, turns, c, start,
               head, lse_ptr, delta_ptr, dv, dk, dk1, cols, zero_s, first, offset, seqlen_q,
               qk_scale, a_layout: gl.constexpr, a1_layout: gl.constexpr,
               query_layout: gl.constexpr, BLOCK_M: gl.constexpr, HALF: gl.constexpr,
               D1: gl.constexpr, STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr,
               WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr, WG: gl.constexpr,
               PINGPONG: gl.constexpr, MASK: gl.constexpr):
    """The query tile from ``start`` of the group's head at LSE offset ``head``, the ring's
    ``c``-th: ``K Q^T`` and ``V dO^T``, ``P^T`` and ``dS^T`` (``MASK``: through
    ``_masked_scores_t``), ``dV += P^T dO``, ``dK += dS^T Q`` (and ``dk1`` where
    ``D1 > 0``), and the slot freed: ``(dv, dk, dk1)``."""
    dtype: gl.constexpr = k_rows.dtype
    slot = c % STAGES
    rows = start + gl.arange(0, BLOCK_M, layout=query_layout)
    lse, delta = _row_stats(lse_ptr + head, delta_ptr + head, rows, seqlen_q)
    mbarrier.wait(ready.index(slot), (c // STAGES) & 1)
    q_s = q_bufs.index(slot)  # [BLOCK_M, D0]
    q1_s = q1_bufs.index(slot)  # [BLOCK_M, D1]
    do_s = do_bufs.index(slot)  # [BLOCK_M, DV]
    if PINGPONG:
        _take_turn(turns, 2 * c, WG)
    s_t = warpgroup_mma(k_rows, q_s.permute((1, 0)), zero_s, use_acc=False,
                        is_async=True)  # K Q^T: [HALF, BLOCK_M]
    if D1 > 0:
        s_t = warpgroup_mma(k1_rows, q1_s.permute((1, 0)), s_t, is_async=True)
    dp_t = warpgroup_mma(v_rows, do_s.permute((1, 0)), zero_s, use_acc=False,
                         is_async=True)  # V dO^T: [HALF, BLOCK_M]
    if PINGPONG:
        mbarrier.arrive(turns.index(1 - WG))
    s_t, dp_t = warpgroup_mma_wait(0, deps=(s_t, dp_t))
    p_a, ds_a = _probabilities(s_t, dp_t, lse, delta, cols, rows, start, first, offset,
                               qk_scale, a_layout, dtype, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, HALF,
                               MASK)
    if PINGPONG:
        _take_turn(turns, 2 * c + 1, WG)
    dv = warpgroup_mma(p_a, do_s, dv, is_async=True)  # += P^T dO: [HALF, DV]
    dk = warpgroup_mma(ds_a, q_s, dk, is_async=True)  # += dS^T Q: [HALF, D0]
    if D1 > 0:
        ds_a1 = gl.convert_layout(ds_a, a1_layout)
        dk1 = warpgroup_mma(ds_a1, q1_s, dk1, is_async=True)  # [HALF, D1]
    if PINGPONG:
        mbarrier.arrive(turns.index(1 - WG))
    if D1 > 0:
        dv, dk, dk1, _, _, _ = warpgroup_mma_wait(0, deps=(dv, dk, dk1, p_a, ds_a, ds_a1))
    else:
        dv, dk, _, _ = warpgroup_mma_wait(0, deps=(dv, dk, p_a, ds_a))
    mbarrier.arrive(empty.index(slot))  # every product done with the slot
    return dv, dk, dk1


@gluon.jit
def _compute(k_smem, k1_smem, v_smem, q_bufs, q1_bufs, do_bufs, ready, empty, turns, lse_ptr,
             delta_ptr, stride_lh, dk_ptr, dv_ptr, stride_dks, stride_dvs, lo, hi, start_n,
             seqlen_q, seqlen_k, qk_scale, scale,
             GROUP: gl.constexpr, BLOCK_M: gl.constexpr, HALF: gl.constexpr, D0: gl.constexpr,
             D1: gl.constexpr, DV: gl.constexpr, STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr,
             WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr, WG: gl.constexpr,
             PINGPONG: gl.constexpr, SPLIT_MASKS: gl.constexpr, num_warps: gl.constexpr):
    """One compute partition (one warpgroup): dK and dV of rows ``[WG * HALF, (WG + 1) *
    HALF)`` of the program's key tile over query tiles ``[lo, hi)`` of each query head of the
    group (LSE and delta rows ``stride_lh`` apart per head), stored at the end (``D0 ==
    DV``). With ``D1 > 0`` (MLA's 192 = 128 + 64) the scores take both column tiles of
    K and Q, and dK is two accumulators, ``dS^T Q0`` and ``dS^T Q1``. With ``SPLIT_MASKS``
    the query tiles that need no mask (``_unmasked_query_tiles``) skip the masks."""
    s_layout: gl.constexpr = mma_layout(BLOCK_M, num_warps)  # [HALF, BLOCK_M] scores
    acc_layout: gl.constexpr = mma_layout(D0, num_warps)  # [HALF, D0 == DV] accumulators
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    acc1_layout: gl.constexpr = mma_layout(max(D1, 8), num_warps)  # [HALF, D1] dK
    a1_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc1_layout,
                                                  k_width=2)
    query_layout: gl.constexpr = gl.SliceLayout(0, s_layout)  # along the queries
    key_layout: gl.constexpr = gl.SliceLayout(1, s_layout)  # along the keys
    k_rows = k_smem.slice(WG * HALF, HALF)  # [HALF, D0]
    k1_rows = k1_smem.slice(WG * HALF, HALF)  # [HALF, D1] (k_rows again where D1 == 0)
    v_rows = v_smem.slice(WG * HALF, HALF)  # [HALF, DV]
    first = start_n + WG * HALF  # the partition's first key
    dk = gl.zeros([HALF, D0], gl.float32, acc_layout)
    dv = gl.zeros([HALF, DV], gl.float32, acc_layout)
    dk1 = gl.zeros([HALF, max(D1, 8)], gl.float32, acc1_layout)  # unused where D1 == 0
    zero_s = gl.zeros([HALF, BLOCK_M], gl.float32, s_layout)
    cols = first + gl.arange(0, HALF, layout=key_layout)  # the partition's keys
    offset = seqlen_k - seqlen_q
    n = gl.cdiv(hi - lo, BLOCK_M)
    if not SPLIT_MASKS:  # one walk, every tile pair through the masks' conditions
        for i in range(GROUP * n):  # query tile i % n of the group's head i // n
            dv, dk, dk1 = _dkdv_tile(k_rows, k1_rows, v_rows, q_bufs, q1_bufs, do_bufs, ready,
                                     empty, turns, i, lo + (i % n) * BLOCK_M,
                                     (i // n).to(gl.int64) * stride_lh, lse_ptr, delta_ptr, dv,
                                     dk, dk1, cols, zero_s, first, offset, seqlen_q, qk_scale,
                                     a_layout, a1_layout, query_layout, BLOCK_M, HALF, D1,
                                     STAGES, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, WG, PINGPONG,
                                     True)
    t1, t2 = _unmasked_query_tiles(first, lo, n, offset, HALF, BLOCK_M, IS_CAUSAL, WIN_LEFT,
                                   WIN_RIGHT)
    c = gl.to_tensor(0)
    for g in range(GROUP if SPLIT_MASKS else 0):  # the group's query heads in turn
        head = g.to(gl.int64) * stride_lh
        # query tiles [0, t1) masked (the causal diagonal, a right window edge), [t1, t2)
        # not, [t2, n) masked (a left window edge)
        for part in gl.static_range(3):
            t_lo, t_hi = walk_part(part, gl.to_tensor(0), t1, t2, n)
            for t in range(t_lo, t_hi):
                dv, dk, dk1 = _dkdv_tile(k_rows, k1_rows, v_rows, q_bufs, q1_bufs, do_bufs,
                                         ready, empty, turns, c, lo + t * BLOCK_M, head,
                                         lse_ptr, delta_ptr, dv, dk, dk1, cols, zero_s, first,
                                         offset, seqlen_q, qk_scale, a_layout, a1_layout,
                                         query_layout, BLOCK_M, HALF, D1, STAGES, IS_CAUSAL,
                                         WIN_LEFT, WIN_RIGHT, WG, PINGPONG, part != 1)
                c += 1
    _store_rows(dk * scale, dk_ptr, stride_dks, first, seqlen_k, HALF, D0)
    if D1 > 0:
        _store_rows(dk1 * scale, dk_ptr + D0, stride_dks, first, seqlen_k, HALF, D1)
    _store_rows(dv, dv_ptr, stride_dvs, first, seqlen_k, HALF, DV)


@gluon.jit
def gluon_dkdv_kernel(q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dk_ptr, dv_ptr,
                      stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                      stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
                      stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh,
                      stride_lb, stride_lh, seq_q, seq_k, qk_scale, scale,
                      HK: gl.constexpr, GROUP: gl.constexpr, D: gl.constexpr,
                      D1: gl.constexpr, DV: gl.constexpr,
                      IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr,
                      BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                      STAGES: gl.constexpr, WARPGROUPS: gl.constexpr, PINGPONG: gl.constexpr,
                      SPLIT_MASKS: gl.constexpr, num_warps: gl.constexpr):
    """dK and dV of one ``[BLOCK_N, D]`` key tile (grid axis 0) of one batch x K/V head (axis
    1), summed over the ``GROUP`` query heads that share it; a window ``(WIN_LEFT,
    WIN_RIGHT)`` (-1: unbounded) as ``_query_tiles`` has it.

    q: ``[b, seq_q, HK * GROUP, D]``, do: ``[b, seq_q, HK * GROUP, DV]``, with adjacent
    heads (``stride_qh == D``, ``stride_doh == DV``) when ``GROUP > 1``: a group's Q and dO
    are read as one ``[seq_q, GROUP * D]`` and ``[seq_q, GROUP * DV]`` matrix. k, dk:
    ``[b, seq_k, HK, D]``; v, dv: ``[b, seq_k, HK, DV]``. ``D`` 128 or 64 with ``DV == D``,
    or MLA's 192 read as column tiles of 128 and ``D1`` = 64 (``flash_fwd_gluon._qk_tiles``)
    with ``DV`` 128. All with
    unit stride in the head dim and 16-byte aligned rows; lse (base 2) and delta: float32
    ``[b, HK * GROUP, seq_q]``; ``qk_scale = scale * log2(e)``.
    """
    pid_n = gl.program_id(0)
    pid_bh = gl.program_id(1)
    b = (pid_bh // HK).to(gl.int64)
    h = pid_bh % HK
    hq = h * GROUP  # the group's first query head
    start_n = pid_n * BLOCK_N
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    # K's and Q's column tiles (the forward's helper, roles swapped: one [BLOCK_N, ...] K
    # tile, a ring of [BLOCK_M, ...] Q slots), D - D1 wide and, where D1 > 0, D1 wide
    k_desc, k1_desc, q_desc, q1_desc, k_smem, k1_smem, q_bufs, q1_bufs = _qk_tiles(
        k_ptr + b * stride_kb + h * stride_kh, q_ptr + b * stride_qb + hq * stride_qh, seq_k,
        D, seq_q, GROUP * D, stride_ks, stride_qs, BLOCK_N, BLOCK_M, D, D1, STAGES)
    do_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, DV], dtype)
    v_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, DV], dtype)
    do_desc = tma.make_tensor_descriptor(do_ptr + b * stride_dob + hq * stride_doh,
                                         [seq_q, GROUP * DV], [stride_dos, 1], [BLOCK_M, DV],
                                         do_layout)
    v_desc = tma.make_tensor_descriptor(v_ptr + b * stride_vb + h * stride_vh, [seq_k, DV],
                                        [stride_vs, 1], [BLOCK_N, DV], v_layout)
    v_smem = gl.allocate_shared_memory(dtype, [BLOCK_N, DV], v_layout)
    do_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_M, DV], do_layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    kv_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    turns = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=WARPGROUPS)  # freed by every compute partition
    mbarrier.init(kv_bar, count=1)
    mbarrier.init(turns.index(0), count=1)
    mbarrier.init(turns.index(1), count=1)
    fence_async_shared()
    kv_bytes: gl.constexpr = k_desc.block_type.nbytes + v_desc.block_type.nbytes + (
        k1_desc.block_type.nbytes if D1 > 0 else 0)
    mbarrier.expect(kv_bar, kv_bytes)
    tma.async_copy_global_to_shared(k_desc, [start_n, 0], kv_bar, k_smem)
    if D1 > 0:
        tma.async_copy_global_to_shared(k1_desc, [start_n, D - D1], kv_bar, k1_smem)
    tma.async_copy_global_to_shared(v_desc, [start_n, 0], kv_bar, v_smem)
    mbarrier.wait(kv_bar, 0)
    lo, hi = _query_tiles(start_n, seq_q, seq_k, BLOCK_M, BLOCK_N, IS_CAUSAL, WIN_LEFT,
                          WIN_RIGHT)
    l_off = b * stride_lb + hq.to(gl.int64) * stride_lh
    dk_base = dk_ptr + b * stride_dkb + h * stride_dkh
    dv_base = dv_ptr + b * stride_dvb + h * stride_dvh
    if WARPGROUPS == 2:  # a partition per half of the key tile, 4 warps each
        HALF: gl.constexpr = BLOCK_N // 2
        gl.warp_specialize([
            (_compute, (k_smem, k1_smem, v_smem, q_bufs, q1_bufs, do_bufs, ready, empty, turns,
                        lse_ptr + l_off, delta_ptr + l_off, stride_lh, dk_base, dv_base,
                        stride_dks, stride_dvs, lo, hi, start_n, seq_q, seq_k, qk_scale, scale,
                        GROUP, BLOCK_M, HALF, D - D1, D1, DV, STAGES, IS_CAUSAL, WIN_LEFT,
                        WIN_RIGHT, 0, PINGPONG, SPLIT_MASKS, num_warps)),
            (_compute, (k_smem, k1_smem, v_smem, q_bufs, q1_bufs, do_bufs, ready, empty, turns,
                        lse_ptr + l_off, delta_ptr + l_off, stride_lh, dk_base, dv_base,
                        stride_dks, stride_dvs, lo, hi, start_n, seq_q, seq_k, qk_scale, scale,
                        GROUP, BLOCK_M, HALF, D - D1, D1, DV, STAGES, IS_CAUSAL, WIN_LEFT,
                        WIN_RIGHT, 1, PINGPONG, SPLIT_MASKS, num_warps)),
            (_loader, (q_desc, q1_desc, do_desc, q_bufs, q1_bufs, do_bufs, ready, empty, lo,
                       hi, GROUP, BLOCK_M, D, D1, DV, STAGES)),
        ], [num_warps, LOADER_WARPS], [COMPUTE_REGS, LOADER_REGS])
    else:  # one partition of num_warps warps for the whole key tile
        gl.warp_specialize([
            (_compute, (k_smem, k1_smem, v_smem, q_bufs, q1_bufs, do_bufs, ready, empty, turns,
                        lse_ptr + l_off, delta_ptr + l_off, stride_lh, dk_base, dv_base,
                        stride_dks, stride_dvs, lo, hi, start_n, seq_q, seq_k, qk_scale, scale,
                        GROUP, BLOCK_M, BLOCK_N, D - D1, D1, DV, STAGES, IS_CAUSAL, WIN_LEFT,
                        WIN_RIGHT, 0, False, SPLIT_MASKS, num_warps)),
            (_loader, (q_desc, q1_desc, do_desc, q_bufs, q1_bufs, do_bufs, ready, empty, lo,
                       hi, GROUP, BLOCK_M, D, D1, DV, STAGES)),
        ], [LOADER_WARPS], [LOADER_REGS])


def gluon_dkdv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, do: torch.Tensor,
               lse2: torch.Tensor, delta: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, *,
               causal: bool, scale: float, window: tuple[int, int] = (-1, -1),
               warpgroups: int = WARPGROUPS, pingpong: bool = PINGPONG,
               block_m: int | None = None, stages: int | None = None,
               split_masks: bool | None = None) -> None:
    """Write dK and dV of dense MHA, GQA or MQA attention into ``dk`` and ``dv`` (CUDA,
    sm90), each K/V head's summed over the query heads that share it.

    Args:
        q: ``[b, seq_q, hq, d]``; k, dk: ``[b, seq_k, hk, d]``; do: ``[b, seq_q, hq, dv]``;
            v, dv: ``[b, seq_k, hk, dv]`` (``(d, dv)`` ``(128, 128)``, ``(64, 64)`` or MLA's
            ``(192, 128)``; ``hq`` a multiple of
            ``hk``; past one query head per K/V head, q's and do's heads adjacent:
            ``stride(2)`` equal to the head dim); all bf16 or all fp16, last dim contiguous,
            16-byte aligned (``flash_common.tma_aligned``).
        lse2, delta: float32 ``[b, hq, seq_q]`` (unit stride along the sequence): the base-2
            LSE with ``+inf`` on rows that saw no key, and ``sum(out * dO, -1)``, as
            ``flash_bwd._bwd_preprocess`` writes them.
        causal: bottom-right causal attention.
        scale: the softmax scale of the forward.
        window: ``(left, right)`` as ``flash_fwd_gluon.gluon_fwd`` takes it (-1: unbounded;
            with ``causal`` as well where both are given).
        warpgroups, pingpong: the compute partitions (``WARPGROUPS``, ``PINGPONG``).
        block_m, stages: the query tile and the ring's slots (default ``block_m_for(d)``,
            ``stages_for(d)``).
        split_masks: the query tiles that need no mask in a walk of their own (default
            ``split_for(window, d)``).

    The caller checks ``flash_bwd._gluon_dkdv`` first; nothing is checked here.

    Example (on an H100/H200, inside ``flash_bwd``)::

        gluon_dkdv(q, k, v, do, lse2, delta, dk, dv, causal=True, scale=128 ** -0.5)
    """
    global calls, tiling
    calls += 1
    b, sq, hq, d = q.shape
    block_m = block_m or block_m_for(d)
    stages = stages or stages_for(d)
    split_masks = split_for(window, d) if split_masks is None else split_masks
    tiling = (f"{block_m}x{BLOCK_N} s{stages} wg{warpgroups}" + (" pingpong" if pingpong else "")
              + (" split" if split_masks else ""))
    _ensure_allocator()  # device-side descriptors live in global scratch
    sk, hk = k.shape[1], k.shape[2]
    left, right = window_constexprs(window, causal)
    grid = (cdiv(sk, BLOCK_N), b * hk)
    fast_launch.run(gluon_dkdv_kernel, grid, (
        q, k, v, do, lse2, delta, dk, dv, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *do.stride()[:3], *dk.stride()[:3], *dv.stride()[:3], lse2.stride(0), lse2.stride(1),
        sq, sk, scale * LOG2E, scale), dict(
        HK=hk, GROUP=hq // hk, D=d, D1=column_split(d), DV=v.shape[-1], IS_CAUSAL=causal,
        WIN_LEFT=left, WIN_RIGHT=right, BLOCK_M=block_m, BLOCK_N=BLOCK_N,
        STAGES=stages, WARPGROUPS=warpgroups, PINGPONG=pingpong, SPLIT_MASKS=split_masks,
        num_warps=8 // warpgroups, maxnreg=MAXNREG))
