"""Argument checks shared by the caches (messages name argument, expected, received)."""

from __future__ import annotations

import torch

from attnkit.ops._checks import check_float, check_int, check_tensor


def check_dims(**dims: int) -> None:
    """Every given size is an int >= 1."""
    for name, value in dims.items():
        check_int(name, value, minimum=1)


def check_layer(layer: object, num_layers: int) -> int:
    check_int("layer", layer, minimum=0)
    if layer >= num_layers:
        raise ValueError(f"layer must be in [0, {num_layers - 1}], got {layer}")
    return layer


def check_rows(name: str, x: object, expected: tuple[int, ...], dtype: torch.dtype,
               device: torch.device, layout: str) -> torch.Tensor:
    """``x`` is a float tensor of exactly ``expected`` shape; cast to the cache's dtype."""
    check_tensor(name, x)
    check_float(name, x)
    if tuple(x.shape) != expected:
        raise ValueError(f"{name} must be {layout} = {list(expected)}, got {list(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} must be on the cache's device ({device}), got {x.device}")
    return x.to(dtype)
