"""Checks of the flash kernels' tile ranges (which key/query tiles a program visits).

``tile_key_range`` (forward and dQ programs) and ``tile_query_range`` (dK/dV programs) are run
in a tiny Triton kernel and compared with the visibility grid of ``tests/oracle.py``: every
visible (query, key) pair lies in the visited range, the unmasked interior band holds only
fully visible tiles, and no visited tile is entirely invisible (skipping is tight).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from attnkit.kernels.flash_bwd import tile_query_range
from attnkit.kernels.flash_common import tile_key_range
from tests.oracle import visibility


@triton.jit
def _key_ranges(out_ptr, seqlen_q, seqlen_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                IS_CAUSAL: tl.constexpr, WIN_LEFT: tl.constexpr, WIN_RIGHT: tl.constexpr):
    pid = tl.program_id(0)
    lo, mid_lo, mid_hi, hi = tile_key_range(pid * BLOCK_M, seqlen_q, seqlen_k, BLOCK_M, BLOCK_N,
                                            IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    tl.store(out_ptr + pid * 4 + 0, lo)
    tl.store(out_ptr + pid * 4 + 1, mid_lo)
    tl.store(out_ptr + pid * 4 + 2, mid_hi)
    tl.store(out_ptr + pid * 4 + 3, hi)


@triton.jit
def _query_ranges(out_ptr, seqlen_q, seqlen_k, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  IS_CAUSAL: tl.constexpr, WIN_LEFT: tl.constexpr, WIN_RIGHT: tl.constexpr):
    pid = tl.program_id(0)
    lo, mid_lo, mid_hi, hi = tile_query_range(pid * BLOCK_N, seqlen_q, seqlen_k, BLOCK_M,
                                              BLOCK_N, IS_CAUSAL, WIN_LEFT, WIN_RIGHT)
    tl.store(out_ptr + pid * 4 + 0, lo)
    tl.store(out_ptr + pid * 4 + 1, mid_lo)
    tl.store(out_ptr + pid * 4 + 2, mid_hi)
    tl.store(out_ptr + pid * 4 + 3, hi)


def _visited(lo: int, mid_lo: int, mid_hi: int, hi: int, block: int, where: str) -> list[int]:
    """Tile starts the kernels' three loops (edge, interior, edge) visit; no tile twice."""
    starts = [*range(lo, mid_lo, block), *range(mid_lo, mid_hi, block), *range(mid_hi, hi, block)]
    assert len(starts) == len(set(starts)), f"{where}: a tile is visited twice"
    assert all(s % block == 0 for s in starts), f"{where}: unaligned tile"
    assert starts == list(range(lo, hi, block)), f"{where}: loops do not tile [lo, hi)"
    return starts


def _effective(causal: bool, window: tuple[int, int]) -> tuple[int, int]:
    left, right = window
    return left, (0 if causal else right)  # what the launchers pass


def check_key_ranges(sq, sk, causal, window, block_m, block_n):
    """Assert the key ranges of every query tile against the visibility grid."""
    left, right = _effective(causal, window)
    tiles = triton.cdiv(sq, block_m)
    out = torch.zeros(tiles * 4, dtype=torch.int32)
    _key_ranges[(tiles,)](out, sq, sk, BLOCK_M=block_m, BLOCK_N=block_n, IS_CAUSAL=causal,
                          WIN_LEFT=left, WIN_RIGHT=right)
    vis = visibility(sq, sk, causal=causal, window=window)  # [sq, sk]
    where = f"sq={sq} sk={sk} causal={causal} window={window} tiles={block_m}x{block_n}"
    for t, (lo, mid_lo, mid_hi, hi) in enumerate(out.view(-1, 4).tolist()):
        rows = vis[t * block_m:(t + 1) * block_m]  # [m, sk]
        cols = rows.any(0).nonzero().flatten()
        assert lo % block_n == 0 and lo <= mid_lo <= mid_hi <= hi, where
        if cols.numel():
            assert lo <= int(cols.min()) and int(cols.max()) < hi, f"{where}: tile {t} misses keys"
        starts = _visited(lo, mid_lo, mid_hi, hi, block_n, where)
        assert rows[:, mid_lo:mid_hi].all(), f"{where}: tile {t} interior not fully visible"
        for start in starts:
            assert rows[:, start:start + block_n].any(), f"{where}: tile {t} visits empty keys"


def check_query_ranges(sq, sk, causal, window, block_m, block_n):
    """Assert the query ranges of every key tile against the visibility grid."""
    left, right = _effective(causal, window)
    tiles = triton.cdiv(sk, block_n)
    out = torch.zeros(tiles * 4, dtype=torch.int32)
    _query_ranges[(tiles,)](out, sq, sk, BLOCK_M=block_m, BLOCK_N=block_n, IS_CAUSAL=causal,
                            WIN_LEFT=left, WIN_RIGHT=right)
    vis = visibility(sq, sk, causal=causal, window=window)
    where = f"sq={sq} sk={sk} causal={causal} window={window} tiles={block_m}x{block_n}"
    for t, (lo, mid_lo, mid_hi, hi) in enumerate(out.view(-1, 4).tolist()):
        cols = vis[:, t * block_n:(t + 1) * block_n]  # [sq, n]
        rows = cols.any(1).nonzero().flatten()
        assert lo % block_m == 0 and lo <= mid_lo <= mid_hi <= hi, where
        if rows.numel():
            assert lo <= int(rows.min()) and int(rows.max()) < hi, f"{where}: tile {t} misses rows"
        starts = _visited(lo, mid_lo, mid_hi, hi, block_m, where)
        if mid_hi > mid_lo:
            assert (t + 1) * block_n <= sk, f"{where}: partial key tile has an interior band"
            assert cols[mid_lo:mid_hi].all(), f"{where}: tile {t} interior not fully visible"
        for start in starts:
            assert cols[start:start + block_m].any(), f"{where}: tile {t} visits empty rows"
