"""Compressed attention: each query attends to summaries of the complete blocks before it.

NSA's coarse branch (Yuan et al. 2025, "Native Sparse Attention"). The keys (and values) of a
sequence are cut into overlapping windows of ``block`` tokens starting every ``stride`` tokens::

    window i = tokens [i*stride, i*stride + block),  i = 0 .. (s - block) // stride

A compressor (``attnkit.nn.NativeSparseAttention``'s MLP or mean) turns each window into one
summary key and value. Query ``t`` sees summary ``i`` only when the whole window is in its past,
``i*stride + block - 1 <= t``, so no future token leaks through a summary. For ``block=4,
stride=2`` and ``s=8`` (3 windows; ``x`` = visible)::

    t:   0 1 2 3 4 5 6 7
    i=0  . . . x x x x x
    i=1  . . . . . x x x
    i=2  . . . . . . . x

Queries before the first complete window (``t < block - 1``) see nothing: zeros, LSE ``-inf``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attnkit.ops._checks import check_int, check_ndim, check_scale, check_tensor
from attnkit.ops.sparse import _validate, backends
from attnkit.reference import sparse as reference

__all__ = ["compressed_attention", "compression_windows", "num_compressed_blocks"]


def num_compressed_blocks(length: int, *, block: int, stride: int) -> int:
    """Number of complete windows of ``block`` tokens, one every ``stride``, in ``length`` tokens.

    ``0`` when ``length < block``, else ``(length - block) // stride + 1``.

    >>> num_compressed_blocks(100, block=32, stride=16)
    5
    """
    check_int("length", length, minimum=0)
    _validate.check_block_config(block, stride)
    return reference.num_compressed_blocks(length, block, stride)


def compression_windows(x: torch.Tensor, *, block: int, stride: int,
                        cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """The windows a compressor summarises: ``[b, s, h, d] -> [b, nc, h, block, d]``.

    Window ``i`` is ``x[:, i*stride : i*stride + block]`` (a copy). Packed ``[total, h, d]`` with
    ``cu_seqlens`` gives ``[sum_i nc_i, h, block, d]``: each document's windows in order, never
    spanning two documents.

    Args:
        x: keys or values ``[b, s, h, d]`` (packed ``[total, h, d]``).
        block, stride: window length and step; ``1 <= stride <= block``, ``block % stride == 0``.
        cu_seqlens: int32 ``[n + 1]`` offsets of a packed batch.

    Returns:
        Tensor of x's dtype; differentiable.

    Raises:
        TypeError / ValueError: bad x, block configuration or cu_seqlens.

    >>> compression_windows(torch.randn(2, 9, 3, 8), block=4, stride=2).shape
    torch.Size([2, 3, 3, 4, 8])
    """
    check_tensor("x", x)
    _validate.check_block_config(block, stride)
    if cu_seqlens is None:
        check_ndim("x", x, 4, "[batch, seq, heads, head_dim]")
        return _windows(x, block, stride)
    check_ndim("x", x, 3, "packed [total, heads, head_dim] when cu_seqlens is given")
    cu = _validate.check_tokens(("x",), (x,), cu_seqlens)
    parts = [_windows(x[a:b].unsqueeze(0), block, stride)[0] for a, b in zip(cu[:-1], cu[1:])]
    if not parts:
        return x.new_zeros(0, x.shape[1], block, x.shape[2])
    return torch.cat(parts, dim=0)


def _windows(x: torch.Tensor, block: int, stride: int) -> torch.Tensor:
    b, s, h, d = x.shape
    n = reference.num_compressed_blocks(s, block, stride)
    if n == 0:
        return x.new_zeros(b, 0, h, block, d) + x.sum() * 0
    # unfold: [b, n, h, d, block] -> [b, n, h, block, d]
    return x.unfold(1, block, stride)[:, :n].permute(0, 1, 2, 4, 3).contiguous()


@dataclass(frozen=True)
class CompressedCall:
    """A validated ``compressed_attention`` call (shapes as documented there)."""

    q: torch.Tensor
    k_cmp: torch.Tensor
    v_cmp: torch.Tensor
    block: int
    stride: int
    scale: float
    cu_seqlens: torch.Tensor | None


def compressed_attention(
    q: torch.Tensor,
    k_cmp: torch.Tensor,
    v_cmp: torch.Tensor,
    *,
    block: int,
    stride: int,
    scale: float | None = None,
    cu_seqlens: torch.Tensor | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Causal attention over block summaries (NSA's compression branch), GQA-aware.

    Query ``t`` attends to summary ``i`` when window ``i`` has ended,
    ``i*stride + block - 1 <= t`` (see the module docstring). Query head ``h`` reads summary head
    ``h // (hq // hk)``.

    Args:
        q: queries ``[b, s, hq, d]``, or packed ``[total, hq, d]`` with ``cu_seqlens``.
        k_cmp: summary keys ``[b, nc, hk, d]`` with ``nc = num_compressed_blocks(s, ...)``;
            packed: every document's summaries in order, ``[sum_i nc_i, hk, d]``.
        v_cmp: summary values ``[b, nc, hk, dv]`` (packed ``[sum_i nc_i, hk, dv]``).
        block, stride: window length and step the summaries were made with.
        scale: score scale; default ``1 / sqrt(d)``.
        cu_seqlens: int32 ``[n + 1]`` token offsets of a packed batch (documents on their own).
        return_lse: also return the log-sum-exp of each row.
        backend: ``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        out ``[b, s, hq, dv]`` (packed ``[total, hq, dv]``) in q's dtype; with ``return_lse``
        also lse float32 ``[b, hq, s]`` (packed ``[hq, total]``). Rows that see no summary give
        zeros and lse ``-inf``.

    Raises:
        TypeError: non-tensor or non-float inputs, mismatched dtypes, bad cu_seqlens dtype.
        ValueError: wrong ranks or shapes (including a summary count that does not match the
            sequence), head counts, block configuration, devices; a backend that cannot serve it.

    Example:
        >>> q = torch.randn(2, 40, 8, 16)
        >>> k_cmp, v_cmp = torch.randn(2, 4, 2, 16), torch.randn(2, 4, 2, 16)
        >>> compressed_attention(q, k_cmp, v_cmp, block=16, stride=8).shape
        torch.Size([2, 40, 8, 16])
    """
    names = ("q", "k_cmp", "v_cmp")
    for name, t in zip(names, (q, k_cmp, v_cmp)):
        check_tensor(name, t)
    _validate.check_block_config(block, stride)
    _validate.check_bool("return_lse", return_lse)
    _validate.check_backend(backend)
    cu = _validate.check_compressed_layout(q, k_cmp, v_cmp, cu_seqlens, block, stride)
    _validate.check_heads(q, k_cmp, v_cmp)
    call = CompressedCall(q=q, k_cmp=k_cmp, v_cmp=v_cmp, block=block, stride=stride,
                          scale=check_scale(scale, q.shape[-1]),
                          cu_seqlens=None if cu is None else cu_seqlens)
    out, lse = backends.select("compressed_attention", call, backend).run(call)
    return (out, lse.float()) if return_lse else out


def _reference_run(call: CompressedCall) -> tuple[torch.Tensor, torch.Tensor]:
    return reference.compressed_attention(call.q, call.k_cmp, call.v_cmp, block=call.block,
                                          stride=call.stride, scale=call.scale,
                                          cu_seqlens=call.cu_seqlens)


backends.register("compressed_attention", backends.SparseBackend(
    name="reference", unsupported_reason=lambda call: None, run=_reference_run))
