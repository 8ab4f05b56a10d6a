"""The Gluon kernels' tile logic mirrored in float64 on the CPU, against the oracle.

The forward (``attnkit/kernels/flash_fwd_gluon.py``) and the dQ kernel (``flash_dq_gluon.py``,
the same key ranges and masks): the key range of a query tile
(``_key_tiles``), the walk over its key tiles from ``lo``, the tiles it walks without masks
(``_unmasked_tiles``), and the conditions under which ``_softmax_step`` masks a tile (past the
keys, across the causal diagonal, across a window's edges). The dK/dV kernel (``flash_bwd_gluon.py``): the query range of a key tile
(``_query_tiles``), the query tiles it walks without masks (``_unmasked_query_tiles``) and
the conditions under which ``_probabilities`` masks a tile pair, per partition of the key
tile. A condition that left out a tile needing its mask, or a range that
dropped a visible pair, changes the output or the gradients.

The kernels themselves run only on sm90 (``tests/gpu/test_flash_gluon_gpu.py``); small tiles
here give many edge cases on small shapes.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.oracle import attention64


def _rows(t, idx, fill=0.0):
    """Rows ``idx`` of ``t`` (float64), ``fill`` past its end: what a TMA load of a tile
    running past the tensor gives (zeros), or the preprocess past the sequence (``+inf``
    LSE)."""
    out = torch.full((len(idx), *t.shape[1:]), fill, dtype=torch.float64)
    inside = idx < t.shape[0]
    out[inside] = t[idx[inside]]
    return out


def _key_tiles(start_m, sq, sk, block_m, block_n, causal, left, right):
    """``flash_fwd_gluon._key_tiles`` in Python."""
    offset = sk - sq
    last = min(start_m + block_m, sq) - 1 + offset
    hi = sk
    if causal:
        hi = min(hi, last + 1)
    if right >= 0:
        hi = min(hi, last + right + 1)
    lo = max(start_m + offset - left, 0) if left >= 0 else 0
    lo = (lo // block_n) * block_n
    return lo, max(hi, lo)


def _masked_scores(s, rows, cols, *, sq, sk, causal, left, right):
    """``flash_fwd_gluon.masked_scores`` in Python (without the scale): ``-inf`` where a key
    is not seen, only in the tiles whose conditions say so."""
    offset = sk - sq
    first, last_row, start_n, block_n = int(rows[0]), int(rows[-1]), int(cols[0]), len(cols)
    if start_n + block_n > sk:
        s = s.masked_fill(~(cols[None, :] < sk), -math.inf)
    if causal and start_n + block_n - 1 > first + offset:
        s = s.masked_fill(~(cols[None, :] <= rows[:, None] + offset), -math.inf)
    if right >= 0 and start_n + block_n - 1 > first + offset + right:
        s = s.masked_fill(~(cols[None, :] <= rows[:, None] + offset + right), -math.inf)
    if left >= 0 and start_n < last_row + offset - left:
        s = s.masked_fill(~(cols[None, :] >= rows[:, None] + offset - left), -math.inf)
    return s


def _unmasked_tiles(first, rows_n, lo, hi, *, sq, sk, causal, left, right, block_n):
    """``flash_fwd_gluon._unmasked_tiles`` in Python: ``(j0, j1, j2, j3)``."""
    offset = sk - sq
    j0, j3 = lo // block_n, -(-hi // block_n)
    a, b = j0, min(j3, sk // block_n)
    if causal:
        b = min(b, max(first + offset + 1, 0) // block_n)
    if right >= 0:
        b = min(b, max(first + offset + right + 1, 0) // block_n)
    if left >= 0:
        a = max(a, -(-max(first + rows_n - 1 + offset - left, 0) // block_n))
    j1 = min(a, j3)
    return j0, j1, max(min(b, j3), j1), j3


def _partition(q, k, v, first, rows_n, lo, hi, *, sq, sk, causal, left, right, block_n):
    """``_attend`` and ``_store`` for the ``rows_n`` queries from ``first`` of one head:
    (out, lse) in float64, masks applied only where ``_softmax_step`` applies them: on the
    tiles outside ``_unmasked_tiles``'s ``[j1, j2)``, and there only where
    ``masked_scores``'s conditions hold. Inside ``[j1, j2)`` the masks must change nothing."""
    rows = torch.arange(first, first + rows_n)
    m = torch.full((rows_n,), -math.inf, dtype=torch.float64)
    s_sum = torch.zeros(rows_n, dtype=torch.float64)
    acc = torch.zeros(rows_n, v.shape[-1], dtype=torch.float64)
    qr, valid = _rows(q, rows), rows < sq
    j0, j1, j2, j3 = _unmasked_tiles(first, rows_n, lo, hi, sq=sq, sk=sk, causal=causal,
                                     left=left, right=right, block_n=block_n)
    assert j0 <= j1 <= j2 <= j3 == -(-hi // block_n)
    for j in range(j0, j3):
        start_n = j * block_n
        cols = torch.arange(start_n, start_n + block_n)
        kt, vt = _rows(k, cols), _rows(v, cols)
        s = qr @ kt.T / math.sqrt(q.shape[-1])
        masked = _masked_scores(s, rows, cols, sq=sq, sk=sk, causal=causal, left=left,
                                right=right)
        if j1 <= j < j2:
            assert torch.equal(masked, s), (first, j)  # the walk skips its masks
        else:
            s = masked
        m_new = torch.maximum(m, s.max(1).values)
        m_safe = torch.where(m_new == -math.inf, 0.0, m_new)
        alpha = torch.exp(m - m_safe)
        p = torch.exp(s - m_safe[:, None])
        s_sum = s_sum * alpha + p.sum(1)
        acc = acc * alpha[:, None] + p @ vt
        m = m_new
    seen = s_sum > 0
    out = torch.where(seen[:, None], acc / torch.where(seen, s_sum, 1.0)[:, None], 0.0)
    lse = torch.where(seen, m + torch.log(torch.where(seen, s_sum, 1.0)), -math.inf)
    return out[valid], lse[valid]


def _mirror(q, k, v, *, causal, window, block_m, block_n, partitions):
    """The forward of ``[sq, d]``/``[sk, d]`` single-head inputs, tile by tile."""
    sq, sk = q.shape[0], k.shape[0]
    left, right = window
    if causal:
        right = -1  # as gluon_fwd passes it
    outs, lses = [], []
    for start_m in range(0, sq, block_m):
        lo, hi = _key_tiles(start_m, sq, sk, block_m, block_n, causal, left, right)
        rows_n = block_m // partitions
        for wg in range(partitions):
            o, s = _partition(q, k, v, start_m + wg * rows_n, rows_n, lo, hi, sq=sq, sk=sk,
                              causal=causal, left=left, right=right, block_n=block_n)
            outs.append(o)
            lses.append(s)
    return torch.cat(outs), torch.cat(lses)


CASES = [  # (sq, sk, causal, window)
    (37, 53, True, (-1, -1)), (53, 37, True, (-1, -1)), (40, 40, False, (-1, -1)),
    (64, 64, True, (9, -1)), (61, 70, True, (16, -1)), (70, 61, True, (5, -1)),
    (50, 50, False, (7, 3)), (45, 66, False, (0, 0)), (66, 45, False, (12, 20)),
    (33, 33, False, (-1, 4)), (33, 47, False, (11, -1)), (29, 64, False, (3, 0)),
]


@pytest.mark.parametrize("sq,sk,causal,window", CASES)
@pytest.mark.parametrize("block_m,block_n,partitions", [(16, 8, 2), (8, 16, 1), (16, 16, 2)])
def test_tile_logic_matches_the_oracle(sq, sk, causal, window, block_m, block_n, partitions):
    gen = torch.Generator().manual_seed(sq * 1000 + sk)
    q = torch.randn(sq, 16, dtype=torch.float64, generator=gen)
    k = torch.randn(sk, 16, dtype=torch.float64, generator=gen)
    v = torch.randn(sk, 8, dtype=torch.float64, generator=gen)
    out, lse = _mirror(q, k, v, causal=causal, window=window, block_m=block_m,
                       block_n=block_n, partitions=partitions)
    want_out, want_lse = attention64(q[None, :, None], k[None, :, None], v[None, :, None],
                                     causal=causal, window=window)
    torch.testing.assert_close(out, want_out[0, :, 0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lse, want_lse[0, 0], rtol=1e-10, atol=1e-12)


def test_key_range_skips_invisible_tiles():
    """A window keeps the walk to the tiles its band touches: at 16k with a 1024 window and
    128-wide tiles, 9 key tiles per query tile (8 whole plus the diagonal), against 65 on
    average for plain causal attention."""
    def tiles(left):
        return [(hi - lo + 127) // 128 for lo, hi in (
            _key_tiles(m, 16384, 16384, 128, 128, True, left, -1) for m in range(0, 16384, 128))]
    window = tiles(1023)
    assert max(window) == 9 and window[20:] == [9] * (128 - 20)
    assert sum(tiles(-1)) / 128 == pytest.approx(64.5)


def _query_tiles(start_n, sq, sk, block_m, block_n, causal, left, right):
    """``flash_bwd_gluon._query_tiles`` in Python."""
    offset = sk - sq
    lo = 0
    if causal:
        lo = max(start_n - offset, 0)
    if right >= 0:
        lo = max(start_n - offset - right, lo)
    if causal or right >= 0:
        lo = (min(lo, sq) // block_m) * block_m
    hi = sq
    if left >= 0:
        last = min(start_n + block_n, sk) - 1
        hi = max(min(last - offset + left + 1, sq), lo)
    return lo, hi


def _unmasked_query_tiles(first, half, lo, n, *, sq, sk, causal, left, right, block_m):
    """``flash_bwd_gluon._unmasked_query_tiles`` in Python: ``(t1, t2)``."""
    offset = sk - sq
    ta = 0
    if causal:
        ta = max(ta, -(-max(first + half - 1 - offset - lo, 0) // block_m))
    if right >= 0:
        ta = max(ta, -(-max(first + half - 1 - offset - right - lo, 0) // block_m))
    tb = n
    if left >= 0:
        tb = min(tb, max(first + 1 - offset + left - lo, 0) // block_m)
    t1 = min(ta, n)
    return t1, max(min(tb, n), t1)


def _dkdv_mirror(q, k, v, do, lse, delta, *, causal, window, block_m, block_n, partitions):
    """dK and dV of single-head ``[s, d]`` inputs, key tile by key tile and partition by
    partition, as ``gluon_dkdv_kernel`` walks them (lse natural-log, ``+inf`` on rows that
    see no key; delta ``sum(out * do, -1)``)."""
    sq, sk = q.shape[0], k.shape[0]
    left, right = window
    if causal:
        right = -1  # as gluon_dkdv passes it
    offset = sk - sq
    scale = 1 / math.sqrt(q.shape[-1])
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    half = block_n // partitions
    for start_n in range(0, sk, block_n):
        lo, hi = _query_tiles(start_n, sq, sk, block_m, block_n, causal, left, right)
        for wg in range(partitions):
            first = start_n + wg * half
            cols = torch.arange(first, first + half)
            inside = cols < sk
            n = -(-(hi - lo) // block_m)
            t1, t2 = _unmasked_query_tiles(first, half, lo, n, sq=sq, sk=sk, causal=causal,
                                           left=left, right=right, block_m=block_m)
            assert 0 <= t1 <= t2 <= n
            for start in range(lo, hi, block_m):
                rows = torch.arange(start, start + block_m)
                qt, dot, delta_t = _rows(q, rows), _rows(do, rows), _rows(delta, rows)
                lse_t = _rows(lse, rows, math.inf)
                kt, vt = _rows(k, cols), _rows(v, cols)
                s_t = kt @ qt.T * scale  # [half, block_m]
                unmasked = s_t.clone() if t1 <= (start - lo) // block_m < t2 else None
                if causal and start + offset < first + half - 1:
                    s_t = s_t.masked_fill(~(cols[:, None] <= rows[None, :] + offset), -math.inf)
                if right >= 0 and start + offset + right < first + half - 1:
                    s_t = s_t.masked_fill(~(cols[:, None] <= rows[None, :] + offset + right),
                                          -math.inf)
                if left >= 0 and first < start + block_m - 1 + offset - left:
                    s_t = s_t.masked_fill(~(cols[:, None] >= rows[None, :] + offset - left),
                                          -math.inf)
                if unmasked is not None:  # the split walk skips the masks here
                    assert torch.equal(s_t, unmasked), (first, start)
                p_t = torch.exp(s_t - lse_t[None, :])
                dp_t = vt @ dot.T
                ds_t = p_t * (dp_t - delta_t[None, :])
                dv[cols[inside]] += (p_t @ dot)[inside]
                dk[cols[inside]] += (ds_t @ qt * scale)[inside]
    return dk, dv


@pytest.mark.parametrize("sq,sk,causal,window", CASES)
@pytest.mark.parametrize("block_m,block_n,partitions", [(8, 16, 2), (16, 8, 1), (8, 8, 2)])
def test_dkdv_tile_logic_matches_the_oracle(sq, sk, causal, window, block_m, block_n,
                                            partitions):
    gen = torch.Generator().manual_seed(sq * 1000 + sk + 1)
    q = torch.randn(sq, 16, dtype=torch.float64, generator=gen)
    k = torch.randn(sk, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    v = torch.randn(sk, 8, dtype=torch.float64, generator=gen, requires_grad=True)
    do = torch.randn(sq, 8, dtype=torch.float64, generator=gen)
    out, lse = attention64(q[None, :, None], k[None, :, None], v[None, :, None],
                           causal=causal, window=window)
    want_dk, want_dv = torch.autograd.grad(out, (k, v), do[None, :, None])
    out, lse = out[0, :, 0].detach(), lse[0, 0].detach()
    lse = torch.where(lse == -math.inf, math.inf, lse)  # as the preprocess hands it over
    delta = (out * do).sum(-1)
    dk, dv = _dkdv_mirror(q, k.detach(), v.detach(), do, lse, delta, causal=causal,
                          window=window, block_m=block_m, block_n=block_n,
                          partitions=partitions)
    torch.testing.assert_close(dk, want_dk, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(dv, want_dv, rtol=1e-9, atol=1e-11)


def _dq_mirror(q, k, v, do, lse, delta, *, causal, window, block_m, block_n):
    """dQ of single-head ``[s, d]`` inputs, query tile by tile and partition by partition, as
    ``flash_dq_gluon.gluon_dq_kernel`` walks them (the forward's key ranges and masks; inside
    ``_unmasked_tiles``'s ``[j1, j2)`` the masks must change nothing)."""
    sq, sk = q.shape[0], k.shape[0]
    left, right = window
    if causal:
        right = -1  # as gluon_dq passes it
    scale = 1 / math.sqrt(q.shape[-1])
    dq = torch.zeros_like(q)
    rows_n = block_m // 2
    for start_m in range(0, sq, block_m):
        lo, hi = _key_tiles(start_m, sq, sk, block_m, block_n, causal, left, right)
        for first in (start_m, start_m + rows_n):
            rows = torch.arange(first, first + rows_n)
            ok = rows < sq
            qr, dor, delta_r = _rows(q, rows), _rows(do, rows), _rows(delta, rows)
            lse_r = _rows(lse, rows, math.inf)
            acc = torch.zeros(rows_n, q.shape[-1], dtype=torch.float64)
            _, j1, j2, _ = _unmasked_tiles(first, rows_n, lo, hi, sq=sq, sk=sk, causal=causal,
                                           left=left, right=right, block_n=block_n)
            for start_n in range(lo, hi, block_n):
                cols = torch.arange(start_n, start_n + block_n)
                kt, vt = _rows(k, cols), _rows(v, cols)
                s = qr @ kt.T * scale
                masked = _masked_scores(s, rows, cols, sq=sq, sk=sk, causal=causal, left=left,
                                        right=right)
                if j1 <= start_n // block_n < j2:
                    assert torch.equal(masked, s)  # the split walk skips its masks
                p = torch.exp(masked - lse_r[:, None])
                acc += (p * (dor @ vt.T - delta_r[:, None])) @ kt
            dq[rows[ok]] = (acc * scale)[ok]
    return dq


@pytest.mark.parametrize("sq,sk,causal,window", CASES)
@pytest.mark.parametrize("block_m,block_n", [(16, 8), (8, 16), (16, 16)])
def test_dq_tile_logic_matches_the_oracle(sq, sk, causal, window, block_m, block_n):
    gen = torch.Generator().manual_seed(sq * 1000 + sk + 2)
    q = torch.randn(sq, 16, dtype=torch.float64, generator=gen, requires_grad=True)
    k = torch.randn(sk, 16, dtype=torch.float64, generator=gen)
    v = torch.randn(sk, 8, dtype=torch.float64, generator=gen)
    do = torch.randn(sq, 8, dtype=torch.float64, generator=gen)
    out, lse = attention64(q[None, :, None], k[None, :, None], v[None, :, None],
                           causal=causal, window=window)
    (want,) = torch.autograd.grad(out, (q,), do[None, :, None])
    out, lse = out[0, :, 0].detach(), lse[0, 0].detach()
    lse = torch.where(lse == -math.inf, math.inf, lse)  # as the preprocess hands it over
    dq = _dq_mirror(q.detach(), k, v, do, lse, (out * do).sum(-1), causal=causal,
                    window=window, block_m=block_m, block_n=block_n)
    torch.testing.assert_close(dq, want, rtol=1e-9, atol=1e-11)


def _fwd_tile_masked(j, first, rows_n, *, sq, sk, causal, left, right, block_n):
    """Whether ``masked_scores``'s conditions mask key tile ``j`` for the rows from ``first``."""
    offset, start_n = sk - sq, j * block_n
    return (start_n + block_n > sk
            or (causal and start_n + block_n - 1 > first + offset)
            or (right >= 0 and start_n + block_n - 1 > first + offset + right)
            or (left >= 0 and start_n < first + rows_n - 1 + offset - left))


def _dkdv_tile_masked(t, first, half, lo, *, sq, sk, causal, left, right, block_m):
    """Whether ``_masked_scores_t``'s conditions mask query tile ``t`` (from ``lo``) for the
    ``half`` keys from ``first``."""
    offset, start = sk - sq, lo + t * block_m
    return ((causal and start + offset < first + half - 1)
            or (right >= 0 and start + offset + right < first + half - 1)
            or (left >= 0 and first < start + block_m - 1 + offset - left))


def test_unmasked_ranges_are_exactly_the_tiles_without_masks():
    """Over many shapes, windows and tile sizes: ``_unmasked_tiles`` (forward, dQ) and
    ``_unmasked_query_tiles`` (dK/dV) hold only tiles that no mask condition touches, and
    the tiles just outside them are touched (the ranges are as wide as they can be), so that
    an off-by-one either way fails here."""
    checked = 0
    for sq in (1, 5, 16, 23, 40):
        for sk in (1, 7, 16, 29, 40):
            for causal, left, right in ((False, -1, -1), (True, -1, -1), (True, 3, -1),
                                        (True, 12, -1), (False, 5, 2), (False, -1, 6),
                                        (False, 0, 0), (False, 9, -1)):
                for block, rows_n in ((4, 2), (8, 4), (8, 8), (16, 8)):
                    opts = dict(sq=sq, sk=sk, causal=causal, left=left, right=right)
                    for first in range(0, 48, rows_n):
                        lo, hi = 0, sk + block
                        j0, j1, j2, j3 = _unmasked_tiles(first, rows_n, lo, hi, block_n=block,
                                                         **opts)
                        masked = [_fwd_tile_masked(j, first, rows_n, block_n=block, **opts)
                                  for j in range(j0, j3)]
                        assert not any(masked[j1 - j0:j2 - j0])
                        if j1 < j2:
                            assert j1 == j0 or masked[j1 - j0 - 1]
                            assert j2 == j3 or masked[j2 - j0]
                        n = -(-(sq + block) // block)
                        t1, t2 = _unmasked_query_tiles(first, rows_n, 0, n, block_m=block,
                                                       **opts)
                        masked = [_dkdv_tile_masked(t, first, rows_n, 0, block_m=block, **opts)
                                  for t in range(n)]
                        assert not any(masked[t1:t2])
                        if t1 < t2:
                            assert t1 == 0 or masked[t1 - 1]
                            assert t2 == n or masked[t2]
                        checked += 1
    assert checked > 5000
