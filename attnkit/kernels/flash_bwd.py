"""Flash-attention backward in Triton: a preprocess, a dK/dV kernel and a dQ kernel.

With ``p = softmax(s)`` recomputed from the saved LSE, ``delta_i = sum_d dO_i * O_i`` and
``dp = dO @ v^T`` (times the dropout keep mask over ``1 - p_drop``)::

    dv = p_dropped^T @ dO        ds = p * (dp - delta)  (* (1 - tanh^2) with softcap)
    dk = scale * ds^T @ q        dq = scale * ds @ k

Three launches:

1. ``_bwd_preprocess``: ``delta`` float32 and the base-2 LSE, laid out like the LSE.
2. ``_bwd_dkdv_kernel``: one program per (key tile, batch x KV head). It keeps its K/V tile and
   dK/dV accumulators on chip and loops over the query heads of its group (GQA/MQA: dK/dV are
   reduced over the group in-kernel, K/V never repeated) and over the query tiles that can see
   the key tile. In the fast mode it also adds each tile's dQ share into a float32 buffer with
   atomics (order-dependent rounding).
3. ``_bwd_dq_kernel`` (deterministic mode, and wherever atomics do not pay: ``_atomic_dq_pays``):
   one program per (query tile, batch x query head)
   recomputes the scores and accumulates dQ on chip: no atomics, bitwise reproducible, at the
   cost of recomputing ``q @ k^T`` and ``dO @ v^T`` once more (about 7 instead of 5 matmuls).
   Up to 4k tokens and with windows it runs on a side stream beside the dK/dV kernel
   (``_overlap``), filling the SMs that kernel's last wave leaves idle.

On sm90 with the Triton release it was measured with, dense MHA at head dim 128 from 1k tokens
has its dK/dV products computed by a warp-specialised Gluon kernel instead
(``flash_bwd_gluon``, ``_gluon_dkdv``): 3-22% faster than ``_bwd_dkdv_kernel``. It takes
GQA/MQA too, on request (``ATTNKIT_FLASH_GLUON=1``), where it measured even. From 4k tokens,
without windows, dQ runs in a Gluon kernel too (``flash_dq_gluon``, ``_gluon_dq``): 5-10%
faster than ``_bwd_dq_kernel`` at head dim 128 (MHA and GQA), 30% at MLA's 192/128.

On sm90+ the dK/dV kernel reads its K/V, Q and dO tiles through TMA tensor descriptors at 4k+
tokens (``_dkdv_tma``, ``ATTNKIT_FLASH_TMA``; ``flash_common.use_tma`` says when descriptors are
allowed), and dQ then gets its own kernel (``_atomic_dq_pays``).

Scores are recomputed in the transposed layout ``k @ q^T`` in the dK/dV kernel so ``p^T`` and
``ds^T`` feed the dK/dV products without a transpose. Fully masked rows have LSE ``-inf``; the
preprocess hands the other kernels the LSE in base 2 with ``+inf`` there, so their
probabilities, and all their gradients, are exactly zero.
"""

from __future__ import annotations

import functools
import os
import threading

import torch
import triton
import triton.language as tl

from attnkit.kernels import fast_launch
from attnkit.kernels.flash_common import (
    LOG2E,
    all_configs,
    autotune_bench,
    cdiv,
    dot_precision,
    gluon_fits,
    gluon_setting,
    head_block,
    interpreting,
    launch,
    load_tile,
    mask_args,
    on_input_device,
    pruner,
    scores,
    seed_words,
    seq_bucket,
    tile_key_range,
    tile_source,
    tma_explicit,
    tma_kernels,
    tuned,
    use_tma,
    visible_scores,
)
from attnkit.kernels.philox import dropout_keep

# (BLOCK_M queries, BLOCK_N keys, num_warps, num_stages) by padded head-dim width.
# dK/dV programs hold [BLOCK_N, D] and [BLOCK_N, DV] float32 accumulators; dQ programs
# [BLOCK_M, D]: each kernel gets its own candidates.
# (64x64 with 8 warps, the dK/dV tile with the fewest registers at d 128 (189 on descriptors),
# ran 2x slower than these in every shape on an H200: NOTES-flash.md step 4.)
DKDV_TILES = {
    64: ((64, 128, 8, 2), (128, 128, 8, 2), (64, 128, 8, 3), (32, 128, 4, 2), (64, 64, 4, 2)),
    128: ((64, 128, 8, 3), (64, 128, 8, 2), (32, 128, 4, 2), (64, 64, 4, 2), (32, 128, 8, 3)),
    256: ((32, 64, 4, 2), (64, 64, 8, 2), (64, 64, 4, 1), (32, 128, 8, 1)),
}
DQ_TILES = {
    64: ((64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 2), (128, 128, 8, 2), (128, 64, 8, 3)),
    128: ((64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 2), (64, 128, 8, 2), (128, 64, 8, 3)),
    256: ((64, 32, 4, 2), (64, 64, 8, 2), (32, 64, 4, 1)),
}


@triton.jit
def _bwd_preprocess(out_ptr, do_ptr, lse_ptr, delta_ptr, lse2_ptr, cu_q_ptr,
                    stride_ob, stride_os, stride_oh, stride_db, stride_ds, stride_dh,
                    stride_lb, stride_lh, seq_q,
                    HQ: tl.constexpr, DV: tl.constexpr, BLOCK_DV: tl.constexpr,
                    VARLEN: tl.constexpr, BLOCK_M: tl.constexpr):
    """``delta[b, h, i] = sum_d out[b, i, h, d] * dout[b, i, h, d]`` in float32, and the LSE
    as the other two kernels use it: base 2, ``+inf`` for fully masked rows (``-inf``), so
    that their probabilities ``exp2(s - lse2)`` are exactly zero."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    if VARLEN:
        q_start = tl.load(cu_q_ptr + b)
        seqlen_q = tl.load(cu_q_ptr + b + 1) - q_start
    else:
        q_start = pid_m * 0
        seqlen_q = seq_q
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, BLOCK_DV)
    valid = (rows[:, None] < seqlen_q) & (offs_dv[None, :] < DV)
    o = tl.load(out_ptr + b.to(tl.int64) * stride_ob + (q_start + rows[:, None]).to(tl.int64)
                * stride_os + h * stride_oh + offs_dv[None, :], mask=valid, other=0.0)
    do = tl.load(do_ptr + b.to(tl.int64) * stride_db + (q_start + rows[:, None]).to(tl.int64)
                 * stride_ds + h * stride_dh + offs_dv[None, :], mask=valid, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    row_at = b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + q_start + rows
    tl.store(delta_ptr + row_at, delta, mask=rows < seqlen_q)
    lse = tl.load(lse_ptr + row_at, mask=rows < seqlen_q, other=0.0)
    lse2 = tl.where(lse == float("-inf"), float("inf"), lse * 1.4426950408889634)
    tl.store(lse2_ptr + row_at, lse2, mask=rows < seqlen_q)


@triton.jit
def tile_query_range(start_n, seqlen_q, seqlen_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     IS_CAUSAL: tl.constexpr, WIN_LEFT: tl.constexpr, WIN_RIGHT: tl.constexpr):
    """Query tiles that see the key tile ``[start_n, start_n + BLOCK_N)``.

    Returns ``(lo, mid_lo, mid_hi, hi)``: queries ``[lo, hi)`` see some key of the tile (``lo``
    a multiple of BLOCK_M); tiles inside ``[mid_lo, mid_hi)`` see every key of the tile (no
    element-wise masks; empty when the key tile runs past ``seqlen_k``).
    """
    offset = seqlen_k - seqlen_q
    last = tl.minimum(start_n + BLOCK_N, seqlen_k) - 1  # last valid key of the tile
    lo = 0
    hi = seqlen_q
    full_lo = 0
    full_hi = seqlen_q
    if IS_CAUSAL:  # j <= i + offset  <=>  i >= j - offset
        lo = tl.maximum(lo, start_n - offset)
        full_lo = tl.maximum(full_lo, last - offset)
    if WIN_RIGHT >= 0:  # j <= i + offset + r
        lo = tl.maximum(lo, start_n - offset - WIN_RIGHT)
        full_lo = tl.maximum(full_lo, last - offset - WIN_RIGHT)
    if WIN_LEFT >= 0:  # j >= i + offset - l  <=>  i <= j - offset + l
        hi = tl.minimum(hi, last - offset + WIN_LEFT + 1)
        full_hi = tl.minimum(full_hi, start_n - offset + WIN_LEFT + 1)
    if start_n + BLOCK_N > seqlen_k:
        full_hi = full_lo
    lo = tl.minimum(tl.maximum(lo, 0), seqlen_q)
    lo = (lo // BLOCK_M) * BLOCK_M
    hi = tl.maximum(hi, lo)
    mid_lo = tl.minimum(tl.maximum(((full_lo + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, lo), hi)
    mid_hi = tl.maximum(tl.minimum((full_hi // BLOCK_M) * BLOCK_M, hi), mid_lo)
    return lo, mid_lo, mid_hi, hi


@triton.jit
def _dkdv_tiles(dk, dv, k_tile, v_tile, q_base, do_base, dq_base, lse_base, delta_base,
                stride_qs, stride_dos, stride_dqs, lo, hi, cols, seqlen_q, seqlen_k, offset,
                b, h, bh, qk_scale, softcap_scale, dq_scale, k0, k1, dropout_p,
                kpm_ptr, stride_kpm_b, mask_ptr, stride_mb, stride_mh, stride_mm, stride_mn,
                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
                D: tl.constexpr, DV: tl.constexpr, IS_CAUSAL: tl.constexpr,
                WIN_LEFT: tl.constexpr, WIN_RIGHT: tl.constexpr, EDGE: tl.constexpr,
                HAS_KPM: tl.constexpr, MASK_KIND: tl.constexpr, SOFTCAP: tl.constexpr,
                DROPOUT: tl.constexpr, ATOMIC_DQ: tl.constexpr, DOT_PREC: tl.constexpr,
                TMA: tl.constexpr):
    """Accumulate dK ``[N, D]`` and dV ``[N, DV]`` of one key tile over query tiles ``[lo, hi)``.

    ``q_base``/``do_base`` are ``tile_source``s (TMA descriptors or pointers).
    """
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    for start_m in range(lo, hi, BLOCK_M):
        start_m = tl.multiple_of(start_m, BLOCK_M)
        rows = start_m + offs_m
        row_ok = rows < seqlen_q
        q = load_tile(q_base, start_m, rows, stride_qs, seqlen_q, D, BLOCK_D, EDGE, TMA)  # [M, D]
        do = load_tile(do_base, start_m, rows, stride_dos, seqlen_q, DV, BLOCK_DV, EDGE,
                       TMA)  # [M, DV]
        if EDGE:  # base-2 LSE, +inf on fully masked rows: ``_bwd_preprocess``
            lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        else:  # a middle tile: every row is one of the segment's queries
            lse = tl.load(lse_base + rows)
            delta = tl.load(delta_base + rows)
        s_t, t_t = scores(k_tile, tl.trans(q), qk_scale, softcap_scale, SOFTCAP, DOT_PREC)  # [N, M]
        s_t = visible_scores(s_t, rows[None, :], cols[:, None], seqlen_q, seqlen_k, offset, b, h,
                             kpm_ptr, stride_kpm_b, mask_ptr, stride_mb, stride_mh, stride_mm,
                             stride_mn, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, EDGE, HAS_KPM, MASK_KIND)
        p_t = tl.exp2(s_t - lse[None, :])  # [N, M]
        dp_t = tl.dot(v_tile, tl.trans(do), input_precision=DOT_PREC)  # [N, M]
        if DROPOUT:
            keep = dropout_keep(k0, k1, rows[None, :], cols[:, None], bh, dropout_p)
            inv_keep = 1.0 / (1.0 - dropout_p)
            p_drop = tl.where(keep, p_t * inv_keep, 0.0)
            dp_t = tl.where(keep, dp_t * inv_keep, 0.0)
        else:
            p_drop = p_t
        dv = tl.dot(p_drop.to(do.dtype), do, dv, input_precision=DOT_PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        if SOFTCAP:
            ds_t = ds_t * (1.0 - t_t * t_t)
        ds_lp = ds_t.to(q.dtype)
        dk = tl.dot(ds_lp, q, dk, input_precision=DOT_PREC)
        if ATOMIC_DQ:
            dq = tl.dot(tl.trans(ds_lp), k_tile, input_precision=DOT_PREC) * dq_scale  # [M, D]
            tl.atomic_add(dq_base + rows[:, None] * stride_dqs + offs_d[None, :], dq,
                          mask=row_ok[:, None] & (offs_d[None, :] < D), sem="relaxed")
    return dk, dv


@triton.autotune(configs=all_configs(DKDV_TILES),
                 key=["D", "DV", "IS_CAUSAL", "WIN_LEFT", "WIN_RIGHT", "MASK_KIND", "SEQ_BUCKET",
                      "VARLEN", "HAS_KPM", "SOFTCAP", "DROPOUT", "GROUP", "ATOMIC_DQ", "TMA"],
                 prune_configs_by={"early_config_prune": pruner(DKDV_TILES)},
                 do_bench=autotune_bench,
                 reset_to_zero=["dq_ptr"])
@triton.jit
def _bwd_dkdv_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr,
    cu_q_ptr, cu_k_ptr, seed_ptr, kpm_ptr, mask_ptr,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
    stride_dqb, stride_dqs, stride_dqh, stride_dkb, stride_dks, stride_dkh,
    stride_dvb, stride_dvs, stride_dvh, stride_lb, stride_lh,
    stride_kpm_b, stride_mb, stride_mh, stride_mm, stride_mn,
    seq_q, seq_k, qk_scale, softcap_scale, scale, dropout_p,
    HQ: tl.constexpr, HK: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr,
    DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, VARLEN: tl.constexpr,
    IS_CAUSAL: tl.constexpr, WIN_LEFT: tl.constexpr, WIN_RIGHT: tl.constexpr,
    HAS_KPM: tl.constexpr, MASK_KIND: tl.constexpr,
    SOFTCAP: tl.constexpr, DROPOUT: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    DOT_PREC: tl.constexpr, TMA: tl.constexpr, SEQ_BUCKET,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // HK
    hk = pid_bh % HK
    if VARLEN:
        q_start = tl.load(cu_q_ptr + b)
        seqlen_q = tl.load(cu_q_ptr + b + 1) - q_start
        k_start = tl.load(cu_k_ptr + b)
        seqlen_k = tl.load(cu_k_ptr + b + 1) - k_start
    else:
        q_start = pid_n * 0
        seqlen_q = seq_q
        k_start = pid_n * 0
        seqlen_k = seq_k
    start_n = pid_n * BLOCK_N
    if start_n >= seqlen_k:
        return
    offset = seqlen_k - seqlen_q
    cols = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    col_ok = cols < seqlen_k
    k_base = k_ptr + b.to(tl.int64) * stride_kb + k_start.to(tl.int64) * stride_ks \
        + hk * stride_kh
    v_base = v_ptr + b.to(tl.int64) * stride_vb + k_start.to(tl.int64) * stride_vs \
        + hk * stride_vh
    k_src = tile_source(k_base, seqlen_k, stride_ks, D, BLOCK_N, BLOCK_D, TMA)
    v_src = tile_source(v_base, seqlen_k, stride_vs, DV, BLOCK_N, BLOCK_DV, TMA)
    k_tile = load_tile(k_src, start_n, cols, stride_ks, seqlen_k, D, BLOCK_D, True, TMA)  # [N, D]
    v_tile = load_tile(v_src, start_n, cols, stride_vs, seqlen_k, DV, BLOCK_DV, True,
                       TMA)  # [N, DV]
    k0 = 0
    k1 = 0
    if DROPOUT:
        k0 = tl.load(seed_ptr).to(tl.uint32)
        k1 = tl.load(seed_ptr + 1).to(tl.uint32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], tl.float32)
    lo, mid_lo, mid_hi, hi = tile_query_range(start_n, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N,
                                              IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    for g in range(GROUP):
        h = hk * GROUP + g
        bh = b * HQ + h
        q_base = tile_source(
            q_ptr + b.to(tl.int64) * stride_qb + q_start.to(tl.int64) * stride_qs
            + h * stride_qh, seqlen_q, stride_qs, D, BLOCK_M, BLOCK_D, TMA)
        do_base = tile_source(
            do_ptr + b.to(tl.int64) * stride_dob + q_start.to(tl.int64) * stride_dos
            + h * stride_doh, seqlen_q, stride_dos, DV, BLOCK_M, BLOCK_DV, TMA)
        dq_base = dq_ptr + b.to(tl.int64) * stride_dqb + q_start.to(tl.int64) * stride_dqs \
            + h * stride_dqh
        lse_base = lse_ptr + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + q_start
        delta_base = delta_ptr + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh \
            + q_start
        dk, dv = _dkdv_tiles(
            dk, dv, k_tile, v_tile, q_base, do_base, dq_base, lse_base, delta_base, stride_qs,
            stride_dos, stride_dqs, lo, mid_lo, cols, seqlen_q, seqlen_k, offset, b, h, bh,
            qk_scale, softcap_scale, scale, k0, k1, dropout_p, kpm_ptr, stride_kpm_b, mask_ptr,
            stride_mb, stride_mh, stride_mm, stride_mn, BLOCK_M, BLOCK_D, BLOCK_DV, D, DV,
            IS_CAUSAL, WIN_LEFT, WIN_RIGHT, True, HAS_KPM, MASK_KIND, SOFTCAP, DROPOUT,
            ATOMIC_DQ, DOT_PREC, TMA)
        dk, dv = _dkdv_tiles(
            dk, dv, k_tile, v_tile, q_base, do_base, dq_base, lse_base, delta_base, stride_qs,
            stride_dos, stride_dqs, mid_lo, mid_hi, cols, seqlen_q, seqlen_k, offset, b, h, bh,
            qk_scale, softcap_scale, scale, k0, k1, dropout_p, kpm_ptr, stride_kpm_b, mask_ptr,
            stride_mb, stride_mh, stride_mm, stride_mn, BLOCK_M, BLOCK_D, BLOCK_DV, D, DV,
            IS_CAUSAL, WIN_LEFT, WIN_RIGHT, False, HAS_KPM, MASK_KIND, SOFTCAP, DROPOUT,
            ATOMIC_DQ, DOT_PREC, TMA)
        dk, dv = _dkdv_tiles(
            dk, dv, k_tile, v_tile, q_base, do_base, dq_base, lse_base, delta_base, stride_qs,
            stride_dos, stride_dqs, mid_hi, hi, cols, seqlen_q, seqlen_k, offset, b, h, bh,
            qk_scale, softcap_scale, scale, k0, k1, dropout_p, kpm_ptr, stride_kpm_b, mask_ptr,
            stride_mb, stride_mh, stride_mm, stride_mn, BLOCK_M, BLOCK_D, BLOCK_DV, D, DV,
            IS_CAUSAL, WIN_LEFT, WIN_RIGHT, True, HAS_KPM, MASK_KIND, SOFTCAP, DROPOUT,
            ATOMIC_DQ, DOT_PREC, TMA)
    dk = dk * scale
    dk_rows = b.to(tl.int64) * stride_dkb + (k_start + cols[:, None]).to(tl.int64) * stride_dks
    tl.store(dk_ptr + dk_rows + hk * stride_dkh + offs_d[None, :], dk.to(dk_ptr.dtype.element_ty),
             mask=col_ok[:, None] & (offs_d[None, :] < D))
    dv_rows = b.to(tl.int64) * stride_dvb + (k_start + cols[:, None]).to(tl.int64) * stride_dvs
    tl.store(dv_ptr + dv_rows + hk * stride_dvh + offs_dv[None, :],
             dv.to(dv_ptr.dtype.element_ty), mask=col_ok[:, None] & (offs_dv[None, :] < DV))


@triton.jit
def _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_kn, stride_vn, lo, hi, rows,
              seqlen_q, seqlen_k, offset, b, h, bh, qk_scale, softcap_scale, k0, k1, dropout_p,
              kpm_ptr, stride_kpm_b, mask_ptr, stride_mb, stride_mh, stride_mm, stride_mn,
              BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
              D: tl.constexpr, DV: tl.constexpr, IS_CAUSAL: tl.constexpr,
              WIN_LEFT: tl.constexpr, WIN_RIGHT: tl.constexpr, EDGE: tl.constexpr,
              HAS_KPM: tl.constexpr, MASK_KIND: tl.constexpr, SOFTCAP: tl.constexpr,
              DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr, TMA: tl.constexpr):
    """Accumulate dQ ``[M, D]`` (unscaled) of one query tile over key tiles ``[lo, hi)``;
    ``k_base``/``v_base`` are ``tile_source``s."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k_tile = load_tile(k_base, start_n, cols, stride_kn, seqlen_k, D, BLOCK_D, EDGE,
                           TMA)  # [N, D]
        v_tile = load_tile(v_base, start_n, cols, stride_vn, seqlen_k, DV, BLOCK_DV, EDGE,
                           TMA)  # [N, DV]
        s, t = scores(q, tl.trans(k_tile), qk_scale, softcap_scale, SOFTCAP, DOT_PREC)  # [M, N]
        s = visible_scores(s, rows[:, None], cols[None, :], seqlen_q, seqlen_k, offset, b, h,
                           kpm_ptr, stride_kpm_b, mask_ptr, stride_mb, stride_mh, stride_mm,
                           stride_mn, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, EDGE, HAS_KPM, MASK_KIND)
        p = tl.exp2(s - lse[:, None])
        dp = tl.dot(do, tl.trans(v_tile), input_precision=DOT_PREC)  # [M, N]
        if DROPOUT:
            keep = dropout_keep(k0, k1, rows[:, None], cols[None, :], bh, dropout_p)
            dp = tl.where(keep, dp * (1.0 / (1.0 - dropout_p)), 0.0)
        ds = p * (dp - delta[:, None])
        if SOFTCAP:
            ds = ds * (1.0 - t * t)
        dq = tl.dot(ds.to(k_tile.dtype), k_tile, dq, input_precision=DOT_PREC)
    return dq


@triton.autotune(configs=all_configs(DQ_TILES),
                 key=["D", "DV", "IS_CAUSAL", "WIN_LEFT", "WIN_RIGHT", "MASK_KIND", "SEQ_BUCKET",
                      "VARLEN", "HAS_KPM", "SOFTCAP", "DROPOUT", "TMA"],
                 prune_configs_by={"early_config_prune": pruner(DQ_TILES)},
                 do_bench=autotune_bench)
@triton.jit
def _bwd_dq_kernel(
    q_ptr, k_ptr, v_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr,
    cu_q_ptr, cu_k_ptr, seed_ptr, kpm_ptr, mask_ptr,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh, stride_dob, stride_dos, stride_doh,
    stride_dqb, stride_dqs, stride_dqh, stride_lb, stride_lh,
    stride_kpm_b, stride_mb, stride_mh, stride_mm, stride_mn,
    seq_q, seq_k, qk_scale, softcap_scale, scale, dropout_p,
    HQ: tl.constexpr, GROUP: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, VARLEN: tl.constexpr,
    IS_CAUSAL: tl.constexpr, WIN_LEFT: tl.constexpr, WIN_RIGHT: tl.constexpr,
    HAS_KPM: tl.constexpr, MASK_KIND: tl.constexpr,
    SOFTCAP: tl.constexpr, DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr,
    TMA: tl.constexpr, SEQ_BUCKET,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    if IS_CAUSAL:  # the last query tiles see the most keys: start them first
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = pid_bh // HQ
    h = pid_bh % HQ
    hk = h // GROUP
    if VARLEN:
        q_start = tl.load(cu_q_ptr + b)
        seqlen_q = tl.load(cu_q_ptr + b + 1) - q_start
        k_start = tl.load(cu_k_ptr + b)
        seqlen_k = tl.load(cu_k_ptr + b + 1) - k_start
    else:
        q_start = pid_m * 0
        seqlen_q = seq_q
        k_start = pid_m * 0
        seqlen_k = seq_k
    start_m = pid_m * BLOCK_M
    if start_m >= seqlen_q:
        return
    offset = seqlen_k - seqlen_q
    rows = start_m + tl.arange(0, BLOCK_M)
    row_ok = rows < seqlen_q
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_rows = b.to(tl.int64) * stride_qb + (q_start + rows[:, None]).to(tl.int64) * stride_qs
    q = tl.load(q_ptr + q_rows + h * stride_qh + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)  # [M, D]
    do_rows = b.to(tl.int64) * stride_dob + (q_start + rows[:, None]).to(tl.int64) * stride_dos
    do = tl.load(do_ptr + do_rows + h * stride_doh + offs_dv[None, :],
                 mask=row_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)  # [M, DV]
    l_base = b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh + q_start + rows
    lse = tl.load(lse_ptr + l_base, mask=row_ok, other=float("inf"))  # base 2: preprocess
    delta = tl.load(delta_ptr + l_base, mask=row_ok, other=0.0)
    k0 = 0
    k1 = 0
    if DROPOUT:
        k0 = tl.load(seed_ptr).to(tl.uint32)
        k1 = tl.load(seed_ptr + 1).to(tl.uint32)
    bh = b * HQ + h
    k_base = tile_source(
        k_ptr + b.to(tl.int64) * stride_kb + k_start.to(tl.int64) * stride_ks + hk * stride_kh,
        seqlen_k, stride_ks, D, BLOCK_N, BLOCK_D, TMA)
    v_base = tile_source(
        v_ptr + b.to(tl.int64) * stride_vb + k_start.to(tl.int64) * stride_vs + hk * stride_vh,
        seqlen_k, stride_vs, DV, BLOCK_N, BLOCK_DV, TMA)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    lo, mid_lo, mid_hi, hi = tile_key_range(start_m, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N,
                                            IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, lo, mid_lo, rows,
                   seqlen_q, seqlen_k, offset, b, h, bh, qk_scale, softcap_scale, k0, k1,
                   dropout_p, kpm_ptr, stride_kpm_b, mask_ptr, stride_mb, stride_mh, stride_mm,
                   stride_mn, BLOCK_N, BLOCK_D, BLOCK_DV, D, DV, IS_CAUSAL, WIN_LEFT, WIN_RIGHT,
                   True, HAS_KPM, MASK_KIND, SOFTCAP, DROPOUT, DOT_PREC, TMA)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, mid_lo, mid_hi,
                   rows, seqlen_q, seqlen_k, offset, b, h, bh, qk_scale, softcap_scale, k0, k1,
                   dropout_p, kpm_ptr, stride_kpm_b, mask_ptr, stride_mb, stride_mh, stride_mm,
                   stride_mn, BLOCK_N, BLOCK_D, BLOCK_DV, D, DV, IS_CAUSAL, WIN_LEFT, WIN_RIGHT,
                   False, HAS_KPM, MASK_KIND, SOFTCAP, DROPOUT, DOT_PREC, TMA)
    dq = _dq_tiles(dq, q, do, lse, delta, k_base, v_base, stride_ks, stride_vs, mid_hi, hi, rows,
                   seqlen_q, seqlen_k, offset, b, h, bh, qk_scale, softcap_scale, k0, k1,
                   dropout_p, kpm_ptr, stride_kpm_b, mask_ptr, stride_mb, stride_mh, stride_mm,
                   stride_mn, BLOCK_N, BLOCK_D, BLOCK_DV, D, DV, IS_CAUSAL, WIN_LEFT, WIN_RIGHT,
                   True, HAS_KPM, MASK_KIND, SOFTCAP, DROPOUT, DOT_PREC, TMA)
    dq = dq * scale
    dq_rows = b.to(tl.int64) * stride_dqb + (q_start + rows[:, None]).to(tl.int64) * stride_dqs
    tl.store(dq_ptr + dq_rows + h * stride_dqh + offs_d[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))


def _atomic_dq_pays(group: int, seq_q: int, head_dim: int, *, tma: bool = False,
                    window: bool = False) -> bool:
    """Whether the atomic dQ path is the faster one (when the caller allows atomics).

    ``tma``: whether the dK/dV kernel may read its tiles through TMA descriptors (sm90+,
    4k+ tokens: ``_dkdv_tma``). With atomic dQ they lose 10-30%, so the choice is between
    atomics on pointers and two launches on descriptors, and on an H200 two launches on
    descriptors won at every dense shape (benchmarks/NOTES-flash.md, step 6: MHA d 128, whole
    backward, 16k full 14.67 against 15.21 ms, 16k causal 7.45 against 7.72, 4k full 3.84
    against 4.00, 4k causal 2.20 against 2.28; d 64 16k full 15.67 against 17.66).
    Without descriptors (older GPUs, float32, dense masks, ``ATTNKIT_FLASH_TMA``) atomics win
    for MHA at 4k+ queries with head dims up to 128 (steps 3-4: 16k causal, d 128, 366
    against 325 TFLOP/s for two launches on pointers); with GQA (the dK/dV program then loops
    over the group, so fewer programs run) and on short or wide-head shapes the separate dQ
    kernel is as fast or faster (GQA 32:8 4k: 379 against 331; d 192/128: 213 against 138).
    ``window``: a left window bounds the keys each query sees (``window[0] >= 0``); there the
    two launches measured 4% faster on pointers (258 against 247 TFLOP/s, window 1024 at 16k,
    d 128) and 8% with descriptors (255 against 235), so atomics are not used.
    ``ATTNKIT_FLASH_DQ=atomic|kernel`` overrides the choice (tests use it).
    """
    forced = os.environ.get("ATTNKIT_FLASH_DQ", "auto")
    if forced in ("atomic", "kernel"):
        return forced == "atomic"
    if window or tma:
        return False
    return group == 1 and seq_q >= 4096 and head_dim <= 128


def _dkdv_tma(q, k, v, do, *, mask_kind: int, seq: int) -> bool:
    """Whether the dK/dV kernel may read through TMA descriptors: ``use_tma`` and, unless
    ``ATTNKIT_FLASH_TMA`` names the kernels explicitly, at least 4096 tokens (H200: at 1k the
    device-side set-up of the descriptors in thousands of short programs costs 5-38%; at 4k+
    they gain up to 12%, NOTES-flash.md step 4)."""
    return (seq >= 4096 or tma_explicit()) and use_tma("dkdv", q, k, v, do,
                                                       mask_kind=mask_kind)


# The ``(q and k, v)`` head dims the Gluon backward kernels take (``flash_common.gluon_fits``).
GLUON_HEAD_DIMS = ((128, 128), (192, 128), (64, 64))
# Whether ``auto`` sends sliding windows, MLA's head dims (q and k 192, v 128) and head dim
# 64 to the Gluon dK/dV kernel, each where it measured faster than ``_bwd_dkdv_kernel`` (H200,
# steps 12 and 13 of benchmarks/NOTES-flash.md, ``results/gluon-dkdv-h200-2026-12-01-
# step1[23]*.json``, kernel us): window 1024 at 16k 734 against 763 with the split walk
# (``flash_bwd_gluon.split_for``; 846 without it); MLA 4k full 2912 against 4731, causal 1598
# against 2496 (``flash_bwd_gluon.block_m_for``, ``stages_for``); d 64 from
# ``GLUON_D64_MIN_SEQ``, causal from ``GLUON_D64_MIN_CAUSAL_SEQ`` (split walk: 16k full 8946
# against 9735, 4k causal 1506 against 1624; 1k full slower without the split, 895 against
# 805). ``ATTNKIT_FLASH_GLUON=1`` sends them at any length.
GLUON_WINDOWS = True
GLUON_DKDV_MLA = True
GLUON_D64, GLUON_D64_MIN_SEQ, GLUON_D64_MIN_CAUSAL_SEQ = True, 16384, 4096


def _gluon_dkdv(q, k, v, do, *, plain: bool, seq: int, causal: bool = False,
                window: tuple[int, int] = (-1, -1)) -> bool:
    """Whether the dK/dV products run in ``flash_bwd_gluon`` (the warp-specialised Gluon
    kernel) instead of ``_bwd_dkdv_kernel``.

    ``plain``: dense (not packed) inputs with no key padding, mask, softcap or dropout; a
    ``window``, MLA's head dims (192 for q and k, 128 for v) and head dim 64 under
    ``GLUON_WINDOWS``, ``GLUON_DKDV_MLA`` and ``GLUON_D64`` (64: from ``GLUON_D64_MIN_SEQ``,
    ``causal`` from ``GLUON_D64_MIN_CAUSAL_SEQ``), or with ``ATTNKIT_FLASH_GLUON=1``.
    Besides: ``flash_common.gluon_fits`` (head dim 128, 192/128 or 64, 16-bit, aligned, sm90,
    a measured Triton, dO included); the dK/dV kernel allowed descriptors (``flash_common.tma_kernels``
    has ``dkdv``); and where it measured faster (``flash_bwd_gluon``): MHA with ``seq`` (the
    longer of the query and key lengths) at least 1024. ``ATTNKIT_FLASH_GLUON=1`` drops that
    rule, GQA/MQA included where q's and dO's heads are adjacent (``stride(2)`` equal to the
    head dim: the kernel reads a group's queries as one matrix); at GQA 32:8 4k it measured
    even with the Triton kernel (H200, step 10 of benchmarks/NOTES-flash.md: the kernel 4% slower full, 3% faster causal; the whole
    backward 2-3% faster), so ``auto`` leaves GQA on the Triton kernel. ``0`` turns it off
    (``flash_common.gluon_setting``).

    Raises:
        ValueError: for a bad ``ATTNKIT_FLASH_GLUON``.
    """
    mode = gluon_setting()
    if mode == "0" or not plain:
        return False
    if mode == "auto" and (window[0] >= 0 or window[1] >= 0) and not GLUON_WINDOWS:
        return False
    d = q.shape[-1]
    d64_from = GLUON_D64_MIN_CAUSAL_SEQ if causal else GLUON_D64_MIN_SEQ
    if mode == "auto" and ((d == 192 and not GLUON_DKDV_MLA)
                           or (d == 64 and not (GLUON_D64 and seq >= d64_from))):
        return False
    if q.shape[2] != k.shape[2]:
        if mode == "auto" or q.stride(2) != d or do.stride(2) != do.shape[-1]:
            return False
    elif mode == "auto" and seq < 1024:
        return False
    return "dkdv" in tma_kernels() and gluon_fits(q, k, v, do, head_dims=GLUON_HEAD_DIMS)


# Whether the Gluon dQ kernel (``flash_dq_gluon``) may serve, from which length, and whether
# ``auto`` sends it MLA's head dims (q and k 192, v 128); measured: ``_gluon_dq``.
GLUON_DQ = True
GLUON_DQ_MIN_SEQ = 4096
GLUON_DQ_MLA = True
# Head dim 64 in the Gluon dQ kernel: measured slower than ``_bwd_dq_kernel`` (H200, step 12,
# ``results/gluon-dq-h200-2026-12-01-step12.json``, kernel us: 1k full 586 against 356, 4k
# causal 1041 against 743, 16k full 6491 against 5271), so ``auto`` leaves it to Triton.
GLUON_DQ_D64 = False
# Sliding windows in the Gluon dQ kernel: slower before the split walk (step 11: 478 against
# 439 us at window 1024, 16k); with it (``flash_dq_gluon.SPLIT_MASKS``) not yet timed.
GLUON_DQ_WINDOWS = False


def _gluon_dq(q, k, v, do, *, plain: bool, seq: int, causal: bool,
              window: tuple[int, int] = (-1, -1)) -> bool:
    """Whether the two-launch backward's dQ runs in ``flash_dq_gluon`` instead of
    ``_bwd_dq_kernel``: ``GLUON_DQ`` set, ``plain`` (dense, no key padding, mask, softcap or
    dropout), ``flash_common.gluon_fits`` (head dim 128, MLA's 192 with v's 128 under
    ``GLUON_DQ_MLA``, 64 under ``GLUON_DQ_D64``; 16-bit, aligned, sm90, a measured Triton,
    dO included), and ``ATTNKIT_FLASH_GLUON`` not ``0``.

    Under ``auto``, where it measured faster (H200, step 11 of benchmarks/NOTES-flash.md,
    ``results/gluon-dq-h200-2026-12-01-step11.json`` and ``-step11-mla.json``, the dQ kernel
    and the whole backward against ``_bwd_dq_kernel``, with ``flash_dq_gluon``'s tiles): no
    window, and ``seq`` (the longer of the query and key lengths) at least
    ``GLUON_DQ_MIN_SEQ`` (4k), causal or not. Kernel us (whole backward ms): 4k full 1306
    against 1381 (3.17 against 3.47), 4k causal 795 against 842 (1.89 against 1.95), 16k
    full 4807 against 5366, 16k causal 2474 against 2654, GQA 32:8 4k full 2912 against
    3153, MLA 4k full 1796 against 2601 (6.33 against 7.16), MLA 4k causal 1032 against 1455
    (3.34 against 3.76); slower at 1k causal (305 against 279) and with a window of 1024 at
    16k (478 against 439, before the split walk: ``GLUON_DQ_WINDOWS``).
    ``ATTNKIT_FLASH_GLUON=1`` drops these rules.

    Raises:
        ValueError: for a bad ``ATTNKIT_FLASH_GLUON``.
    """
    mode = gluon_setting()
    if not GLUON_DQ or mode == "0" or not plain:
        return False
    if not gluon_fits(q, k, v, do, head_dims=GLUON_HEAD_DIMS):
        return False
    if mode == "1":
        return True
    windowed = window[0] >= 0 or window[1] >= 0
    d = q.shape[-1]
    return ((GLUON_DQ_WINDOWS or not windowed) and (GLUON_DQ_MLA or d != 192)
            and (GLUON_DQ_D64 or d != 64)
            and seq >= GLUON_DQ_MIN_SEQ)


def _overlap(q: torch.Tensor, *, seq: int, window: bool) -> bool:
    """Whether the two-launch backward runs its dQ kernel beside the dK/dV kernel, on a side
    stream (CUDA only, once both kernels are tuned for the call's key, so that the autotuner
    never times a candidate beside the other kernel).

    The dK/dV kernel's 255 registers per thread leave room for one of its programs per SM, and
    its grid rarely fills the last wave (2048 programs on 132 SMs: 15.5 waves); the dQ
    kernel's first programs fill those SMs instead of waiting for the whole kernel. Measured
    on an H200 (benchmarks/NOTES-flash.md, step 6, whole backward): 1-3% faster up to 4k
    tokens (d 128 1k full 1.116 against 1.154 ms, 4k causal 2.125 against 2.178; GQA 32:8 4k
    6.81 against 6.96) and with a left window (16k, window 1024 with 64x128 / 128x64 tiles:
    1.430 against 1.467; with 64x64 tiles in both kernels the same, 1.272), but 0-2% slower
    at 16k tokens otherwise (d 64 16k full 15.90 against 15.58), so: ``seq`` (the longer of
    the query and key lengths) up to 4096, or ``window``.
    ``ATTNKIT_FLASH_OVERLAP=0|1`` overrides the choice.
    """
    if not q.is_cuda or interpreting():
        return False
    forced = os.environ.get("ATTNKIT_FLASH_OVERLAP", "auto")
    if forced in ("0", "1"):
        return forced == "1"
    return seq <= 4096 or window


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for ``_overlap`` (created on first use)."""
    return torch.cuda.Stream(device)


_EVENTS = threading.local()  # per thread: device index -> (fork event, join event)


def _fork_join_events(index: int) -> tuple[torch.cuda.Event, torch.cuda.Event]:
    """Two reusable events per device and thread for ``_overlap``'s fork and join.

    ``Stream.wait_stream`` creates an event per call; these are recorded again on every call
    instead (a wait takes the event's latest record at the time of the wait, so reuse is
    safe; per thread, so that two threads never record over each other's fork). Together
    with ``torch.cuda.set_stream`` in place of the ``torch.cuda.stream`` context manager and
    the current stream looked up by index, this saves some 50 us of host time per backward
    on the H200 machine's CPU (``results/probe-host-h200-2026-12-01.txt``).
    """
    table = getattr(_EVENTS, "table", None)
    if table is None:
        table = _EVENTS.table = {}
    events = table.get(index)
    if events is None:
        events = table[index] = (torch.cuda.Event(), torch.cuda.Event())
    return events


def _strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    """(batch, seq, head) strides of a dense ``[b, s, h, d]`` or packed ``[t, h, d]`` tensor."""
    return (0, *t.stride()[:2]) if varlen else tuple(t.stride()[:3])


@on_input_device
def flash_bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              out: torch.Tensor, lse: torch.Tensor, *, grad_lse: torch.Tensor | None = None,
              causal: bool, window: tuple[int, int],
              scale: float, softcap: float, key_padding_mask: torch.Tensor | None,
              attn_mask: torch.Tensor | None, cu_seqlens_q: torch.Tensor | None,
              cu_seqlens_k: torch.Tensor | None, max_seqlen_q: int, max_seqlen_k: int,
              dropout_p: float, dropout_seed: int, deterministic: bool
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients ``(dq, dk, dv)`` of ``flash_fwd``'s output, from the saved ``out`` and ``lse``.

    Args:
        do: gradient of ``out``, same shape (made contiguous in its last dim here).
        q, k, v, out, lse: the forward's inputs and results (shapes of ``flash_fwd``).
        grad_lse: gradient of the LSE (same shape) when the caller used it, else None; it
            enters as ``delta - grad_lse``.
        deterministic: True computes dQ in its own kernel (no atomics, bitwise reproducible,
            7 instead of 5 matmuls per tile pair); False lets the launcher add dQ with float32
            atomics from the dK/dV kernel where that is faster (``_atomic_dq_pays``;
            run-to-run rounding differences).
        Other arguments: as for ``flash_fwd``.

    Returns:
        ``(dq, dk, dv)`` in the dtypes and shapes of ``q``, ``k``, ``v``. Rows that saw no key
        get zero gradients.

    Example (continuing ``flash_fwd``'s example; ``opts`` = its keyword arguments):
        >>> dq, dk, dv = flash_bwd(torch.randn_like(out), q, k, v, out, lse,
        ...                        deterministic=True, **opts)
        >>> dq.shape, dk.shape
        (torch.Size([2, 100, 8, 64]), torch.Size([2, 100, 2, 64]))
    """
    varlen = cu_seqlens_q is not None
    hq, hk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    dv_dim = v.shape[-1]
    if do.stride(-1) != 1:
        do = do.contiguous()
    batch = cu_seqlens_q.shape[0] - 1 if varlen else q.shape[0]
    sq, sk = max_seqlen_q, max_seqlen_k
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    if q.numel() == 0 or k.numel() == 0 or batch == 0 or sq == 0 or sk == 0:
        return torch.zeros_like(q), dk.zero_(), dv.zero_()
    lstrides = (0, lse.stride(0)) if varlen else (lse.stride(0), lse.stride(1))
    delta = torch.empty_like(lse)  # [b, hq, sq] or [hq, total_q]
    qs, ks, vs = _strides(q, varlen), _strides(k, varlen), _strides(v, varlen)
    os_, dos = _strides(out, varlen), _strides(do, varlen)
    seed = seed_words(dropout_seed, dropout_p, q)
    cu_q = cu_seqlens_q if varlen else seed
    cu_k = cu_seqlens_k if varlen else seed
    pre_block = 64 if not interpreting() else 16
    lse2 = torch.empty_like(lse)  # base-2 LSE, +inf on fully masked rows
    fast_launch.run(_bwd_preprocess, (cdiv(sq, pre_block), batch * hq),
                    (out, do, lse, delta, lse2, cu_q, *os_, *dos, *lstrides, sq),
                    dict(HQ=hq, DV=dv_dim, BLOCK_DV=head_block(dv_dim), VARLEN=varlen,
                         BLOCK_M=pre_block))
    if grad_lse is not None:
        delta.sub_(grad_lse)

    mask_t, mask_kind, mstrides = mask_args(attn_mask, q, k)
    kpm = key_padding_mask.view(torch.uint8) if key_padding_mask is not None else q
    kpm_stride = key_padding_mask.stride(0) if key_padding_mask is not None else 0
    if softcap > 0:
        qk_scale, softcap_scale = 2.0 * scale / softcap * LOG2E, softcap * LOG2E
    else:
        qk_scale, softcap_scale = scale * LOG2E, 1.0
    left, right = window
    if causal:
        right = 0
    common = dict(D=d, DV=dv_dim, BLOCK_D=head_block(d), BLOCK_DV=head_block(dv_dim),
                  VARLEN=varlen, IS_CAUSAL=causal, WIN_LEFT=left, WIN_RIGHT=right,
                  HAS_KPM=key_padding_mask is not None,
                  MASK_KIND=mask_kind, SOFTCAP=softcap > 0, DROPOUT=dropout_p > 0,
                  DOT_PREC=dot_precision(q.dtype), SEQ_BUCKET=seq_bucket(max(sq, sk)),
)
    # TMA descriptors for the dK/dV kernel's tiles in the two-launch path only (with atomic
    # dQ they are slower): they decide the dQ path.
    tma = _dkdv_tma(q, k, v, do, mask_kind=mask_kind, seq=max(sq, sk))
    atomic = not deterministic and _atomic_dq_pays(hq // hk, sq, d, tma=tma,
                                                   window=left >= 0)
    dq_acc = torch.zeros(q.shape, device=q.device, dtype=torch.float32) if atomic \
        else torch.empty_like(q)
    dqs = _strides(dq_acc, varlen)

    def kv_grid(meta):
        return (cdiv(sk, meta["BLOCK_N"]), batch * hk)

    def q_grid(meta):
        return (cdiv(sq, meta["BLOCK_M"]), batch * hq)

    dkdv_args = (q, k, v, do, lse2, delta, dq_acc, dk, dv, cu_q, cu_k, seed, kpm, mask_t,
                 *qs, *ks, *vs, *dos, *dqs, *_strides(dk, varlen), *_strides(dv, varlen),
                 *lstrides, kpm_stride, *mstrides, sq, sk, qk_scale, softcap_scale, scale,
                 float(dropout_p))
    dkdv_opts = dict(HQ=hq, HK=hk, GROUP=hq // hk, ATOMIC_DQ=atomic, TMA=tma and not atomic,
                     **common)
    if atomic:
        launch(_bwd_dkdv_kernel, kv_grid, *dkdv_args, **dkdv_opts)
        return dq_acc.to(q.dtype), dk, dv
    dq_args = (q, k, v, do, lse2, delta, dq_acc, cu_q, cu_k, seed, kpm, mask_t,
               *qs, *ks, *vs, *dos, *dqs, *lstrides, kpm_stride, *mstrides,
               sq, sk, qk_scale, softcap_scale, scale, float(dropout_p))
    dq_opts = dict(HQ=hq, GROUP=hq // hk, TMA=use_tma("dq", k, v, mask_kind=mask_kind),
                   **common)
    plain = (not varlen and key_padding_mask is None and mask_kind == 0 and softcap == 0
             and dropout_p == 0)
    gluon = _gluon_dkdv(q, k, v, do, plain=plain, seq=max(sq, sk), causal=causal,
                        window=window)
    gluon_dq = _gluon_dq(q, k, v, do, plain=plain, seq=max(sq, sk), causal=causal,
                         window=window)

    def run_dq():
        if gluon_dq:
            from attnkit.kernels import flash_dq_gluon
            flash_dq_gluon.gluon_dq(q, k, v, do, lse2, delta, dq_acc, causal=causal,
                                    scale=scale, window=window)
        else:
            launch(_bwd_dq_kernel, q_grid, *dq_args, **dq_opts)

    def run_dkdv():
        if gluon:
            from attnkit.kernels import flash_bwd_gluon
            flash_bwd_gluon.gluon_dkdv(q, k, v, do, lse2, delta, dk, dv, causal=causal,
                                       scale=scale, window=window)
        else:
            launch(_bwd_dkdv_kernel, kv_grid, *dkdv_args, **dkdv_opts)

    overlap = (_overlap(q, seq=max(sq, sk), window=left >= 0)
               and (gluon or tuned(_bwd_dkdv_kernel, *dkdv_args, **dkdv_opts))
               and (gluon_dq or tuned(_bwd_dq_kernel, *dq_args, **dq_opts)))
    if overlap:
        # The dQ kernel on a side stream, so its programs take the SMs that the dK/dV
        # kernel's last wave leaves idle (``_overlap``). Both only read what the preprocess
        # wrote; the main stream waits for the side stream before anything reads dQ.
        index = q.device.index if q.device.index is not None else torch.cuda.current_device()
        main = torch.cuda.current_stream(index)
        side = _side_stream(q.device)
        fork, join = _fork_join_events(index)
        fork.record(main)
        side.wait_event(fork)
        run_dkdv()
        torch.cuda.set_stream(side)
        try:
            run_dq()
        finally:
            torch.cuda.set_stream(main)
        join.record(side)
        main.wait_event(join)
        return dq_acc, dk, dv
    run_dkdv()
    run_dq()
    return dq_acc, dk, dv
