"""Input checks shared by the public ops.

Every message names the argument, what was expected and what was received, so a user can fix the
call without reading the source. These helpers raise; they never return a status.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x: object) -> torch.Tensor:
    """Raise TypeError unless ``x`` is a tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_ndim(name: str, x: torch.Tensor, ndims: int | Sequence[int], layout: str) -> None:
    """Raise ValueError unless ``x.ndim`` is one of ``ndims``; ``layout`` describes the expectation."""
    allowed = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if x.ndim not in allowed:
        raise ValueError(f"{name} must be {layout}, got a {x.ndim}-D tensor of shape {tuple(x.shape)}")


def check_float(name: str, x: torch.Tensor) -> None:
    """Raise TypeError unless ``x`` has a floating dtype attnkit computes in."""
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}"
        )


def check_same_dtype(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """Raise TypeError unless every tensor has the dtype of the first."""
    first = tensors[0]
    for name, t in zip(names[1:], tensors[1:]):
        if t.dtype != first.dtype:
            raise TypeError(
                f"{name} must have the dtype of {names[0]} ({first.dtype}), got {t.dtype}"
            )


def check_same_device(names: Sequence[str], tensors: Sequence[torch.Tensor]) -> None:
    """Raise ValueError unless every tensor lives on the device of the first."""
    first = tensors[0]
    for name, t in zip(names[1:], tensors[1:]):
        if t.device != first.device:
            raise ValueError(
                f"{name} must be on the device of {names[0]} ({first.device}), got {t.device}"
            )


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """Raise TypeError unless ``value`` is an int (not bool); ValueError if below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_number(name: str, value: object, *, minimum: float | None = None,
                 below: float | None = None) -> float:
    """Raise TypeError unless ``value`` is a real number; ValueError outside [minimum, below)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} ({value!r})")
    value = float(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {below}, got {value}")
    return value


def check_scale(scale: object, head_dim: int) -> float:
    """The softmax scale: ``1/sqrt(head_dim)`` when None, else a positive finite number.

    The finiteness test is made of comparisons, not ``math.isfinite``: under ``torch.compile``
    a layer's float attribute arrives as a symbolic float, on which comparisons become guards
    while ``math.isfinite`` would break the graph.

    Raises:
        TypeError: ``scale`` is not a number.
        ValueError: ``scale`` is not positive and finite.
    """
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    value = check_number("scale", scale)
    if not (value > 0 and value != math.inf):  # also False for NaN
        raise ValueError(f"scale must be a positive finite number, got {value}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Raise ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}, got {value!r}")
    return value  # type: ignore[return-value]
