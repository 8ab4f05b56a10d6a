"""Flash-attention forward in Triton: one program per (query tile, batch x query head).

Computes ``out = softmax(mask(softcap(scale * q k^T) + additive)) @ v`` with the online softmax
in float32 (base 2), and saves the natural-log LSE for the backward. Shapes are those of
``attnkit.attention``: dense q ``[b, sq, hq, d]``, k ``[b, sk, hk, d]``, v ``[b, sk, hk, dv]``;
packed ``[total, h, d]`` with int32 ``cu_seqlens`` ``[n + 1]``. The head dims are padded to the
next power of two inside the kernel with masked loads (d = 80, 96, 192 work; dv may differ).

Only the key tiles a query tile can see are visited: with causal masks and windows the loop runs
over ``[lo, hi)``, the keys visible to at least one row of the tile, and only the tiles on the
edges of the visible band pay for element-wise masking (``_fwd_tiles`` with ``EDGE=True``).

Visibility of key ``j`` to query ``i`` (``offset = seq_k - seq_q``, bottom-right)::

    causal:           j <= i + offset
    window (l, r):    i + offset - l <= j <= i + offset + r   (-1: unbounded)
    key padding:      kpm[b, j]         bool attn_mask: mask[b, h, i, j]

On sm90 with the Triton release it was measured with, dense attention at head dim 128 or MLA's
192/128 with none of the masks but a window (MHA or GQA, causal or not, from 1k tokens) runs in
the warp-specialised Gluon forward instead (``flash_fwd_gluon``, persistent where the rows are
flat; ``_gluon_fwd``): 6-29% faster than ``_flash_fwd_kernel`` on an H200.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnkit.kernels.flash_common import (
    LOG2E,
    all_configs,
    autotune_bench,
    cdiv,
    dot_precision,
    gluon_fits,
    gluon_setting,
    head_block,
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
    use_tma,
    visible_scores,
)
from attnkit.kernels.philox import dropout_keep

# (BLOCK_M, BLOCK_N, num_warps, num_stages) by padded head-dim width; tuned on an H100
# (benchmarks/NOTES-flash.md). Wide heads keep fewer K/V stages to fit shared memory.
FWD_TILES = {
    64: ((128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 4), (64, 64, 4, 3)),
    128: ((128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3)),
    256: ((128, 64, 8, 2), (64, 64, 4, 2), (128, 32, 8, 2), (128, 64, 8, 3)),
}


@triton.jit
def _fwd_tiles(acc, l_i, m_i, q, k_base, v_base, stride_kn, stride_vn, lo, hi, rows,
               seqlen_q, seqlen_k, offset, b, h, bh, qk_scale, softcap_scale, k0, k1, dropout_p,
               kpm_ptr, stride_kpm_b, mask_ptr, stride_mb, stride_mh, stride_mm, stride_mn,
               BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
               D: tl.constexpr, DV: tl.constexpr, IS_CAUSAL: tl.constexpr,
               WIN_LEFT: tl.constexpr, WIN_RIGHT: tl.constexpr, EDGE: tl.constexpr,
               HAS_KPM: tl.constexpr, MASK_KIND: tl.constexpr, SOFTCAP: tl.constexpr,
               DROPOUT: tl.constexpr, DOT_PREC: tl.constexpr, TMA: tl.constexpr):
    """Online-softmax accumulation over key tiles ``[lo, hi)`` (``lo`` a multiple of BLOCK_N);
    ``k_base``/``v_base`` are ``tile_source``s (TMA descriptors or pointers)."""
    offs_n = tl.arange(0, BLOCK_N)
    for start_n in range(lo, hi, BLOCK_N):
        start_n = tl.multiple_of(start_n, BLOCK_N)
        cols = start_n + offs_n
        k_tile = load_tile(k_base, start_n, cols, stride_kn, seqlen_k, D, BLOCK_D, EDGE,
                           TMA)  # [N, D]
        if SOFTCAP or MASK_KIND == 2:
            # Base-2 scores first: softcap is not linear in q.k, additive masks are in those
            # units.
            s, _ = scores(q, tl.trans(k_tile), qk_scale, softcap_scale, SOFTCAP,
                          DOT_PREC)  # [M, N]
            row_scale = 1.0
        else:
            # Raw products: -inf masks do not care about the scale, the row max scales after
            # the reduction (qk_scale > 0: the same value), and exp2's argument is one FMA per
            # score instead of a multiply and a subtraction.
            s = tl.dot(q, tl.trans(k_tile), input_precision=DOT_PREC)  # [M, N]
            row_scale = qk_scale
        s = visible_scores(s, rows[:, None], cols[None, :], seqlen_q, seqlen_k, offset, b, h,
                           kpm_ptr, stride_kpm_b, mask_ptr, stride_mb, stride_mh, stride_mm,
                           stride_mn, IS_CAUSAL, WIN_LEFT, WIN_RIGHT, EDGE, HAS_KPM, MASK_KIND)
        m_new = tl.maximum(m_i, tl.max(s, 1) * row_scale)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s * row_scale - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if DROPOUT:
            keep = dropout_keep(k0, k1, rows[:, None], cols[None, :], bh, dropout_p)
            p = tl.where(keep, p, 0.0)
        v_tile = load_tile(v_base, start_n, cols, stride_vn, seqlen_k, DV, BLOCK_DV, EDGE,
                           TMA)  # [N, DV]
        acc = tl.dot(p.to(v_tile.dtype), v_tile, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=all_configs(FWD_TILES),
                 key=["D", "DV", "IS_CAUSAL", "WIN_LEFT", "WIN_RIGHT", "MASK_KIND", "SEQ_BUCKET",
                      "VARLEN", "HAS_KPM", "SOFTCAP", "DROPOUT", "TMA"],
                 prune_configs_by={"early_config_prune": pruner(FWD_TILES)},
                 do_bench=autotune_bench)
@triton.jit
def _flash_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, lse_ptr, cu_q_ptr, cu_k_ptr, seed_ptr, kpm_ptr, mask_ptr,
    stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
    stride_lb, stride_lh, stride_kpm_b, stride_mb, stride_mh, stride_mm, stride_mn,
    seq_q, seq_k, qk_scale, softcap_scale, dropout_p,
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
        q_start = pid_m * 0  # an int32 scalar tensor, like the packed case
        seqlen_q = seq_q
        k_start = pid_m * 0
        seqlen_k = seq_k
    start_m = pid_m * BLOCK_M
    if start_m >= seqlen_q:
        return
    offset = seqlen_k - seqlen_q
    rows = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_base = q_ptr + b.to(tl.int64) * stride_qb + q_start.to(tl.int64) * stride_qs \
        + h * stride_qh
    k_base = k_ptr + b.to(tl.int64) * stride_kb + k_start.to(tl.int64) * stride_ks \
        + hk * stride_kh
    v_base = v_ptr + b.to(tl.int64) * stride_vb + k_start.to(tl.int64) * stride_vs \
        + hk * stride_vh
    q = tl.load(q_base + rows[:, None] * stride_qs + offs_d[None, :],
                mask=(rows[:, None] < seqlen_q) & (offs_d[None, :] < D), other=0.0)  # [M, D]
    k_base = tile_source(k_base, seqlen_k, stride_ks, D, BLOCK_N, BLOCK_D, TMA)
    v_base = tile_source(v_base, seqlen_k, stride_vs, DV, BLOCK_N, BLOCK_DV, TMA)

    k0 = 0
    k1 = 0
    if DROPOUT:
        k0 = tl.load(seed_ptr).to(tl.uint32)
        k1 = tl.load(seed_ptr + 1).to(tl.uint32)
    bh = b * HQ + h

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], tl.float32)
    lo, mid_lo, mid_hi, hi = tile_key_range(start_m, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N,
                                            IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    # Edge tiles before the fully visible band (window's left edge), the band, the edge after.
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, lo, mid_lo, rows, seqlen_q,
        seqlen_k,
        offset, b, h, bh, qk_scale, softcap_scale, k0, k1, dropout_p, kpm_ptr, stride_kpm_b,
        mask_ptr, stride_mb, stride_mh, stride_mm, stride_mn, BLOCK_N, BLOCK_D, BLOCK_DV, D, DV,
        IS_CAUSAL, WIN_LEFT, WIN_RIGHT, True, HAS_KPM, MASK_KIND, SOFTCAP, DROPOUT, DOT_PREC,
        TMA)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, mid_lo, mid_hi, rows, seqlen_q,
        seqlen_k,
        offset, b, h, bh, qk_scale, softcap_scale, k0, k1, dropout_p, kpm_ptr, stride_kpm_b,
        mask_ptr, stride_mb, stride_mh, stride_mm, stride_mn, BLOCK_N, BLOCK_D, BLOCK_DV, D, DV,
        IS_CAUSAL, WIN_LEFT, WIN_RIGHT, False, HAS_KPM, MASK_KIND, SOFTCAP, DROPOUT, DOT_PREC,
        TMA)
    acc, l_i, m_i = _fwd_tiles(
        acc, l_i, m_i, q, k_base, v_base, stride_ks, stride_vs, mid_hi, hi, rows, seqlen_q,
        seqlen_k,
        offset, b, h, bh, qk_scale, softcap_scale, k0, k1, dropout_p, kpm_ptr, stride_kpm_b,
        mask_ptr, stride_mb, stride_mh, stride_mm, stride_mn, BLOCK_N, BLOCK_D, BLOCK_DV, D, DV,
        IS_CAUSAL, WIN_LEFT, WIN_RIGHT, True, HAS_KPM, MASK_KIND, SOFTCAP, DROPOUT, DOT_PREC,
        TMA)

    seen = l_i > 0.0
    inv = tl.where(seen, 1.0 / tl.where(seen, l_i, 1.0), 0.0)
    if DROPOUT:
        inv = inv * (1.0 / (1.0 - dropout_p))
    out = acc * inv[:, None]
    # lse (natural log) = ln(2) * (m + log2(l)); -inf for rows that saw no key.
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453,
                   float("-inf"))
    o_base = out_ptr + b.to(tl.int64) * stride_ob + q_start.to(tl.int64) * stride_os \
        + h * stride_oh
    tl.store(o_base + rows[:, None] * stride_os + offs_dv[None, :],
             out.to(out_ptr.dtype.element_ty),
             mask=(rows[:, None] < seqlen_q) & (offs_dv[None, :] < DV))
    l_base = lse_ptr + b.to(tl.int64) * stride_lb + h.to(tl.int64) * stride_lh
    tl.store(l_base + q_start + rows, lse, mask=rows < seqlen_q)


# Whether ``auto`` sends sliding windows, and MLA's head dims (q and k 192, v 128:
# ``flash_fwd_gluon._qk_tiles``), to the Gluon forward. Both were measured faster on an H200
# where the persistent kernel takes them (step 11 of benchmarks/NOTES-flash.md,
# ``results/gluon-fwd-h200-2026-12-01-step11.json``); ``False`` leaves them to Triton.
GLUON_WINDOWS = True
GLUON_MLA = True
# Whether ``auto`` sends head dim 64 to it, and from which length, causal or not: where the
# overlapped split walk serves (``flash_fwd_gluon.schedule``), measured faster (H200, step 12
# of benchmarks/NOTES-flash.md, ``results/gluon-fwd-h200-2026-12-01-step12.json``, against
# ``_flash_fwd_kernel``): 4k full 1.297 against 1.337 ms, 16k causal 2.541 against 2.625;
# not at 1k (full 0.369 against 0.365), nor the plain walk that causal attention takes below
# 16k (1k causal 0.259 against 0.238; 16k causal 2.668 against 2.625).
GLUON_D64, GLUON_D64_MIN_SEQ, GLUON_D64_MIN_CAUSAL_SEQ = True, 4096, 16384
# The shortest sequence ``auto`` sends to the Gluon forward where the persistent kernel
# takes the inputs (``flash_fwd_gluon.takes_persistent``), and where only the one-tile kernel
# does (no windows there: measured slower).
GLUON_MIN_SEQ, GLUON_ONE_TILE_MIN_SEQ = 1024, 4096


def _gluon_fwd(q, k, v, *, plain: bool, seq: int, window: tuple[int, int] = (-1, -1),
               causal: bool = False) -> bool:
    """Whether the forward runs in ``flash_fwd_gluon`` (the warp-specialised Gluon kernel,
    persistent where ``flash_fwd_gluon.takes_persistent``) instead of ``_flash_fwd_kernel``.

    ``plain``: dense (not packed) inputs with no key padding, mask, softcap or dropout; a
    ``window``, MLA's head dims (192 for q and k, 128 for v) and head dim 64 under
    ``GLUON_WINDOWS``, ``GLUON_MLA`` and ``GLUON_D64`` (64: from ``GLUON_D64_MIN_SEQ``, with
    ``causal`` from ``GLUON_D64_MIN_CAUSAL_SEQ``). Besides ``flash_common.gluon_fits``
    (head dims 128, 192/128 or 64, 16-bit, aligned, sm90, a measured Triton), ``seq`` (the
    longer of the query and key lengths) decides, as measured on an H200 (step 11 of benchmarks/NOTES-flash.md,
    ``results/gluon-fwd-h200-2026-12-01-step11.json``, ms against ``_flash_fwd_kernel``):

    - where the persistent kernel takes the inputs, from ``GLUON_MIN_SEQ`` (1k): 1k full
      0.298 against 0.352, 1k causal 0.208 against 0.230, 4k causal 0.601 against 0.717,
      GQA 32:8 4k full 2.01 against 2.29, window 1024 at 16k 0.361 against 0.385, MLA 4k
      full 1.22 against 1.57 (16k: step 10's walk, 3.84 against 4.46 full);
    - where only the one-tile kernel does (batches past one with a key length of part
      tiles), from ``GLUON_ONE_TILE_MIN_SEQ`` (4k) and without windows: 4k full 1.11 against
      1.17, MLA 4k causal 0.768 against 0.871; at 1k causal (0.274 against 0.230) and with
      a window (0.432 against 0.385) it is slower.

    ``ATTNKIT_FLASH_GLUON=1`` drops these rules, ``0`` turns the kernel off
    (``flash_common.gluon_setting``).

    Raises:
        ValueError: for a bad ``ATTNKIT_FLASH_GLUON``.
    """
    mode = gluon_setting()
    if mode == "0" or not plain:
        return False
    if not gluon_fits(q, k, v, head_dims=((128, 128), (192, 128), (64, 64))):
        return False
    if mode == "1":
        return True
    windowed = window[0] >= 0 or window[1] >= 0
    mla = (q.shape[-1], v.shape[-1]) == (192, 128)
    d64_from = GLUON_D64_MIN_CAUSAL_SEQ if causal else GLUON_D64_MIN_SEQ
    if ((windowed and not GLUON_WINDOWS) or (mla and not GLUON_MLA)
            or (q.shape[-1] == 64 and not (GLUON_D64 and seq >= d64_from))):
        return False
    from attnkit.kernels import flash_fwd_gluon
    if flash_fwd_gluon.PERSISTENT and flash_fwd_gluon.takes_persistent(q, k, v):
        return seq >= GLUON_MIN_SEQ
    return seq >= GLUON_ONE_TILE_MIN_SEQ and not windowed


@on_input_device
def flash_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool,
              window: tuple[int, int], scale: float, softcap: float,
              key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None,
              cu_seqlens_q: torch.Tensor | None, cu_seqlens_k: torch.Tensor | None,
              max_seqlen_q: int, max_seqlen_k: int, dropout_p: float, dropout_seed: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the forward kernel; inputs must already be validated (``attnkit.attention``).

    Args:
        q, k, v: dense ``[b, sq, hq, d]``/``[b, sk, hk, d]``/``[b, sk, hk, dv]`` or packed
            ``[total, h, d]``; last dim contiguous; fp16, bf16 or fp32 (tf32x3 dots).
        attn_mask: 4-D, broadcastable to ``[b, hq, sq, sk]``.

    Returns:
        ``(out, lse)``: out in q's layout with head dim dv and q's dtype; lse float32
        ``[b, hq, sq]`` (packed ``[hq, total_q]``).

    Example (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``):
        >>> q = torch.randn(2, 100, 8, 64, device="cuda", dtype=torch.bfloat16)
        >>> k = v = torch.randn(2, 100, 2, 64, device="cuda", dtype=torch.bfloat16)
        >>> out, lse = flash_fwd(q, k, v, causal=True, window=(-1, -1), scale=0.125,
        ...                      softcap=0.0, key_padding_mask=None, attn_mask=None,
        ...                      cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=100,
        ...                      max_seqlen_k=100, dropout_p=0.0, dropout_seed=0)
        >>> out.shape, lse.shape
        (torch.Size([2, 100, 8, 64]), torch.Size([2, 8, 100]))
    """
    varlen = cu_seqlens_q is not None
    hq, hk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    dv = v.shape[-1]
    if varlen:
        batch = cu_seqlens_q.shape[0] - 1
        out = torch.empty(*q.shape[:-1], dv, device=q.device, dtype=q.dtype)  # [tq, hq, dv]
        lse = torch.empty(hq, q.shape[0], device=q.device, dtype=torch.float32)  # [hq, tq]
        sq, sk = max_seqlen_q, max_seqlen_k
        qs, ks, vs, os_ = ((0, *t.stride()) for t in (q, k, v, out))
        lstrides = (0, lse.stride(0))
    else:
        batch, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        out = torch.empty(*q.shape[:-1], dv, device=q.device, dtype=q.dtype)  # [b, sq, hq, dv]
        lse = torch.empty(batch, hq, sq, device=q.device, dtype=torch.float32)  # [b, hq, sq]
        qs, ks, vs, os_ = (t.stride() for t in (q, k, v, out))
        lstrides = (lse.stride(0), lse.stride(1))
    if out.numel() == 0 or batch == 0 or sq == 0:
        lse.fill_(float("-inf"))
        return out.zero_(), lse
    if sk == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse
    mask_t, mask_kind, mstrides = mask_args(attn_mask, q, k)
    kpm = key_padding_mask.view(torch.uint8) if key_padding_mask is not None else q
    kpm_stride = key_padding_mask.stride(0) if key_padding_mask is not None else 0
    seed = seed_words(dropout_seed, dropout_p, q)
    cu_q = cu_seqlens_q if varlen else seed
    cu_k = cu_seqlens_k if varlen else seed
    if softcap > 0:
        qk_scale = 2.0 * scale / softcap * LOG2E
        softcap_scale = softcap * LOG2E
    else:
        qk_scale = scale * LOG2E
        softcap_scale = 1.0
    left, right = window
    if causal:
        right = 0  # causal and any right window intersect to the diagonal itself

    plain = (not varlen and key_padding_mask is None and mask_kind == 0 and softcap == 0
             and dropout_p == 0)
    if _gluon_fwd(q, k, v, plain=plain, window=window, seq=max(sq, sk), causal=causal):
        from attnkit.kernels import flash_fwd_gluon
        flash_fwd_gluon.gluon_fwd(q, k, v, out, lse, causal=causal, scale=scale, window=window)
        return out, lse

    # TMA descriptors (not a default: ATTNKIT_FLASH_TMA=fwd or all) at head widths of 128
    # only: 6% slower at 64 on an H200, and Triton 3.6's ptxas crashes on the 256-wide forward
    # with descriptors in most configs (benchmarks/sm90_resources.py --tma; NOTES step 4).
    tma = head_block(max(d, dv)) == 128 and use_tma("fwd", k, v, mask_kind=mask_kind)

    def grid(meta):
        return (cdiv(sq, meta["BLOCK_M"]), batch * hq)

    launch(_flash_fwd_kernel, grid,
        q, k, v, out, lse, cu_q, cu_k, seed, kpm, mask_t,
        qs[0], qs[1], qs[2], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2],
        os_[0], os_[1], os_[2], lstrides[0], lstrides[1], kpm_stride, *mstrides,
        sq, sk, qk_scale, softcap_scale, float(dropout_p),
        HQ=hq, GROUP=hq // hk, D=d, DV=dv, BLOCK_D=head_block(d), BLOCK_DV=head_block(dv),
        VARLEN=varlen, IS_CAUSAL=causal, WIN_LEFT=left, WIN_RIGHT=right,
        HAS_KPM=key_padding_mask is not None,
        MASK_KIND=mask_kind, SOFTCAP=softcap > 0, DROPOUT=dropout_p > 0,
        DOT_PREC=dot_precision(q.dtype), TMA=tma,
        SEQ_BUCKET=seq_bucket(max(sq, sk)),
    )
    return out, lse
