"""FLOPs and minimum bytes of attention, the numbers behind TFLOP/s and the roofline.

Forward: ``2 * pairs * h * d`` for ``Q K^T`` plus ``2 * pairs * h * dv`` for ``P V``, where
``pairs`` is the number of visible (query, key) pairs; a dense ``[b, s]`` batch with ``dv == d``
gives the usual ``4 * b * h * sq * sk * d``, halved for causal; sliding windows count their visible
area. Backward: 2.5x forward (five matrix products instead of two).

Minimum bytes count each input read once and each output written once: forward reads q, k, v and
writes out and the float32 LSE; backward reads q, k, v, out, dout and the LSE, and writes dq, dk,
dv.

Example:
    >>> from attnkit.bench.cases import AttentionCase
    >>> case = AttentionCase(name="x", batch=1, seq=1024, heads_q=16, heads_kv=16, head_dim=128)
    >>> attention_flops(case, "fwd") == 4 * 1 * 16 * 1024 * 1024 * 128
    True
"""

from __future__ import annotations

from attnkit.bench.cases import AttentionCase
from attnkit.bench.registry import Work

BACKWARD_FACTOR = 2.5


def attention_flops(case: AttentionCase, direction: str) -> float:
    """FLOPs of one forward (``"fwd"``) or backward (``"bwd"``) pass of ``case``.

    Raises:
        ValueError: ``direction`` is neither ``"fwd"`` nor ``"bwd"``.
    """
    fwd = 2.0 * case.visible_pairs() * case.heads_q * (case.head_dim + case.dv)
    if direction == "fwd":
        return fwd
    if direction == "bwd":
        return BACKWARD_FACTOR * fwd
    raise ValueError(f"direction must be 'fwd' or 'bwd', got {direction!r}")


def attention_bytes(case: AttentionCase, direction: str) -> float:
    """The fewest bytes one pass must move through device memory (each tensor once).

    Raises:
        ValueError: ``direction`` is neither ``"fwd"`` nor ``"bwd"``.
    """
    elem = case.torch_dtype.itemsize
    q = case.tokens * case.heads_q * case.head_dim
    k = case.tokens * case.heads_kv * case.head_dim
    v = case.tokens * case.heads_kv * case.dv
    out = case.tokens * case.heads_q * case.dv
    lse = 4 * case.tokens * case.heads_q  # float32
    if direction == "fwd":
        return elem * (q + k + v + out) + lse
    if direction == "bwd":  # read q k v out dout lse, write dq dk dv
        return elem * (2 * (q + k + v) + 2 * out) + lse
    raise ValueError(f"direction must be 'fwd' or 'bwd', got {direction!r}")


def attention_work(case: AttentionCase, direction: str) -> Work:
    """FLOPs and minimum bytes of one pass of ``case``."""
    return Work(flops=attention_flops(case, direction), bytes=attention_bytes(case, direction))
