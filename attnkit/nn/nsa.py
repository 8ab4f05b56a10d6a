"""``NativeSparseAttention``: NSA (Yuan et al. 2025) on ``attnkit.ops``, exact semantics.

Three branches read the same RoPE'd queries and, as in the paper ("independent keys and values
for three branches", against shortcut learning), their own keys and values; gates mix them::

    x -> q_proj -> RoPE -> q                                                [b, s, hq, d]
    x -> k_proj, v_proj -> (k, v) for each of compressed / selected / window -> RoPE on k
      compressed: k, v -> windows (block l, stride d) -> BlockCompressor -> k_cmp, v_cmp
                  o_cmp = compressed_attention(q, k_cmp, v_cmp)           (block visible once
                                                                            its last token <= t)
      selected:   idx = select_blocks(q, k_cmp)  (no gradient; group-shared, first + local
                  blocks forced) -> o_slc = selected_attention(q, k, v, idx)
                  or, with fine_tokens=f: o_slc = topk_token_attention(q, k, v, top_tokens=f)
      window:     o_win = attnkit.attention(q, k, v, causal=True, window=(w - 1, 0))
    out = o_proj(g_cmp * o_cmp + g_slc * o_slc + g_win * o_win)

Gates ``g`` (per token, per query head, per branch) are ``sigmoid(gate_proj(x))`` for
``gate="input"`` (the paper) or ``sigmoid(gate_logits)`` with per-head logits initialised to 0
(``gate="static"``, the zerfoo variant: each branch starts at weight 0.5).

Gradients are exact through every attention, the compressor, the projections and the gates; the
discrete choice of blocks (or tokens) passes none: gradients reach the selected keys and values
(straight-through on the selection).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from attnkit.nn._documents import resolve_documents
from attnkit.nn._inputs import check_hidden, check_rope, resolve_heads, resolve_positions
from attnkit.nn.block_compressor import BlockCompressor
from attnkit.nn.rotary import RotaryEmbedding
from attnkit.ops._checks import check_choice, check_int, check_number
from attnkit.ops.attention import attention
from attnkit.ops.sparse import (
    compressed_attention,
    compression_windows,
    select_blocks,
    selected_attention,
    topk_token_attention,
)
from attnkit.ops.sparse._validate import check_block_config

__all__ = ["NativeSparseAttention", "NSABranches"]

GATES = ("input", "static")


class NSABranches(NamedTuple):
    """What one ``NativeSparseAttention`` call computes before the output projection.

    ``q``: RoPE'd queries ``[b, s, hq, d]`` (packed: ``[total, hq, d]``); ``k, v``: the keys
    (RoPE'd) and values of each branch, a tuple (compressed-branch tokens, selected, window) of
    ``[b, s, hk, d]`` (the same tensor three times with ``independent_kv=False``); ``k_cmp,
    v_cmp``: summaries; ``block_indices``: the selection (None with ``fine_tokens``); ``compressed,
    selected, window``: branch outputs ``[b, s, hq, d]``; ``gates``: ``[..., 3, hq]`` in the order
    compressed, selected, window (``[3, hq]`` for static gates).
    """

    q: torch.Tensor
    k: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    v: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    k_cmp: torch.Tensor
    v_cmp: torch.Tensor
    block_indices: torch.Tensor | None
    compressed: torch.Tensor
    selected: torch.Tensor
    window: torch.Tensor
    gates: torch.Tensor


class NativeSparseAttention(nn.Module):
    """Native Sparse Attention: compressed, selected and sliding-window branches with gates.

    Defaults are the paper's: compression windows of 32 tokens every 16, selection of 16 blocks
    of 64 tokens (1 initial and 2 local blocks always among them), a window of 512, gates from
    the input. ``compressor="mean"``, ``gate="static"`` and ``fine_tokens`` give the zerfoo
    variant. The layer is causal: no branch lets a query see a later token (see the module
    docstring and ``attnkit.ops.sparse`` for each branch's exact rule).

    Args:
        hidden_size: width of x and of the output.
        num_heads: query heads.
        num_kv_heads: key/value heads, dividing ``num_heads`` (default ``num_heads``). Blocks are
            selected per KV head, shared by its query heads.
        head_dim: dims per head (default ``hidden_size // num_heads``).
        compress_block: tokens per compression window ``l``.
        compress_stride: step between windows ``d``; ``d <= l`` and ``d`` divides ``l``.
        compressor: ``"mlp"`` (learned, with intra-block positions) or ``"mean"``.
        select_block: tokens per selection block ``l'``, a multiple of ``compress_stride``.
        select_blocks: blocks each query reads ``n`` (forced ones included).
        init_blocks: leading blocks always selected (default 1).
        local_blocks: blocks ending at the query's own block always selected (default 2).
        fine_tokens: when given, the selection branch reads each query head's ``fine_tokens``
            best-scoring keys (``topk_token_attention``) instead of blocks.
        window: the sliding window branch attends to the last ``window`` positions (query
            included).
        gate: ``"input"`` (``sigmoid(Linear(x))``) or ``"static"`` (per-head logits, init 0).
        independent_kv: True (the paper): each branch has its own keys and values, ``k_proj`` and
            ``v_proj`` output ``3 * num_kv_heads * head_dim`` (compressed, selected, window, in
            that order). False: one set shared by the branches (the zerfoo variant).
        rope: a ``RotaryEmbedding`` for ``head_dim``, or None (no RoPE). Shareable.
        scale: score scale of every branch (default ``head_dim ** -0.5``).

    Raises:
        TypeError / ValueError: invalid configuration, e.g. ``compress_stride > compress_block``,
            ``select_block`` not a multiple of ``compress_stride``, ``select_blocks <
            init_blocks + local_blocks``, ``window < 1``, an unknown ``compressor``/``gate``.

    Example:
        >>> layer = NativeSparseAttention(hidden_size=64, num_heads=4, num_kv_heads=2,
        ...                               compress_block=8, compress_stride=4, select_block=8,
        ...                               select_blocks=4, window=16)
        >>> layer(torch.randn(2, 50, 64)).shape
        torch.Size([2, 50, 64])
    """

    def __init__(
        self,
        *,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        compress_block: int = 32,
        compress_stride: int = 16,
        compressor: str = "mlp",
        select_block: int = 64,
        select_blocks: int = 16,
        init_blocks: int = 1,
        local_blocks: int = 2,
        fine_tokens: int | None = None,
        window: int = 512,
        gate: str = "input",
        rope: RotaryEmbedding | None = None,
        scale: float | None = None,
        independent_kv: bool = True,
    ) -> None:
        super().__init__()
        num_kv_heads, head_dim = resolve_heads(hidden_size, num_heads, num_kv_heads, head_dim)
        check_block_config(compress_block, compress_stride, select_block)
        check_int("select_blocks", select_blocks, minimum=1)
        check_int("init_blocks", init_blocks, minimum=0)
        check_int("local_blocks", local_blocks, minimum=0)
        if select_blocks < init_blocks + local_blocks:
            raise ValueError(f"select_blocks ({select_blocks}) must be >= init_blocks + "
                             f"local_blocks ({init_blocks} + {local_blocks}): the always-selected "
                             "blocks must fit")
        if fine_tokens is not None:
            check_int("fine_tokens", fine_tokens, minimum=1)
        check_int("window", window, minimum=1)
        check_choice("gate", gate, GATES)
        if not isinstance(independent_kv, bool):
            raise TypeError(f"independent_kv must be a bool, got {type(independent_kv).__name__}")
        if scale is None:
            scale = 1.0 / math.sqrt(head_dim)
        scale = check_number("scale", scale)
        if not (scale > 0 and math.isfinite(scale)):
            raise ValueError(f"scale must be a positive finite number, got {scale}")

        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        self.compress_block, self.compress_stride = compress_block, compress_stride
        self.select_block, self.select_blocks = select_block, select_blocks
        self.init_blocks, self.local_blocks = init_blocks, local_blocks
        self.fine_tokens, self.window, self.gate, self.scale = fine_tokens, window, gate, scale
        self.independent_kv = independent_kv
        self.rope = check_rope(rope, head_dim, what="head_dim")

        q_dim, kv_dim = num_heads * head_dim, num_kv_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, q_dim, bias=False)
        kv_sets = 3 if independent_kv else 1
        self.k_proj = nn.Linear(hidden_size, kv_sets * kv_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, kv_sets * kv_dim, bias=False)
        self.o_proj = nn.Linear(q_dim, hidden_size, bias=False)
        self.k_compress = BlockCompressor(head_dim, compress_block, kind=compressor)
        self.v_compress = BlockCompressor(head_dim, compress_block, kind=compressor)
        if gate == "input":
            self.gate_proj: nn.Linear | None = nn.Linear(hidden_size, 3 * num_heads)
            self.gate_logits: nn.Parameter | None = None
        else:
            self.gate_proj = None
            self.gate_logits = nn.Parameter(torch.zeros(3, num_heads))

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (Linear init, compressors, static gate logits to 0)."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.gate_proj):
            if proj is not None:
                proj.reset_parameters()
        self.k_compress.reset_parameters()
        self.v_compress.reset_parameters()
        if self.gate_logits is not None:
            with torch.no_grad():
                self.gate_logits.zero_()
        if self.rope is not None:
            self.rope.reset_parameters()

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None,
                boundaries: object = None) -> torch.Tensor:
        """Sparse self-attention of ``x`` and the output projection.

        Args:
            x: ``[b, s, hidden_size]``; with ``cu_seqlens``, ``[1, total, hidden_size]``.
            positions: int RoPE positions ``[s]`` or ``[b, s]`` (default ``0 .. s - 1``,
                restarting in each document). Only with ``rope``; not with ``boundaries``.
            cu_seqlens: int32 ``[n_docs + 1]`` documents packed along x's sequence.
            boundaries: document starts in every row (ints / 1-D int tensor) or a bool
                ``[b, s]`` mask of starts. With either, documents are separate sequences:
                attention, blocks and windows never cross a boundary and positions restart.

        Returns:
            ``[b, s, hidden_size]`` in x's dtype.

        Raises:
            TypeError / ValueError: wrong shapes or dtypes; positions without rope or with
                boundaries; cu_seqlens and boundaries together.
        """
        b, s = x.shape[0], x.shape[1]
        parts = self.branches(x, positions=positions, cu_seqlens=cu_seqlens,
                              boundaries=boundaries)
        g = parts.gates.unsqueeze(-1)  # [..., 3, hq, 1]
        mixed = (g[..., 0, :, :] * parts.compressed + g[..., 1, :, :] * parts.selected
                 + g[..., 2, :, :] * parts.window)  # [b, s, hq, d] or [total, hq, d]
        return self.o_proj(mixed.reshape(b, s, self.num_heads * self.head_dim))

    def branches(self, x: torch.Tensor, *, positions: torch.Tensor | None = None,
                 cu_seqlens: torch.Tensor | None = None,
                 boundaries: object = None) -> NSABranches:
        """Every intermediate of ``forward`` (same arguments), for inspection and tests.

        Returns:
            ``NSABranches``; with documents (``cu_seqlens``/``boundaries``) its tensors are
            packed ``[total, h, d]`` over ``x.reshape(1, b * s, hidden)``.
        """
        check_hidden("x", x, self.hidden_size)
        cu = resolve_documents(x, cu_seqlens, boundaries)
        if positions is not None and self.rope is None:
            raise ValueError("positions were given but the layer has no rope (rope=None)")
        if positions is not None and boundaries is not None:
            raise ValueError("positions and boundaries cannot be combined: positions restart at "
                             "each boundary")
        b, s, _ = x.shape
        if cu is not None:
            x = x.reshape(1, b * s, self.hidden_size)  # documents packed along one row
            b, s = 1, b * s
        hq, hk, d = self.num_heads, self.num_kv_heads, self.head_dim
        sets = 3 if self.independent_kv else 1
        q = self.q_proj(x).view(b, s, hq, d)
        k = self.k_proj(x).view(b, s, sets * hk, d)  # branches' heads side by side
        v = self.v_proj(x).view(b, s, sets * hk, d)
        if self.rope is not None:
            pos = resolve_positions(positions, b, s, x.device, cu)  # [s] or [b, s]
            q, k = self.rope.rotate(q, pos), self.rope.rotate(k, pos)
        if cu is not None:
            q, k, v = q[0], k[0], v[0]  # [total, h, d]
        ks = k.split(hk, dim=-2) * (3 // sets)  # (compressed, selected, window)
        vs = v.split(hk, dim=-2) * (3 // sets)

        windows = dict(block=self.compress_block, stride=self.compress_stride, cu_seqlens=cu)
        k_cmp = self.k_compress(compression_windows(ks[0], **windows))  # [b, nc, hk, d]
        v_cmp = self.v_compress(compression_windows(vs[0], **windows))
        o_cmp = compressed_attention(q, k_cmp, v_cmp, scale=self.scale, **windows)

        if self.fine_tokens is None:
            idx = select_blocks(q.detach(), k_cmp.detach(), compress_block=self.compress_block,
                                compress_stride=self.compress_stride,
                                select_block=self.select_block, num_selected=self.select_blocks,
                                init_blocks=self.init_blocks, local_blocks=self.local_blocks,
                                scale=self.scale, cu_seqlens=cu)  # [b, s, hk, n], no grad
            o_slc = selected_attention(q, ks[1], vs[1], idx, block=self.select_block,
                                       scale=self.scale, cu_seqlens=cu)
        else:
            idx = None
            o_slc = topk_token_attention(q, ks[1], vs[1], top_tokens=self.fine_tokens,
                                         scale=self.scale, cu_seqlens=cu)

        o_win = attention(q, ks[2], vs[2], causal=True, window=(self.window - 1, 0),
                          scale=self.scale, cu_seqlens_q=cu, cu_seqlens_k=cu)
        if self.gate_proj is not None:
            gates = torch.sigmoid(self.gate_proj(x)).view(b, s, 3, hq)  # [b, s, 3, hq]
            if cu is not None:
                gates = gates[0]  # [total, 3, hq]
        else:
            gates = torch.sigmoid(self.gate_logits)  # [3, hq]
        return NSABranches(q=q, k=tuple(ks), v=tuple(vs), k_cmp=k_cmp, v_cmp=v_cmp,
                           block_indices=idx, compressed=o_cmp, selected=o_slc, window=o_win,
                           gates=gates)

    def extra_repr(self) -> str:
        parts = [f"hidden_size={self.hidden_size}", f"num_heads={self.num_heads}",
                 f"num_kv_heads={self.num_kv_heads}", f"head_dim={self.head_dim}",
                 f"compress_block={self.compress_block}",
                 f"compress_stride={self.compress_stride}",
                 f"select_block={self.select_block}", f"select_blocks={self.select_blocks}",
                 f"window={self.window}", f"gate={self.gate!r}"]
        if self.fine_tokens is not None:
            parts.append(f"fine_tokens={self.fine_tokens}")
        if not self.independent_kv:
            parts.append("independent_kv=False")
        return ", ".join(parts)
