"""Validated ``cu_seqlens`` values, read from the device once per tensor and version.

Checking a packed batch's cumulative lengths needs their values on the host: a device-to-host
copy that waits for the GPU and then leaves it idle while the host launches the kernels. A
model calls attention once per layer with the same ``cu_seqlens`` tensor, so the answer is
kept per tensor object (weakly: it goes when the tensor does) together with the tensor's
version counter, which every in-place PyTorch write (also through a view) advances; a changed
tensor is read and checked again. A write that bypasses that counter (through ``.data``, or a
hand-written kernel storing through a raw pointer) is not seen: build a new tensor instead.

Example:
    >>> cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    >>> longest_segment("cu_seqlens_q", cu, total=7), longest_segment("cu_seqlens_q", cu, total=7)
    (4, 4)
"""

from __future__ import annotations

import torch
from torch.utils.weak import WeakIdKeyDictionary

# tensor (by identity, held weakly) -> (version, values) of its last successful check.
_CHECKED = WeakIdKeyDictionary()


def _values(cu: torch.Tensor) -> tuple[int, ...]:
    if torch.compiler.is_compiling():  # traced: no host-side state
        return tuple(cu.tolist())
    cached = _CHECKED.get(cu)
    if cached is not None and cached[0] == cu._version:
        return cached[1]
    return tuple(cu.tolist())


def longest_segment(name: str, cu: torch.Tensor, *, total: int) -> int:
    """Check the values of a 1-D int32 ``cu`` (``[num_segments + 1]``); return the longest
    segment.

    Raises:
        ValueError: ``cu`` does not start at 0, decreases somewhere, or does not end at
            ``total`` (the packed tokens).
    """
    values = _values(cu)
    if values[0] != 0:
        raise ValueError(f"{name} must start at 0, got {values[0]}")
    lengths = [b - a for a, b in zip(values[:-1], values[1:])]
    if min(lengths) < 0:
        at = lengths.index(min(lengths))
        raise ValueError(f"{name} must be non-decreasing, got {values[at]} then {values[at + 1]} "
                         f"at index {at}")
    if values[-1] != total:
        raise ValueError(f"{name} must end at the number of packed tokens ({total}), got "
                         f"{values[-1]}")
    if not torch.compiler.is_compiling():
        _CHECKED[cu] = (cu._version, values)
    return max(lengths)
