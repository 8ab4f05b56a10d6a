"""Selected-block attention: each query attends causally to the tokens of its listed blocks.

The attention step of NSA's selection branch and of routed attention. Keys are cut into blocks of
``block`` tokens (block ``i`` = tokens ``[i*block, (i+1)*block)`` of the document, the last one
possibly partial). Query ``t`` with KV head ``h`` attends to key ``j`` when ``j <= t`` and
``j // block`` is listed in ``block_indices[..., t, h, :]``; all query heads of the GQA group of
``h`` read the same blocks. ``-1`` marks an unused slot. For ``block=2`` and a query at ``t=6``
listing blocks ``[0, 3]``::

    key j:   0 1 2 3 4 5 6 7
    t = 6    x x . . . . x .      (block 3 = keys 6, 7; key 7 is in the future)

Gradients: exact for q and for the keys and values of the listed blocks; the indices are data,
never differentiated (the straight-through rule of NSA's selection).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnkit.ops._checks import check_int, check_scale
from attnkit.ops.sparse import _validate, backends
from attnkit.reference import sparse as reference

__all__ = ["selected_attention"]


@dataclass(frozen=True)
class SelectedCall:
    """A validated ``selected_attention`` call."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    block_indices: torch.Tensor
    block: int
    scale: float
    cu_seqlens: torch.Tensor | None


def selected_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_indices: torch.Tensor,
    *,
    block: int,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal block-sparse attention given each query's blocks (see the module docstring).

    Args:
        q: ``[b, s, hq, d]`` (packed ``[total, hq, d]`` with ``cu_seqlens``).
        k: ``[b, s, hk, d]`` (packed ``[total, hk, d]``), the same tokens as q.
        v: ``[b, s, hk, dv]`` (packed ``[total, hk, dv]``).
        block_indices: int32/int64 ``[b, s, hk, n]`` (packed ``[total, hk, n]``): blocks of the
            query's document (``0 <= i < ceil(len / block)``) or ``-1``; each block at most once
            per row, any order. From ``select_blocks`` or ``route_segments``.
        block: tokens per block, ``>= 1``.
        scale: score scale; default ``1 / sqrt(d)``.
        cu_seqlens: int32 ``[n + 1]`` token offsets of a packed batch.
        return_lse: also return the log-sum-exp of each row.
        backend: ``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        out ``[b, s, hq, dv]`` (packed ``[total, hq, dv]``) in q's dtype; with ``return_lse``,
        also lse float32 ``[b, hq, s]`` (packed ``[hq, total]``). A row that lists no block at or
        before ``t`` gives zeros and lse ``-inf``.

    Raises:
        TypeError: non-tensor or non-float q/k/v, mismatched dtypes, non-integer indices.
        ValueError: wrong ranks or shapes, head counts, devices; indices out of range or
            repeated within a row; ``block < 1``; a backend that cannot serve it.

    Example:
        >>> q, k, v = torch.randn(1, 10, 4, 8), torch.randn(1, 10, 2, 8), torch.randn(1, 10, 2, 8)
        >>> idx = torch.tensor([0, -1], dtype=torch.int32).expand(1, 10, 2, 2)
        >>> selected_attention(q, k, v, idx, block=4).shape   # every query reads keys 0..3
        torch.Size([1, 10, 4, 8])
    """
    cu = _validate.check_tokens(("q", "k", "v"), (q, k, v), cu_seqlens)
    _validate.check_heads(q, k, v)
    check_int("block", block, minimum=1)
    _validate.check_bool("return_lse", return_lse)
    _validate.check_backend(backend)
    limits = _validate.blocks_per_token(q, cu, block)
    _validate.check_index_tensor("block_indices", block_indices, q, k.shape[-2], limits)
    call = SelectedCall(q=q, k=k, v=v, block_indices=block_indices, block=block,
                        scale=check_scale(scale, q.shape[-1]),
                        cu_seqlens=None if cu is None else cu_seqlens)
    out, lse = backends.select("selected_attention", call, backend).run(call)
    return (out, lse.float()) if return_lse else out


def _reference_run(call: SelectedCall) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.selected_attention(call.q, call.k, call.v, call.block_indices,
                                        block=call.block, scale=call.scale,
                                        cu_seqlens=call.cu_seqlens)


backends.register("selected_attention", backends.SparseBackend(
    name="reference", unsupported_reason=lambda call: None, run=_reference_run))
