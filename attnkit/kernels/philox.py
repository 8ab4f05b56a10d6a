"""Philox4x32-10 in Triton: attnkit's dropout keep/drop decision inside the kernels.

Bit-for-bit the contract of ``attnkit.reference.philox`` (forward and backward make the same
decision without storing a mask):

- key ``(k0, k1)`` = the 64-bit seed split into its low and high 32-bit words;
- counter ``(j, i, batch * num_heads + head, 0)``, ``i``/``j`` the query/key index inside the
  sequence (packed batches: inside the segment, ``batch`` = segment index);
- ten rounds with multipliers ``0xD2511F53``/``0xCD9E8D57`` and Weyl increments
  ``0x9E3779B9``/``0xBB67AE85``;
- ``u = (x >> 8) * 2**-24`` from the first output word ``x``; keep when ``u >= p``.
"""

from __future__ import annotations

import triton
import triton.language as tl

_MUL_A: tl.constexpr = tl.constexpr(0xD2511F53)
_MUL_B: tl.constexpr = tl.constexpr(0xCD9E8D57)
_WEYL_A: tl.constexpr = tl.constexpr(0x9E3779B9)
_WEYL_B: tl.constexpr = tl.constexpr(0xBB67AE85)


@triton.jit
def philox_first_word(k0, k1, c0, c1, c2):
    """First output word of Philox4x32-10 for counters ``(c0, c1, c2, 0)`` and key ``(k0, k1)``.

    All operands are uint32 (``c*`` tensors of one shape, ``k*`` scalars); returns uint32.
    """
    c3 = tl.zeros_like(c0)
    for _ in tl.static_range(10):
        hi_b = tl.umulhi(c2, _MUL_B)
        lo_b = c2 * _MUL_B
        hi_a = tl.umulhi(c0, _MUL_A)
        lo_a = c0 * _MUL_A
        c0 = hi_b ^ c1 ^ k0
        c1 = lo_b
        c2 = hi_a ^ c3 ^ k1
        c3 = lo_a
        k0 = k0 + _WEYL_A
        k1 = k1 + _WEYL_B
    return c0


@triton.jit
def dropout_keep(k0, k1, rows, cols, batch_head, p):
    """Bool keep mask for query indices ``rows`` and key indices ``cols``.

    ``rows``/``cols`` broadcast against each other (``[M, 1]`` and ``[1, N]``, or transposed
    ``[1, M]`` and ``[N, 1]``); the result has the broadcast shape. ``k0``/``k1``: uint32 seed
    words; ``batch_head``: scalar ``batch * heads + head``; ``p``: drop probability (fp32).
    """
    zero = (rows * 0 + cols * 0).to(tl.uint32)
    c0 = zero + cols.to(tl.uint32)
    c1 = zero + rows.to(tl.uint32)
    c2 = zero + batch_head.to(tl.uint32)
    word = philox_first_word(k0, k1, c0, c1, c2)
    uniform = (word >> 8).to(tl.float32) * (1.0 / 16777216.0)
    return uniform >= p
