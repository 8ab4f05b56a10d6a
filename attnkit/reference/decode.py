"""Reference decode attention over a KV cache: gather each sequence's keys, then plain attention.

The oracle of ``attnkit.kernels.decode``. No validation (``attnkit.ops.decode`` validates once).
For sequence ``i`` the valid keys are the first ``cache_seqlens[i]`` tokens of its cache: rows
``k_cache[i, :L]`` of a contiguous cache, or the pages ``block_table[i, :ceil(L / block_size)]``
of a paged pool, concatenated and cut to ``L``. The ``n`` new queries are aligned bottom-right
against those ``L`` keys (query ``t`` sees key ``j <= t + L - n`` when causal), exactly as
``attnkit.reference.attention`` aligns ``seq_q != seq_k``. Math in float32 (float64 inputs stay
float64).
"""

from __future__ import annotations

import torch

from attnkit.reference.attention import attention as _attention


def gather_keys(cache: torch.Tensor, index: int, length: int,
                block_table: torch.Tensor | None) -> torch.Tensor:
    """The first ``length`` tokens of sequence ``index``: ``[length, heads, dim]``.

    cache: contiguous ``[b, max_seq, heads, dim]`` or paged ``[num_blocks, block_size, heads,
    dim]`` (with ``block_table [b, max_blocks]``).
    """
    if block_table is None:
        return cache[index, :length]  # [L, h, d]
    block_size = cache.shape[1]
    used = -(-length // block_size)
    pages = block_table[index, :used].long()  # [used]
    return cache[pages].flatten(0, 1)[:length]  # [used * bs, h, d] -> [L, h, d]


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, *,
                     cache_seqlens: torch.Tensor, block_table: torch.Tensor | None = None,
                     causal: bool = True, window: tuple[int, int] = (-1, -1),
                     softcap: float = 0.0, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``n`` new queries per sequence against each sequence's cached keys.

    Args:
        q: ``[b, n, hq, d]``.
        k_cache: ``[b, max_seq, hk, d]`` or paged ``[num_blocks, block_size, hk, d]``.
        v_cache: like ``k_cache`` with head dim ``dv``.
        cache_seqlens: int ``[b]``, valid keys per sequence (new tokens included).
        block_table: int32 ``[b, max_blocks]`` for a paged cache, else None.

    Returns:
        ``(out, lse)``: out ``[b, n, hq, dv]`` in q's dtype, lse float32 ``[b, hq, n]``.

    Example:
        >>> q = torch.randn(2, 1, 4, 8)
        >>> kc, vc = torch.randn(2, 6, 2, 8), torch.randn(2, 6, 2, 8)
        >>> out, lse = decode_attention(q, kc, vc, cache_seqlens=torch.tensor([3, 6]),
        ...                             scale=8 ** -0.5)
        >>> out.shape, lse.shape
        (torch.Size([2, 1, 4, 8]), torch.Size([2, 4, 1]))
    """
    lengths = cache_seqlens.tolist()
    outs, lses = [], []
    for i, length in enumerate(lengths):
        k = gather_keys(k_cache, i, length, block_table)[None]  # [1, L, hk, d]
        v = gather_keys(v_cache, i, length, block_table)[None]  # [1, L, hk, dv]
        out, lse = _attention(q[i:i + 1], k, v, causal=causal, window=window, scale=scale,
                              softcap=softcap)
        outs.append(out)  # [1, n, hq, dv]
        lses.append(lse)  # [1, hq, n]
    return torch.cat(outs), torch.cat(lses)
