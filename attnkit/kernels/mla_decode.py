"""Triton split-KV decode for absorbed MLA: every head against one shared latent + rope key.

One program handles one (split of the keys, sequence, tile of ``BLOCK_M`` rows), a row being one
(new token, head) pair. Each key tile is read once as ``latent [N, r]`` and ``rope [N, p]``; the
latent tile serves twice, as the key (``q_latent @ latent^T``) and as the value (``p @ latent``),
so the cache is read once per tile of heads. Partial results of the splits are merged by
``attnkit.kernels.decode``'s combine kernel. See ``attnkit.reference.mla_decode`` for the math.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from attnkit.kernels.decode import (
    _combine_kernel,
    choose_splits,
    interpreting,
    online_softmax_finish,
    online_softmax_step,
)
from attnkit.kernels.flash_common import next_power_of_2

if TYPE_CHECKING:  # annotations only: kernels never import ops/ or reference/ at run time
    from attnkit.ops.mla_decode import MLADecodeCall


def default_config() -> dict:
    """Launch options: rows (heads) per tile, key tile, value-dim split, query chunk of the
    ``q_latent . latent`` product, warps, stages (H100 sweep)."""
    if interpreting():
        return dict(BLOCK_M=16, BLOCK_N=16, VSPLIT=2, QC=16, num_warps=4, num_stages=1)
    # Best of benchmarks/mla_sweep.py on an H100 (0.74 TB/s at 8k); every config spills
    # registers at R = 512 (ptxas: 255 registers), which bounds this kernel for now.
    return dict(BLOCK_M=64, BLOCK_N=64, VSPLIT=1, QC=512, num_warps=8, num_stages=1)


@triton.jit
def _mla_kernel(
    ql_ptr, qr_ptr, lat_ptr, rope_ptr, seqlens_ptr, table_ptr, out_ptr, lse_ptr,
    stride_qlb, stride_qln, stride_qlh, stride_qrb, stride_qrn, stride_qrh,
    stride_cb, stride_cs, stride_rb, stride_rs, stride_tb,
    stride_ob, stride_on, stride_oh, stride_os, stride_lb, stride_lh, stride_ls,
    n_new, heads, num_splits, scale,
    R: tl.constexpr, P: tl.constexpr, PAGE: tl.constexpr, PAGED: tl.constexpr,
    CAUSAL: tl.constexpr, SPLIT: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, VSPLIT: tl.constexpr, QC: tl.constexpr,
):
    split = tl.program_id(0)
    bi = tl.program_id(1)
    tile = tl.program_id(2) // VSPLIT
    vpart = tl.program_id(2) % VSPLIT  # which 1/VSPLIT of the value dims this program owns
    RV: tl.constexpr = R // VSPLIT
    length = tl.load(seqlens_ptr + bi)
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)  # row = token * heads + head
    row_ok = rows < n_new * heads
    tok = rows // heads
    head = rows % heads
    qpos = length - n_new + tok

    hi = length
    if CAUSAL:
        last_tok = tl.minimum((tile * BLOCK_M + BLOCK_M - 1) // heads, n_new - 1)
        hi = tl.minimum(hi, length - n_new + last_tok + 1)
    span = tl.maximum(hi, 0)
    per_split = tl.cdiv(tl.cdiv(span, num_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, hi)

    offs_v = vpart * RV + tl.arange(0, RV)
    offs_p = tl.arange(0, P)
    b64 = bi.to(tl.int64)
    q_rows = b64 * stride_qlb + tok * stride_qln + head * stride_qlh  # [M]
    offs_c = tl.arange(0, QC)
    qr = tl.load(qr_ptr + (b64 * stride_qrb + tok * stride_qrn + head * stride_qrh)[:, None]
                 + offs_p[None, :], mask=row_ok[:, None], other=0.0)  # [M, P]
    qk_scale = scale * 1.4426950408889634

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, RV], tl.float32)
    for kstart in range(start, end, BLOCK_N):
        cols = kstart + tl.arange(0, BLOCK_N)
        col_ok = cols < end
        if PAGED:
            page = tl.load(table_ptr + b64 * stride_tb + cols // PAGE, mask=col_ok,
                           other=0).to(tl.int64)
            c_rows = page * stride_cb + (cols % PAGE) * stride_cs
            r_rows = page * stride_rb + (cols % PAGE) * stride_rs
        else:
            c_rows = b64 * stride_cb + cols.to(tl.int64) * stride_cs
            r_rows = b64 * stride_rb + cols.to(tl.int64) * stride_rs
        rk = tl.load(rope_ptr + r_rows[:, None] + offs_p[None, :], mask=col_ok[:, None],
                     other=0.0)  # [N, P]
        if IEEE:
            s = tl.dot(qr, tl.trans(rk), input_precision="ieee")  # [M, N]
        else:
            s = tl.dot(qr, tl.trans(rk))
        # q_latent . latent in chunks of QC dims; the query chunk is re-read (from L1) each
        # time instead of living in registers, which would spill at R = 512.
        for c in tl.static_range(R // QC):
            qc = tl.load(ql_ptr + q_rows[:, None] + c * QC + offs_c[None, :],
                         mask=row_ok[:, None], other=0.0)  # [M, QC]
            lc = tl.load(lat_ptr + c_rows[:, None] + c * QC + offs_c[None, :],
                         mask=col_ok[:, None], other=0.0)  # [N, QC]
            if IEEE:
                s += tl.dot(qc, tl.trans(lc), input_precision="ieee")
            else:
                s += tl.dot(qc, tl.trans(lc))
        # This program's value columns: the same cache lines, read again (L1/L2 hits).
        val = tl.load(lat_ptr + c_rows[:, None] + offs_v[None, :], mask=col_ok[:, None],
                      other=0.0)  # [N, RV]
        s = s * qk_scale
        visible = col_ok[None, :] & row_ok[:, None]
        if CAUSAL:
            visible = visible & (cols[None, :] <= qpos[:, None])
        s = tl.where(visible, s, float("-inf"))
        acc, l_i, m_i = online_softmax_step(s, val, acc, l_i, m_i, IEEE)

    out, lse = online_softmax_finish(acc, l_i, m_i)
    o_rows = b64 * stride_ob + tok * stride_on + head * stride_oh + split * stride_os
    tl.store(out_ptr + o_rows[:, None] + offs_v[None, :], out.to(out_ptr.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(lse_ptr + b64 * stride_lb + head * stride_lh + split * stride_ls + tok, lse,
             mask=row_ok)


def mla_decode_fwd(call: MLADecodeCall, *, num_splits: int | None = None,
                   config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the MLA decode kernel; returns out ``[b, n, h, r]`` and lse float32 ``[b, h, n]``.

    Needs power-of-two ``r`` and ``p`` (DeepSeek's 512 and 64) of at least 16.

    Raises:
        ValueError: ``r`` or ``p`` not a power of two >= 16.
    """
    ql, qr, lat, rope = call.q_latent, call.q_rope, call.latent_cache, call.rope_cache
    ql, qr, lat, rope = (t if t.stride(-1) == 1 else t.contiguous() for t in (ql, qr, lat, rope))
    b, n, h, r = ql.shape
    p = qr.shape[-1]
    for name, dim in (("kv_lora_rank", r), ("rope_dim", p)):
        if dim < 16 or dim & (dim - 1):
            raise ValueError(f"{name} must be a power of two >= 16 for the Triton MLA kernel, "
                             f"got {dim}")
    rows = n * h
    if num_splits is None:
        num_splits = choose_splits(programs=b * triton.cdiv(rows, 64), keys=call.capacity,
                                   device=ql.device)
    out = torch.empty(b, n, h, r, device=ql.device, dtype=ql.dtype)
    lse = torch.empty(b, h, n, device=ql.device, dtype=torch.float32)
    if b == 0:
        return out, lse
    if num_splits > 1:
        part = torch.empty(num_splits, b, n, h, r, device=ql.device, dtype=torch.float32)
        part_lse = torch.empty(num_splits, b, h, n, device=ql.device, dtype=torch.float32)
        dst, dst_lse, s_os, s_ls = part, part_lse, part.stride(0), part_lse.stride(0)
    else:
        dst, dst_lse, s_os, s_ls = out, lse, 0, 0
    table = call.block_table if call.paged else call.cache_seqlens

    config = config or default_config()
    config = dict(config)
    config.setdefault("VSPLIT", 1)
    config["QC"] = min(r, config.get("QC", 128))
    grid = (num_splits, b, triton.cdiv(rows, config["BLOCK_M"]) * config["VSPLIT"])
    _mla_kernel[grid](
        ql, qr, lat, rope, call.cache_seqlens, table, dst, dst_lse,
        ql.stride(0), ql.stride(1), ql.stride(2), qr.stride(0), qr.stride(1), qr.stride(2),
        lat.stride(0), lat.stride(1), rope.stride(0), rope.stride(1), table.stride(0),
        dst.stride(-4), dst.stride(-3), dst.stride(-2), s_os,
        dst_lse.stride(-3), dst_lse.stride(-2), s_ls,
        n, h, num_splits, call.scale,
        R=r, P=p, PAGE=lat.shape[1] if call.paged else 1, PAGED=call.paged, CAUSAL=call.causal,
        SPLIT=num_splits > 1, IEEE=ql.dtype == torch.float32, **config,
    )
    if num_splits > 1:
        _combine_kernel[(b * n * h,)](
            part, part_lse, out, lse, part.stride(0), part_lse.stride(0), num_splits, n, h,
            DV=r, BLOCK_S=max(2, next_power_of_2(num_splits)), BLOCK_DV=r)
    return out, lse
