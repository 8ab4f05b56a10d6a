"""The flash forward for Hopper, warp-specialised, written in Gluon.

``flash_fwd`` launches it in place of ``_flash_fwd_kernel`` where ``flash_fwd._gluon_fwd``
says so (dense MHA or GQA/MQA, head dim 128, 16-bit inputs, causal or not, no masks,
softcap or dropout, an sm90 GPU and a Triton of ``flash_common.GLUON_TRITON``), sliding
windows (``_key_tiles``: each query tile walks only the key tiles its band touches) and MLA's
head dims (q and k 192 wide, read as column tiles of 128 and 64: ``_qk_tiles``; v 128), and
head dim 64 from 4k tokens, causal from 16k (``flash_fwd.GLUON_D64_MIN_SEQ``).

Grid ``(query tiles, batch x query heads)``; each program owns one ``[BLOCK_M, D]`` query
tile, split into partitions:

- a loader (1 warp, 24 registers) TMA-loads the Q tile once, then each ``[BLOCK_N, D]``
  tile of K and of V into rings of ``STAGES`` slots (K and V have their own ready barriers,
  so the scores of a tile start before its V has arrived);
- ``WARPGROUPS`` compute partitions, each owning ``BLOCK_M / WARPGROUPS`` query rows: the
  online softmax in base 2 per key tile, ``S = Q K^T`` (asynchronous wgmma), the running max
  and sum, then ``O += P V`` with ``P`` from registers; the slot goes back to the loader
  once every partition is done with it. Two partitions drift apart, so one's softmax runs
  while the other's products do.

``gluon_fwd_persistent_kernel`` is the same with one program per SM walking the tiles
(``_tile_of``: units of two tiles from a head's two ends, so that causal walks stay
balanced), its loader running ahead into the next tile's Q, K and V while the compute
partitions finish the last one. It serves (``PERSISTENT``) wherever it can
(``takes_persistent``): 6-26% faster than the one-tile kernel on an H200 (step 10 of
benchmarks/NOTES-flash.md). Its walks keep the key tiles that need a mask apart from the
others (``SPLIT_MASKS``), and it overlaps each tile's softmax with the last tile's ``P V``
where that measured faster (``schedule``).

Outputs as ``flash_fwd``'s: ``out`` in q's layout and dtype, LSE float32 ``[b, hq, sq]`` in
natural log, ``-inf`` (and zero output) on rows that see no key.
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
from attnkit.kernels.flash_common import LOG2E, _ensure_allocator, cdiv, sm_count
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

LN2 = gl.constexpr(0.6931471805599453)
# The shipped configuration: query tile, key tile, slots, compute partitions; whether the
# persistent kernel serves (where the rows are flat).
BLOCK_M, BLOCK_N, STAGES, WARPGROUPS = 128, 128, 2, 2
PERSISTENT = True
# Whether the persistent kernel overlaps each tile's softmax with the last tile's P V
# (``_attend_overlapped``), in ``OVERLAP_STAGES`` K/V slots, and the shortest causal
# sequence it does so for by head dim (``schedule``: ``OVERLAP_MIN_CAUSAL_SEQ``, and
# ``OVERLAP_MIN_CAUSAL_SEQ_D64`` at head dim 64). Measured on an H200 with the split walk
# (steps 12 and 13 of benchmarks/NOTES-flash.md, ``results/gluon-fwd-h200-2026-12-01-
# step1[23].json``, ms, overlapped 3 slots against plain 2): d 128 1k full 0.280 against
# 0.286, 16k full 3.608 against 3.822, 4k causal 0.517 against 0.560, 16k causal 1.836
# against 2.032, GQA 32:8 4k causal 1.023 against 1.114; window 1024 at 16k 0.318 against
# 0.331; d 64 4k full 1.297 against 1.355, 16k causal 2.541 against 2.668. At 1k causal
# even in the probe (d 128: 0.190 against 0.195) and slower in the whole suite (run 14:
# 0.232 against run 13's 0.215), and slower at d 64 (0.285 against 0.259): causal attention
# overlaps from 4k at head dim 128 and from 16k at 64.
OVERLAP, OVERLAP_STAGES = True, 3
OVERLAP_MIN_CAUSAL_SEQ, OVERLAP_MIN_CAUSAL_SEQ_D64 = 4096, 16384
# The persistent kernel's Q slots: with 2 the next tile's Q tile loads while this one runs
# instead of after it. Off: the plain walk with 2 slots gave wrong outputs on the H200 at
# causal shapes (step 12; the overlapped walk with 2 slots matched), not yet explained.
Q_SLOTS = 1
# Whether the persistent kernel's compute partitions hand their Q slot back as soon as the
# walk's last ``Q K^T`` is done (``EARLY_Q``), before that tile's softmax, ``P V`` and the
# epilogue, so that the next tile's Q tile loads behind them; else after the epilogue's
# start, as before. It serves the short walks (1k causal: about 4.5 key tiles per tile, a
# window of 1024: about 9), where each tile waits one Q load. Off until timed on a GPU.
EARLY_Q = False
# Whether the walks keep the key tiles that need no mask apart from the others, which then
# skip the masks' compares (``_unmasked_tiles``; SASS: 510 instructions per tile against 596
# full, 748 causal, 906 with a window). Measured on an H200 (step 12, ms, plain walk, 2
# slots): window 1024 at 16k 0.331 against 0.356, d 64 16k causal 2.668 against 3.253,
# d 128 1k full 0.286 against 0.291.
SPLIT_MASKS = True


def _tiling(block_m: int, block_n: int, stages: int, warpgroups: int, persistent: bool,
            overlap: bool = False, q_slots: int = 1, split_masks: bool = False,
            early_q: bool = False) -> str:
    """A launch's tiling as the benchmark reports it, e.g. ``128x128 s2 wg2 persistent``
    (``gluon_common.label``'s names)."""
    return (f"{block_m}x{block_n} s{stages} wg{warpgroups}" + (" persistent" if persistent else "")
            + (" overlapped" if overlap else "") + (f" q{q_slots}" if q_slots > 1 else "")
            + (" split" if split_masks else "") + (" early" if early_q else ""))


# Launches so far in this process, and the tiling of the last one (``attnkit.bench.subject``
# names the kernels that served a case).
calls = 0
tiling = _tiling(BLOCK_M, BLOCK_N, OVERLAP_STAGES if OVERLAP else STAGES, WARPGROUPS,
                 PERSISTENT, PERSISTENT and OVERLAP, Q_SLOTS if PERSISTENT else 1, SPLIT_MASKS,
                 PERSISTENT and EARLY_Q)


@gluon.jit
def _key_tiles(start_m, seqlen_q, seqlen_k, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
               IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr):
    """``(lo, hi)``: the keys ``[lo, hi)`` that some query of ``[start_m, start_m + BLOCK_M)``
    sees, ``lo`` a multiple of ``BLOCK_N`` and ``hi >= lo``. Bottom-right, with ``offset =
    seqlen_k - seqlen_q``, query ``i`` sees key ``j`` when ``j <= i + offset`` (causal) and
    ``i + offset - WIN_LEFT <= j <= i + offset + WIN_RIGHT`` (a window; -1: unbounded), as
    ``flash_common.tile_key_range`` has it for the Triton kernels."""
    offset = seqlen_k - seqlen_q
    last = gl.minimum(start_m + BLOCK_M, seqlen_q) - 1 + offset  # the last row's diagonal
    hi = gl.to_tensor(seqlen_k)
    if IS_CAUSAL:
        hi = gl.minimum(hi, last + 1)
    if WIN_RIGHT >= 0:
        hi = gl.minimum(hi, last + WIN_RIGHT + 1)
    lo = gl.to_tensor(0)
    if WIN_LEFT >= 0:
        lo = gl.maximum(start_m + offset - WIN_LEFT, 0)
    lo = (lo // BLOCK_N) * BLOCK_N
    return lo, gl.maximum(hi, lo)


@gluon.jit
def query_tile_of_program(HQ: gl.constexpr, GROUP: gl.constexpr, BLOCK_M: gl.constexpr,
                          IS_CAUSAL: gl.constexpr):
    """``(batch as int64, query head, its K/V head, first query)`` of this program of a
    ``(query tiles, batch * HQ)`` grid, causal grids in reverse along the queries (the last
    query tiles see the most keys: they start first). The one-tile forward and the dQ kernel
    share it."""
    pid_m = gl.program_id(0)
    if IS_CAUSAL:
        pid_m = gl.num_programs(0) - 1 - pid_m
    pid_bh = gl.program_id(1)
    b = (pid_bh // HQ).to(gl.int64)
    h = pid_bh % HQ
    return b, h, h // GROUP, pid_m * BLOCK_M


@gluon.jit
def kv_ring_barriers(STAGES: gl.constexpr, CONSUMERS: gl.constexpr):
    """``(k_ready, v_ready, empty)``: the mbarriers of a ring of ``STAGES`` K/V slots, a slot
    free again once each of ``CONSUMERS`` compute partitions has arrived on ``empty`` (the
    caller fences before the partitions start). The Gluon forward and dQ kernels share it."""
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(empty.index(i), count=CONSUMERS)
    return k_ready, v_ready, empty


@gluon.jit
def _load_kv(k_desc, k1_desc, v_desc, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, c, lo,
             hi, row0, col_k, col_v, D0: gl.constexpr, D1: gl.constexpr,
             BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """K and V tiles of rows ``row0 + [lo, hi)`` (K's columns from ``col_k``: ``D0`` of them
    into ``k_bufs`` and, where ``D1 > 0``, the next ``D1`` into ``k1_bufs``; V's from
    ``col_v``; ``lo`` a multiple of ``BLOCK_N``) into the ring, the ``c``-th load of the
    program first; returns the count after them."""
    k_bytes: gl.constexpr = k_desc.block_type.nbytes + (k1_desc.block_type.nbytes if D1 > 0
                                                        else 0)
    for j in range(lo // BLOCK_N, gl.cdiv(hi, BLOCK_N)):
        slot = c % STAGES
        mbarrier.wait(empty.index(slot), ((c // STAGES) & 1) ^ 1)  # every slot starts free
        mbarrier.expect(k_ready.index(slot), k_bytes)
        tma.async_copy_global_to_shared(k_desc, [row0 + j * BLOCK_N, col_k], k_ready.index(slot),
                                        k_bufs.index(slot))
        if D1 > 0:
            tma.async_copy_global_to_shared(k1_desc, [row0 + j * BLOCK_N, col_k + D0],
                                            k_ready.index(slot), k1_bufs.index(slot))
        mbarrier.expect(v_ready.index(slot), v_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(v_desc, [row0 + j * BLOCK_N, col_v], v_ready.index(slot),
                                        v_bufs.index(slot))
        c += 1
    return c


@gluon.jit
def _load_q(q_desc, q1_desc, q_smem, q1_smem, q_bar, row, col, D0: gl.constexpr,
            D1: gl.constexpr):
    """The Q tile at ``[row, col]``: ``D0`` columns into ``q_smem`` and, where ``D1 > 0``,
    the next ``D1`` into ``q1_smem``, both on ``q_bar``."""
    q_bytes: gl.constexpr = q_desc.block_type.nbytes + (q1_desc.block_type.nbytes if D1 > 0
                                                        else 0)
    mbarrier.expect(q_bar, q_bytes)
    tma.async_copy_global_to_shared(q_desc, [row, col], q_bar, q_smem)
    if D1 > 0:
        tma.async_copy_global_to_shared(q1_desc, [row, col + D0], q_bar, q1_smem)


@gluon.jit
def _loader(q_desc, q1_desc, k_desc, k1_desc, v_desc, q_smem, q1_smem, q_bar, k_bufs, k1_bufs,
            v_bufs, k_ready, v_ready, empty, start_m, lo, hi, D0: gl.constexpr,
            D1: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """The loader partition: the Q tile, then the K and V tiles of keys ``[lo, hi)``."""
    _load_q(q_desc, q1_desc, q_smem, q1_smem, q_bar, start_m, 0, D0, D1)
    _load_kv(k_desc, k1_desc, v_desc, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty,
             gl.to_tensor(0), lo, hi, 0, 0, 0, D0, D1, BLOCK_N, STAGES)


@gluon.jit
def masked_scores(s, cols, rows, start_n, first, offset, seqlen_k, qk_scale,
                  IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr):
    """``[rows, keys]`` scores of the rows from ``first`` against the key tile from
    ``start_n``, times ``qk_scale``, with ``-inf`` where a key is not seen: past ``seqlen_k``
    (TMA's zero rows of the last tile), and in the tiles that cross the causal diagonal or a
    window's edges (``_key_tiles``; the others are not masked). The forward's softmax step
    and ``flash_dq_gluon`` share it."""
    s = s * qk_scale
    last = first + s.shape[0] - 1  # the partition's last row
    if start_n + s.shape[1] > seqlen_k:
        s = gl.where(cols[None, :] < seqlen_k, s, float("-inf"))
    if IS_CAUSAL:
        if start_n + s.shape[1] - 1 > first + offset:
            s = gl.where(cols[None, :] <= rows[:, None] + offset, s, float("-inf"))
    if WIN_RIGHT >= 0:
        if start_n + s.shape[1] - 1 > first + offset + WIN_RIGHT:
            s = gl.where(cols[None, :] <= rows[:, None] + (offset + WIN_RIGHT), s,
                         float("-inf"))
    if WIN_LEFT >= 0:
        if start_n < last + offset - WIN_LEFT:
            s = gl.where(cols[None, :] >= rows[:, None] + (offset - WIN_LEFT), s,
                         float("-inf"))
    return s


@gluon.jit
def _unmasked_tiles(first, lo, hi, offset, seqlen_k, ROWS: gl.constexpr, BLOCK_N: gl.constexpr,
                    IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr):
    """``(j0, j1, j2, j3)``: the key tiles ``[j0, j3)`` of keys ``[lo, hi)``, of which the
    ``ROWS`` rows from ``first`` need no mask in ``[j1, j2)`` (none of ``masked_scores``'s
    conditions holds there: inside the keys, left of the causal diagonal and of a right
    window edge, right of a left one), so that a walk masks only ``[j0, j1)`` and
    ``[j2, j3)`` and its other tiles pay no element-wise compare."""
    j0 = lo // BLOCK_N
    j3 = gl.cdiv(hi, BLOCK_N)
    a = j0
    b = gl.minimum(j3, seqlen_k // BLOCK_N)  # whole tiles inside the keys
    if IS_CAUSAL:  # the tile's last key at most the first row's diagonal
        b = gl.minimum(b, gl.maximum(first + offset + 1, 0) // BLOCK_N)
    if WIN_RIGHT >= 0:
        b = gl.minimum(b, gl.maximum(first + offset + WIN_RIGHT + 1, 0) // BLOCK_N)
    if WIN_LEFT >= 0:  # the tile's first key at least the last row's left edge
        a = gl.maximum(a, gl.cdiv(gl.maximum(first + ROWS - 1 + offset - WIN_LEFT, 0),
                                  BLOCK_N))
    j1 = gl.minimum(a, j3)
    return j0, j1, gl.maximum(gl.minimum(b, j3), j1), j3


@gluon.jit
def _softmax_step(s, m_i, l_i, acc, cols, rows, start_n, first, offset, seqlen_k, qk_scale,
                  p_layout: gl.constexpr, dtype: gl.constexpr, IS_CAUSAL: gl.constexpr,
                  WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr, MASK: gl.constexpr = True):
    """One key tile of the online softmax (base 2) for rows from ``first``: the new running
    max and sum, the accumulator rescaled, and ``P`` as the register A operand of ``P V``
    (``masked_scores`` masks the tile; without ``MASK``, a tile of ``_unmasked_tiles``, only
    the scale)."""
    m_new, l_i, alpha, p = _online_softmax(s, m_i, l_i, cols, rows, start_n, first, offset,
                                           seqlen_k, qk_scale, IS_CAUSAL, WIN_LEFT, WIN_RIGHT,
                                           MASK)
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, acc.type.layout))[:, None]
    return m_new, l_i, acc, gl.convert_layout(p.to(dtype), p_layout)


@gluon.jit
def _online_softmax(s, m_i, l_i, cols, rows, start_n, first, offset, seqlen_k, qk_scale,
                    IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr,
                    MASK: gl.constexpr):
    """The scores ``s`` of one key tile (``MASK``: through ``masked_scores``, else only
    scaled) folded into the running max ``m_i`` and sum ``l_i`` (base 2): ``(m, l, alpha,
    P)``, ``alpha`` the accumulator's rescale; rows that saw no key yet keep ``m = -inf``
    and ``P = 0``."""
    if MASK:
        s = masked_scores(s, cols, rows, start_n, first, offset, seqlen_k, qk_scale,
                          IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    else:
        s = s * qk_scale
    m_new = gl.maximum(m_i, gl.max(s, 1))
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw no key yet
    alpha = gl.exp2(m_i - m_safe)
    p = gl.exp2(s - m_safe[:, None])
    return m_new, l_i * alpha + gl.sum(p, 1), alpha, p


@gluon.jit
def _scores(q_rows, q1_rows, k_bufs, k1_bufs, slot, zero_s, D1: gl.constexpr):
    """Issue ``S = Q K^T`` of the ring's ``slot`` (asynchronous wgmma; a second product over
    the ``D1`` further columns where ``D1 > 0``) and return it to be waited for."""
    s = warpgroup_mma(q_rows, k_bufs.index(slot).permute((1, 0)), zero_s, use_acc=False,
                      is_async=True)  # Q K^T: [ROWS, BLOCK_N]
    if D1 > 0:
        s = warpgroup_mma(q1_rows, k1_bufs.index(slot).permute((1, 0)), s, is_async=True)
    return s


@gluon.jit
def _attend_start(first, ROWS: gl.constexpr, BLOCK_N: gl.constexpr, DV: gl.constexpr,
                  num_warps: gl.constexpr):
    """A partition's online-softmax state before its first key tile: ``(rows, m, l, acc,
    zero scores)``, the rows from ``first``, ``m = -inf``, ``l = 0``, a zero ``[ROWS, DV]``
    accumulator and a zero ``[ROWS, BLOCK_N]`` tile for the scores' wgmma."""
    s_layout: gl.constexpr = mma_layout(BLOCK_N, num_warps)  # [ROWS, BLOCK_N] scores
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    return (first + gl.arange(0, ROWS, layout=row_layout),
            gl.full([ROWS], float("-inf"), gl.float32, row_layout),
            gl.zeros([ROWS], gl.float32, row_layout),
            gl.zeros([ROWS, DV], gl.float32, mma_layout(DV, num_warps)),
            gl.zeros([ROWS, BLOCK_N], gl.float32, s_layout))


@gluon.jit
def _attend_tile(q_rows, q1_rows, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, c, j, m_i,
                 l_i, acc, rows, zero_s, first, offset, seqlen_k, qk_scale, q_free, j_last,
                 p_layout: gl.constexpr, col_layout: gl.constexpr, BLOCK_N: gl.constexpr,
                 D1: gl.constexpr, STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr,
                 WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr, MASK: gl.constexpr,
                 EARLY_Q: gl.constexpr):
    """Key tile ``j``, the ring's ``c``-th, of ``_attend``: its scores, the softmax step
    (``MASK``: with ``masked_scores``), ``P V``, and the slot freed; with ``EARLY_Q`` the Q
    slot handed back (``q_free``) once the scores of the walk's last tile ``j_last`` are
    done, the last product that reads Q."""
    slot = c % STAGES
    phase = (c // STAGES) & 1
    mbarrier.wait(k_ready.index(slot), phase)
    s = _scores(q_rows, q1_rows, k_bufs, k1_bufs, slot, zero_s, D1)
    s = warpgroup_mma_wait(0, deps=(s,))
    if EARLY_Q:
        mbarrier.arrive(q_free, pred=j == j_last)
    cols = j * BLOCK_N + gl.arange(0, BLOCK_N, layout=col_layout)
    m_i, l_i, acc, p = _softmax_step(s, m_i, l_i, acc, cols, rows, j * BLOCK_N, first, offset,
                                     seqlen_k, qk_scale, p_layout, q_rows.dtype, IS_CAUSAL,
                                     WIN_LEFT, WIN_RIGHT, MASK)
    mbarrier.wait(v_ready.index(slot), phase)
    acc = warpgroup_mma(p, v_bufs.index(slot), acc, is_async=True)  # += P V: [ROWS, DV]
    acc, p = warpgroup_mma_wait(0, deps=(acc, p))
    mbarrier.arrive(empty.index(slot))
    return m_i, l_i, acc


@gluon.jit
def _attend(q_rows, q1_rows, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, c, lo, hi,
            first, seqlen_q, seqlen_k, qk_scale, q_free, ROWS: gl.constexpr,
            BLOCK_N: gl.constexpr, D1: gl.constexpr, DV: gl.constexpr, STAGES: gl.constexpr,
            IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr,
            SPLIT_MASKS: gl.constexpr, EARLY_Q: gl.constexpr, num_warps: gl.constexpr):
    """The ``ROWS`` queries from ``first`` (``q_rows`` in shared memory, and ``q1_rows``
    where the head dim has a second column tile of ``D1``) over the key tiles of ``[lo, hi)``,
    the ``c``-th of the ring first: ``(m, l, acc, c after them)``. With ``SPLIT_MASKS`` the
    tiles that need masks (``_unmasked_tiles``: the first ones and the last ones) run apart
    from the others, which skip the masks' compares; else every tile takes
    ``masked_scores``. With ``EARLY_Q`` it arrives on ``q_free`` once Q is no longer read:
    after the last tile's scores, or at once where there is no key tile."""
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0,
                                                 parent=mma_layout(DV, num_warps), k_width=2)
    col_layout: gl.constexpr = gl.SliceLayout(0, mma_layout(BLOCK_N, num_warps))
    rows, m_i, l_i, acc, zero_s = _attend_start(first, ROWS, BLOCK_N, DV, num_warps)
    offset = seqlen_k - seqlen_q
    j0, j1, j2, j3 = _unmasked_tiles(first, lo, hi, offset, seqlen_k, ROWS, BLOCK_N,
                                     IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    if not SPLIT_MASKS:  # one walk, every tile through masked_scores
        j1 = j3
        j2 = j3
    # key tiles [j0, j1) masked (a left window edge), [j1, j2) not, [j2, j3) masked (the
    # diagonal, a right window edge, the keys' end)
    for part in gl.static_range(3):
        j_lo, j_hi = walk_part(part, j0, j1, j2, j3)
        for j in range(j_lo, j_hi):
            m_i, l_i, acc = _attend_tile(q_rows, q1_rows, k_bufs, k1_bufs, v_bufs, k_ready,
                                         v_ready, empty, c, j, m_i, l_i, acc, rows, zero_s,
                                         first, offset, seqlen_k, qk_scale, q_free, j3 - 1,
                                         p_layout, col_layout, BLOCK_N, D1, STAGES, IS_CAUSAL,
                                         WIN_LEFT, WIN_RIGHT, part != 1, EARLY_Q)
            c += 1
    if EARLY_Q:  # no key tile: Q was never read
        mbarrier.arrive(q_free, pred=j3 == j0)
    return m_i, l_i, acc, c


@gluon.jit
def _overlapped_step(q_rows, q1_rows, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, c, t,
                     j0, m_i, l_i, acc, p_prev, rows, zero_s, first, offset, seqlen_k,
                     qk_scale, q_free, n, o_layout: gl.constexpr, p_layout: gl.constexpr,
                     col_layout: gl.constexpr, BLOCK_N: gl.constexpr, D1: gl.constexpr,
                     STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr,
                     WIN_RIGHT: gl.constexpr, MASK: gl.constexpr, EARLY_Q: gl.constexpr):
    """Step ``t >= 1`` of ``_attend_overlapped``: ``Q K_t^T`` issued beside
    ``P_{t-1} V_{t-1}``, ``P_t`` formed while that runs (``MASK``: its scores through
    ``masked_scores``), then the accumulator rescaled: ``(m, l, acc, P_t)``. With
    ``EARLY_Q`` the last step (``t == n - 1``) hands the Q slot back (``q_free``) once its
    scores are done (wgmma groups retire in order: the products of Q are, ``P V`` may run)."""
    dtype: gl.constexpr = q_rows.dtype
    prev = (c + t - 1) % STAGES
    slot = (c + t) % STAGES
    mbarrier.wait(k_ready.index(slot), ((c + t) // STAGES) & 1)
    s = _scores(q_rows, q1_rows, k_bufs, k1_bufs, slot, zero_s, D1)  # Q K_t^T
    mbarrier.wait(v_ready.index(prev), ((c + t - 1) // STAGES) & 1)
    acc = warpgroup_mma(p_prev, v_bufs.index(prev), acc, is_async=True)  # += P V_{t-1}
    s = warpgroup_mma_wait(1, deps=(s,))  # the scores; P V_{t-1} may still run
    if EARLY_Q:
        mbarrier.arrive(q_free, pred=t == n - 1)
    cols = (j0 + t) * BLOCK_N + gl.arange(0, BLOCK_N, layout=col_layout)
    m_new, l_i, alpha, p = _online_softmax(s, m_i, l_i, cols, rows, (j0 + t) * BLOCK_N, first,
                                           offset, seqlen_k, qk_scale, IS_CAUSAL, WIN_LEFT,
                                           WIN_RIGHT, MASK)
    p_next = gl.convert_layout(p.to(dtype), p_layout)
    acc, p_prev = warpgroup_mma_wait(0, deps=(acc, p_prev))  # P V_{t-1} done
    mbarrier.arrive(empty.index(prev))
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))[:, None]
    return m_new, l_i, acc, p_next


@gluon.jit
def _attend_overlapped(q_rows, q1_rows, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, c,
                       lo, hi, first, seqlen_q, seqlen_k, qk_scale, q_free, ROWS: gl.constexpr,
                       BLOCK_N: gl.constexpr, D1: gl.constexpr, DV: gl.constexpr,
                       STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr,
                       WIN_RIGHT: gl.constexpr, SPLIT_MASKS: gl.constexpr,
                       EARLY_Q: gl.constexpr, num_warps: gl.constexpr):
    """``_attend`` with each tile's softmax overlapping the last tile's ``P V``: per key tile
    ``t`` it issues ``Q K_t^T`` and ``P_{t-1} V_{t-1}`` together, waits for the scores only,
    forms ``P_t`` while ``P_{t-1} V_{t-1}`` runs, then waits for it and rescales the
    accumulator (the order FlashAttention-3 calls intra-warpgroup pipelining). Live at once:
    the accumulator, ``P_{t-1}`` and the scores of ``t``. With ``SPLIT_MASKS`` the tiles
    after the first that need no mask (``_unmasked_tiles``) skip ``masked_scores``. With
    ``EARLY_Q`` it arrives on ``q_free`` once Q is no longer read (``_attend``)."""
    dtype: gl.constexpr = q_rows.dtype
    o_layout: gl.constexpr = mma_layout(DV, num_warps)  # [ROWS, DV] accumulator
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    col_layout: gl.constexpr = gl.SliceLayout(0, mma_layout(BLOCK_N, num_warps))
    rows, m_i, l_i, acc, zero_s = _attend_start(first, ROWS, BLOCK_N, DV, num_warps)
    offset = seqlen_k - seqlen_q
    p_prev = gl.zeros([ROWS, BLOCK_N], dtype, p_layout)
    j0 = lo // BLOCK_N
    n = gl.cdiv(hi, BLOCK_N) - j0
    if n > 0:  # the first tile: its scores and P, nothing to overlap yet
        mbarrier.wait(k_ready.index(c % STAGES), (c // STAGES) & 1)
        s = _scores(q_rows, q1_rows, k_bufs, k1_bufs, c % STAGES, zero_s, D1)  # Q K_0^T
        s = warpgroup_mma_wait(0, deps=(s,))
        if EARLY_Q:
            mbarrier.arrive(q_free, pred=n == 1)
        cols = j0 * BLOCK_N + gl.arange(0, BLOCK_N, layout=col_layout)
        s = masked_scores(s, cols, rows, j0 * BLOCK_N, first, offset, seqlen_k, qk_scale,
                          IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
        m_i = gl.max(s, 1)
        p = gl.exp2(s - gl.where(m_i == float("-inf"), 0.0, m_i)[:, None])
        l_i = gl.sum(p, 1)
        p_prev = gl.convert_layout(p.to(dtype), p_layout)
    # steps [1, a1) masked, [a1, a2) not (tiles j0 + t of _unmasked_tiles' [j1, j2)),
    # [a2, n) masked
    a1 = gl.maximum(n, 1)
    a2 = a1
    if SPLIT_MASKS:
        _, j1, j2, _ = _unmasked_tiles(first, lo, hi, offset, seqlen_k, ROWS, BLOCK_N,
                                       IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
        a1 = gl.maximum(j1 - j0, 1)
        a2 = gl.maximum(j2 - j0, a1)
    for part in gl.static_range(3):
        t_lo, t_hi = walk_part(part, gl.to_tensor(1), a1, a2, n)
        for t in range(t_lo, t_hi):
            m_i, l_i, acc, p_prev = _overlapped_step(
                q_rows, q1_rows, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, c, t, j0,
                m_i, l_i, acc, p_prev, rows, zero_s, first, offset, seqlen_k, qk_scale,
                q_free, n, o_layout, p_layout, col_layout, BLOCK_N, D1, STAGES, IS_CAUSAL,
                WIN_LEFT, WIN_RIGHT, part != 1, EARLY_Q)
    if n > 0:  # the last tile's P V
        last = (c + n - 1) % STAGES
        mbarrier.wait(v_ready.index(last), ((c + n - 1) // STAGES) & 1)
        acc = warpgroup_mma(p_prev, v_bufs.index(last), acc, is_async=True)
        acc, p_prev = warpgroup_mma_wait(0, deps=(acc, p_prev))
        mbarrier.arrive(empty.index(last))
    if EARLY_Q:  # no key tile: Q was never read
        mbarrier.arrive(q_free, pred=n <= 0)
    return m_i, l_i, acc, c + n


@gluon.jit
def _store(m_i, l_i, acc, out_ptr, lse_ptr, stride_os, first, seqlen_q,
           ROWS: gl.constexpr, DV: gl.constexpr):
    """``out = acc / l`` and ``lse = ln 2 * (m + log2 l)`` of the rows from ``first`` (rows
    that saw no key: 0 and ``-inf``; rows past ``seqlen_q`` left out)."""
    o_layout: gl.constexpr = acc.type.layout
    seen = l_i > 0.0
    inv = gl.where(seen, 1.0 / gl.where(seen, l_i, 1.0), 0.0)
    out = acc * gl.convert_layout(inv, gl.SliceLayout(1, o_layout))[:, None]
    lse = gl.where(seen, (m_i + gl.log2(gl.where(seen, l_i, 1.0))) * LN2, float("-inf"))
    o_rows = first + gl.arange(0, ROWS, layout=gl.SliceLayout(1, o_layout))
    o_cols = gl.arange(0, DV, layout=gl.SliceLayout(0, o_layout))
    gl.store(out_ptr + o_rows.to(gl.int64)[:, None] * stride_os + o_cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=(o_rows < seqlen_q)[:, None])
    rows = first + gl.arange(0, ROWS, layout=m_i.type.layout)
    gl.store(lse_ptr + rows, lse, mask=rows < seqlen_q)


@gluon.jit
def _compute(q_smem, q1_smem, q_bar, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty,
             out_ptr, lse_ptr, stride_os, start_m, lo, hi, seqlen_q, seqlen_k, qk_scale,
             ROWS: gl.constexpr, BLOCK_N: gl.constexpr, D1: gl.constexpr, DV: gl.constexpr,
             STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr,
             WIN_RIGHT: gl.constexpr, SPLIT_MASKS: gl.constexpr, WG: gl.constexpr,
             num_warps: gl.constexpr):
    """One compute partition: the ``ROWS`` queries from ``start_m + WG * ROWS`` over the key
    tiles of ``[lo, hi)``, then their output and LSE."""
    first = start_m + WG * ROWS
    mbarrier.wait(q_bar, 0)
    m_i, l_i, acc, _ = _attend(q_smem.slice(WG * ROWS, ROWS), q1_smem.slice(WG * ROWS, ROWS),
                               k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty,
                               gl.to_tensor(0), lo, hi, first, seqlen_q, seqlen_k, qk_scale,
                               q_bar, ROWS, BLOCK_N, D1, DV, STAGES, IS_CAUSAL, WIN_LEFT,
                               WIN_RIGHT, SPLIT_MASKS, False, num_warps)
    _store(m_i, l_i, acc, out_ptr, lse_ptr, stride_os, first, seqlen_q, ROWS, DV)


@gluon.jit
def _column_tile(q_base, k_base, q_rows, q_cols, k_rows, k_cols, stride_qs, stride_ks,
                 BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, W: gl.constexpr,
                 STAGES: gl.constexpr, Q_SLOTS: gl.constexpr = 0):
    """``(q_desc, k_desc, q_smem, k_bufs)`` of ``W`` columns of Q and K (``[q_rows, q_cols]``
    and ``[k_rows, k_cols]`` matrices from ``q_base``/``k_base``): a ``[BLOCK_M, W]`` Q tile
    (with ``Q_SLOTS > 0``, a ring of that many) and a ring of ``STAGES`` ``[BLOCK_N, W]`` K
    tiles."""
    dtype: gl.constexpr = q_base.dtype.element_ty
    q_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_M, W], dtype)
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, W], dtype)
    q_desc = tma.make_tensor_descriptor(q_base, [q_rows, q_cols], [stride_qs, 1], [BLOCK_M, W],
                                        q_layout)
    k_desc = tma.make_tensor_descriptor(k_base, [k_rows, k_cols], [stride_ks, 1], [BLOCK_N, W],
                                        kv_layout)
    if Q_SLOTS > 0:
        q_smem = gl.allocate_shared_memory(dtype, [Q_SLOTS, BLOCK_M, W], q_layout)
    else:
        q_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, W], q_layout)
    return (q_desc, k_desc, q_smem,
            gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, W], kv_layout))


@gluon.jit
def _qk_tiles(q_base, k_base, q_rows, q_cols, k_rows, k_cols, stride_qs, stride_ks,
              BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, D: gl.constexpr, D1: gl.constexpr,
              STAGES: gl.constexpr, Q_SLOTS: gl.constexpr = 0):
    """Descriptors and shared memory of Q and K (``_column_tile``; ``Q_SLOTS > 0``: a ring of
    Q tiles), tiles of head dim ``D``: ``(q_desc, q1_desc, k_desc, k1_desc, q_smem, q1_smem,
    k_bufs, k1_bufs)``. A head dim that is not a power of two (192: MLA) is read as two column
    tiles of ``D - D1`` and ``D1``; with ``D1 == 0`` the second ones are the first ones again
    (and never used)."""
    q_desc, k_desc, q_smem, k_bufs = _column_tile(q_base, k_base, q_rows, q_cols, k_rows,
                                                  k_cols, stride_qs, stride_ks, BLOCK_M,
                                                  BLOCK_N, D - D1, STAGES, Q_SLOTS)
    if D1 > 0:
        q1_desc, k1_desc, q1_smem, k1_bufs = _column_tile(q_base, k_base, q_rows, q_cols,
                                                          k_rows, k_cols, stride_qs, stride_ks,
                                                          BLOCK_M, BLOCK_N, D1, STAGES, Q_SLOTS)
    else:
        q1_desc, k1_desc, q1_smem, k1_bufs = q_desc, k_desc, q_smem, k_bufs
    return q_desc, q1_desc, k_desc, k1_desc, q_smem, q1_smem, k_bufs, k1_bufs


@gluon.jit
def gluon_fwd_kernel(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
                     stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                     stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
                     stride_lb, stride_lh, seq_q, seq_k, qk_scale,
                     HQ: gl.constexpr, GROUP: gl.constexpr, D: gl.constexpr,
                     D1: gl.constexpr, DV: gl.constexpr, IS_CAUSAL: gl.constexpr,
                     WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr, BLOCK_M: gl.constexpr,
                     BLOCK_N: gl.constexpr, STAGES: gl.constexpr, WARPGROUPS: gl.constexpr,
                     SPLIT_MASKS: gl.constexpr, num_warps: gl.constexpr):
    """One ``[BLOCK_M, D]`` query tile (grid axis 0) of one batch x query head (axis 1); a
    window ``(WIN_LEFT, WIN_RIGHT)`` (-1: unbounded) as ``_key_tiles`` has it.

    q: ``[b, sq, HQ, D]``, k: ``[b, sk, HQ / GROUP, D]`` (``D1``: the width of a second
    column tile, ``_qk_tiles``), v: ``[b, sk, HQ / GROUP, DV]``, out: ``[b, sq, HQ, DV]``;
    unit stride in the head dim and 16-byte aligned rows; lse: float32 ``[b, HQ, sq]``;
    ``qk_scale = scale * log2(e)``.
    """
    b, h, hk, start_m = query_tile_of_program(HQ, GROUP, BLOCK_M, IS_CAUSAL)
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    v_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, DV], dtype)
    q_desc, q1_desc, k_desc, k1_desc, q_smem, q1_smem, k_bufs, k1_bufs = _qk_tiles(
        q_ptr + b * stride_qb + h * stride_qh, k_ptr + b * stride_kb + hk * stride_kh, seq_q, D,
        seq_k, D, stride_qs, stride_ks, BLOCK_M, BLOCK_N, D, D1, STAGES)
    v_desc = tma.make_tensor_descriptor(v_ptr + b * stride_vb + hk * stride_vh, [seq_k, DV],
                                        [stride_vs, 1], [BLOCK_N, DV], v_layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, DV], v_layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    k_ready, v_ready, empty = kv_ring_barriers(STAGES, WARPGROUPS)  # every partition frees
    mbarrier.init(q_bar, count=1)
    fence_async_shared()
    lo, hi = _key_tiles(start_m, seq_q, seq_k, BLOCK_M, BLOCK_N, IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    o_ptr = out_ptr + b * stride_ob + h * stride_oh
    l_ptr = lse_ptr + b * stride_lb + h.to(gl.int64) * stride_lh
    ROWS: gl.constexpr = BLOCK_M // WARPGROUPS
    if WARPGROUPS == 2:
        gl.warp_specialize([
            (_compute, (q_smem, q1_smem, q_bar, k_bufs, k1_bufs, v_bufs, k_ready, v_ready,
                        empty, o_ptr, l_ptr, stride_os, start_m, lo, hi, seq_q, seq_k,
                        qk_scale, ROWS, BLOCK_N, D1, DV, STAGES, IS_CAUSAL, WIN_LEFT,
                        WIN_RIGHT, SPLIT_MASKS, 0, num_warps)),
            (_compute, (q_smem, q1_smem, q_bar, k_bufs, k1_bufs, v_bufs, k_ready, v_ready,
                        empty, o_ptr, l_ptr, stride_os, start_m, lo, hi, seq_q, seq_k,
                        qk_scale, ROWS, BLOCK_N, D1, DV, STAGES, IS_CAUSAL, WIN_LEFT,
                        WIN_RIGHT, SPLIT_MASKS, 1, num_warps)),
            (_loader, (q_desc, q1_desc, k_desc, k1_desc, v_desc, q_smem, q1_smem, q_bar,
                       k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, start_m, lo, hi,
                       D - D1, D1, BLOCK_N, STAGES)),
        ], [num_warps, LOADER_WARPS], [COMPUTE_REGS, LOADER_REGS])
    else:
        gl.warp_specialize([
            (_compute, (q_smem, q1_smem, q_bar, k_bufs, k1_bufs, v_bufs, k_ready, v_ready,
                        empty, o_ptr, l_ptr, stride_os, start_m, lo, hi, seq_q, seq_k,
                        qk_scale, ROWS, BLOCK_N, D1, DV, STAGES, IS_CAUSAL, WIN_LEFT,
                        WIN_RIGHT, SPLIT_MASKS, 0, num_warps)),
            (_loader, (q_desc, q1_desc, k_desc, k1_desc, v_desc, q_smem, q1_smem, q_bar,
                       k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, start_m, lo, hi,
                       D - D1, D1, BLOCK_N, STAGES)),
        ], [LOADER_WARPS], [LOADER_REGS])


@gluon.jit
def _program_tiles(n_tiles, PAIR: gl.constexpr):
    """How many tiles this program of the persistent grid takes (``_tile_of``): units of
    ``PAIR`` consecutive tiles, units ``pid, pid + programs, ...``; only the last unit of the
    grid can be short."""
    pid = gl.program_id(0)
    programs = gl.num_programs(0)
    units = gl.cdiv(gl.cdiv(n_tiles, PAIR) - pid, programs)
    last = pid + (units - 1) * programs
    return PAIR * (units - 1) + gl.minimum(n_tiles - PAIR * last, PAIR)


@gluon.jit
def _tile_of(i, n_m, seq_q, seq_k, HQ: gl.constexpr, BLOCK_M: gl.constexpr,
             BLOCK_N: gl.constexpr, IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr,
             WIN_RIGHT: gl.constexpr, PAIR: gl.constexpr):
    """This program's ``i``-th tile of the persistent grid as ``(batch, query head, first
    query, lo, hi)`` (keys ``[lo, hi)``: ``_key_tiles``).

    Tiles run head after head (programs running together share a head's K/V in L2); within
    a head they alternate from the two ends, ``n_m - 1, 0, n_m - 2, 1, ...``, so a unit of two
    (``PAIR``) causal tiles costs about the same as any other and the static walk stays
    balanced (a causal tile ``m`` sees ``m + 1`` key tiles)."""
    t = PAIR * (gl.program_id(0) + (i // PAIR) * gl.num_programs(0)) + i % PAIR
    bh = t // n_m
    j = t % n_m
    pid_m = gl.where(j % 2 == 0, n_m - 1 - j // 2, j // 2)
    start_m = pid_m * BLOCK_M
    lo, hi = _key_tiles(start_m, seq_q, seq_k, BLOCK_M, BLOCK_N, IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    return bh // HQ, bh % HQ, start_m, lo, hi


@gluon.jit
def _loader_persistent(q_desc, q1_desc, k_desc, k1_desc, v_desc, q_smem, q1_smem, q_bar,
                       q_empty, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, seq_q, seq_k,
                       n_m, n_tiles, HQ: gl.constexpr, GROUP: gl.constexpr, D: gl.constexpr,
                       D1: gl.constexpr, DV: gl.constexpr, BLOCK_M: gl.constexpr,
                       BLOCK_N: gl.constexpr, STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr,
                       WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr, PAIR: gl.constexpr,
                       Q_SLOTS: gl.constexpr):
    """The loader of the persistent kernel: per tile of the program, its Q tile into the
    next of ``Q_SLOTS`` slots once the compute partitions are done with that slot's last
    tile (``q_empty``), then its K and V tiles, the ring's count running on across tiles, so
    that the next tile's loads overlap this tile's last products and its epilogue (with two
    Q slots, the next Q tile too)."""
    c = gl.to_tensor(0)
    for it in range(_program_tiles(n_tiles, PAIR)):
        b, h, start_m, lo, hi = _tile_of(it, n_m, seq_q, seq_k, HQ, BLOCK_M, BLOCK_N,
                                         IS_CAUSAL, WIN_LEFT, WIN_RIGHT, PAIR)
        qs = it % Q_SLOTS
        mbarrier.wait(q_empty.index(qs), ((it // Q_SLOTS) & 1) ^ 1)  # free at first
        _load_q(q_desc, q1_desc, q_smem.index(qs), q1_smem.index(qs), q_bar.index(qs),
                b * seq_q + start_m, h * D, D - D1, D1)
        c = _load_kv(k_desc, k1_desc, v_desc, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty,
                     c, lo, hi, b * seq_k, (h // GROUP) * D, (h // GROUP) * DV, D - D1, D1,
                     BLOCK_N, STAGES)


@gluon.jit
def _compute_persistent(q_smem, q1_smem, q_bar, q_empty, k_bufs, k1_bufs, v_bufs, k_ready,
                        v_ready, empty, out_ptr, lse_ptr, stride_ob, stride_os, stride_oh,
                        stride_lb, stride_lh, seq_q, seq_k, qk_scale, n_m, n_tiles,
                        HQ: gl.constexpr, ROWS: gl.constexpr, BLOCK_M: gl.constexpr,
                        BLOCK_N: gl.constexpr, D1: gl.constexpr, DV: gl.constexpr,
                        STAGES: gl.constexpr,
                        IS_CAUSAL: gl.constexpr, WIN_LEFT: gl.constexpr,
                        WIN_RIGHT: gl.constexpr, PAIR: gl.constexpr, OVERLAP: gl.constexpr,
                        Q_SLOTS: gl.constexpr, SPLIT_MASKS: gl.constexpr,
                        EARLY_Q: gl.constexpr, WG: gl.constexpr, num_warps: gl.constexpr):
    """A compute partition of the persistent kernel: ``_compute`` for each tile of the
    program (``_attend_overlapped`` with ``OVERLAP``), its Q tile in slot ``it % Q_SLOTS``,
    handing the slot back (``q_empty``) before its epilogue, or with ``EARLY_Q`` once the
    walk's last ``Q K^T`` is done (inside the walk)."""
    c = gl.to_tensor(0)
    for it in range(_program_tiles(n_tiles, PAIR)):
        b, h, start_m, lo, hi = _tile_of(it, n_m, seq_q, seq_k, HQ, BLOCK_M, BLOCK_N,
                                         IS_CAUSAL, WIN_LEFT, WIN_RIGHT, PAIR)
        first = start_m + WG * ROWS
        qs = it % Q_SLOTS
        q_rows = q_smem.index(qs).slice(WG * ROWS, ROWS)
        q1_rows = q1_smem.index(qs).slice(WG * ROWS, ROWS)
        mbarrier.wait(q_bar.index(qs), (it // Q_SLOTS) & 1)
        if OVERLAP:
            m_i, l_i, acc, c = _attend_overlapped(
                q_rows, q1_rows, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, c, lo, hi,
                first, seq_q, seq_k, qk_scale, q_empty.index(qs), ROWS, BLOCK_N, D1, DV,
                STAGES, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, SPLIT_MASKS, EARLY_Q, num_warps)
        else:
            m_i, l_i, acc, c = _attend(
                q_rows, q1_rows, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, c, lo, hi,
                first, seq_q, seq_k, qk_scale, q_empty.index(qs), ROWS, BLOCK_N, D1, DV,
                STAGES, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, SPLIT_MASKS, EARLY_Q, num_warps)
        if not EARLY_Q:
            mbarrier.arrive(q_empty.index(qs))  # every product of this tile that reads Q is done
        b64 = b.to(gl.int64)
        _store(m_i, l_i, acc, out_ptr + b64 * stride_ob + h * stride_oh,
               lse_ptr + b64 * stride_lb + h.to(gl.int64) * stride_lh, stride_os, first,
               seq_q, ROWS, DV)


@gluon.jit
def gluon_fwd_persistent_kernel(q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr,
                                stride_qs, stride_ks, stride_vs, stride_ob, stride_os,
                                stride_oh, stride_lb, stride_lh, batch, seq_q, seq_k,
                                qk_scale, HQ: gl.constexpr, GROUP: gl.constexpr,
                                D: gl.constexpr, D1: gl.constexpr, DV: gl.constexpr,
                                IS_CAUSAL: gl.constexpr,
                                WIN_LEFT: gl.constexpr, WIN_RIGHT: gl.constexpr,
                                BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                                STAGES: gl.constexpr, PAIR: gl.constexpr,
                                OVERLAP: gl.constexpr, Q_SLOTS: gl.constexpr,
                                SPLIT_MASKS: gl.constexpr, EARLY_Q: gl.constexpr,
                                num_warps: gl.constexpr):
    """``gluon_fwd_kernel`` as a persistent kernel: a grid of at most one program per SM,
    each taking units ``pid, pid + programs, ...`` of ``PAIR`` tiles of
    ``(query tiles) x batch x heads`` in ``_tile_of``'s order, two compute partitions, the
    Q tiles in ``Q_SLOTS`` slots (2: the next tile's Q loads while this one runs), each
    handed back after the tile's walk or, with ``EARLY_Q``, after its last ``Q K^T``.

    q, k, v are read as ``[batch * seq, heads * head dim]`` matrices (rows ``stride_*s``
    apart; q and k of head dim ``D``, in column tiles as ``_qk_tiles`` has it; v and out of
    ``DV``):
    one descriptor per tensor for the whole kernel, built once per program. That needs each
    batch's rows to follow the last one's and the heads of a row to be adjacent
    (``flash_fwd_gluon.flat_rows``). A query tile's rows past its sequence read the next
    batch's rows, which are never stored; key tiles never do (``takes_persistent``: whole key
    tiles or one batch), so nothing of another batch, not even a non-finite value, reaches
    an output.
    """
    dtype: gl.constexpr = q_ptr.dtype.element_ty
    HK: gl.constexpr = HQ // GROUP
    q_desc, q1_desc, k_desc, k1_desc, q_smem, q1_smem, k_bufs, k1_bufs = _qk_tiles(
        q_ptr, k_ptr, batch * seq_q, HQ * D, batch * seq_k, HK * D, stride_qs, stride_ks,
        BLOCK_M, BLOCK_N, D, D1, STAGES, Q_SLOTS)
    v_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, DV], dtype)
    v_desc = tma.make_tensor_descriptor(v_ptr, [batch * seq_k, HK * DV], [stride_vs, 1],
                                        [BLOCK_N, DV], v_layout)
    v_bufs = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, DV], v_layout)
    q_bar = gl.allocate_shared_memory(gl.int64, [Q_SLOTS, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [Q_SLOTS, 1], mbarrier.MBarrierLayout())
    k_ready, v_ready, empty = kv_ring_barriers(STAGES, 2)  # both compute partitions free
    for i in gl.static_range(Q_SLOTS):
        mbarrier.init(q_bar.index(i), count=1)
        mbarrier.init(q_empty.index(i), count=2)  # both compute partitions
    fence_async_shared()
    n_m = gl.cdiv(seq_q, BLOCK_M)
    n_tiles = n_m * batch * HQ
    ROWS: gl.constexpr = BLOCK_M // 2
    gl.warp_specialize([
        (_compute_persistent, (q_smem, q1_smem, q_bar, q_empty, k_bufs, k1_bufs, v_bufs,
                               k_ready, v_ready, empty, out_ptr, lse_ptr, stride_ob, stride_os,
                               stride_oh, stride_lb, stride_lh, seq_q, seq_k, qk_scale, n_m,
                               n_tiles, HQ, ROWS, BLOCK_M, BLOCK_N, D1, DV, STAGES, IS_CAUSAL,
                               WIN_LEFT, WIN_RIGHT, PAIR, OVERLAP, Q_SLOTS, SPLIT_MASKS,
                               EARLY_Q, 0, num_warps)),
        (_compute_persistent, (q_smem, q1_smem, q_bar, q_empty, k_bufs, k1_bufs, v_bufs,
                               k_ready, v_ready, empty, out_ptr, lse_ptr, stride_ob, stride_os,
                               stride_oh, stride_lb, stride_lh, seq_q, seq_k, qk_scale, n_m,
                               n_tiles, HQ, ROWS, BLOCK_M, BLOCK_N, D1, DV, STAGES, IS_CAUSAL,
                               WIN_LEFT, WIN_RIGHT, PAIR, OVERLAP, Q_SLOTS, SPLIT_MASKS,
                               EARLY_Q, 1, num_warps)),
        (_loader_persistent, (q_desc, q1_desc, k_desc, k1_desc, v_desc, q_smem, q1_smem, q_bar,
                              q_empty, k_bufs, k1_bufs, v_bufs, k_ready, v_ready, empty, seq_q,
                              seq_k, n_m, n_tiles, HQ, GROUP, D, D1, DV, BLOCK_M, BLOCK_N,
                              STAGES, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, PAIR, Q_SLOTS)),
    ], [num_warps, LOADER_WARPS], [COMPUTE_REGS, LOADER_REGS])


def persistent_grid(tiles: int, programs: int) -> tuple[int, int]:
    """``(grid, PAIR)`` of ``gluon_fwd_persistent_kernel`` for ``tiles`` query tiles on
    ``programs`` SMs: units of two tiles (``_tile_of``) once there are enough to give every
    SM two, else one tile per unit so that more SMs take part.

    Example:
        >>> persistent_grid(2048, 132), persistent_grid(128, 132)
        ((132, 2), (128, 1))
    """
    pair = 2 if tiles >= 2 * programs else 1
    return min(cdiv(tiles, pair), programs), pair


def flat_rows(t: torch.Tensor) -> bool:
    """Whether a ``[b, s, h, d]`` tensor reads as a ``[b * s, h * d]`` matrix with rows
    ``t.stride(1)`` apart (``gluon_fwd_persistent_kernel``): each batch's rows follow the
    last one's and the heads of a row are adjacent (contiguous tensors and views of a merged
    ``[b, s, 3, h, d]`` QKV tensor do)."""
    b, s, h, d = t.shape
    return (b == 1 or t.stride(0) == s * t.stride(1)) and (h == 1 or t.stride(2) == d)


# Shared memory a program of the persistent kernel may take on sm90 (227 KB), less room for
# its barriers.
SHARED_BYTES = 232448 - 1024


def shared_fits(*, q_slots: int, stages: int, block_m: int, block_n: int, d: int,
                dv: int) -> bool:
    """Whether the persistent kernel's shared memory fits ``SHARED_BYTES``: ``q_slots``
    16-bit ``[block_m, d]`` Q tiles and ``stages`` ``[block_n, d]`` K and ``[block_n, dv]`` V
    tiles.

    Example:
        >>> kw = dict(q_slots=1, block_m=128, block_n=128)
        >>> shared_fits(stages=3, d=128, dv=128, **kw), shared_fits(stages=3, d=192, dv=128, **kw)
        (True, False)
    """
    return 2 * (q_slots * block_m * d + stages * block_n * (d + dv)) <= SHARED_BYTES


def q_slots_that_fit(q_slots: int, *, block_m: int, block_n: int, d: int, dv: int,
                     stages: int) -> int:
    """``q_slots`` where the persistent kernel's shared memory then fits (``shared_fits``),
    else 1.

    Example:
        >>> kw = dict(block_m=128, block_n=128, dv=128)
        >>> [q_slots_that_fit(2, d=128, stages=s, **kw) for s in (2, 3)]
        [2, 1]
        >>> q_slots_that_fit(2, d=192, stages=2, **kw)  # MLA
        1
    """
    fits = shared_fits(q_slots=q_slots, stages=stages, block_m=block_m, block_n=block_n, d=d,
                       dv=dv)
    return q_slots if fits else 1


def schedule(*, causal: bool, seq: int, d: int, dv: int, block_m: int = BLOCK_M,
             block_n: int = BLOCK_N) -> tuple[bool, int]:
    """``(overlap, stages)`` of the persistent kernel for a call: the overlapped softmax in
    ``OVERLAP_STAGES`` slots under ``OVERLAP``, unless the attention is causal and ``seq``
    (the longer of the query and key lengths) is below ``OVERLAP_MIN_CAUSAL_SEQ``
    (``OVERLAP_MIN_CAUSAL_SEQ_D64`` at head dim 64), or the slots do not fit
    (``shared_fits``: MLA's 192); else the plain walk in ``STAGES``.

    Example:
        >>> schedule(causal=True, seq=4096, d=128, dv=128), schedule(causal=True, seq=4096,
        ...                                                          d=64, dv=64)
        ((True, 3), (False, 2))
        >>> schedule(causal=False, seq=4096, d=192, dv=128)  # MLA
        (False, 2)
    """
    min_causal = OVERLAP_MIN_CAUSAL_SEQ_D64 if d <= 64 else OVERLAP_MIN_CAUSAL_SEQ
    if (OVERLAP and not (causal and seq < min_causal)
            and shared_fits(q_slots=1, stages=OVERLAP_STAGES, block_m=block_m,
                            block_n=block_n, d=d, dv=dv)):
        return True, OVERLAP_STAGES
    return False, STAGES


def takes_persistent(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                     block_n: int = BLOCK_N) -> bool:
    """Whether ``gluon_fwd_persistent_kernel`` can take ``[b, s, h, d]`` q, k and v: each
    reads as flat rows (``flat_rows``), and the key length is a multiple of ``block_n`` or
    there is one batch, so that no key tile reads rows of the next batch.

    Example:
        >>> q, kv = torch.zeros(2, 300, 4, 128), torch.zeros(2, 256, 4, 128)
        >>> takes_persistent(q, kv, kv), takes_persistent(q, q, q)
        (True, False)
    """
    return (all(flat_rows(t) for t in (q, k, v))
            and (k.shape[0] == 1 or k.shape[1] % block_n == 0))


def gluon_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
              lse: torch.Tensor, *, causal: bool, scale: float,
              window: tuple[int, int] = (-1, -1), block_m: int = BLOCK_M,
              block_n: int = BLOCK_N, stages: int | None = None,
              warpgroups: int = WARPGROUPS, persistent: bool = PERSISTENT,
              overlap: bool | None = None, q_slots: int = Q_SLOTS,
              split_masks: bool | None = None, programs: int | None = None,
              early_q: bool = EARLY_Q) -> None:
    """Write the attention output into ``out`` and its LSE into ``lse`` (CUDA, sm90).

    Args:
        q: ``[b, seq_q, hq, d]``; k: ``[b, seq_k, hk, d]``; v: ``[b, seq_k, hk, dv]``;
            out: ``[b, seq_q, hq, dv]`` (``hq`` a multiple of ``hk``; ``(d, dv)`` ``(128,
            128)``, ``(64, 64)`` or MLA's ``(192, 128)``); all bf16 or all fp16, last dim
            contiguous, 16-byte aligned (``flash_common.tma_aligned``).
        lse: float32 ``[b, hq, seq_q]`` with unit stride along the sequence.
        causal: bottom-right causal attention.
        scale: the softmax scale.
        window: ``(left, right)``: query ``i`` sees keys ``i + offset - left`` to
            ``i + offset + right`` (``offset = seq_k - seq_q``; -1: unbounded), with
            ``causal`` as well where both are given; each window size compiles its own
            kernel, as the Triton forward's does.
        block_m, block_n, stages, warpgroups: the tiling (``BLOCK_M``, ... ``WARPGROUPS``;
            ``stages`` by default ``schedule``'s where ``overlap`` is not given, else
            ``STAGES``).
        persistent: ``gluon_fwd_persistent_kernel`` (two partitions) where
            ``takes_persistent``; else the one-tile-per-program kernel.
        overlap: the persistent kernel's softmax overlapping the last tile's ``P V``
            (``_attend_overlapped``; by default ``schedule``'s for the persistent kernel).
        q_slots: the persistent kernel's Q slots (2: the next tile's Q loads while this
            one runs; 32 KB more shared memory at head dim 128); 1 where 2 would not fit
            (``q_slots_that_fit``).
        split_masks: the key tiles that need no mask in a walk of their own
            (``_unmasked_tiles``; by default ``SPLIT_MASKS``, but not at MLA's 192, whose
            split walk passed its GPU tests but has not been timed).
        programs: the SMs the persistent kernel spreads over (``persistent_grid``;
            default: all of the device's).
        early_q: the persistent kernel hands each Q slot back after the walk's last
            ``Q K^T`` instead of after the walk (``EARLY_Q``).

    The caller checks ``flash_fwd._gluon_fwd`` first; nothing is checked here.

    Example (on an H100/H200, inside ``flash_fwd``)::

        gluon_fwd(q, k, v, out, lse, causal=True, scale=128 ** -0.5, window=(1023, -1))
    """
    global calls, tiling
    calls += 1
    _ensure_allocator()  # device-side descriptors live in global scratch
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    left, right = window_constexprs(window, causal)
    persistent = persistent and takes_persistent(q, k, v, block_n=block_n)
    if split_masks is None:
        split_masks = SPLIT_MASKS and not column_split(d)
    if overlap is None:  # the schedule's, slots included unless given
        overlap, auto_stages = (schedule(causal=causal, seq=max(sq, sk), d=d, dv=v.shape[-1],
                                         block_m=block_m, block_n=block_n)
                                if persistent else (False, STAGES))
        stages = stages or auto_stages
    stages = stages or STAGES
    q_slots = q_slots_that_fit(q_slots, block_m=block_m, block_n=block_n, d=d,
                               dv=v.shape[-1], stages=stages) if persistent else 1
    early_q = early_q and persistent
    tiling = _tiling(block_m, block_n, stages, 2 if persistent else warpgroups, persistent,
                     persistent and overlap, q_slots, split_masks, early_q)
    if persistent:
        grid, pair = persistent_grid(cdiv(sq, block_m) * b * hq,
                                     programs or sm_count(q.device))
        fast_launch.run(gluon_fwd_persistent_kernel, (grid,), (
            q, k, v, out, lse, q.stride(1), k.stride(1), v.stride(1), *out.stride()[:3],
            lse.stride(0), lse.stride(1), b, sq, sk, scale * LOG2E), dict(
            HQ=hq, GROUP=hq // hk, D=d, D1=column_split(d), DV=v.shape[-1], IS_CAUSAL=causal,
            WIN_LEFT=left, WIN_RIGHT=right, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
            PAIR=pair, OVERLAP=overlap, Q_SLOTS=q_slots, SPLIT_MASKS=split_masks,
            EARLY_Q=early_q, num_warps=4, maxnreg=MAXNREG))
        return
    grid = (cdiv(sq, block_m), b * hq)
    fast_launch.run(gluon_fwd_kernel, grid, (
        q, k, v, out, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *out.stride()[:3], lse.stride(0), lse.stride(1), sq, sk, scale * LOG2E), dict(
        HQ=hq, GROUP=hq // hk, D=d, D1=column_split(d), DV=v.shape[-1], IS_CAUSAL=causal,
        WIN_LEFT=left, WIN_RIGHT=right, BLOCK_M=block_m, BLOCK_N=block_n, STAGES=stages,
        WARPGROUPS=warpgroups, SPLIT_MASKS=split_masks,
        num_warps=8 // warpgroups, maxnreg=MAXNREG))
