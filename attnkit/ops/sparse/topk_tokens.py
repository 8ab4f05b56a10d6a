"""Top-f token attention: each query head attends to its ``f`` best-scoring past keys.

The fine-grained token selection of the zerfoo NSA variant. For query head ``h`` at position
``t``, every key ``j <= t`` (of the same document) is scored ``scale * q . k`` (computed in
float32, float64 for float64 inputs); the ``min(f, t + 1)`` highest scores are kept (equal
scores: lower ``j`` first) and the softmax runs over those keys only. Unlike block selection,
each query head chooses its own keys (GQA: the K/V head is shared, the choice is not).

Gradients are exact for q and the chosen keys and values given the choice; the choice itself
(a top-f) passes no gradient. Cost is that of dense attention: this op defines the semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnkit.ops._checks import check_int, check_scale
from attnkit.ops.sparse import _validate, backends
from attnkit.reference import sparse as reference

__all__ = ["topk_token_attention"]


@dataclass(frozen=True)
class TopkCall:
    """A validated ``topk_token_attention`` call."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    top_tokens: int
    scale: float
    cu_seqlens: torch.Tensor | None


def topk_token_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    top_tokens: int,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal attention restricted to each query head's ``top_tokens`` best keys.

    Args:
        q: ``[b, s, hq, d]`` (packed ``[total, hq, d]`` with ``cu_seqlens``).
        k: ``[b, s, hk, d]`` (packed ``[total, hk, d]``), the same tokens as q.
        v: ``[b, s, hk, dv]`` (packed ``[total, hk, dv]``).
        top_tokens: keys kept per query head, ``>= 1``.
        scale: score scale (ranking and softmax); default ``1 / sqrt(d)``.
        cu_seqlens: int32 ``[n + 1]`` token offsets of a packed batch.
        return_lse: also return the log-sum-exp of each row (over the kept keys).
        backend: ``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        out ``[b, s, hq, dv]`` (packed ``[total, hq, dv]``) in q's dtype; with ``return_lse``,
        also lse float32 ``[b, hq, s]`` (packed ``[hq, total]``).

    Raises:
        TypeError / ValueError: bad tensors (as ``selected_attention``), ``top_tokens < 1``,
            a backend that cannot serve it.

    Example:
        >>> q, k, v = torch.randn(2, 9, 4, 8), torch.randn(2, 9, 1, 8), torch.randn(2, 9, 1, 8)
        >>> topk_token_attention(q, k, v, top_tokens=3).shape
        torch.Size([2, 9, 4, 8])
    """
    cu = _validate.check_tokens(("q", "k", "v"), (q, k, v), cu_seqlens)
    _validate.check_heads(q, k, v)
    check_int("top_tokens", top_tokens, minimum=1)
    _validate.check_bool("return_lse", return_lse)
    _validate.check_backend(backend)
    call = TopkCall(q=q, k=k, v=v, top_tokens=top_tokens,
                    scale=check_scale(scale, q.shape[-1]),
                    cu_seqlens=None if cu is None else cu_seqlens)
    out, lse = backends.select("topk_token_attention", call, backend).run(call)
    return (out, lse.float()) if return_lse else out


def _reference_run(call: TopkCall) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.topk_token_attention(call.q, call.k, call.v, top_tokens=call.top_tokens,
                                          scale=call.scale, cu_seqlens=call.cu_seqlens)


backends.register("topk_token_attention", backends.SparseBackend(
    name="reference", unsupported_reason=lambda call: None, run=_reference_run))
