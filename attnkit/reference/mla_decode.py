"""Reference MLA absorbed decode: attention in latent space over the latent and rope-key caches.

With the up-projections absorbed into the query (``q_latent = q_nope @ W_uk`` per head) and into
the output (``out @ W_uv`` after attention), multi-head latent attention over the cache becomes
multi-query attention where each token's key is ``[latent, rope_key]`` and its value is the
latent itself::

    score(h, j) = scale * (q_latent[h] . latent[j] + q_rope[h] . rope_key[j])
    out[h]      = sum_j softmax_j(score(h, j)) * latent[j]

No validation (``attnkit.ops.mla_decode`` validates). Math in float32.
"""

from __future__ import annotations

import torch

from attnkit.reference.decode import decode_attention


def mla_decode_attention(q_latent: torch.Tensor, q_rope: torch.Tensor, latent_cache: torch.Tensor,
                         rope_cache: torch.Tensor, *, cache_seqlens: torch.Tensor,
                         block_table: torch.Tensor | None = None, causal: bool = True,
                         scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Absorbed MLA decode.

    Args:
        q_latent: ``[b, n, h, r]`` queries already in latent space.
        q_rope: ``[b, n, h, p]`` rotary part of the queries.
        latent_cache: ``[b, max_seq, r]`` or paged ``[num_blocks, block_size, r]``.
        rope_cache: ``[b, max_seq, p]`` or paged ``[num_blocks, block_size, p]``.
        cache_seqlens: int ``[b]``; block_table: int32 ``[b, max_blocks]`` or None.

    Returns:
        ``(out, lse)``: out ``[b, n, h, r]`` (latent space) in q's dtype, lse ``[b, h, n]``.

    Example:
        >>> out, lse = mla_decode_attention(torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 8),
        ...     torch.randn(1, 5, 16), torch.randn(1, 5, 8), cache_seqlens=torch.tensor([5]),
        ...     scale=0.2)
        >>> out.shape
        torch.Size([1, 1, 4, 16])
    """
    q = torch.cat([q_latent, q_rope], dim=-1)  # [b, n, h, r + p]
    keys = torch.cat([latent_cache, rope_cache], dim=-1).unsqueeze(2)  # [.., .., 1, r + p]
    values = latent_cache.unsqueeze(2)  # [.., .., 1, r]
    return decode_attention(q, keys, values, cache_seqlens=cache_seqlens,
                            block_table=block_table, causal=causal, scale=scale)
