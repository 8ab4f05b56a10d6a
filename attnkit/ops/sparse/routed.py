"""Routed attention: each query reads its own segment and the ``top_k`` past segments most like it.

Sparse Routed Attention (the zerfoo seed). A document's keys are cut into segments of
``segment_size`` (``S``) tokens, segment ``m`` = tokens ``[m*S, (m+1)*S)``. For query ``t`` (own
segment ``o = t // S``) and KV head ``h``:

1. Centroid of segment ``m``: the mean of its keys (KV head ``h``). Only past segments
   ``m < o`` are routed, and those are complete, so no future token is ever read.
2. Score of ``m``: the cosine similarity ``q . c / max(|q| |c|, 1e-8)`` of the routing query
   with the centroid, **summed over the query heads of h's GQA group** (the group shares its
   segments, so each K/V segment is loaded once per group).
3. The ``min(top_k, o)`` best past segments (equal scores: lower ``m``) plus the own segment
   ``o`` are read; within them attention is causal (keys ``j <= t``).

With ``top_k >= o`` for every query, this is dense causal attention. Routing may use other
queries/keys than the attention (``route_q``/``route_k``, e.g. before RoPE), and passes no
gradient: gradients reach q and the read keys and values only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnkit.ops._checks import check_int
from attnkit.ops.sparse import _validate, backends
from attnkit.ops.sparse.selected import selected_attention
from attnkit.reference import sparse as reference

__all__ = ["route_segments", "routed_attention"]


@dataclass(frozen=True)
class RouteCall:
    """A validated ``route_segments`` call."""

    q: torch.Tensor
    k: torch.Tensor
    segment_size: int
    top_k: int
    cu_seqlens: torch.Tensor | None


def route_segments(
    q: torch.Tensor,
    k: torch.Tensor,
    *,
    segment_size: int,
    top_k: int,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """The segments each query reads (see the module docstring), shared by each GQA group.

    Args:
        q: routing queries ``[b, s, hq, d]`` (packed ``[total, hq, d]`` with ``cu_seqlens``).
        k: routing keys ``[b, s, hk, d]`` (packed ``[total, hk, d]``); centroids are their means.
        segment_size: tokens per segment, ``>= 1``.
        top_k: past segments per query, ``>= 1``.
        cu_seqlens: int32 ``[n + 1]`` token offsets of a packed batch; segments restart at each
            document.
        backend: ``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        int32 ``[b, s, hk, top_k + 1]`` (packed ``[total, hk, top_k + 1]``): ascending segment
        indices (the own segment is the last listed), ``-1`` in unused trailing slots.

    Raises:
        TypeError / ValueError: bad tensors, ``segment_size < 1``, ``top_k < 1``.

    Example:
        >>> q, k = torch.randn(1, 20, 4, 8), torch.randn(1, 20, 2, 8)
        >>> idx = route_segments(q, k, segment_size=4, top_k=2)
        >>> idx.shape, idx[0, 19, 0].tolist()[-1]
        (torch.Size([1, 20, 2, 3]), 4)
    """
    cu = _validate.check_tokens(("q", "k"), (q, k), cu_seqlens)
    _validate.check_heads(q, k)
    check_int("segment_size", segment_size, minimum=1)
    check_int("top_k", top_k, minimum=1)
    _validate.check_backend(backend)
    call = RouteCall(q=q, k=k, segment_size=segment_size, top_k=top_k,
                     cu_seqlens=None if cu is None else cu_seqlens)
    return backends.select("route_segments", call, backend).run(call)


def routed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    segment_size: int,
    top_k: int,
    route_q: torch.Tensor | None = None,
    route_k: torch.Tensor | None = None,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sparse routed attention: ``route_segments`` then ``selected_attention`` over segments.

    Args:
        q, k, v: ``[b, s, hq, d]``, ``[b, s, hk, d]``, ``[b, s, hk, dv]`` (packed
            ``[total, ...]`` with ``cu_seqlens``): what is attended with.
        segment_size: tokens per segment, ``>= 1``.
        top_k: past segments per query, ``>= 1``.
        route_q, route_k: what is routed with, shaped as q and k (default: q and k themselves);
            e.g. the projections before RoPE.
        scale: score scale of the attention; default ``1 / sqrt(d)``.
        cu_seqlens: int32 ``[n + 1]`` token offsets of a packed batch.
        return_lse: also return the log-sum-exp of each row.
        backend: ``"auto"``, ``"triton"`` or ``"reference"`` (for both steps).

    Returns:
        out ``[b, s, hq, dv]`` (packed ``[total, hq, dv]``) in q's dtype; with ``return_lse``,
        also lse float32 ``[b, hq, s]`` (packed ``[hq, total]``).

    Raises:
        TypeError / ValueError: as ``route_segments`` and ``selected_attention``.

    Example:
        >>> q, k, v = torch.randn(2, 30, 4, 8), torch.randn(2, 30, 2, 8), torch.randn(2, 30, 2, 8)
        >>> routed_attention(q, k, v, segment_size=8, top_k=1).shape
        torch.Size([2, 30, 4, 8])
    """
    rq = q if route_q is None else route_q
    rk = k if route_k is None else route_k
    for name, given, like in (("route_q", route_q, q), ("route_k", route_k, k)):
        if isinstance(given, torch.Tensor) and given.shape != like.shape:
            raise ValueError(f"{name} must have the shape of {name[-1]} {list(like.shape)}, got "
                             f"{list(given.shape)}")
    indices = route_segments(rq, rk, segment_size=segment_size, top_k=top_k,
                             cu_seqlens=cu_seqlens, backend=backend)
    return selected_attention(q, k, v, indices, block=segment_size, scale=scale,
                              cu_seqlens=cu_seqlens, return_lse=return_lse, backend=backend)


def _reference_run(call: RouteCall) -> torch.Tensor:
    return reference.route_segments(call.q, call.k, segment_size=call.segment_size,
                                    top_k=call.top_k, cu_seqlens=call.cu_seqlens)


backends.register("route_segments", backends.SparseBackend(
    name="reference", unsupported_reason=lambda call: None, run=_reference_run))
