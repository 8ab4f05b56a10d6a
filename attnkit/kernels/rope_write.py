"""Fused RoPE + KV-cache write in Triton: rotate the new keys and store keys and values into
their cache slots in one pass (the rotated keys never round-trip through memory).

One program per new token: it loads the token's ``[kv_heads, d]`` key and value rows and its
half-width cos/sin ``[r/2]``, rotates the leading ``r`` dims of every head (pairs ``(i, i + r/2)``
for ``half``, ``(2i, 2i + 1)`` for ``interleaved``: ``(a, b) -> (a cos - b sin, b cos + a sin)``
in float32), and stores both at ``cache[slot0, slot1]`` (``(batch, position)`` of a static
cache, ``(page, offset)`` of a paged pool).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnkit.kernels.flash_common import next_power_of_2


@triton.jit
def _rope_write_kernel(
    k_ptr, v_ptr, cos_ptr, sin_ptr, slot0_ptr, slot1_ptr, kc_ptr, vc_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_ct,
    stride_kc0, stride_kc1, stride_kch, stride_vc0, stride_vc1, stride_vch,
    HK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, R: tl.constexpr,
    INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)  # token index in [b * n]
    s0 = tl.load(slot0_ptr + t).to(tl.int64)
    s1 = tl.load(slot1_ptr + t).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)
    head_ok = heads < HK
    pair = tl.arange(0, BLOCK_R)
    pair_ok = pair < R // 2
    if INTERLEAVED:
        off_a = 2 * pair
        off_b = 2 * pair + 1
    else:
        off_a = pair
        off_b = pair + R // 2
    c = tl.load(cos_ptr + t * stride_ct + pair, mask=pair_ok, other=0.0).to(tl.float32)
    s = tl.load(sin_ptr + t * stride_ct + pair, mask=pair_ok, other=0.0).to(tl.float32)
    src = k_ptr + t * stride_kt + heads[:, None] * stride_kh  # [H, 1]
    dst = kc_ptr + s0 * stride_kc0 + s1 * stride_kc1 + heads[:, None] * stride_kch
    m = head_ok[:, None] & pair_ok[None, :]
    a = tl.load(src + off_a[None, :], mask=m, other=0.0).to(tl.float32)  # [H, R/2]
    b = tl.load(src + off_b[None, :], mask=m, other=0.0).to(tl.float32)
    tl.store(dst + off_a[None, :], (a * c[None, :] - b * s[None, :]).to(kc_ptr.dtype.element_ty),
             mask=m)
    tl.store(dst + off_b[None, :], (b * c[None, :] + a * s[None, :]).to(kc_ptr.dtype.element_ty),
             mask=m)
    if R < D:  # dims past rotary_dim pass through
        tail = R + tl.arange(0, BLOCK_T)
        mt = head_ok[:, None] & (tail[None, :] < D)
        tl.store(dst + tail[None, :], tl.load(src + tail[None, :], mask=mt), mask=mt)
    offs_v = tl.arange(0, BLOCK_DV)
    mv = head_ok[:, None] & (offs_v[None, :] < DV)
    vals = tl.load(v_ptr + t * stride_vt + heads[:, None] * stride_vh + offs_v[None, :], mask=mv)
    tl.store(vc_ptr + s0 * stride_vc0 + s1 * stride_vc1 + heads[:, None] * stride_vch
             + offs_v[None, :], vals, mask=mv)


def rope_write(k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, slot0: torch.Tensor,
               slot1: torch.Tensor, *, interleaved: bool, rotary_dim: int) -> None:
    """Rotate ``k [T, hk, d]`` by ``cos/sin [T, r/2]`` and write it and ``v [T, hk, dv]`` to
    ``k_cache[slot0, slot1]`` / ``v_cache[slot0, slot1]`` (``slot0/1`` int ``[T]``).

    Inputs are validated by the caller (``attnkit.cache``); the last dims must be contiguous.
    """
    tokens, hk, d = k.shape
    dv = v.shape[-1]
    if tokens == 0:
        return
    _rope_write_kernel[(tokens,)](
        k, v, cos, sin, slot0, slot1, k_cache, v_cache,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HK=hk, D=d, DV=dv, R=rotary_dim, INTERLEAVED=interleaved,
        BLOCK_H=next_power_of_2(hk), BLOCK_R=max(2, next_power_of_2(rotary_dim // 2)),
        BLOCK_T=max(2, next_power_of_2(max(d - rotary_dim, 1))),
        BLOCK_DV=next_power_of_2(dv),
    )
