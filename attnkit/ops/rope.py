"""Rotary position embeddings: ``apply_rope`` (given cos/sin) and the one-call ``rope``.

Table convention (one, everywhere in attnkit): cos and sin are **half-width**, one value per
rotated pair: ``[..., rotary_dim // 2]``, ``cos[..., i] = cos(position * inv_freq[i])``. The
``style`` decides which dims form pair ``i``:

- ``"half"`` (Hugging Face ``rotate_half``, GPT-NeoX): dims ``(i, i + rotary_dim // 2)``.
- ``"interleaved"`` (GPT-J, the original Llama): dims ``(2i, 2i + 1)``.

Hugging Face's full-width tables ``[..., rotary_dim]`` are ``cat(cos, cos)``; get them from
``RotaryEmbedding(..., )(positions, full_width=True)``, and pass half-width tables here.
Partial rotary (``rotary_dim < head_dim``) rotates the leading ``rotary_dim`` dims and passes the
rest through unchanged.
"""

from __future__ import annotations

import torch

from attnkit.ops._checks import (
    check_choice,
    check_float,
    check_int,
    check_same_device,
    check_same_dtype,
    check_tensor,
)
from attnkit.ops.positions import positions_from_offset
from attnkit.ops.rope_scaling import (
    DynamicNTKScaling,
    RopeScaling,
    check_rotary_dim,
    check_scaling,
    rope_inv_freq,
)
from attnkit.reference import rope as _reference

__all__ = ["apply_rope", "rope", "rope_cos_sin"]

STYLES = ("half", "interleaved")
_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def check_style(style: object) -> str:
    """Raise ValueError unless ``style`` is ``"half"`` or ``"interleaved"``."""
    return check_choice("style", style, STYLES)


def resolve_rotary_dim(head_dim: int, rotary_dim: object) -> int:
    """``rotary_dim`` (default ``head_dim``), checked even, >= 2 and <= ``head_dim``."""
    if rotary_dim is None:
        if head_dim % 2:
            raise ValueError(
                f"head dim (last dim of x) must be even for RoPE, got {head_dim}; "
                "pass an even rotary_dim to rotate only part of it"
            )
        rotary_dim = head_dim
    value = check_rotary_dim("rotary_dim", rotary_dim)
    if value > head_dim:
        raise ValueError(f"rotary_dim ({value}) must be <= head dim ({head_dim})")
    return value


def _check_positions(name: str, positions: object) -> torch.Tensor:
    check_tensor(name, positions)
    if positions.dtype not in _INT_DTYPES:
        raise TypeError(f"{name} must be an integer tensor (int32 or int64), got {positions.dtype}")
    return positions


def rope_cos_sin(
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    *,
    attention_factor: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-width cos/sin tables for integer positions.

    Args:
        positions: int tensor of any shape, e.g. ``[seq]`` or ``[batch, seq]``.
        inv_freq: float ``[rotary_dim // 2]`` (see ``rope_inv_freq``), on the positions' device.
        attention_factor: multiplies both tables (YaRN); 1.0 otherwise.

    Returns:
        ``(cos, sin)``, float32 ``[*positions.shape, rotary_dim // 2]``.

    Raises:
        TypeError: positions not an int tensor; inv_freq not a float tensor.
        ValueError: inv_freq not 1-D; devices differ.

    >>> from attnkit.ops.rope_scaling import rope_inv_freq
    >>> inv_freq, _ = rope_inv_freq(8, theta=10000.0)
    >>> cos, sin = rope_cos_sin(torch.arange(5), inv_freq)
    >>> cos.shape
    torch.Size([5, 4])
    """
    _check_positions("positions", positions)
    check_tensor("inv_freq", inv_freq)
    check_float("inv_freq", inv_freq)
    if inv_freq.ndim != 1:
        raise ValueError(f"inv_freq must be 1-D [rotary_dim // 2], got shape {tuple(inv_freq.shape)}")
    check_same_device(("positions", "inv_freq"), (positions, inv_freq))
    return _reference.rope_cos_sin(positions, inv_freq, float(attention_factor))


def apply_rope(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    style: str = "half",
    rotary_dim: int | None = None,
) -> torch.Tensor:
    """Rotate ``x`` by precomputed half-width cos/sin tables.

    Args:
        x: ``[..., head_dim]``, rank >= 2, floating point; e.g. ``[b, s, h, d]``.
        cos: ``[..., rotary_dim // 2]``, broadcastable against ``x`` with its last dim replaced
            by ``rotary_dim // 2`` (and not of higher rank than ``x``): for x ``[b, s, h, d]``,
            cos ``[b, s, 1, r/2]`` or ``[s, 1, r/2]``. Any float dtype; on x's device.
        sin: same shape, dtype and device as ``cos``.
        style: ``"half"`` (pairs ``(i, i + r/2)``, Hugging Face) or ``"interleaved"`` (pairs
            ``(2i, 2i + 1)``).
        rotary_dim: leading dims to rotate (even, <= head_dim); default all of ``head_dim``.

    Returns:
        Tensor of x's shape and dtype (math in float32, or float64 for float64 inputs). Dims
        beyond ``rotary_dim`` are x's own values.

    Raises:
        TypeError: non-tensors, non-float dtypes, cos/sin dtypes differ, rotary_dim not an int.
        ValueError: x rank < 2, bad style, odd head dim or rotary_dim, rotary_dim > head_dim,
            cos/sin shapes differ or do not broadcast against x, devices differ.

    >>> x = torch.randn(2, 5, 4, 8)                      # [b, s, h, d]
    >>> cos = torch.ones(5, 1, 4); sin = torch.zeros(5, 1, 4)   # [s, 1, d/2]: angle 0
    >>> torch.equal(apply_rope(x, cos, sin), x)
    True
    """
    check_tensor("x", x)
    check_tensor("cos", cos)
    check_tensor("sin", sin)
    if x.ndim < 2:
        raise ValueError(
            f"x must have rank >= 2 (e.g. [seq, head_dim] or [b, s, h, d]), got a {x.ndim}-D "
            f"tensor of shape {tuple(x.shape)}"
        )
    check_float("x", x)
    check_float("cos", cos)
    check_float("sin", sin)
    check_style(style)
    r = resolve_rotary_dim(x.shape[-1], rotary_dim)
    _check_tables(x, cos, sin, r)
    return _reference.apply_rope(x, cos, sin, style=style, rotary_dim=r)


def _check_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, r: int) -> None:
    check_same_dtype(("cos", "sin"), (cos, sin))
    check_same_device(("x", "cos", "sin"), (x, cos, sin))
    if cos.shape != sin.shape:
        raise ValueError(
            f"sin must have the shape of cos {tuple(cos.shape)}, got {tuple(sin.shape)}"
        )
    if cos.ndim == 0 or cos.shape[-1] != r // 2:
        got = tuple(cos.shape)
        hint = ""
        if cos.ndim and cos.shape[-1] == r:
            hint = (" (this looks like a full-width Hugging Face table; attnkit takes one value "
                    "per pair: cos[..., :rotary_dim // 2])")
        elif cos.ndim and r == x.shape[-1]:
            hint = "; for partial rotary pass rotary_dim="
        raise ValueError(
            f"cos must have last dim rotary_dim // 2 = {r // 2}, got shape {got}{hint}"
        )
    target = (*x.shape[:-1], r // 2)
    ok = cos.ndim <= x.ndim
    if ok:
        try:
            ok = torch.broadcast_shapes(cos.shape, target) == torch.Size(target)
        except RuntimeError:
            ok = False
    if not ok:
        raise ValueError(
            f"cos must broadcast against x with its last dim replaced, i.e. to {target}, got "
            f"shape {tuple(cos.shape)} (for x [b, s, h, d] use cos [b, s, 1, r/2] or [s, 1, r/2])"
        )


def rope(
    x: torch.Tensor,
    *,
    theta: float = 10000.0,
    seq_dim: int | None = None,
    offset: int | torch.Tensor = 0,
    positions: torch.Tensor | None = None,
    head_dim: int | None = None,
    style: str = "half",
    rotary_dim: int | None = None,
    scaling: RopeScaling | None = None,
) -> torch.Tensor:
    """Apply RoPE in one call: frequencies, positions and rotation.

    Positions along ``seq_dim`` are ``offset + 0, 1, ...`` unless ``positions`` is given.

    Args:
        x: float tensor of rank >= 2 with the head dim last, e.g. ``[b, s, h, d]``; or, with
            ``head_dim``, a last axis of ``heads * head_dim`` (e.g. ``[seq, hidden]``).
        theta: RoPE base, > 1.
        seq_dim: axis of x holding the sequence (negative counts from the end; not the last
            axis). Default ``-3`` (``[b, s, h, d]``), or ``-2`` when ``head_dim`` is given
            (``[s, heads * d]``, ``[b, s, heads * d]``). For ``[b, h, s, d]`` pass ``-2``.
        offset: first position: int >= 0, a 0-D int tensor, or an int tensor ``[x.shape[0]]``
            (one offset per sequence; axis 0 is then the batch and must differ from seq_dim).
        positions: explicit int positions ``[seq]`` or ``[x.shape[0], seq]`` instead of an
            offset (e.g. document-wise positions).
        head_dim: split x's last axis into heads of this size, rotate, merge back.
        style: ``"half"`` or ``"interleaved"`` (see ``apply_rope``).
        rotary_dim: leading dims of each head to rotate (partial rotary); default all.
        scaling: a scaling config (``LinearScaling``, ``DynamicNTKScaling``, ``YarnScaling``,
            ``Llama3Scaling``); dynamic NTK uses ``max(positions) + 1`` as the length, YaRN's
            attention factor multiplies cos/sin.

    Returns:
        Tensor of x's shape and dtype.

    Raises:
        TypeError: wrong types (x, offset, positions, ints, scaling).
        ValueError: x rank < 2; seq_dim out of range or the last axis; head_dim not dividing the
            last axis; odd head dim / rotary_dim; rotary_dim > head dim; negative offsets; both
            offset and positions; offset/positions shapes or devices not matching x.

    >>> q = torch.randn(2, 7, 4, 64)                             # [b, s, h, d]
    >>> rope(q, offset=3).shape
    torch.Size([2, 7, 4, 64])
    >>> rope(torch.randn(7, 256), head_dim=64, offset=128).shape   # [s, h*d]
    torch.Size([7, 256])
    """
    check_tensor("x", x)
    if x.ndim < 2:
        raise ValueError(
            f"x must have rank >= 2 (e.g. [seq, head_dim] or [b, s, h, d]), got a {x.ndim}-D "
            f"tensor of shape {tuple(x.shape)}"
        )
    check_float("x", x)
    check_style(style)
    check_scaling("scaling", scaling)

    if seq_dim is None:
        seq_dim = -2 if head_dim is not None else -3
    check_int("seq_dim", seq_dim)
    if not -x.ndim <= seq_dim < x.ndim:
        raise ValueError(
            f"seq_dim ({seq_dim}) must be in [{-x.ndim}, {x.ndim - 1}] for x of shape "
            f"{tuple(x.shape)}"
        )
    seq_axis = seq_dim % x.ndim
    if seq_axis == x.ndim - 1:
        raise ValueError(
            f"seq_dim ({seq_dim}) must not be the last axis of x, which holds the head dim"
        )

    xv = x  # [..., d]
    if head_dim is not None:
        check_int("head_dim", head_dim, minimum=1)
        if x.shape[-1] % head_dim:
            raise ValueError(
                f"head_dim ({head_dim}) must divide the last dim of x ({x.shape[-1]})"
            )
        xv = x.unflatten(-1, (x.shape[-1] // head_dim, head_dim))  # [..., heads, d]
    r = resolve_rotary_dim(xv.shape[-1], rotary_dim)
    seq_len = x.shape[seq_axis]

    pos = _positions(x, seq_axis, seq_len, offset, positions)  # [s] or [b, s]

    length = None
    if isinstance(scaling, DynamicNTKScaling) and pos.numel():
        length = int(pos.max()) + 1
    inv_freq, attention_factor = rope_inv_freq(
        r, theta=theta, scaling=scaling, seq_len=length, device=x.device
    )
    cos, sin = _reference.rope_cos_sin(pos, inv_freq, attention_factor)  # [(b,) s, r/2]

    shape = [1] * (xv.ndim - 1) + [r // 2]  # broadcast against xv with last dim r/2
    shape[seq_axis] = seq_len
    if pos.ndim == 2:
        shape[0] = pos.shape[0]
    cos, sin = cos.reshape(shape), sin.reshape(shape)
    out = _reference.apply_rope(xv, cos, sin, style=style, rotary_dim=r)
    return out.reshape(x.shape)


def _positions(
    x: torch.Tensor,
    seq_axis: int,
    seq_len: int,
    offset: int | torch.Tensor,
    positions: torch.Tensor | None,
) -> torch.Tensor:
    """Validated int64 positions ``[seq]`` or ``[x.shape[0], seq]`` on x's device."""
    batched_msg = (
        "axis 0 of x is the batch for per-sequence positions and must differ from seq_dim; "
        f"x has shape {tuple(x.shape)} and seq_dim is axis {seq_axis}"
    )
    if positions is not None:
        if isinstance(offset, torch.Tensor) or offset != 0:
            raise ValueError("pass either offset or positions, not both (got both)")
        _check_positions("positions", positions)
        check_same_device(("x", "positions"), (x, positions))
        if positions.ndim == 2 and seq_axis == 0:
            raise ValueError(batched_msg)
        expected = f"[{seq_len}] or [{x.shape[0]}, {seq_len}]"
        if positions.ndim not in (1, 2) or positions.shape[-1] != seq_len or (
            positions.ndim == 2 and positions.shape[0] != x.shape[0]
        ):
            raise ValueError(
                f"positions must have shape {expected} (seq along seq_dim), got "
                f"{tuple(positions.shape)}"
            )
        return positions.to(torch.int64)
    if isinstance(offset, torch.Tensor):
        check_same_device(("x", "offset"), (x, offset))
        if offset.ndim == 1:
            if seq_axis == 0:
                raise ValueError(batched_msg)
            if offset.shape[0] != x.shape[0]:
                raise ValueError(
                    f"offset must have one entry per sequence [{x.shape[0]}] (x.shape[0]), got "
                    f"shape {tuple(offset.shape)}"
                )
    device = None if isinstance(offset, torch.Tensor) else x.device
    return positions_from_offset(seq_len, offset, device=device)
