"""Document boundaries of the sparse layers: ``cu_seqlens`` or explicit starts -> ``cu_seqlens``."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnkit.nn._inputs import check_packed
from attnkit.ops._checks import check_int, check_tensor

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def resolve_documents(x: torch.Tensor, cu_seqlens: object, boundaries: object
                      ) -> torch.Tensor | None:
    """The int32 ``cu_seqlens`` of the documents of ``x`` ``[b, s, hidden]`` seen as one packed row.

    - ``cu_seqlens``: x must be ``[1, total, hidden]``; returned as is after checks.
    - ``boundaries``: the indices where documents begin in every row (ints or a 1-D int tensor,
      in ``[0, s)``), or a bool ``[b, s]`` mask, True where a token starts a document. Each row
      also starts a document. The result describes ``x.reshape(1, b * s, hidden)``.
    - neither: None (each row is one sequence).

    Raises:
        TypeError / ValueError: both given; malformed boundaries or cu_seqlens.
    """
    if cu_seqlens is not None and boundaries is not None:
        raise ValueError("give cu_seqlens (packed documents) or boundaries (document starts in "
                         "each row), not both")
    if cu_seqlens is not None:
        return check_packed(x, cu_seqlens)
    if boundaries is None:
        return None
    b, s = x.shape[0], x.shape[1]
    if s == 0:
        return None  # nothing to split
    starts = torch.zeros(b, s, dtype=torch.bool, device=x.device)  # [b, s]
    if isinstance(boundaries, torch.Tensor) and boundaries.dtype == torch.bool:
        if tuple(boundaries.shape) != (b, s):
            raise ValueError(f"boundaries as a bool mask must be [batch, seq] = [{b}, {s}], got "
                             f"{list(boundaries.shape)}")
        starts |= boundaries.to(x.device)
    else:
        if isinstance(boundaries, torch.Tensor):
            check_tensor("boundaries", boundaries)
            if boundaries.dtype not in _INT_DTYPES or boundaries.ndim != 1:
                raise TypeError(f"boundaries must be a 1-D int tensor, a sequence of ints or a "
                                f"bool [batch, seq] mask, got a {boundaries.ndim}-D "
                                f"{boundaries.dtype} tensor")
            listed = [int(i) for i in boundaries.tolist()]
        elif isinstance(boundaries, Sequence) and not isinstance(boundaries, (str, bytes)):
            listed = [check_int(f"boundaries[{n}]", i) for n, i in enumerate(boundaries)]
        else:
            raise TypeError(f"boundaries must be a sequence of ints, a 1-D int tensor or a bool "
                            f"[batch, seq] mask, got {type(boundaries).__name__}")
        for i in listed:
            if not 0 <= i < s:
                raise ValueError(f"boundaries must lie in [0, seq={s}), got {i}")
        starts[:, listed] = True
    starts[:, 0] = True
    flat = torch.nonzero(starts.reshape(-1)).view(-1)  # first token of each document
    total = torch.tensor([b * s], device=x.device)
    return torch.cat((flat, total)).to(torch.int32)
