"""Split-KV flash decode in Triton over a contiguous or paged KV cache.

One program handles one (split of the keys, sequence x KV head, tile of query rows). The rows of
a tile are the query heads of one GQA group times the ``n`` new tokens (row ``r`` = token
``r // G``, head ``r % G`` of the group), so every K/V tile read from memory serves all of them:
K/V are read once per KV head, never repeated. Pages are read through the block table key by
key (``page = table[i, j // block_size]``); nothing is gathered into a contiguous copy.

Keys of a sequence are cut into ``num_splits`` contiguous ranges (each a multiple of the key tile)
so that short batches still fill the GPU; each split writes a partial ``(out, lse)`` in float32
and a second kernel merges them::

    lse = log(sum_s exp(lse_s)),    out = sum_s exp(lse_s - lse) * out_s

With one split the first kernel writes the final output directly. Only keys a tile can see are
visited: ``[lo, hi)`` from the causal limit and the window, so a sliding window reads at most
``left + n`` keys per sequence whatever the length.

Visibility of key ``j`` to new token ``t`` of sequence ``i`` (``L = cache_seqlens[i]``,
``p = L - n + t``): ``j < L``; causal ``j <= p``; window ``p - left <= j <= p + right``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from attnkit.kernels.flash_common import next_power_of_2, sm_count

if TYPE_CHECKING:  # annotations only: kernels never import ops/ or reference/ at run time
    from attnkit.ops.decode import DecodeCall

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def default_config(width: int) -> dict:
    """Launch options of the decode kernel for a head width (max of d, dv): key tile, warps,
    pipeline stages. Chosen by a sweep on an H100 (``benchmarks/decode_device.py --sweep``)."""
    if interpreting():
        return dict(BLOCK_N=16, num_warps=4, num_stages=1)
    if width > 128:
        return dict(BLOCK_N=32, num_warps=4, num_stages=2)
    return dict(BLOCK_N=64, num_warps=4, num_stages=2)


@triton.jit
def _softcap(s, cap):
    # cap * tanh(s / cap), with tanh(x) = 1 - 2 / (exp(2x) + 1): exact limits at +-inf.
    return cap * (1.0 - 2.0 / (tl.exp(2.0 * s / cap) + 1.0))


@triton.jit
def online_softmax_step(s, v, acc, l_i, m_i, IEEE: tl.constexpr):
    """Fold one key tile into the running softmax: base-2 scores ``s [M, N]`` (-inf = masked),
    values ``v [N, DV]``, accumulator ``acc [M, DV]``, row sums ``l_i`` and maxima ``m_i [M]``.
    Rows that have seen no key keep max -inf and sum 0 (no NaN)."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, l_i, m_new


@triton.jit
def online_softmax_finish(acc, l_i, m_i):
    """Normalised output ``[M, DV]`` and natural-log LSE ``[M]``; unseen rows give 0 and -inf."""
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    return out, lse


@triton.jit
def _decode_kernel(
    q_ptr, k_ptr, v_ptr, seqlens_ptr, table_ptr, out_ptr, lse_ptr,
    stride_qb, stride_qn, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_tb,
    stride_ob, stride_on, stride_oh, stride_os,
    stride_lb, stride_lh, stride_ls,
    n_new, hk, num_splits, scale, softcap, left, right,
    G: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, PAGE: tl.constexpr,
    PAGED: tl.constexpr, CAUSAL: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr, SPLIT: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr,
):
    split = tl.program_id(0)
    seq_head = tl.program_id(1)
    tile = tl.program_id(2)
    bi = seq_head // hk
    hh = seq_head % hk
    length = tl.load(seqlens_ptr + bi)

    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # [M] row = token * G + head-in-group
    row_ok = rows < n_new * G
    tok = rows // G
    head = hh * G + rows % G  # query head index
    qpos = length - n_new + tok  # [M] position of each new token

    # Keys visible to at least one row of this tile: [lo, hi).
    first_tok = tile * BLOCK_M // G
    last_tok = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // G, n_new - 1)
    lo = 0
    hi = length
    if CAUSAL:
        hi = tl.minimum(hi, length - n_new + last_tok + 1)
    if HAS_RIGHT:
        hi = tl.minimum(hi, length - n_new + last_tok + right + 1)
    if HAS_LEFT:
        lo = tl.maximum(0, length - n_new + first_tok - left)
    lo = (lo // BLOCK_N) * BLOCK_N
    span = tl.maximum(hi - lo, 0)
    per_split = tl.cdiv(tl.cdiv(span, num_splits), BLOCK_N) * BLOCK_N
    start = lo + split * per_split
    end = tl.minimum(start + per_split, hi)

    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_rows = bi.to(tl.int64) * stride_qb + tok * stride_qn + head * stride_qh
    q = tl.load(q_ptr + q_rows[:, None] + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)  # [M, D]
    qk_scale = scale * 1.4426950408889634
    if SOFTCAP:
        qk_scale = scale

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    for kstart in range(start, end, BLOCK_N):
        cols = kstart + tl.arange(0, BLOCK_N)  # [N] key positions
        col_ok = cols < end
        if PAGED:
            page = tl.load(table_ptr + bi.to(tl.int64) * stride_tb + cols // PAGE, mask=col_ok,
                           other=0).to(tl.int64)
            k_rows = page * stride_kb + (cols % PAGE) * stride_ks
            v_rows = page * stride_vb + (cols % PAGE) * stride_vs
        else:
            k_rows = bi.to(tl.int64) * stride_kb + cols.to(tl.int64) * stride_ks
            v_rows = bi.to(tl.int64) * stride_vb + cols.to(tl.int64) * stride_vs
        k = tl.load(k_ptr + (k_rows + hh * stride_kh)[:, None] + offs_d[None, :],
                    mask=col_ok[:, None] & (offs_d[None, :] < D), other=0.0)  # [N, D]
        v = tl.load(v_ptr + (v_rows + hh * stride_vh)[:, None] + offs_dv[None, :],
                    mask=col_ok[:, None] & (offs_dv[None, :] < DV), other=0.0)  # [N, DV]
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")  # [M, N]
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * qk_scale
        if SOFTCAP:
            s = _softcap(s, softcap) * 1.4426950408889634
        visible = col_ok[None, :] & row_ok[:, None]
        if CAUSAL:
            visible = visible & (cols[None, :] <= qpos[:, None])
        if HAS_LEFT:
            visible = visible & (cols[None, :] >= qpos[:, None] - left)
        if HAS_RIGHT:
            visible = visible & (cols[None, :] <= qpos[:, None] + right)
        s = tl.where(visible, s, float("-inf"))
        acc, l_i, m_i = online_softmax_step(s, v, acc, l_i, m_i, IEEE)

    out, lse = online_softmax_finish(acc, l_i, m_i)
    o_rows = bi.to(tl.int64) * stride_ob + tok * stride_on + head * stride_oh + split * stride_os
    tl.store(out_ptr + o_rows[:, None] + offs_dv[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None] & (offs_dv[None, :] < DV))
    l_rows = bi.to(tl.int64) * stride_lb + head * stride_lh + split * stride_ls + tok
    tl.store(lse_ptr + l_rows, lse, mask=row_ok)


@triton.jit
def _combine_kernel(
    part_ptr, part_lse_ptr, out_ptr, lse_ptr,
    stride_ps, stride_ls,
    num_splits, n_new, hq,
    DV: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    # One program per (sequence, new token, query head) row. Partials are laid out
    # part [splits, b, n, hq, DV] and part_lse [splits, b, hq, n]; out [b, n, hq, DV] and
    # lse [b, hq, n] are contiguous.
    row = tl.program_id(0)
    bi = row // (n_new * hq)
    tok = (row // hq) % n_new
    head = row % hq
    splits = tl.arange(0, BLOCK_S)
    split_ok = splits < num_splits
    lse_at = bi * hq * n_new + head * n_new + tok
    lse_s = tl.load(part_lse_ptr + splits * stride_ls + lse_at, mask=split_ok,
                    other=float("-inf"))  # [S]
    top = tl.max(lse_s, 0)
    top_safe = tl.where(top == float("-inf"), 0.0, top)
    w = tl.exp(lse_s - top_safe)  # [S], 0 for empty splits
    total = tl.sum(w, 0)
    offs = tl.arange(0, BLOCK_DV)
    part = tl.load(part_ptr + splits[:, None] * stride_ps + row * DV + offs[None, :],
                   mask=split_ok[:, None] & (offs[None, :] < DV), other=0.0)  # [S, DV]
    safe_total = tl.where(total > 0, total, 1.0)
    out = tl.sum(part * w[:, None], 0) / safe_total
    tl.store(out_ptr + row * DV + offs, out.to(out_ptr.dtype.element_ty), mask=offs < DV)
    tl.store(lse_ptr + lse_at, tl.where(total > 0, top_safe + tl.log(safe_total),
                                        float("-inf")))


def choose_splits(*, programs: int, keys: int, device: torch.device) -> int:
    """Splits of the keys: enough programs to fill the GPU about twice over, and no split
    longer than 8192 keys (a shorter tail of the last wave: on an H100 at batch 64, GQA 32:8,
    32k keys, 4 splits read at 3.06 TB/s against 2.61 for one).

    ``programs`` is the launch size without splitting (sequences x KV heads x row tiles),
    ``keys`` the most keys one program would read; a split never holds fewer than 256 keys.
    """
    if keys <= 512:
        return 1
    fill = triton.cdiv(2 * sm_count(device), programs)
    return max(1, min(max(fill, triton.cdiv(keys, 8192)), keys // 256, 64))


def _row_block(rows: int) -> int:
    return min(64, max(16, next_power_of_2(rows)))


def decode_fwd(call: DecodeCall, *, num_splits: int | None = None, config: dict | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the split-KV decode kernel for a validated call.

    Returns out ``[b, n, hq, dv]`` (q's dtype) and lse float32 ``[b, hq, n]``. ``num_splits``
    overrides the heuristic (tests use it to exercise the combine kernel); ``config``
    overrides ``default_config`` (``BLOCK_N``, ``num_warps``, ``num_stages``), for sweeps.
    """
    q, k, v = call.q, call.k_cache, call.v_cache
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    b, n, hq, d = q.shape
    hk, dv = k.shape[2], v.shape[3]
    g = hq // hk
    block_m = _row_block(n * g)
    tiles = triton.cdiv(n * g, block_m)
    left, right = call.window
    keys = call.capacity if left < 0 else min(call.capacity, left + n + 64)
    if num_splits is None:
        num_splits = choose_splits(programs=b * hk * tiles, keys=keys, device=q.device)
    out = torch.empty(b, n, hq, dv, device=q.device, dtype=q.dtype)
    lse = torch.empty(b, hq, n, device=q.device, dtype=torch.float32)
    if b == 0:
        return out, lse
    if num_splits > 1:
        part = torch.empty(num_splits, b, n, hq, dv, device=q.device, dtype=torch.float32)
        part_lse = torch.empty(num_splits, b, hq, n, device=q.device, dtype=torch.float32)
        dst, dst_lse, stride_os, stride_ls = part, part_lse, part.stride(0), part_lse.stride(0)
    else:
        dst, dst_lse, stride_os, stride_ls = out, lse, 0, 0
    table = call.block_table if call.paged else call.cache_seqlens
    page = k.shape[1] if call.paged else 1
    grid = (num_splits, b * hk, tiles)
    _decode_kernel[grid](
        q, k, v, call.cache_seqlens, table, dst, dst_lse,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        table.stride(0),
        dst.stride(-4), dst.stride(-3), dst.stride(-2), stride_os,
        dst_lse.stride(-3), dst_lse.stride(-2), stride_ls,
        n, hk, num_splits, call.scale, call.softcap, left, right,
        G=g, D=d, DV=dv, PAGE=page, PAGED=call.paged, CAUSAL=call.causal,
        HAS_LEFT=left >= 0, HAS_RIGHT=right >= 0, SOFTCAP=call.softcap > 0,
        SPLIT=num_splits > 1, IEEE=q.dtype == torch.float32,
        BLOCK_M=block_m, BLOCK_D=max(16, next_power_of_2(d)),
        BLOCK_DV=max(16, next_power_of_2(dv)),
        **(config or default_config(max(d, dv))),
    )
    if num_splits > 1:
        _combine_kernel[(b * n * hq,)](
            part, part_lse, out, lse, part.stride(0), part_lse.stride(0), num_splits, n, hq,
            DV=dv, BLOCK_S=max(2, next_power_of_2(num_splits)),
            BLOCK_DV=max(16, next_power_of_2(dv)))
    return out, lse
