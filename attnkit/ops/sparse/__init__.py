"""Sparse attention ops: NSA's compression, block selection and top-f token branches, routing.

Native Sparse Attention (Yuan et al. 2025) and Sparse Routed Attention, exact semantics on the
reference backend (Triton kernels register later through ``attnkit.ops.sparse.backends``):

- ``compressed_attention``: attention over summaries of complete past blocks.
- ``select_blocks``: NSA's top-n block choice from the compression attention.
- ``selected_attention``: causal attention over each query's listed blocks.
- ``topk_token_attention``: causal attention over each query head's top-f keys.
- ``route_segments`` / ``routed_attention``: cosine routing to segment centroids.

All are self-attention over one sequence per batch row (``[b, s, h, d]``) or over the documents of
a packed batch (``[total, h, d]`` + ``cu_seqlens``), causal, GQA-aware (K/V never repeated).
The sliding-window branch is ``attnkit.attention(..., causal=True, window=(w - 1, 0))``.
"""

from attnkit.ops.sparse.compressed import (
    compressed_attention,
    compression_windows,
    num_compressed_blocks,
)
from attnkit.ops.sparse.routed import route_segments, routed_attention
from attnkit.ops.sparse.selected import selected_attention
from attnkit.ops.sparse.selection import select_blocks
from attnkit.ops.sparse.topk_tokens import topk_token_attention

__all__ = [
    "compressed_attention",
    "compression_windows",
    "num_compressed_blocks",
    "route_segments",
    "routed_attention",
    "select_blocks",
    "selected_attention",
    "topk_token_attention",
]
