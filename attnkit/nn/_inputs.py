"""Input checks shared by attnkit's layers (``GroupedQueryAttention``, ``MultiHeadLatentAttention``).

Messages name the argument, what was expected and what was received, as everywhere in attnkit.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnkit.nn.rotary import RotaryEmbedding
from attnkit.ops._checks import check_float, check_int, check_number, check_tensor
from attnkit.ops.positions import positions_from_cu_seqlens

_INT_DTYPES = (torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64)


def resolve_heads(hidden_size: object, num_heads: object, num_kv_heads: object,
                  head_dim: object) -> tuple[int, int]:
    """Check a layer's head layout; return ``(num_kv_heads, head_dim)`` with defaults filled.

    ``num_kv_heads`` defaults to ``num_heads`` (MHA); ``head_dim`` to ``hidden_size // num_heads``.

    Raises:
        TypeError: a non-int size.
        ValueError: a size below 1, ``num_heads`` not a multiple of ``num_kv_heads``, or
            ``hidden_size`` not divisible by ``num_heads`` when ``head_dim`` is not given.
    """
    check_int("hidden_size", hidden_size, minimum=1)
    check_int("num_heads", num_heads, minimum=1)
    num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
    check_int("num_kv_heads", num_kv_heads, minimum=1)
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads "
                         f"({num_kv_heads})")
    if head_dim is None:
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads "
                             f"({num_heads}), or give head_dim explicitly")
        head_dim = hidden_size // num_heads
    check_int("head_dim", head_dim, minimum=1)
    return num_kv_heads, head_dim


def check_hidden(name: str, x: object, width: int) -> torch.Tensor:
    """Raise unless ``x`` is a float tensor ``[batch, seq, width]``."""
    check_tensor(name, x)
    check_float(name, x)
    if x.ndim != 3 or x.shape[-1] != width:
        raise ValueError(f"{name} must be [batch, seq, {width}], got shape {tuple(x.shape)}")
    return x


def check_dropout(dropout: object) -> float:
    """A dropout probability in [0, 1)."""
    return check_number("dropout", dropout, minimum=0.0, below=1.0)


def check_rope(rope: object, head_dim: int, *, what: str) -> RotaryEmbedding | None:
    """Raise unless ``rope`` is None or a ``RotaryEmbedding`` for heads of ``head_dim`` dims."""
    if rope is None:
        return None
    if not isinstance(rope, RotaryEmbedding):
        raise TypeError(f"rope must be None or an attnkit.nn.RotaryEmbedding, got "
                        f"{type(rope).__name__}")
    if rope.head_dim != head_dim:
        raise ValueError(f"rope.head_dim ({rope.head_dim}) must equal the layer's {what} "
                         f"({head_dim})")
    return rope


def resolve_window(window: object, causal: bool) -> tuple[int, int]:
    """``None`` -> ``(-1, -1)``; int ``N`` (causal only) -> ``(N - 1, 0)``; ``(left, right)`` as is."""
    if window is None:
        return (-1, -1)
    if isinstance(window, int) and not isinstance(window, bool):
        check_int("window", window, minimum=1)
        if not causal:
            raise ValueError(f"window={window} (an int: attend to the last {window} positions) "
                             "needs causal=True; give a (left, right) pair for a bidirectional "
                             "window")
        return (window - 1, 0)
    if not isinstance(window, Sequence) or isinstance(window, str) or len(window) != 2:
        raise ValueError(f"window must be None, an int (the last N positions) or a (left, right) "
                         f"pair, got {window!r}")
    for side, value in zip(("left", "right"), window):
        check_int(f"window {side}", value)
        if value < -1:
            raise ValueError(f"window {side} must be >= -1 (-1 = unbounded), got {value}")
    return (int(window[0]), int(window[1]))


def key_padding(mask: object, batch: int, seq_k: int, device: torch.device) -> torch.Tensor | None:
    """A bool key-padding mask ``[batch, seq_k]`` (True = attend) from a bool or 0/1 int mask."""
    if mask is None:
        return None
    check_tensor("attention_mask", mask)
    if mask.dtype != torch.bool and mask.dtype not in _INT_DTYPES:
        raise TypeError(f"attention_mask must be bool or integer (True / nonzero = keep), got "
                        f"{mask.dtype}")
    if tuple(mask.shape) != (batch, seq_k):
        raise ValueError(f"attention_mask must be a key padding mask [batch, seq_k] = "
                         f"[{batch}, {seq_k}], got {list(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"attention_mask must be on the input's device ({device}), got "
                         f"{mask.device}")
    return mask if mask.dtype == torch.bool else mask != 0


def check_packed(x: torch.Tensor, cu_seqlens: object) -> torch.Tensor:
    """Raise unless ``x`` is ``[1, total, hidden]`` and ``cu_seqlens`` int32 ``[n + 1]`` ends at total."""
    check_tensor("cu_seqlens", cu_seqlens)
    if cu_seqlens.dtype != torch.int32:
        raise TypeError(f"cu_seqlens must be int32, got {cu_seqlens.dtype}")
    if x.shape[0] != 1:
        raise ValueError(f"x must be [1, total_tokens, hidden] with cu_seqlens (documents packed "
                         f"along the sequence), got shape {tuple(x.shape)}")
    if cu_seqlens.ndim != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must be 1-D [num_docs + 1] with at least 2 entries, got "
                         f"shape {tuple(cu_seqlens.shape)}")
    if int(cu_seqlens[-1]) != x.shape[1]:
        raise ValueError(f"cu_seqlens must end at the number of packed tokens ({x.shape[1]}), "
                         f"got {int(cu_seqlens[-1])}")
    return cu_seqlens


def resolve_positions(positions: object, batch: int, seq: int, device: torch.device,
                      cu_seqlens: torch.Tensor | None) -> torch.Tensor:
    """Int positions ``[seq]`` or ``[batch, seq]``: given, document-wise, or ``0 .. seq - 1``."""
    if positions is None:
        if cu_seqlens is not None:
            return positions_from_cu_seqlens(cu_seqlens)  # [total], restarts per document
        return torch.arange(seq, device=device)  # [s]
    check_tensor("positions", positions)
    if positions.dtype not in _INT_DTYPES:
        raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
    if tuple(positions.shape) not in ((seq,), (batch, seq)):
        raise ValueError(f"positions must be [seq] = [{seq}] or [batch, seq] = [{batch}, {seq}], "
                         f"got {list(positions.shape)}")
    return positions
