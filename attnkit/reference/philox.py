"""Philox4x32-10 counter-based random numbers in plain PyTorch.

attnkit's dropout draws its keep/drop decision for score ``(batch, head, i, j)`` from one Philox
call, so every backend (this reference, the Triton kernels, forward and backward) makes the same
decision without storing a mask. The contract every backend follows:

- key: the 64-bit ``seed`` split into ``(seed & 0xFFFFFFFF, seed >> 32)``;
- counter: ``(j, i, batch * num_heads + head, 0)`` with ``i``, ``j`` the query and key index
  inside their sequence (packed batches: inside their segment, ``batch`` = segment index);
- ten rounds of Philox4x32 (Salmon et al., SC'11), multipliers ``0xD2511F53``, ``0xCD9E8D57``,
  Weyl increments ``0x9E3779B9``, ``0xBB67AE85``;
- the first output word ``x`` gives ``u = (x >> 8) * 2**-24`` in [0, 1); the score is kept when
  ``u >= dropout_p``.

Only integer arithmetic below 2**63 is used, so the result is exact on every device. In a Triton
kernel the same word is ``tl.random.philox(seed, j, i, batch * num_heads + head, 0)[0]`` with
32-bit counters (tests/test_philox.py checks the two agree).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_MUL_A = 0xD2511F53
_MUL_B = 0xCD9E8D57
_WEYL_A = 0x9E3779B9
_WEYL_B = 0xBB67AE85


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``a * b`` for a constant ``a`` and int64 ``b`` < 2**32."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    ll = a_lo * b_lo
    lh = a_lo * b_hi
    hl = a_hi * b_lo
    mid = (ll >> 16) + (lh & 0xFFFF) + (hl & 0xFFFF)
    lo = ((mid & 0xFFFF) << 16) | (ll & 0xFFFF)
    hi = a_hi * b_hi + (lh >> 16) + (hl >> 16) + (mid >> 16)
    return hi, lo


def philox_first_word(seed: int, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor) -> torch.Tensor:
    """First output word of Philox4x32-10 for counters ``(c0, c1, c2, 0)``.

    Args:
        seed: 64-bit key, as a Python int in [0, 2**64).
        c0, c1, c2: int64 tensors (broadcastable) with values in [0, 2**32).

    Returns:
        int64 tensor of the broadcast shape with values in [0, 2**32).
    """
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    c0, c1, c2 = torch.broadcast_tensors(c0, c1, c2)
    c3 = torch.zeros_like(c0)
    for _ in range(10):
        hi_b, lo_b = _mulhilo(_MUL_B, c2)
        hi_a, lo_a = _mulhilo(_MUL_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + _WEYL_A) & _MASK32
        k1 = (k1 + _WEYL_B) & _MASK32
    return c0


def dropout_keep(seed: int, p: float, *, batch_head: torch.Tensor, rows: torch.Tensor,
                 cols: torch.Tensor) -> torch.Tensor:
    """Keep mask of attnkit's dropout for the given ``batch * heads + head``, query and key indices.

    Args:
        seed: the call's 64-bit dropout seed.
        p: drop probability in [0, 1).
        batch_head: int64 ``[bh, 1, 1]``, ``batch * num_heads + head``.
        rows: int64 ``[1, m, 1]`` query indices inside the sequence.
        cols: int64 ``[1, 1, n]`` key indices inside the sequence.

    Returns:
        bool ``[bh, m, n]``: True where the probability is kept.

    Example:
        >>> import torch
        >>> keep = dropout_keep(7, 0.5, batch_head=torch.arange(2).view(2, 1, 1),
        ...                     rows=torch.arange(3).view(1, 3, 1), cols=torch.arange(4).view(1, 1, 4))
        >>> keep.shape
        torch.Size([2, 3, 4])
    """
    word = philox_first_word(seed, cols, rows, batch_head)
    uniform = (word >> 8).to(torch.float32) * (2.0 ** -24)
    return uniform >= p
