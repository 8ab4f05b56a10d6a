"""Block selection: which key blocks each query reads, chosen from the compression attention.

NSA's selection rule (Yuan et al. 2025), spelled out. A sequence's keys are cut into selection
blocks of ``select_block`` (``l'``) tokens, block ``j`` = tokens ``[j*l', (j+1)*l')`` (the last one
may be partial). For query ``t`` and KV head ``h``:

1. ``p[i]``: the compression attention probabilities of ``t`` over the summaries it sees
   (``compressed_attention``'s softmax, scale included), **summed over the query heads of h's
   GQA group**, so the group reads one set of blocks and K/V are loaded once per group.
2. Block scores ``score[j] = sum_i W[i, j] * p[i]``, where ``W[i, j]`` is the number of
   ``compress_stride`` chunks shared by compression window ``i`` (tokens
   ``[i*stride, i*stride + block)``) and selection block ``j``: the paper's Eq. 9 double sum,
   indexed by token ranges. With ``block == stride == select_block``, ``score = p``.
3. Candidates: blocks ``j <= t // l'`` (blocks holding at least one token ``<= t``).
4. Always taken: the first ``init_blocks`` blocks and the ``local_blocks`` blocks ending at the
   query's own block (``t // l' - local_blocks < j <= t // l'``); the paper's default is one
   initial and two local blocks, within ``n = 16``.
5. The remaining of the ``n = num_selected`` slots go to the highest scores; equal scores go to
   the lower block index (exact float equality, e.g. the all-zero scores of queries that see no
   summary yet).

A query has ``min(n, t // l' + 1)`` blocks; ``selected_attention`` then masks tokens after ``t``.
The selection is discrete and carries no gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnkit.ops._checks import check_int, check_scale, check_tensor
from attnkit.ops.sparse import _validate, backends
from attnkit.reference import sparse as reference

__all__ = ["select_blocks"]


@dataclass(frozen=True)
class SelectCall:
    """A validated ``select_blocks`` call."""

    q: torch.Tensor
    k_cmp: torch.Tensor
    compress_block: int
    compress_stride: int
    select_block: int
    num_selected: int
    init_blocks: int
    local_blocks: int
    scale: float
    cu_seqlens: torch.Tensor | None


def select_blocks(
    q: torch.Tensor,
    k_cmp: torch.Tensor,
    *,
    compress_block: int,
    compress_stride: int,
    select_block: int,
    num_selected: int,
    init_blocks: int = 1,
    local_blocks: int = 2,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """NSA block indices for every query, shared by each GQA group (see the module docstring).

    Args:
        q: queries ``[b, s, hq, d]`` (packed ``[total, hq, d]`` with ``cu_seqlens``).
        k_cmp: summary keys, as for ``compressed_attention``: ``[b, nc, hk, d]`` (packed
            ``[sum_i nc_i, hk, d]``).
        compress_block, compress_stride: the compression windows (``stride <= block``, stride
            divides block).
        select_block: tokens per selection block, a multiple of ``compress_stride``.
        num_selected: blocks per query ``n``, ``>= init_blocks + local_blocks`` and ``>= 1``.
        init_blocks: leading blocks always selected (attention sink), ``>= 0``.
        local_blocks: blocks ending at the query's own block always selected, ``>= 0``.
        scale: the compression attention's score scale; default ``1 / sqrt(d)``.
        cu_seqlens: int32 ``[n + 1]`` token offsets of a packed batch; blocks restart at each
            document.
        backend: ``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        int32 ``[b, s, hk, num_selected]`` (packed ``[total, hk, num_selected]``): ascending
        block indices, ``-1`` in the unused trailing slots. Never requires grad.

    Raises:
        TypeError / ValueError: bad tensors (as ``compressed_attention``) or configuration,
            e.g. ``select_block`` not a multiple of ``compress_stride``, ``num_selected`` below
            ``init_blocks + local_blocks``.

    Example:
        >>> q, k_cmp = torch.randn(1, 100, 4, 16), torch.randn(1, 11, 2, 16)
        >>> idx = select_blocks(q, k_cmp, compress_block=16, compress_stride=8, select_block=16,
        ...                     num_selected=3)
        >>> idx.shape, idx[0, 99, 0].tolist()[0]
        (torch.Size([1, 100, 2, 3]), 0)
    """
    check_tensor("q", q)
    check_tensor("k_cmp", k_cmp)
    _validate.check_block_config(compress_block, compress_stride, select_block)
    check_int("num_selected", num_selected, minimum=1)
    check_int("init_blocks", init_blocks, minimum=0)
    check_int("local_blocks", local_blocks, minimum=0)
    if num_selected < init_blocks + local_blocks:
        raise ValueError(f"num_selected ({num_selected}) must be >= init_blocks + local_blocks "
                         f"({init_blocks} + {local_blocks}): the always-selected blocks must fit")
    _validate.check_backend(backend)
    # shapes: compressed attention's layout rules, with k_cmp standing in for v_cmp
    cu = _validate.check_compressed_layout(q, k_cmp, k_cmp, cu_seqlens, compress_block,
                                           compress_stride)
    _validate.check_heads(q, k_cmp)
    call = SelectCall(q=q, k_cmp=k_cmp, compress_block=compress_block,
                      compress_stride=compress_stride, select_block=select_block,
                      num_selected=num_selected, init_blocks=init_blocks,
                      local_blocks=local_blocks,
                      scale=check_scale(scale, q.shape[-1]),
                      cu_seqlens=None if cu is None else cu_seqlens)
    return backends.select("select_blocks", call, backend).run(call)


def _reference_run(call: SelectCall) -> torch.Tensor:
    return reference.select_blocks(
        call.q, call.k_cmp, compress_block=call.compress_block,
        compress_stride=call.compress_stride, select_block=call.select_block,
        num_selected=call.num_selected, init_blocks=call.init_blocks,
        local_blocks=call.local_blocks, scale=call.scale, cu_seqlens=call.cu_seqlens)


backends.register("select_blocks", backends.SparseBackend(
    name="reference", unsupported_reason=lambda call: None, run=_reference_run))
