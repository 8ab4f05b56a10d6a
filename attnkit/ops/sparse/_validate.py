"""Input checks shared by the sparse attention ops (messages name argument, expected, received)."""

from __future__ import annotations

import torch

from attnkit.ops._checks import (
    check_choice,
    check_float,
    check_int,
    check_ndim,
    check_same_device,
    check_same_dtype,
    check_tensor,
)
from attnkit.ops.attention import _check_cu_seqlens
from attnkit.ops.sparse import backends
from attnkit.reference.sparse import num_compressed_blocks

_INDEX_DTYPES = (torch.int32, torch.int64)


def check_backend(backend: object) -> str:
    return check_choice("backend", backend, ["auto", *backends.known_backends()])


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


def check_tokens(names: tuple[str, ...], tensors: tuple[torch.Tensor, ...],
                 cu_seqlens: object) -> list[int] | None:
    """Check self-attention inputs of one layout; return the packed offsets (None when dense).

    ``names``/``tensors``: q first, then k (and v). Dense ``[b, s, h, d]``, all with q's batch
    and sequence; packed ``[total, h, d]`` with int32 ``cu_seqlens`` ending at ``total``.
    """
    for name, t in zip(names, tensors):
        check_tensor(name, t)
        check_float(name, t)
    check_same_dtype(names, tensors)
    check_same_device(names, tensors)
    q = tensors[0]
    packed = cu_seqlens is not None
    rank, layout = (3, "packed [total, heads, head_dim] when cu_seqlens is given") if packed \
        else (4, "[batch, seq, heads, head_dim]")
    for name, t in zip(names, tensors):
        check_ndim(name, t, rank, layout)
    lead = q.shape[:rank - 2]
    for name, t in zip(names[1:], tensors[1:]):
        if t.shape[:rank - 2] != lead:
            what = "tokens" if packed else "[batch, seq]"
            raise ValueError(f"{name} must have q's {what} {list(lead)} (self-attention over one "
                             f"sequence), got {list(t.shape[:rank - 2])}")
    if packed:
        _check_cu_seqlens("cu_seqlens", cu_seqlens, q, total=q.shape[0])
        return [int(x) for x in cu_seqlens.tolist()]
    return None


def check_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor | None = None) -> None:
    hq, hk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"k's head_dim must equal q's ({d}), got {k.shape[-1]}")
    if d == 0:
        raise ValueError(f"head_dim must be >= 1, got {d}")
    if hk == 0 or hq % hk != 0:
        raise ValueError(f"q's heads ({hq}) must be a multiple of k's heads ({hk})")
    if v is not None:
        if v.shape[-2] != hk:
            raise ValueError(f"v must have the kv heads of k ({hk}), got {v.shape[-2]}")
        if v.shape[-1] == 0:
            raise ValueError(f"v's head_dim must be >= 1, got {v.shape[-1]}")


def check_block_config(compress_block: object, compress_stride: object,
                       select_block: object | None = None) -> None:
    """NSA's blocking: ``stride <= block``, stride divides block and (if given) select_block."""
    check_int("compress_block", compress_block, minimum=1)
    check_int("compress_stride", compress_stride, minimum=1)
    if compress_stride > compress_block:
        raise ValueError(f"compress_stride ({compress_stride}) must be <= compress_block "
                         f"({compress_block}): windows with gaps would skip tokens")
    if compress_block % compress_stride:
        raise ValueError(f"compress_block ({compress_block}) must be a multiple of "
                         f"compress_stride ({compress_stride})")
    if select_block is not None:
        check_int("select_block", select_block, minimum=1)
        if select_block % compress_stride:
            raise ValueError(f"select_block ({select_block}) must be a multiple of "
                             f"compress_stride ({compress_stride})")


def check_index_tensor(name: str, idx: object, q: torch.Tensor, hk: int,
                       limits: torch.Tensor) -> None:
    """Check block/segment indices ``[*q.shape[:-2], hk, n]``.

    ``limits`` ``[*q.shape[:-2]]``: the number of blocks of each query's document; entries must
    lie in ``[-1, limit)`` and the listed (non -1) ones of a row must be distinct.
    """
    check_tensor(name, idx)
    if idx.dtype not in _INDEX_DTYPES:
        raise TypeError(f"{name} must be int32 or int64, got {idx.dtype}")
    lead = list(q.shape[:-2])
    if idx.ndim != len(lead) + 2 or list(idx.shape[:-2]) != lead or idx.shape[-2] != hk:
        raise ValueError(f"{name} must be [{', '.join(map(str, lead))}, kv_heads={hk}, n], got "
                         f"shape {list(idx.shape)}")
    if idx.device != q.device:
        raise ValueError(f"{name} must be on q's device ({q.device}), got {idx.device}")
    if idx.numel() == 0:
        return
    lim = limits.view(*limits.shape, 1, 1)
    bad = (idx < -1) | (idx >= lim)
    if bool(bad.any()):
        at = tuple(int(x) for x in bad.nonzero()[0].tolist())
        raise ValueError(f"{name} entries must be -1 (unused) or a block of the query's document "
                         f"in [0, {int(lim.expand_as(idx)[at])}), got {int(idx[at])} at index "
                         f"{list(at)}")
    ordered = torch.sort(idx, dim=-1).values
    dup = (ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)
    if bool(dup.any()):
        at = tuple(int(x) for x in dup.nonzero()[0].tolist())
        raise ValueError(f"{name} must list each block at most once per row, got block "
                         f"{int(ordered[at])} twice in row {list(at[:-1])}")


def blocks_per_token(q: torch.Tensor, cu: list[int] | None, block: int) -> torch.Tensor:
    """Number of ``block``-token blocks of the document of each query, ``[*q.shape[:-2]]``."""
    if cu is None:
        b, s = q.shape[0], q.shape[1]
        return torch.full((b, s), -(-s // block), dtype=torch.int64, device=q.device)
    counts = [-(-(b - a) // block) for a, b in zip(cu[:-1], cu[1:])]
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    per = torch.tensor(counts, dtype=torch.int64, device=q.device)
    return per.repeat_interleave(torch.tensor(lengths, dtype=torch.int64, device=q.device))


def check_compressed_layout(q, k_cmp, v_cmp, cu_seqlens, block, stride) -> list[int] | None:
    """Ranks, dtypes, devices, and the summary count each sequence implies."""
    names = ("q", "k_cmp", "v_cmp")
    for name, t in zip(names, (q, k_cmp, v_cmp)):
        check_float(name, t)
    check_same_dtype(names, (q, k_cmp, v_cmp))
    check_same_device(names, (q, k_cmp, v_cmp))
    if cu_seqlens is None:
        for name, t in zip(names, (q, k_cmp, v_cmp)):
            check_ndim(name, t, 4, "[batch, seq, heads, head_dim]")
        cu = None
        expected = num_compressed_blocks(q.shape[1], block, stride)
        if k_cmp.shape[0] != q.shape[0] or v_cmp.shape[0] != q.shape[0]:
            raise ValueError(f"q, k_cmp and v_cmp must share the batch size, got q {q.shape[0]}, "
                             f"k_cmp {k_cmp.shape[0]}, v_cmp {v_cmp.shape[0]}")
        axis = 1
    else:
        cu = check_tokens(("q",), (q,), cu_seqlens)
        for name, t in zip(names[1:], (k_cmp, v_cmp)):
            check_ndim(name, t, 3, "packed [total_summaries, kv_heads, head_dim] with cu_seqlens")
        expected = sum(num_compressed_blocks(b - a, block, stride)
                       for a, b in zip(cu[:-1], cu[1:]))
        axis = 0
    for name, t in zip(names[1:], (k_cmp, v_cmp)):
        if t.shape[axis] != expected:
            raise ValueError(f"{name} must hold {expected} summaries (windows of block={block}, "
                             f"stride={stride} in the sequence), got {t.shape[axis]}")
    return cu
