"""Position ids for RoPE: static and per-sequence offsets, and document-wise positions.

Every helper returns int64 positions on the device of its tensor input (or ``device``):

- :func:`positions_from_offset`: ``offset + arange(seq_len)``; ``offset`` an int, a 0-D int tensor
  (a runtime scalar, e.g. the decode step) or a ``[batch]`` int tensor (one offset per sequence).
- :func:`positions_from_cu_seqlens`: packed batches; positions restart at 0 in each document.
- :func:`positions_from_boundaries`: positions restart at each given document start.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnkit.ops._checks import check_int, check_ndim, check_tensor

__all__ = ["positions_from_boundaries", "positions_from_cu_seqlens", "positions_from_offset"]

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def _check_int_tensor(name: str, t: torch.Tensor) -> None:
    if t.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor (int32 or int64), got {t.dtype}")


def _same_device(wanted: torch.device, actual: torch.device) -> bool:
    return wanted.type == actual.type and wanted.index in (None, actual.index)


def positions_from_offset(
    seq_len: int,
    offset: int | torch.Tensor = 0,
    *,
    batch: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Positions ``offset + [0, 1, ..., seq_len - 1]``.

    Args:
        seq_len: number of positions, >= 0.
        offset: first position: an int >= 0, a 0-D int tensor, or an int tensor ``[batch]`` (one
            offset per sequence, e.g. each sequence's cache length in decode).
        batch: if given, the result is ``[batch, seq]``; must match a ``[batch]`` offset.
        device: device of the result; defaults to the offset tensor's device (or the default
            device for an int offset). Must agree with a tensor offset's device.

    Returns:
        int64 ``[seq]`` for a scalar offset without ``batch``, else int64 ``[batch, seq]``.

    Raises:
        TypeError: ``seq_len``/``batch`` not ints, ``offset`` neither an int nor an int tensor.
        ValueError: negative ``seq_len``/``offset``, offset tensor of rank > 1, ``batch`` that
            disagrees with the offset, ``device`` that disagrees with the offset's.

    >>> positions_from_offset(3, 5)
    tensor([5, 6, 7])
    >>> positions_from_offset(2, torch.tensor([0, 4]))
    tensor([[0, 1],
            [4, 5]])
    """
    check_int("seq_len", seq_len, minimum=0)
    if batch is not None:
        check_int("batch", batch, minimum=1)
    if isinstance(offset, torch.Tensor):
        _check_int_tensor("offset", offset)
        check_ndim("offset", offset, (0, 1), "a 0-D int tensor or an int tensor [batch]")
        if device is not None and not _same_device(torch.device(device), offset.device):
            raise ValueError(f"offset must be on device ({torch.device(device)}), "
                             f"got {offset.device}")
        if offset.numel() and bool((offset < 0).any()):
            raise ValueError(f"offset must be >= 0, got {offset.tolist()}")
        steps = torch.arange(seq_len, dtype=torch.int64, device=offset.device)  # [s]
        off = offset.to(torch.int64)
        if off.ndim == 0:
            pos = off + steps  # [s]
            return pos if batch is None else pos.expand(batch, seq_len)
        if batch is not None and batch != off.shape[0]:
            raise ValueError(
                f"offset must have one entry per sequence (batch={batch}), got shape "
                f"{tuple(off.shape)}"
            )
        return off[:, None] + steps  # [b, s]
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise TypeError(
            f"offset must be an int or an int tensor [batch], got {type(offset).__name__}"
        )
    check_int("offset", offset, minimum=0)
    pos = torch.arange(offset, offset + seq_len, dtype=torch.int64, device=device)  # [s]
    return pos if batch is None else pos.expand(batch, seq_len)


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Document-wise positions of a packed batch: 0, 1, ... restarting in each document.

    Args:
        cu_seqlens: int32 ``[N + 1]`` cumulative lengths: starts at 0, non-decreasing (empty
            documents allowed).

    Returns:
        int64 ``[total]`` with ``total = cu_seqlens[-1]``, on ``cu_seqlens``' device.

    Raises:
        TypeError: not a tensor, or not int32.
        ValueError: not 1-D with at least one entry, not starting at 0, decreasing.

    >>> positions_from_cu_seqlens(torch.tensor([0, 3, 3, 5], dtype=torch.int32))
    tensor([0, 1, 2, 0, 1])
    """
    check_tensor("cu_seqlens", cu_seqlens)
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    check_ndim("cu_seqlens", cu_seqlens, 1, "1-D [num_docs + 1]")
    if cu_seqlens.numel() == 0:
        raise ValueError("cu_seqlens must have at least one entry (num_docs + 1), got 0")
    cu = cu_seqlens.to(torch.int64)  # [n + 1]
    if int(cu[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {int(cu[0])}")
    if cu.numel() > 1 and bool((cu[1:] < cu[:-1]).any()):
        raise ValueError(f"cu_seqlens must be non-decreasing, got {cu_seqlens.tolist()}")
    total = int(cu[-1])
    idx = torch.arange(total, dtype=torch.int64, device=cu.device)  # [t]
    doc = torch.searchsorted(cu[1:], idx, right=True)  # [t] document of each token
    return idx - cu[doc]  # [t]


def positions_from_boundaries(
    boundaries: Sequence[int] | torch.Tensor,
    seq_len: int,
) -> torch.Tensor:
    """Positions that restart at 0 where a new document begins.

    Position 0 always starts a document, whether listed or not.

    Args:
        boundaries: either the indices where documents begin (a sequence of ints or a 1-D int
            tensor, each in ``[0, seq_len)``, any order, duplicates allowed), or a bool tensor
            ``[..., seq]`` (e.g. ``[batch, seq]``) that is True where a token starts a document.
        seq_len: the sequence length; must equal the last dim of a bool mask.

    Returns:
        int64 ``[seq]`` for indices, int64 ``[..., seq]`` for a mask (mask's device).

    Raises:
        TypeError: ``seq_len`` not an int; indices that are not ints; a tensor neither bool nor int.
        ValueError: index out of ``[0, seq_len)``; index tensor not 1-D; mask of rank 0 or whose
            last dim differs from ``seq_len``.

    >>> positions_from_boundaries([3, 5], 7)
    tensor([0, 1, 2, 0, 1, 0, 1])
    """
    check_int("seq_len", seq_len, minimum=0)
    if isinstance(boundaries, torch.Tensor) and boundaries.dtype == torch.bool:
        if boundaries.ndim == 0 or boundaries.shape[-1] != seq_len:
            raise ValueError(
                f"boundaries as a bool mask must have shape [..., seq_len={seq_len}], got "
                f"{tuple(boundaries.shape)}"
            )
        return _restart_at(boundaries)
    if isinstance(boundaries, torch.Tensor):
        _check_int_tensor("boundaries", boundaries)
        check_ndim("boundaries", boundaries, 1, "1-D start indices or a bool mask [..., seq]")
        starts = boundaries.to(torch.int64)
        device = boundaries.device
    else:
        if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Sequence):
            raise TypeError(
                "boundaries must be a sequence of ints, an int tensor or a bool tensor, got "
                f"{type(boundaries).__name__}"
            )
        for i, b in enumerate(boundaries):
            check_int(f"boundaries[{i}]", b)
        starts = torch.tensor(list(boundaries), dtype=torch.int64)
        device = None
    if starts.numel() and (int(starts.min()) < 0 or int(starts.max()) >= seq_len):
        raise ValueError(
            f"boundaries must lie in [0, seq_len={seq_len}), got {starts.tolist()}"
        )
    mask = torch.zeros(seq_len, dtype=torch.bool, device=device)  # [s]
    mask[starts] = True
    return _restart_at(mask)


def _restart_at(starts: torch.Tensor) -> torch.Tensor:
    """``i - (last j <= i with starts[..., j])`` along the last dim (0 if none)."""
    seq_len = starts.shape[-1]
    idx = torch.arange(seq_len, dtype=torch.int64, device=starts.device)  # [s]
    last_start = torch.where(starts, idx, torch.zeros_like(idx))  # [..., s]
    if seq_len:
        last_start = last_start.cummax(dim=-1).values
    return idx - last_start  # [..., s]
