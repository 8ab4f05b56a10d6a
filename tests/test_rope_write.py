"""RoPE at per-sequence positions fused with the cache write: the Triton kernel (interpreter)
and the reference both equal apply_rope followed by a plain write."""

from __future__ import annotations

import pytest
import torch

from attnkit.cache import LatentKVCache, PagedKVCache, StaticKVCache
from attnkit.nn import RotaryEmbedding
from attnkit.ops import write_rotated
from attnkit.ops.rope import apply_rope
from tests.tolerance import assert_within_rule

pytest.importorskip("triton")


def _caches(d):
    static = StaticKVCache(num_layers=2, batch=3, max_seq=16, kv_heads=3, head_dim=d,
                           head_dim_v=8)
    paged = PagedKVCache(num_layers=2, num_blocks=12, block_size=4, kv_heads=3, head_dim=d,
                         head_dim_v=8)
    return static, paged


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("style,rotary", [("half", None), ("interleaved", None), ("half", 8)],
                         ids=["half", "interleaved", "partial8"])
def test_write_rotated_equals_apply_rope_then_write(style, rotary, backend):
    d = 16
    rope = RotaryEmbedding(d, rotary_dim=rotary, style=style)
    g = torch.Generator().manual_seed(0)
    for cache in _caches(d):
        if isinstance(cache, PagedKVCache):
            ids = [cache.add_sequence() for _ in range(3)]
            for i, length in zip(ids, (5, 1, 7)):  # ragged: each sequence at its own offset
                cache.begin_step(length, [i])
            cache.begin_step(2, ids)
        else:
            cache.begin_step(3)
            cache.begin_step(2)
        positions = cache.step_positions  # [3, 2]
        k = torch.randn(3, 2, 3, d, generator=g)
        v = torch.randn(3, 2, 3, 8, generator=g)
        cos, sin = rope(positions)  # [3, 2, r/2]
        write_rotated(cache, 1, k, v, cos, sin, style=style, rotary_dim=rotary,
                      backend=backend)
        want_k = apply_rope(k.double(), cos[:, :, None].double(), sin[:, :, None].double(),
                            style=style, rotary_dim=rotary)
        slots = cache.step_slots()
        got_k = cache.k[1][slots].view(3, 2, 3, d)
        base = apply_rope(k, cos[:, :, None], sin[:, :, None], style=style, rotary_dim=rotary)
        assert_within_rule("k", got_k, want_k, base, dtype=torch.float32)
        assert torch.equal(cache.v[1][slots].view(3, 2, 3, 8), v)
        assert torch.count_nonzero(cache.k[0]) == 0  # other layers untouched


def test_write_rotated_errors():
    cache = StaticKVCache(num_layers=1, batch=1, max_seq=4, kv_heads=1, head_dim=8)
    k = torch.randn(1, 1, 1, 8)
    cos = sin = torch.ones(1, 1, 4)
    with pytest.raises(ValueError, match="call cache.begin_step"):
        write_rotated(cache, 0, k, k, cos, sin)
    cache.begin_step(1)
    with pytest.raises(ValueError, match=r"cos must be \[batch, n, rotary_dim // 2\] = \[1, 1, 4\]"):
        write_rotated(cache, 0, k, k, torch.ones(1, 1, 8), sin)
    with pytest.raises(ValueError, match="style must be one of"):
        write_rotated(cache, 0, k, k, cos, sin, style="neox")
    latent = LatentKVCache(num_layers=1, batch=1, max_seq=4, kv_lora_rank=16, rope_dim=4)
    with pytest.raises(TypeError, match="cache must be a StaticKVCache or PagedKVCache"):
        write_rotated(latent, 0, k, k, cos, sin)
