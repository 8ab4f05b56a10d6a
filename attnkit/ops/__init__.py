"""Functional API: validation at the boundary, dispatch to a backend, autograd wiring."""

from attnkit.ops.attention import attention
from attnkit.ops.decode import decode_attention
from attnkit.ops.mla_decode import mla_decode_attention
from attnkit.ops.rope_write import write_rotated
from attnkit.ops.sparse import (
    compressed_attention,
    route_segments,
    routed_attention,
    select_blocks,
    selected_attention,
    topk_token_attention,
)

__all__ = [
    "attention",
    "decode_attention",
    "mla_decode_attention",
    "write_rotated",
    "compressed_attention",
    "route_segments",
    "routed_attention",
    "select_blocks",
    "selected_attention",
    "topk_token_attention",
]
