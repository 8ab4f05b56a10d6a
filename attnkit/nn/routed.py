"""``SparseRoutedAttention``: each query reads its own segment and the top-k past segments.

::

    x -> q_proj, k_proj, v_proj -> q, k, v                                  [b, s, h, d]
      route:  segment centroids = mean of k per segment (before RoPE); each query scores the
              past segments by cosine similarity with its q, summed over its GQA group, and
              keeps the top_k (no gradient)
      attend: RoPE(q), RoPE(k) -> causal attention over the chosen segments + the own segment
    out = o_proj(...)

Routing reads the projections before RoPE (content, not position, decides the route); the
attention uses the rotated ones. Positions restart at document boundaries (``cu_seqlens`` or
``boundaries``), and documents never attend to each other. With ``top_k`` at least the number of
past segments, this is dense causal attention. See ``attnkit.ops.sparse.routed`` for the exact
rule (ties, scores).
"""

from __future__ import annotations

import torch
from torch import nn

from attnkit.nn._documents import resolve_documents
from attnkit.nn._inputs import check_hidden, check_rope, resolve_heads, resolve_positions
from attnkit.nn.rotary import RotaryEmbedding
from attnkit.ops._checks import check_int, check_scale
from attnkit.ops.sparse import routed_attention

__all__ = ["SparseRoutedAttention"]


class SparseRoutedAttention(nn.Module):
    """Sparse routed attention (the zerfoo seed's ``SparseRoutedAttention``), causal, GQA-aware.

    Args:
        hidden_size: width of x and of the output.
        num_heads: query heads.
        num_kv_heads: key/value heads, dividing ``num_heads`` (default ``num_heads``).
        head_dim: dims per head (default ``hidden_size // num_heads``).
        segment_size: tokens per KV segment, >= 1.
        top_k: past segments each query reads besides its own, >= 1.
        rope: a ``RotaryEmbedding`` for ``head_dim``, or None (no RoPE). Shareable.
        scale: score scale (default ``head_dim ** -0.5``).

    Raises:
        TypeError / ValueError: invalid configuration (``top_k < 1``, ``segment_size < 1``,
            head counts, rope for another head dim, ...).

    Example:
        >>> layer = SparseRoutedAttention(hidden_size=32, num_heads=4, num_kv_heads=2,
        ...                               segment_size=8, top_k=2)
        >>> layer(torch.randn(2, 30, 32)).shape
        torch.Size([2, 30, 32])
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        segment_size: int,
        top_k: int,
        rope: RotaryEmbedding | None = None,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        num_kv_heads, head_dim = resolve_heads(hidden_size, num_heads, num_kv_heads, head_dim)
        check_int("segment_size", segment_size, minimum=1)
        check_int("top_k", top_k, minimum=1)
        scale = check_scale(scale, head_dim)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.segment_size, self.top_k, self.scale = segment_size, top_k, scale
        self.rope = check_rope(rope, head_dim, what="head_dim")
        q_dim, kv_dim = num_heads * head_dim, num_kv_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, q_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, kv_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, kv_dim, bias=False)
        self.o_proj = nn.Linear(q_dim, hidden_size, bias=False)

    def reset_parameters(self) -> None:
        """Re-initialise the projections (PyTorch's Linear init) and the RoPE tables."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj):
            proj.reset_parameters()
        if self.rope is not None:
            self.rope.reset_parameters()

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None,
                boundaries: object = None) -> torch.Tensor:
        """Routed self-attention of ``x`` and the output projection.

        Args:
            x: ``[b, s, hidden_size]``; with ``cu_seqlens``, ``[1, total, hidden_size]``.
            positions: int RoPE positions ``[s]`` or ``[b, s]`` (default ``0 .. s - 1``,
                restarting in each document). Only with ``rope``; not with ``boundaries``.
            cu_seqlens: int32 ``[n_docs + 1]`` documents packed along x's sequence.
            boundaries: document starts in every row (ints / 1-D int tensor) or a bool
                ``[b, s]`` mask of starts. With either, each document is its own sequence:
                segments restart, positions restart, no attention across documents.

        Returns:
            ``[b, s, hidden_size]`` in x's dtype.

        Raises:
            TypeError / ValueError: wrong shapes or dtypes; positions without rope or with
                boundaries; cu_seqlens and boundaries together.
        """
        check_hidden("x", x, self.hidden_size)
        cu = resolve_documents(x, cu_seqlens, boundaries)
        if positions is not None and self.rope is None:
            raise ValueError("positions were given but the layer has no rope (rope=None)")
        if positions is not None and boundaries is not None:
            raise ValueError("positions and boundaries cannot be combined: positions restart at "
                             "each boundary")
        b0, s0, _ = x.shape
        b, s = (1, b0 * s0) if cu is not None else (b0, s0)
        x = x.reshape(b, s, self.hidden_size)  # documents packed along one row when cu is set
        hq, hk, d = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(b, s, hq, d)
        k = self.k_proj(x).view(b, s, hk, d)
        v = self.v_proj(x).view(b, s, hk, d)
        route_q, route_k = q, k  # routing reads the projections before RoPE
        if self.rope is not None:
            pos = resolve_positions(positions, b, s, x.device, cu)  # [s] or [b, s]
            q, k = self.rope.rotate(q, pos), self.rope.rotate(k, pos)
        if cu is not None:
            q, k, v, route_q, route_k = (t[0] for t in (q, k, v, route_q, route_k))
        out = routed_attention(q, k, v, segment_size=self.segment_size, top_k=self.top_k,
                               route_q=route_q, route_k=route_k, scale=self.scale,
                               cu_seqlens=cu)  # [b, s, hq, d] or [total, hq, d]
        return self.o_proj(out.reshape(b0, s0, hq * d))

    def extra_repr(self) -> str:
        return (f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, "
                f"num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
                f"segment_size={self.segment_size}, top_k={self.top_k}")
