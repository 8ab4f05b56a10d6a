"""Shared builders for the decode tests: random caches (contiguous or paged) and their truth.

The truth gathers each sequence's keys by hand (a shuffled page pool, so page order matters) and
runs the independent float64 oracle of ``tests.oracle`` with ``seq_q = n``, ``seq_k = L``.
"""

from __future__ import annotations

import torch

from tests.oracle import attention64


def make_case(*, lengths, n, hq, hk, d, dv=None, block_size=None, dtype=torch.float32,
              device="cpu", seed=0, spare_blocks=3):
    """Random q and a cache holding ``lengths[i]`` valid keys for sequence i.

    Returns a dict with q ``[b, n, hq, d]``, k_cache/v_cache (contiguous ``[b, max_seq, hk, d]``
    or a shuffled paged pool ``[num_blocks, block_size, hk, d]``), ``cache_seqlens`` int32 and
    ``block_table`` int32 (None when contiguous). The cache beyond each length holds garbage
    (large values), so a kernel that reads past a length fails.
    """
    dv = d if dv is None else dv
    g = torch.Generator().manual_seed(seed)
    b = len(lengths)
    q = torch.randn(b, n, hq, d, generator=g).to(dtype)
    seqlens = torch.tensor(lengths, dtype=torch.int32)
    if block_size is None:
        max_seq = max(max(lengths), 1) + 5
        k = torch.randn(b, max_seq, hk, d, generator=g)
        v = torch.randn(b, max_seq, hk, dv, generator=g)
        for i, length in enumerate(lengths):
            k[i, length:] = 1e4
            v[i, length:] = 1e4
        table = None
    else:
        pages = [-(-length // block_size) for length in lengths]
        width = max(max(pages), 1) + 1
        total = sum(pages) + spare_blocks
        order = torch.randperm(total, generator=g)
        k = torch.full((total, block_size, hk, d), 1e4)
        v = torch.full((total, block_size, hk, dv), 1e4)
        table = torch.zeros(b, width, dtype=torch.int32)
        used = 0
        for i, length in enumerate(lengths):
            for p in range(pages[i]):
                block = int(order[used])
                used += 1
                table[i, p] = block
                valid = min(block_size, length - p * block_size)
                k[block, :valid] = torch.randn(valid, hk, d, generator=g)
                v[block, :valid] = torch.randn(valid, hk, dv, generator=g)
    to = dict(device=device)
    return dict(q=q.to(**to), k_cache=k.to(dtype).to(**to), v_cache=v.to(dtype).to(**to),
                cache_seqlens=seqlens.to(**to),
                block_table=None if table is None else table.to(**to))


def gathered(cache, i, length, table):
    """Sequence i's first ``length`` keys ``[1, length, h, d]``, gathered independently."""
    if table is None:
        return cache[i:i + 1, :length]
    bs = cache.shape[1]
    j = torch.arange(length, device=cache.device)
    pages = table[i].to(cache.device).long()[j // bs]  # [L] page of each key
    return cache[pages, j % bs][None]  # [1, L, h, d]


def truth(case, *, dtype=torch.float64, causal=True, window=(-1, -1), softcap=0.0, scale=None):
    """(out ``[b, n, hq, dv]``, lse ``[b, hq, n]``) of the oracle computed in ``dtype``."""
    q, kc, vc = case["q"].cpu(), case["k_cache"].cpu(), case["v_cache"].cpu()
    table = None if case["block_table"] is None else case["block_table"].cpu()
    outs, lses = [], []
    for i, length in enumerate(case["cache_seqlens"].tolist()):
        k = gathered(kc, i, length, table)
        v = gathered(vc, i, length, table)
        out, lse = attention64(q[i:i + 1], k, v, causal=causal, window=window, scale=scale,
                               softcap=softcap, dtype=dtype)
        outs.append(out)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)
