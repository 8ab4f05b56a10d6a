"""An independent float64 attention oracle for the tests.

Written differently from ``attnkit.reference`` on purpose: K/V heads are repeated explicitly, the
whole ``[b, h, sq, sk]`` score matrix is built at once, and the visibility mask is spelled out
from its definition with index grids. Only for small shapes.
"""

from __future__ import annotations

import math

import torch


def visibility(sq: int, sk: int, *, causal: bool, window: tuple[int, int]) -> torch.Tensor:
    """Bool ``[sq, sk]``: query i sees key j (bottom-right aligned)."""
    i = torch.arange(sq).view(sq, 1)
    j = torch.arange(sk).view(1, sk)
    shift = sk - sq
    ok = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        ok = ok & (j - shift <= i)
    left, right = window
    if left != -1:
        ok = ok & (i - (j - shift) <= left)
    if right != -1:
        ok = ok & ((j - shift) - i <= right)
    return ok


def attention64(q, k, v, *, causal=False, window=(-1, -1), scale=None, softcap=0.0,
                key_padding_mask=None, attn_mask=None, keep=None, dropout_p=0.0,
                dtype=torch.float64):
    """Dense oracle: q ``[b, sq, hq, d]`` etc. -> (out ``[b, sq, hq, dv]``, lse ``[b, hq, sq]``).

    Computes in ``dtype`` (float64 by default: the truth; the input dtype: PyTorch's own
    same-dtype error, the baseline of the tolerance rule).
    ``keep``: optional bool ``[b, hq, sq, sk]`` dropout keep-mask to apply.
    """
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    b, sq, hq, d = q.shape
    sk, hk = k.shape[1], k.shape[2]
    rep = hq // hk
    k = k.repeat_interleave(rep, dim=2)
    v = v.repeat_interleave(rep, dim=2)
    scale = 1 / math.sqrt(d) if scale is None else scale
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    allowed = visibility(sq, sk, causal=causal, window=window).to(q.device)
    allowed = allowed.expand(b, hq, sq, sk).clone()
    if key_padding_mask is not None:
        allowed &= key_padding_mask[:, None, None, :]
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            allowed &= attn_mask.expand(b, hq, sq, sk) if attn_mask.ndim == 4 else attn_mask
        else:
            scores = scores + attn_mask.to(dtype)
    scores = scores.masked_fill(~allowed, -math.inf)
    lse = torch.logsumexp(scores, dim=-1)  # [b, hq, sq], -inf for empty rows
    probs = torch.exp(scores - lse[..., None])
    probs = torch.nan_to_num(probs, nan=0.0)
    if keep is not None:
        probs = probs * keep / (1 - dropout_p)
    out = torch.einsum("bhij,bjhd->bihd", probs, v)
    return out, lse


def packed_attention64(q, k, v, cu_q, cu_k, **opts):
    """Packed oracle: run each segment alone; returns (out ``[tq, hq, dv]``, lse ``[hq, tq]``)."""
    outs, lses = [], []
    cq, ck = cu_q.tolist(), cu_k.tolist()
    for n in range(len(cq) - 1):
        qs = q[cq[n]:cq[n + 1]][None]
        ks = k[ck[n]:ck[n + 1]][None]
        vs = v[ck[n]:ck[n + 1]][None]
        o, lse = attention64(qs, ks, vs, **opts)
        outs.append(o[0])
        lses.append(lse[0])
    return torch.cat(outs), torch.cat(lses, dim=1)
