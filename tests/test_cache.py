"""The KV caches: writes land where decode reads them, forks share and copy on write, frees
return pages, and overflow raises before anything changes."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.cache import CacheOverflowError, LatentKVCache, PagedKVCache, StaticKVCache
from tests.tolerance import assert_exact64

D = dict(dtype=torch.float64)


def _kv(b, n, hk=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n, hk, d, generator=g, dtype=torch.float64),
            torch.randn(b, n, hk, d, generator=g, dtype=torch.float64))


def _snapshot(cache):
    return [t.clone() for t in (*cache.k, *cache.v)]


def _unchanged(cache, snap):
    return all(torch.equal(a, b) for a, b in zip((*cache.k, *cache.v), snap))


def test_static_step_then_decode_equals_attention_on_the_written_keys():
    cache = StaticKVCache(num_layers=2, batch=2, max_seq=12, kv_heads=2, head_dim=8, **D)
    k1, v1 = _kv(2, 5, seed=1)
    pos = cache.begin_step(5)
    assert pos.tolist() == [[0, 1, 2, 3, 4]] * 2
    cache.write(1, k1, v1)
    k2, v2 = _kv(2, 1, seed=2)
    assert cache.begin_step(1).tolist() == [[5], [5]]
    cache.write(1, k2, v2)
    q = torch.randn(2, 1, 4, 8, dtype=torch.float64)
    got = attnkit.decode_attention(q, *cache.layer(1), **cache.decode_kwargs())
    want = attnkit.attention(q, torch.cat([k1, k2], 1), torch.cat([v1, v2], 1), causal=True)
    assert_exact64("decode", got, want)
    assert cache.lengths == [6, 6] and cache.cache_seqlens.tolist() == [6, 6]


def test_static_overflow_raises_before_writing():
    cache = StaticKVCache(num_layers=1, batch=2, max_seq=6, kv_heads=2, head_dim=8, **D)
    cache.begin_step(4)
    cache.write(0, *_kv(2, 4))
    snap = _snapshot(cache)
    with pytest.raises(CacheOverflowError, match=r"holds 4 tokens; 3 more exceed max_seq \(6\)"):
        cache.begin_step(3)
    assert cache.lengths == [4, 4] and _unchanged(cache, snap)
    bad = torch.tensor([[5, 6], [1, 2]])
    with pytest.raises(CacheOverflowError, match=r"positions must lie in \[0, 5\], got \[1, 6\]"):
        cache.write(0, *_kv(2, 2), positions=bad)
    assert _unchanged(cache, snap)


def test_static_explicit_positions_and_errors():
    cache = StaticKVCache(num_layers=1, batch=1, max_seq=4, kv_heads=2, head_dim=8, **D)
    with pytest.raises(ValueError, match="positions is required before the first begin_step"):
        cache.write(0, *_kv(1, 1))
    k, v = _kv(1, 2)
    cache.write(0, k, v, positions=torch.tensor([[3, 0]]))
    assert torch.equal(cache.k[0][0, 3], k[0, 0]) and torch.equal(cache.k[0][0, 0], k[0, 1])
    with pytest.raises(ValueError, match=r"layer must be in \[0, 0\], got 1"):
        cache.write(1, k, v, positions=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match=r"k must be \[batch, n, kv_heads, head_dim\] = "
                                         r"\[1, 2, 2, 8\], got \[1, 2, 2, 4\]"):
        cache.write(0, k[..., :4], v, positions=torch.tensor([[0, 1]]))
    with pytest.raises(TypeError, match="positions must be an int tensor"):
        cache.write(0, k, v, positions=torch.zeros(1, 2))
    with pytest.raises(ValueError, match="max_seq must be >= 1, got 0"):
        StaticKVCache(num_layers=1, batch=1, max_seq=0, kv_heads=1, head_dim=8)


def _paged(num_blocks=8, block_size=4, window=None):
    return PagedKVCache(num_layers=2, num_blocks=num_blocks, block_size=block_size,
                        kv_heads=2, head_dim=8, window=window, **D)


def _decode(cache, layer, q):
    return attnkit.decode_attention(q, *cache.layer(layer), **cache.decode_kwargs())


def test_paged_matches_static_on_ragged_sequences():
    paged, static = _paged(num_blocks=10), StaticKVCache(num_layers=2, batch=2, max_seq=20,
                                                        kv_heads=2, head_dim=8, **D)
    a, b = paged.add_sequence(), paged.add_sequence()
    for step, n in enumerate([5, 1, 3, 1]):
        k, v = _kv(2, n, seed=step)
        paged.begin_step(n, [a, b])
        static.begin_step(n)
        for cache in (paged, static):
            cache.write(1, k, v)
        q = torch.randn(2, n, 4, 8, dtype=torch.float64)
        assert_exact64(f"step {step}", _decode(paged, 1, q), _decode(static, 1, q))
    assert paged.length(a) == 10 and len(paged.pages(a)) == 3
    assert paged.free_blocks == 10 - 6


def test_fork_shares_pages_then_copies_on_write_and_free_returns_them():
    cache = _paged(num_blocks=8)
    a = cache.add_sequence()
    cache.begin_step(6, [a])
    cache.write(0, *_kv(1, 6, seed=1))
    assert cache.free_blocks == 6
    b = cache.fork(a)
    assert cache.pages(b) == cache.pages(a) and cache.free_blocks == 6  # shared, no copy
    q = torch.randn(1, 1, 4, 8, dtype=torch.float64)

    # a and b each append a different token; the shared half-full page is copied once.
    cache.begin_step(1, [a, b])
    ka, va = _kv(1, 1, seed=2)
    kb, vb = _kv(1, 1, seed=3)
    cache.write(0, torch.cat([ka, kb]), torch.cat([va, vb]))
    assert cache.pages(a)[0] == cache.pages(b)[0]  # the full first page stays shared
    assert cache.pages(a)[1] != cache.pages(b)[1]
    assert cache.free_blocks == 5
    cache.begin_step(1, [a])
    cache.write(0, *_kv(1, 1, seed=4))
    before = _decode_ids(cache, [a], q)

    # b grows past its pages and is freed; a reads exactly what it read before.
    cache.begin_step(3, [b])
    cache.write(0, *_kv(1, 3, seed=5))
    assert cache.free_blocks == 4
    cache.free(b)
    assert cache.free_blocks == 6  # b's own two pages back; the first page is a's alone now
    assert torch.equal(_decode_ids(cache, [a], q), before)
    with pytest.raises(ValueError, match=r"seq_id must be a live sequence \(one of \[0\]\), got 1"):
        cache.free(b)


def _decode_ids(cache, ids, q):
    return attnkit.decode_attention(q, *cache.layer(0), **cache.decode_kwargs(ids))


def test_decoding_after_fork_and_free_keeps_other_sequences_unchanged():
    """Three sequences decode; one forks, the fork decodes and is freed, another is freed:
    the survivors' outputs equal those of a cache that never saw the fork or the frees."""
    k0, v0 = _kv(3, 7, seed=11)
    plain = _paged(num_blocks=16)
    other = _paged(num_blocks=16)
    ids_plain = [plain.add_sequence() for _ in range(3)]
    ids_other = [other.add_sequence() for _ in range(3)]
    for cache, ids in ((plain, ids_plain), (other, ids_other)):
        cache.begin_step(7, ids)
        cache.write(0, k0, v0)
    fork = other.fork(ids_other[1])
    other.begin_step(2, [fork])
    other.write(0, *_kv(1, 2, seed=12))
    other.free(ids_other[2])
    other.free(fork)
    for step in range(3):
        k, v = _kv(2, 1, seed=20 + step)
        q = torch.randn(2, 1, 4, 8, dtype=torch.float64)
        outs = []
        for cache, ids in ((plain, ids_plain[:2]), (other, ids_other[:2])):
            cache.begin_step(1, ids)
            cache.write(0, k, v)
            outs.append(_decode(cache, 0, q))
        assert torch.equal(outs[0], outs[1])


def test_paged_overflow_raises_with_nothing_changed():
    cache = _paged(num_blocks=3)
    a, b = cache.add_sequence(), cache.add_sequence()
    cache.begin_step(4, [a, b])
    cache.write(0, *_kv(2, 4))
    snap, free, table = _snapshot(cache), cache.free_blocks, cache.block_table.clone()
    with pytest.raises(CacheOverflowError, match="the step needs 2 free pages of 4 tokens for 2 "
                                                 "sequences, but the pool has 1 of 3"):
        cache.begin_step(1, [a, b])
    assert _unchanged(cache, snap) and cache.free_blocks == free
    assert cache.length(a) == 4 and cache.length(b) == 4
    assert torch.equal(cache.block_table, table)


def test_copy_on_write_counts_a_page_shared_by_two_sequences_of_one_step_once():
    cache = _paged(num_blocks=3)
    a = cache.add_sequence()
    cache.begin_step(2, [a])
    cache.write(0, *_kv(1, 2))
    b = cache.fork(a)
    cache.begin_step(1, [a, b])  # one copy is enough: the second writer then owns the page
    assert cache.free_blocks == 1


def test_window_releases_pages_and_bounds_memory():
    cache = _paged(num_blocks=4, block_size=4, window=5)
    full = _paged(num_blocks=12, block_size=4)
    a, f = cache.add_sequence(), full.add_sequence()
    for step in range(30):
        n = 3 if step == 0 else 1
        k, v = _kv(1, n, seed=step)
        q = torch.randn(1, n, 4, 8, dtype=torch.float64)
        outs = []
        for c, s in ((cache, a), (full, f)):
            if step < 8 or c is cache:
                c.begin_step(n, [s])
                c.write(0, k, v)
                outs.append(attnkit.decode_attention(q, *c.layer(0), **c.decode_kwargs(),
                                                     window=(4, 0)))
        if len(outs) == 2:
            assert_exact64(f"step {step}", outs[0], outs[1])
    assert cache.length(a) == 32
    assert sum(p >= 0 for p in cache.pages(a)) <= 3


def test_paged_errors():
    cache = _paged()
    with pytest.raises(ValueError, match="call begin_step"):
        cache.write(0, *_kv(1, 1))
    with pytest.raises(ValueError, match="seq_ids must name at least one live sequence"):
        cache.begin_step(1)
    a = cache.add_sequence()
    with pytest.raises(ValueError, match=r"seq_ids must not repeat a sequence, got \[0, 0\]"):
        cache.begin_step(1, [a, a])
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        cache.begin_step(0, [a])
    with pytest.raises(TypeError, match="window must be an int"):
        PagedKVCache(num_layers=1, num_blocks=2, block_size=4, kv_heads=1, head_dim=8,
                     window=2.5)


def test_latent_cache_feeds_mla_decode():
    cache = LatentKVCache(num_layers=1, batch=2, max_seq=9, kv_lora_rank=16, rope_dim=8, **D)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 5, 16, generator=g, dtype=torch.float64)
    rk = torch.randn(2, 5, 8, generator=g, dtype=torch.float64)
    cache.begin_step(5)
    cache.write(0, lat, rk)
    ql = torch.randn(2, 2, 3, 16, generator=g, dtype=torch.float64)
    qr = torch.randn(2, 2, 3, 8, generator=g, dtype=torch.float64)
    got = attnkit.mla_decode_attention(ql, qr, *cache.layer(0), **cache.decode_kwargs(),
                                       scale=0.3)
    keys = torch.cat([lat, rk], -1)[:, :, None]  # [b, 5, 1, 24]
    want = attnkit.attention(torch.cat([ql, qr], -1), keys, lat[:, :, None], causal=True,
                             scale=0.3)
    assert_exact64("mla", got, want)
    assert cache.bytes_per_token == 24 * 8
    with pytest.raises(CacheOverflowError, match=r"holds 5 tokens; 5 more exceed max_seq \(9\)"):
        cache.begin_step(5)
    with pytest.raises(ValueError, match=r"rope_key must be \[batch, n, rope_dim\]"):
        cache.write(0, lat, rk[..., :4])


def test_paged_latent_cache_forks_copies_on_write_and_matches_the_static_one():
    from attnkit.cache import PagedLatentKVCache
    paged = PagedLatentKVCache(num_layers=1, num_blocks=6, block_size=4, kv_lora_rank=16,
                               rope_dim=8, **D)
    static = LatentKVCache(num_layers=1, batch=1, max_seq=12, kv_lora_rank=16, rope_dim=8, **D)
    g = torch.Generator().manual_seed(3)
    lat = torch.randn(1, 6, 16, generator=g, dtype=torch.float64)
    rk = torch.randn(1, 6, 8, generator=g, dtype=torch.float64)
    a = paged.add_sequence()
    paged.begin_step(6, [a])
    paged.write(0, lat, rk)
    static.begin_step(6)
    static.write(0, lat, rk)
    b = paged.fork(a)
    paged.begin_step(1, [b])  # b writes into the shared half-full page: copied first
    paged.write(0, torch.ones(1, 1, 16, dtype=torch.float64),
                torch.ones(1, 1, 8, dtype=torch.float64))
    assert paged.pages(a)[1] != paged.pages(b)[1] and paged.pages(a)[0] == paged.pages(b)[0]
    ql = torch.randn(1, 1, 3, 16, generator=g, dtype=torch.float64)
    qr = torch.randn(1, 1, 3, 8, generator=g, dtype=torch.float64)
    got = attnkit.mla_decode_attention(ql, qr, *paged.layer(0), **paged.decode_kwargs([a]),
                                       scale=0.2)
    want = attnkit.mla_decode_attention(ql, qr, *static.layer(0), **static.decode_kwargs(),
                                        scale=0.2)
    assert_exact64("a unchanged by b", got, want)
    with pytest.raises(CacheOverflowError, match="the step needs"):
        paged.begin_step(9, [a, b])
