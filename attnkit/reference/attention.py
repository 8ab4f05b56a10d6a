"""Reference attention in plain PyTorch: the oracle every attnkit kernel is tested against.

No validation happens here (the public op in ``attnkit.ops`` validates once); arguments are
assumed well-formed. Scores, softmax and accumulation run in float32 (float64 for float64
inputs). Queries are processed in blocks, so memory is O(block x seq_k) rather than
O(seq_q x seq_k); with gradients each block is recomputed in backward (activation checkpointing),
keeping that bound in training too. Autograd through these functions gives every gradient.

Visibility of key ``j`` to query ``i`` (``offset = seq_k - seq_q``, bottom-right alignment) is the
intersection of every mask given::

    causal:            j <= i + offset
    window (l, r):     i + offset - l <= j <= i + offset + r    (-1 = unbounded side)
    key_padding_mask:  key_padding_mask[b, j]
    bool attn_mask:    attn_mask[b, h, i, j]

A float ``attn_mask`` is added to the (softcapped) scores instead. A row that sees no key gives
zeros and LSE ``-inf``; its gradients are zero.
"""

from __future__ import annotations

import math

import torch
from torch.utils.checkpoint import checkpoint

from attnkit.reference.philox import dropout_keep

# Rows of queries per block; the score block is [b, hq, block, seq_k] floats.
_SCORE_BUDGET = 1 << 24


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block_rows(batch: int, heads: int, seq_k: int) -> int:
    per_row = max(1, batch * heads * max(seq_k, 1))
    return max(16, min(4096, _SCORE_BUDGET // per_row))


def _visible(rows: torch.Tensor, seq_q: int, seq_k: int, causal: bool,
             window: tuple[int, int]) -> torch.Tensor | None:
    """Bool ``[m, seq_k]`` of positional visibility for query indices ``rows``, or None if all."""
    if not causal and window == (-1, -1):
        return None
    diag = rows.view(-1, 1) + (seq_k - seq_q)  # [m, 1] key index aligned with each query
    cols = torch.arange(seq_k, device=rows.device).view(1, -1)  # [1, sk]
    vis = torch.ones(rows.numel(), seq_k, dtype=torch.bool, device=rows.device)
    left, right = window
    if causal:
        vis &= cols <= diag
    if left >= 0:
        vis &= cols >= diag - left
    if right >= 0:
        vis &= cols <= diag + right
    return vis


def _mask_rows(mask: torch.Tensor, start: int, stop: int, kv_heads: int) -> torch.Tensor:
    """Slice a 4-D mask ``[B, H, Sq, Sk]`` (dims may be 1) to rows and group its heads.

    Returns ``[B, hk or 1, g or 1, m or 1, Sk]`` to broadcast against grouped scores.
    """
    rows = mask if mask.shape[2] == 1 else mask[:, :, start:stop]
    b, h, m, n = rows.shape
    if h == 1:
        return rows.view(b, 1, 1, m, n)
    return rows.view(b, kv_heads, h // kv_heads, m, n)


def _block(qb: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, *, seq_q: int,
           causal: bool, window: tuple[int, int], scale: float, softcap: float,
           key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None,
           dropout_p: float, dropout_seed: int, batch_index: int | None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of one block of queries against all keys.

    qb ``[b, m, hk, g, d]``, k ``[b, sk, hk, d]``, v ``[b, sk, hk, dv]`` in the compute dtype.
    Returns out ``[b, m, hk * g, dv]`` and lse ``[b, hk * g, m]``.
    """
    b, m, hk, g, _ = qb.shape
    sk = k.shape[1]
    rows = torch.arange(start, start + m, device=qb.device)
    s = torch.einsum("bmhgd,bnhd->bhgmn", qb, k) * scale  # [b, hk, g, m, sk]
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    visible = _visible(rows, seq_q, sk, causal, window)
    if visible is not None:
        s = s.masked_fill(~visible, float("-inf"))
    if key_padding_mask is not None:
        s = s.masked_fill(~key_padding_mask.view(b, 1, 1, 1, sk), float("-inf"))
    if attn_mask is not None:
        block_mask = _mask_rows(attn_mask, start, start + m, hk)
        if block_mask.dtype == torch.bool:
            s = s.masked_fill(~block_mask, float("-inf"))
        else:
            s = s + block_mask.to(s.dtype)
    row_max = s.amax(dim=-1, keepdim=True).detach()  # [b, hk, g, m, 1]
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(s - row_max)
    denom = p.sum(dim=-1, keepdim=True)
    seen = denom > 0
    safe = torch.where(seen, denom, torch.ones_like(denom))
    lse = torch.where(seen, row_max + torch.log(safe), torch.full_like(denom, float("-inf")))
    p = p / safe
    if dropout_p > 0:
        heads = hk * g
        batches = torch.arange(b, device=qb.device) if batch_index is None else torch.full(
            (b,), batch_index, device=qb.device)
        batch_head = (batches.view(b, 1) * heads + torch.arange(heads, device=qb.device)).view(-1, 1, 1)
        keep = dropout_keep(dropout_seed, dropout_p, batch_head=batch_head,
                            rows=rows.view(1, -1, 1),
                            cols=torch.arange(sk, device=qb.device).view(1, 1, -1))
        p = p * keep.view(b, hk, g, m, sk).to(p.dtype) / (1.0 - dropout_p)
    out = torch.einsum("bhgmn,bnhd->bmhgd", p, v)  # [b, m, hk, g, dv]
    return out.reshape(b, m, hk * g, v.shape[-1]), lse.reshape(b, hk * g, m)


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, batch_index: int | None = None,
           **opts) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``[b, s, h, d]`` attention; returns out in q's dtype and float32 lse ``[b, hq, sq]``."""
    b, sq, hq, d = q.shape
    sk, hk, dv = k.shape[1], k.shape[2], v.shape[-1]
    cdt = _compute_dtype(q.dtype)
    lse_dtype = torch.float64 if cdt == torch.float64 else torch.float32
    if sk == 0 or sq == 0:
        # No key to see (or no query): zeros and -inf, still attached to the graph.
        anchor = (q.sum() + k.sum() + v.sum()) * 0
        out = torch.zeros(b, sq, hq, dv, dtype=q.dtype, device=q.device) + anchor.to(q.dtype)
        lse = torch.full((b, hq, sq), float("-inf"), dtype=lse_dtype, device=q.device)
        return out, lse
    qg = q.to(cdt).view(b, sq, hk, hq // hk, d)  # [b, sq, hk, g, d], no copy of K/V
    kc, vc = k.to(cdt), v.to(cdt)
    block = _block_rows(b, hq, sk)
    recompute = torch.is_grad_enabled() and sq > block and (
        q.requires_grad or k.requires_grad or v.requires_grad)
    outs, lses = [], []
    for start in range(0, sq, block):
        qb = qg[:, start:start + block]
        if recompute:
            o, lse = checkpoint(_block, qb, kc, vc, start, seq_q=sq, batch_index=batch_index,
                                use_reentrant=False, **opts)
        else:
            o, lse = _block(qb, kc, vc, start, seq_q=sq, batch_index=batch_index, **opts)
        outs.append(o)
        lses.append(lse)
    out = torch.cat(outs, dim=1).to(q.dtype)
    lse = torch.cat(lses, dim=2).to(lse_dtype)
    return out, lse


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              window: tuple[int, int] = (-1, -1), scale: float | None = None,
              softcap: float = 0.0, key_padding_mask: torch.Tensor | None = None,
              attn_mask: torch.Tensor | None = None, cu_seqlens_q: torch.Tensor | None = None,
              cu_seqlens_k: torch.Tensor | None = None, dropout_p: float = 0.0,
              dropout_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention, dense or packed; see the module docstring for the semantics.

    Args:
        q: ``[b, sq, hq, d]`` or packed ``[total_q, hq, d]``.
        k: ``[b, sk, hk, d]`` or packed ``[total_k, hk, d]``.
        v: ``[b, sk, hk, dv]`` or packed ``[total_k, hk, dv]``.
        attn_mask: 4-D, broadcastable to ``[b, hq, sq, sk]`` (dims of size 1 broadcast).
        cu_seqlens_q, cu_seqlens_k: int32 ``[n + 1]`` segment starts for packed inputs.
        dropout_seed: seed of the Philox stream (see ``attnkit.reference.philox``).

    Returns:
        ``(out, lse)``: out ``[b, sq, hq, dv]`` (packed ``[total_q, hq, dv]``) in q's dtype;
        lse float32 (float64 for float64 inputs) ``[b, hq, sq]`` (packed ``[hq, total_q]``).

    Example:
        >>> import torch
        >>> q, k, v = (torch.randn(1, 5, 2, 8) for _ in range(3))
        >>> out, lse = attention(q, k, v, causal=True)
        >>> out.shape, lse.shape
        (torch.Size([1, 5, 2, 8]), torch.Size([1, 2, 5]))
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    opts = dict(causal=causal, window=tuple(window), scale=scale, softcap=softcap,
                dropout_p=dropout_p, dropout_seed=dropout_seed)
    if cu_seqlens_q is None:
        return _dense(q, k, v, key_padding_mask=key_padding_mask, attn_mask=attn_mask, **opts)
    starts_q = cu_seqlens_q.tolist()
    starts_k = cu_seqlens_k.tolist()
    outs, lses = [], []
    for n in range(len(starts_q) - 1):
        q_seg = q[starts_q[n]:starts_q[n + 1]].unsqueeze(0)  # [1, sq_n, hq, d]
        k_seg = k[starts_k[n]:starts_k[n + 1]].unsqueeze(0)  # [1, sk_n, hk, d]
        v_seg = v[starts_k[n]:starts_k[n + 1]].unsqueeze(0)
        o, lse = _dense(q_seg, k_seg, v_seg, batch_index=n, key_padding_mask=None,
                        attn_mask=None, **opts)
        outs.append(o[0])  # [sq_n, hq, dv]
        lses.append(lse[0])  # [hq, sq_n]
    return torch.cat(outs, dim=0), torch.cat(lses, dim=1)
