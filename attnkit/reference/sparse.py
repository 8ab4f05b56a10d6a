"""Reference sparse attention in plain PyTorch: the oracle of the sparse kernels to come.

No validation happens here (``attnkit.ops.sparse`` validates once); arguments are assumed
well-formed. Every op works on self-attention over one sequence per batch row (dense
``[b, s, h, d]``) or over the documents of a packed batch (``[total, h, d]`` with ``cu_seqlens``,
each document on its own, blocks and segments restarting at each document's first token).
Token ``t`` of a document is its query position ``t`` and its key position ``t``.

Scores, softmax and accumulation run in float32 (float64 for float64 inputs); queries are
processed in blocks so memory is O(rows x seq) per block, and a block is recomputed in backward
when there are several (activation checkpointing). Discrete choices (which blocks, tokens or
segments a query reads) are computed without gradient; attention over the chosen keys is exact,
so gradients reach the chosen K/V and the queries, never the choice itself.

Visibility, for query ``t`` and key ``j`` of one document:

- compressed attention (block ``l``, stride ``d``): summary ``i`` covers tokens
  ``[i*d, i*d + l)`` and is visible when ``i*d + l - 1 <= t``;
- selected attention (block ``l'``): ``j <= t`` and ``j // l'`` is one of the row's indices;
- top-f token attention: ``j <= t`` and ``j`` is among the ``f`` best-scoring such keys.

A row that sees nothing gives zeros and LSE ``-inf``, with zero gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.checkpoint import checkpoint

# Rows of queries per block: the score block is [b, hq, rows, seq_k] floats.
_SCORE_BUDGET = 1 << 22
# ``|q| * |c|`` below this counts as this in the cosine similarity of routing.
COSINE_EPS = 1e-8

MaskFn = Callable[[int, int], torch.Tensor]


def num_compressed_blocks(length: int, block: int, stride: int) -> int:
    """Number of complete windows ``[i*stride, i*stride + block)`` in ``length`` tokens."""
    return 0 if length < block else (length - block) // stride + 1


def num_blocks(length: int, block: int) -> int:
    """Number of (possibly partial) blocks of ``block`` tokens covering ``length`` tokens."""
    return -(-length // block)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_per_block(batch: int, heads: int, seq_k: int) -> int:
    return max(16, _SCORE_BUDGET // max(1, batch * heads * max(seq_k, 1)))


def _attend_rows(qb: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of a block of queries over the keys each one sees.

    qb ``[b, m, hk, g, d]``, k ``[b, n, hk, d]``, v ``[b, n, hk, dv]`` (compute dtype), visible
    bool broadcastable to ``[b, hk, g, m, n]``. Returns out ``[b, m, hk * g, dv]`` and lse
    ``[b, hk * g, m]``.
    """
    b, m, hk, g, _ = qb.shape
    s = torch.einsum("bmhgd,bnhd->bhgmn", qb, k) * scale  # [b, hk, g, m, n]
    s = s.masked_fill(~visible, float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True).detach()  # [b, hk, g, m, 1]
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(s - row_max)
    denom = p.sum(dim=-1, keepdim=True)
    seen = denom > 0
    safe = torch.where(seen, denom, torch.ones_like(denom))
    lse = torch.where(seen, row_max + torch.log(safe), torch.full_like(denom, float("-inf")))
    out = torch.einsum("bhgmn,bnhd->bmhgd", p / safe, v)  # [b, m, hk, g, dv]
    return out.reshape(b, m, hk * g, v.shape[-1]), lse.reshape(b, hk * g, m)


def _attend_masked_rows(qb: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_fn: MaskFn,
                        start: int, stop: int, scale: float
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    return _attend_rows(qb, k, v, mask_fn(start, stop), scale)


def _masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_fn: MaskFn,
                      scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``[b, s, h, d]`` attention where ``mask_fn(start, stop)`` gives each row block's keys.

    ``mask_fn`` returns bool broadcastable to ``[b, hk, g, stop - start, n]``. Returns out in q's
    dtype ``[b, s, hq, dv]`` and lse (float32; float64 for float64) ``[b, hq, s]``.
    """
    b, sq, hq, d = q.shape
    n, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    cdt = _compute_dtype(q.dtype)
    if sq == 0 or n == 0:
        anchor = (q.sum() + k.sum() + v.sum()) * 0  # keep the graph attached
        out = torch.zeros(b, sq, hq, dv, dtype=q.dtype, device=q.device) + anchor.to(q.dtype)
        lse = torch.full((b, hq, sq), float("-inf"), dtype=cdt, device=q.device)
        return out, lse
    qg = q.to(cdt).view(b, sq, hk, hq // hk, d)  # [b, s, hk, g, d]; K/V never repeated
    kc, vc = k.to(cdt), v.to(cdt)
    rows = _rows_per_block(b, hq, n)
    recompute = torch.is_grad_enabled() and sq > rows and (
        q.requires_grad or k.requires_grad or v.requires_grad)
    outs, lses = [], []
    for start in range(0, sq, rows):
        stop = min(sq, start + rows)
        if recompute:  # the mask is rebuilt in backward too, never stored
            o, lse = checkpoint(_attend_masked_rows, qg[:, start:stop], kc, vc, mask_fn, start,
                                stop, scale, use_reentrant=False)
        else:
            o, lse = _attend_masked_rows(qg[:, start:stop], kc, vc, mask_fn, start, stop, scale)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs, dim=1).to(q.dtype), torch.cat(lses, dim=2)


def _per_document(fn: Callable[..., tuple[torch.Tensor, ...]],
                  parts: list[tuple[torch.Tensor, list[int]]],
                  token_major: tuple[bool, ...]) -> tuple[torch.Tensor, ...]:
    """Run ``fn`` on each document of a packed batch and concatenate the results.

    ``parts``: (packed tensor ``[total, ...]``, its cumulative offsets) pairs; document ``i`` of
    each is ``tensor[cu[i]:cu[i + 1]]``, given to ``fn`` with a batch dim of 1. ``fn`` returns a
    tuple; result ``r`` is concatenated along dim 0 (``token_major[r]``: outputs ``[1, s, ...]``)
    or along its last dim (LSE ``[1, h, s]``).
    """
    docs = len(parts[0][1]) - 1
    results: list[list[torch.Tensor]] = [[] for _ in token_major]
    for i in range(docs):
        args = [t[cu[i]:cu[i + 1]].unsqueeze(0) for t, cu in parts]
        for r, value in enumerate(fn(*args)):
            results[r].append(value[0])
    return tuple(torch.cat(vals, dim=0 if major else -1)
                 for vals, major in zip(results, token_major))


def _compressed_cu(cu: list[int], block: int, stride: int) -> list[int]:
    out = [0]
    for a, b in zip(cu[:-1], cu[1:]):
        out.append(out[-1] + num_compressed_blocks(b - a, block, stride))
    return out


# ---------------------------------------------------------------------------------------------
# compressed attention


def compressed_attention(q: torch.Tensor, k_cmp: torch.Tensor, v_cmp: torch.Tensor, *,
                         block: int, stride: int, scale: float,
                         cu_seqlens: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over block summaries; summary ``i`` is visible to ``t`` once it has ended.

    Summary ``i`` covers tokens ``[i*stride, i*stride + block)``: visible when
    ``i*stride + block - 1 <= t``.

    Args:
        q: ``[b, s, hq, d]`` (packed ``[total, hq, d]``).
        k_cmp, v_cmp: ``[b, nc, hk, d]`` / ``[b, nc, hk, dv]`` with
            ``nc = num_compressed_blocks(s, block, stride)`` (packed: each document's summaries
            in order, ``[sum of nc_i, hk, d]``).
        cu_seqlens: int32 ``[n + 1]`` token offsets of a packed batch.

    Returns:
        ``(out, lse)``: ``[b, s, hq, dv]`` in q's dtype and ``[b, hq, s]`` (packed
        ``[total, hq, dv]`` and ``[hq, total]``).
    """
    def one(q1, k1, v1):
        def mask(start, stop):
            t = torch.arange(start, stop, device=q1.device).view(-1, 1)  # [m, 1]
            last = torch.arange(k1.shape[1], device=q1.device).view(1, -1) * stride + block - 1
            return last <= t  # [m, nc]
        return _masked_attention(q1, k1, v1, mask, scale)

    if cu_seqlens is None:
        return one(q, k_cmp, v_cmp)
    cu = cu_seqlens.tolist()
    cu_c = _compressed_cu(cu, block, stride)
    return _per_document(one, [(q, cu), (k_cmp, cu_c), (v_cmp, cu_c)], (True, False))


# ---------------------------------------------------------------------------------------------
# block selection from the compression attention


def overlap_weights(num_cmp: int, num_sel: int, *, block: int, stride: int, select_block: int,
                    device: torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``W[i, j]``: stride chunks shared by compression window ``i`` and selection block ``j``.

    Window ``i`` covers ``[i*stride, i*stride + block)``, selection block ``j`` covers
    ``[j*select_block, (j+1)*select_block)``; ``W[i, j] = |overlap| / stride``. Returns
    ``[num_cmp, num_sel]``.
    """
    lo = torch.arange(num_cmp, device=device).view(-1, 1) * stride  # [nc, 1]
    j0 = torch.arange(num_sel, device=device).view(1, -1) * select_block  # [1, nb]
    overlap = (torch.minimum(lo + block, j0 + select_block) - torch.maximum(lo, j0)).clamp(min=0)
    return (overlap // stride).to(dtype)


def _compression_probs(qb: torch.Tensor, k_cmp: torch.Tensor, start: int, *, block: int,
                       stride: int, scale: float) -> torch.Tensor:
    """Compression attention probabilities ``[b, hk, g, m, nc]`` of rows ``start:start+m``."""
    m, nc = qb.shape[1], k_cmp.shape[1]
    if nc == 0:
        return qb.new_zeros(*qb.shape[:1], qb.shape[2], qb.shape[3], m, 0)
    s = torch.einsum("bmhgd,bnhd->bhgmn", qb, k_cmp) * scale
    t = torch.arange(start, start + m, device=qb.device).view(-1, 1)
    last = torch.arange(nc, device=qb.device).view(1, -1) * stride + block - 1
    s = s.masked_fill(~(last <= t), float("-inf"))
    row_max = s.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(s - row_max)
    denom = p.sum(dim=-1, keepdim=True)
    return p / torch.where(denom > 0, denom, torch.ones_like(denom))


def _top_rows(scores: torch.Tensor, count: torch.Tensor, width: int) -> torch.Tensor:
    """Indices of the ``count`` best entries of each row of ``scores`` ``[..., m, n]``.

    Higher score first; equal scores: lower index first (stable sort). Returns int64
    ``[..., m, width]`` sorted ascending, unused slots -1 at the end; ``count`` ``[m]``.
    """
    n = scores.shape[-1]
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices  # [..., m, n]
    if n < width:
        pad = torch.full((*order.shape[:-1], width - n), n, dtype=order.dtype, device=order.device)
        order = torch.cat((order, pad), dim=-1)
    chosen = order[..., :width]
    slot = torch.arange(width, device=scores.device)
    chosen = torch.where(slot < count.view(-1, 1), chosen, torch.full_like(chosen, n))
    chosen = torch.sort(chosen, dim=-1).values  # ascending, the unused (= n) last
    return torch.where(chosen == n, torch.full_like(chosen, -1), chosen)


def select_blocks(q: torch.Tensor, k_cmp: torch.Tensor, *, compress_block: int,
                  compress_stride: int, select_block: int, num_selected: int, init_blocks: int,
                  local_blocks: int, scale: float,
                  cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """The selection blocks each query reads, shared by the query heads of a KV group.

    Score of selection block ``j`` for query ``t`` and KV head ``h``: the compression attention
    probabilities of ``t`` summed over ``h``'s query heads, then over compression windows ``i``
    weighted by ``overlap_weights``. Candidates are blocks ``j <= t // select_block``; blocks
    ``j < init_blocks`` and ``t // select_block - local_blocks < j`` are always taken; the rest
    of the ``num_selected`` slots go to the best scores (ties: lower ``j``).

    Returns:
        int32 ``[b, s, hk, num_selected]`` (packed ``[total, hk, num_selected]``), ascending,
        ``-1`` padding for the ``max(0, num_selected - (t // select_block + 1))`` unused slots.
    """
    def one(q1, k1):
        b, s, hq, d = q1.shape
        hk = k1.shape[2]
        cdt = _compute_dtype(q1.dtype)
        qg = q1.to(cdt).view(b, s, hk, hq // hk, d)
        kc = k1.to(cdt)
        nb = num_blocks(s, select_block)
        weights = overlap_weights(k1.shape[1], nb, block=compress_block, stride=compress_stride,
                                  select_block=select_block, device=q1.device, dtype=cdt)
        rows = _rows_per_block(b, hq, max(nb, k1.shape[1]))
        picks = []
        for start in range(0, s, rows):
            stop = min(s, start + rows)
            p = _compression_probs(qg[:, start:stop], kc, start, block=compress_block,
                                   stride=compress_stride, scale=scale)  # [b, hk, g, m, nc]
            score = p.sum(dim=2) @ weights  # [b, hk, m, nb]
            own = torch.arange(start, stop, device=q1.device) // select_block  # [m]
            j = torch.arange(nb, device=q1.device).view(1, -1)  # [1, nb]
            forced = (j < init_blocks) | ((j <= own.view(-1, 1))
                                          & (j > own.view(-1, 1) - local_blocks))
            score = torch.where(forced, torch.full_like(score, float("inf")), score)
            score = score.masked_fill(j > own.view(-1, 1), float("-inf"))
            count = torch.clamp(own + 1, max=num_selected)
            picks.append(_top_rows(score, count, num_selected))  # [b, hk, m, n]
        idx = torch.cat(picks, dim=2) if picks else torch.empty(
            b, hk, 0, num_selected, dtype=torch.int64, device=q1.device)
        return (idx.permute(0, 2, 1, 3).to(torch.int32),)  # [b, s, hk, n]

    with torch.no_grad():
        if cu_seqlens is None:
            return one(q, k_cmp)[0]
        cu = cu_seqlens.tolist()
        cu_c = _compressed_cu(cu, compress_block, compress_stride)
        return _per_document(one, [(q, cu), (k_cmp, cu_c)], (True,))[0]


# ---------------------------------------------------------------------------------------------
# attention over selected blocks


def selected_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       block_indices: torch.Tensor, *, block: int, scale: float,
                       cu_seqlens: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of each query over the tokens of its listed blocks.

    Args:
        q, k, v: ``[b, s, hq, d]``, ``[b, s, hk, d]``, ``[b, s, hk, dv]`` (packed ``[total, ...]``).
        block_indices: int ``[b, s, hk, n]`` (packed ``[total, hk, n]``): block ``i`` holds tokens
            ``[i*block, (i+1)*block)`` of the document; ``-1`` = unused slot.

    Returns:
        ``(out, lse)`` as ``compressed_attention``.
    """
    def one(q1, k1, v1, idx1):
        s, hk = k1.shape[1], k1.shape[2]
        nb = num_blocks(s, block)
        token_block = torch.arange(s, device=q1.device) // block  # [s]
        idx_all = torch.where(idx1 < 0, torch.full_like(idx1, nb), idx1).long()  # [b, s, hk, n]

        def mask(start, stop):
            rows = idx_all[:, start:stop].permute(0, 2, 1, 3)  # [b, hk, m, n]
            listed = torch.zeros(*rows.shape[:-1], nb + 1, dtype=torch.bool, device=q1.device)
            listed.scatter_(-1, rows, True)  # [b, hk, m, nb + 1]
            tokens = listed[..., token_block]  # [b, hk, m, s]
            t = torch.arange(start, stop, device=q1.device).view(-1, 1)
            causal = torch.arange(s, device=q1.device).view(1, -1) <= t  # [m, s]
            return (tokens & causal).view(-1, hk, 1, stop - start, s)

        return _masked_attention(q1, k1, v1, mask, scale)

    if cu_seqlens is None:
        return one(q, k, v, block_indices)
    cu = cu_seqlens.tolist()
    return _per_document(one, [(q, cu), (k, cu), (v, cu), (block_indices, cu)], (True, False))


# ---------------------------------------------------------------------------------------------
# fine top-f token selection attention


def topk_token_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, top_tokens: int,
                         scale: float, cu_seqlens: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal attention of each query head over its ``top_tokens`` best-scoring keys.

    A query head at ``t`` ranks keys ``j <= t`` by ``scale * q . k`` (computed in float32, or
    float64 for float64 inputs; ties: lower ``j``), keeps the ``min(top_tokens, t + 1)`` best
    and attends to them only.

    Returns:
        ``(out, lse)`` as ``compressed_attention``.
    """
    def one(q1, k1, v1):
        b, s, hq, d = q1.shape
        hk = k1.shape[2]
        cdt = _compute_dtype(q1.dtype)

        def mask(start, stop):
            with torch.no_grad():
                qb = q1[:, start:stop].to(cdt).view(b, stop - start, hk, hq // hk, d)
                sc = torch.einsum("bmhgd,bnhd->bhgmn", qb, k1.to(cdt)) * scale
                t = torch.arange(start, stop, device=q1.device).view(-1, 1)
                causal = torch.arange(s, device=q1.device).view(1, -1) <= t  # [m, s]
                sc = sc.masked_fill(~causal, float("-inf"))
                count = torch.clamp(t.view(-1) + 1, max=top_tokens)
                top = _top_rows(sc, count, top_tokens)  # [b, hk, g, m, f]
                keep = torch.zeros(*sc.shape[:-1], s + 1, dtype=torch.bool, device=q1.device)
                keep.scatter_(-1, torch.where(top < 0, torch.full_like(top, s), top), True)
                return keep[..., :s] & causal

        return _masked_attention(q1, k1, v1, mask, scale)

    if cu_seqlens is None:
        return one(q, k, v)
    cu = cu_seqlens.tolist()
    return _per_document(one, [(q, cu), (k, cu), (v, cu)], (True, False))


# ---------------------------------------------------------------------------------------------
# routing to segments


def route_segments(q: torch.Tensor, k: torch.Tensor, *, segment_size: int, top_k: int,
                   cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """The segments each query reads: its own, and the ``top_k`` past ones most like it.

    Segment ``m`` holds tokens ``[m*S, (m+1)*S)``; its centroid is the mean of its keys (per KV
    head). Query ``t`` (own segment ``t // S``) scores each past segment ``m < t // S`` by the
    cosine similarity ``q . c / max(|q| |c|, COSINE_EPS)`` summed over the query heads of the KV
    group, and keeps the ``min(top_k, t // S)`` best (ties: lower ``m``).

    Returns:
        int32 ``[b, s, hk, top_k + 1]`` (packed ``[total, hk, top_k + 1]``), ascending, ``-1``
        padding at the end.
    """
    def one(q1, k1):
        b, s, hq, d = q1.shape
        hk = k1.shape[2]
        cdt = _compute_dtype(q1.dtype)
        nseg = num_blocks(s, segment_size)
        seg = torch.arange(s, device=q1.device) // segment_size  # [s]
        kc = k1.to(cdt)
        sums = torch.zeros(b, nseg, hk, d, dtype=cdt, device=q1.device)
        sums.index_add_(1, seg, kc)
        sizes = torch.bincount(seg, minlength=nseg).to(cdt).view(1, -1, 1, 1)
        centroid = sums / sizes  # [b, nseg, hk, d]
        qg = q1.to(cdt).view(b, s, hk, hq // hk, d)
        dots = torch.einsum("bshgd,bmhd->bhgsm", qg, centroid)  # [b, hk, g, s, nseg]
        norms = qg.norm(dim=-1).permute(0, 2, 3, 1).unsqueeze(-1) * centroid.norm(
            dim=-1).permute(0, 2, 1).view(b, hk, 1, 1, nseg)
        cosine = (dots / norms.clamp(min=COSINE_EPS)).sum(dim=2)  # [b, hk, s, nseg]
        m = torch.arange(nseg, device=q1.device).view(1, -1)
        own = seg.view(-1, 1)
        forced = m == own
        score = torch.where(forced, torch.full_like(cosine, float("inf")), cosine)
        score = score.masked_fill(m > own, float("-inf"))
        count = torch.clamp(seg, max=top_k) + 1
        idx = _top_rows(score, count, top_k + 1)  # [b, hk, s, top_k + 1]
        return (idx.permute(0, 2, 1, 3).to(torch.int32),)

    with torch.no_grad():
        if cu_seqlens is None:
            return one(q, k)[0]
        cu = cu_seqlens.tolist()
        return _per_document(one, [(q, cu), (k, cu)], (True,))[0]
