"""``attnkit.decode_attention``: attention of a few new tokens against a KV cache.

Validation happens here, once; then a decode backend (``DECODE_BACKENDS``, the same
``Backend(name, unsupported_reason, run)`` contract as ``attnkit.ops.backends``) computes it:
``"triton"`` (split-KV flash decode, ``attnkit.kernels.decode``) on CUDA, ``"reference"``
(``attnkit.reference.decode``) everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnkit.ops._checks import (
    check_choice,
    check_float,
    check_int,
    check_ndim,
    check_number,
    check_same_device,
    check_same_dtype,
    check_scale,
    check_tensor,
)
from attnkit.ops.backends import Backend
from attnkit.reference import decode as _reference

__all__ = ["DecodeCall", "decode_attention", "DECODE_BACKENDS"]


@dataclass(frozen=True)
class DecodeCall:
    """One validated ``decode_attention`` call.

    q ``[b, n, hq, d]``; k_cache ``[b, max_seq, hk, d]`` (contiguous) or ``[num_blocks,
    block_size, hk, d]`` (paged, with int32 ``block_table [b, max_blocks]``); v_cache alike with
    head dim ``dv``; int32 ``cache_seqlens [b]``. ``capacity`` is the most keys one sequence can
    hold (``max_seq`` or ``max_blocks * block_size``); ``scale`` and ``window`` are resolved.
    """

    q: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    cache_seqlens: torch.Tensor
    block_table: torch.Tensor | None
    causal: bool
    window: tuple[int, int]
    softcap: float
    scale: float
    capacity: int

    @property
    def paged(self) -> bool:
        """True when the cache is a pool of pages read through ``block_table``."""
        return self.block_table is not None


def _reference_run(call: DecodeCall) -> tuple[torch.Tensor, torch.Tensor]:
    return _reference.decode_attention(
        call.q, call.k_cache, call.v_cache, cache_seqlens=call.cache_seqlens,
        block_table=call.block_table, causal=call.causal, window=call.window,
        softcap=call.softcap, scale=call.scale)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _triton_reason(call: DecodeCall) -> str | None:
    try:
        from attnkit.kernels import decode as _kernel  # noqa: F401
    except Exception as exc:  # triton missing or broken: say so, never crash the dispatcher
        return f"the Triton decode kernel cannot be imported ({type(exc).__name__}: {exc})"
    if call.q.device.type != "cuda" and not _interpreting():
        return (f"needs CUDA tensors (got {call.q.device.type}); use backend='reference' or set "
                "TRITON_INTERPRET=1 to run the kernel in Triton's interpreter")
    if call.q.dtype == torch.float64:
        return "float64 is not supported by the Triton kernel; use backend='reference'"
    if max(call.q.shape[-1], call.v_cache.shape[-1]) > 256:
        return (f"head dims above 256 are not supported (got d={call.q.shape[-1]}, "
                f"dv={call.v_cache.shape[-1]})")
    return None


def _triton_run(call: DecodeCall) -> tuple[torch.Tensor, torch.Tensor]:
    from attnkit.kernels import decode as _kernel
    return _kernel.decode_fwd(call)


REFERENCE = Backend(name="reference", unsupported_reason=lambda call: None, run=_reference_run)
TRITON = Backend(name="triton", unsupported_reason=_triton_reason, run=_triton_run)
# Order in which "auto" tries backends: fastest first, the reference last.
DECODE_BACKENDS: dict[str, Backend] = {"triton": TRITON, "reference": REFERENCE}


def select_backend(call: DecodeCall, requested: str) -> Backend:
    """The decode backend serving ``call``; "auto" never picks Triton's CPU interpreter.

    Raises:
        ValueError: the requested backend cannot serve the call (every backend's reason listed).
    """
    reasons = {name: b.unsupported_reason(call) for name, b in DECODE_BACKENDS.items()}
    if requested == "auto":
        for name, backend in DECODE_BACKENDS.items():
            if reasons[name] is None and (name != "triton" or call.q.device.type == "cuda"):
                return backend
    elif reasons[requested] is None:
        return DECODE_BACKENDS[requested]
    listed = "; ".join(f"{n}: {r or 'can serve it'}" for n, r in reasons.items())
    raise ValueError(f"backend={requested!r} cannot serve this decode call ({listed})")


def decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    *,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor | None = None,
    causal: bool = True,
    window: Sequence[int] = (-1, -1),
    softcap: float = 0.0,
    scale: float | None = None,
    return_lse: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``n`` new tokens per sequence against a contiguous or paged KV cache.

    Sequence ``i`` has ``L = cache_seqlens[i]`` valid keys, its ``n`` new tokens included (write
    them to the cache first). The new queries are aligned bottom-right: query ``t`` (0-based
    among the ``n``) sits at position ``L - n + t`` and, when causal, sees keys ``j <= L - n + t``;
    ``n > 1`` verifies speculative tokens. For ``n = 3, L = 5`` (``x`` = attend)::

        causal              window=(1, 0), causal
        x x x . .           . x x . .
        x x x x .           . . x x .
        x x x x x           . . . x x

    Lengths may differ in one batch. A query that sees no key (``L < n`` or an empty cache)
    returns zeros and lse ``-inf``.

    Args:
        q: ``[b, n, hq, d]``; ``hq`` a multiple of the cache's ``hk`` (grouped-query).
        k_cache: contiguous ``[b, max_seq, hk, d]``, or paged ``[num_blocks, block_size, hk, d]``
            with ``block_table``.
        v_cache: like ``k_cache`` with head dim ``dv`` (may differ from ``d``).
        cache_seqlens: int32 ``[b]``, valid keys per sequence, ``0 <= L <= capacity``
            (``max_seq``, or ``max_blocks * block_size`` when paged).
        block_table: int32 ``[b, max_blocks]``: page ``p`` of sequence ``i`` is
            ``k_cache[block_table[i, p]]``. Entries past a sequence's length are never read.
        causal: mask keys after each query's position.
        window: ``(left, right)`` around each query's position, ``-1`` = unbounded; "the last N
            tokens" is ``(N - 1, 0)``. Kernels read only the keys inside the window.
        softcap: when > 0, scores become ``softcap * tanh(scores / softcap)``.
        scale: score scale; default ``1 / sqrt(d)``.
        return_lse: also return the natural-log LSE of each row.
        backend: ``"auto"`` (Triton on CUDA, else the reference), ``"triton"`` or
            ``"reference"``.

    Returns:
        out ``[b, n, hq, dv]`` in q's dtype; with ``return_lse`` also lse float32 ``[b, hq, n]``.

    Raises:
        TypeError: non-tensors, non-float or mismatched dtypes, non-int32 cache_seqlens or
            block_table, non-bool flags, non-int window entries.
        ValueError: wrong ranks or shapes, head counts not divisible, devices differ, window
            entries below -1, lengths outside ``[0, capacity]``, block_table entries outside
            the pool, a requested backend that cannot serve the call (with each reason).

    Example:
        >>> import torch, attnkit
        >>> q = torch.randn(2, 1, 8, 64)                     # one new token, 8 query heads
        >>> k_cache = torch.randn(2, 32, 2, 64)              # [b, max_seq, kv_heads, d]
        >>> v_cache = torch.randn(2, 32, 2, 64)
        >>> lens = torch.tensor([5, 32], dtype=torch.int32)
        >>> attnkit.decode_attention(q, k_cache, v_cache, cache_seqlens=lens).shape
        torch.Size([2, 1, 8, 64])
    """
    call = validate(q, k_cache, v_cache, cache_seqlens=cache_seqlens, block_table=block_table,
                    causal=causal, window=window, softcap=softcap, scale=scale,
                    return_lse=return_lse, backend=backend)
    out, lse = select_backend(call, backend).run(call)
    return (out, lse) if return_lse else out


def validate(q, k_cache, v_cache, *, cache_seqlens, block_table, causal, window, softcap, scale,
             return_lse, backend) -> DecodeCall:
    """Check every input of ``decode_attention``; raise naming argument, expected, received."""
    for name, t in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache)):
        check_tensor(name, t)
        check_float(name, t)
    check_same_dtype(("q", "k_cache", "v_cache"), (q, k_cache, v_cache))
    check_same_device(("q", "k_cache", "v_cache"), (q, k_cache, v_cache))
    for name, flag in (("causal", causal), ("return_lse", return_lse)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    check_choice("backend", backend, ["auto", *DECODE_BACKENDS])
    check_ndim("q", q, 4, "[batch, n_new, heads, head_dim]")
    paged = block_table is not None
    layout = "[num_blocks, block_size, kv_heads, head_dim]" if paged else \
        "[batch, max_seq, kv_heads, head_dim]"
    check_ndim("k_cache", k_cache, 4, layout)
    check_ndim("v_cache", v_cache, 4, layout.replace("head_dim", "head_dim_v"))
    b, n, hq, d = q.shape
    if n < 1:
        raise ValueError(f"q must hold at least one new token per sequence, got n_new = {n}")
    if k_cache.shape[:3] != v_cache.shape[:3]:
        raise ValueError(f"v_cache must match k_cache in its first three dims "
                         f"{tuple(k_cache.shape[:3])}, got {tuple(v_cache.shape[:3])}")
    hk = k_cache.shape[2]
    if k_cache.shape[3] != d:
        raise ValueError(f"k_cache's head_dim must equal q's ({d}), got {k_cache.shape[3]}")
    if d == 0 or v_cache.shape[3] == 0:
        raise ValueError(f"head dims must be >= 1, got q/k {d} and v {v_cache.shape[3]}")
    if hk == 0 or hq % hk != 0:
        raise ValueError(f"q's heads ({hq}) must be a multiple of the cache's kv heads ({hk})")
    if paged:
        check_tensor("block_table", block_table)
        if block_table.dtype != torch.int32:
            raise TypeError(f"block_table must be int32, got {block_table.dtype}")
        check_ndim("block_table", block_table, 2, "[batch, max_blocks]")
        if block_table.shape[0] != b:
            raise ValueError(f"block_table must have one row per sequence ({b}), got "
                             f"{block_table.shape[0]}")
        check_same_device(("q", "block_table"), (q, block_table))
        capacity = block_table.shape[1] * k_cache.shape[1]
    else:
        if k_cache.shape[0] != b:
            raise ValueError(f"k_cache must have q's batch size ({b}) when contiguous, got "
                             f"{k_cache.shape[0]} (pass block_table for a paged cache)")
        capacity = k_cache.shape[1]
    check_tensor("cache_seqlens", cache_seqlens)
    if cache_seqlens.dtype != torch.int32:
        raise TypeError(f"cache_seqlens must be int32, got {cache_seqlens.dtype}")
    if tuple(cache_seqlens.shape) != (b,):
        raise ValueError(f"cache_seqlens must be [batch] = [{b}], got "
                         f"{list(cache_seqlens.shape)}")
    check_same_device(("q", "cache_seqlens"), (q, cache_seqlens))
    if b:
        # One device-to-host read for every value check (lengths, and pages when paged).
        ranges = [cache_seqlens.min(), cache_seqlens.max()]
        if paged and block_table.numel():
            ranges += [block_table.min(), block_table.max()]
        values = torch.stack([x.to(torch.int64) for x in ranges]).tolist()
        low, high = values[0], values[1]
        if low < 0 or high > capacity:
            raise ValueError(f"cache_seqlens must lie in [0, {capacity}] (the cache's capacity), "
                             f"got values in [{low}, {high}]")
        if len(values) == 4 and (values[2] < 0 or values[3] >= k_cache.shape[0]):
            raise ValueError(f"block_table entries must be pages in [0, {k_cache.shape[0] - 1}], "
                             f"got values in [{values[2]}, {values[3]}]")
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a (left, right) pair, got {window!r}")
    for side, value in zip(("left", "right"), window):
        check_int(f"window {side}", value)
        if value < -1:
            raise ValueError(f"window {side} must be >= -1 (-1 = unbounded), got {value}")
    softcap = check_number("softcap", softcap, minimum=0.0)
    scale = check_scale(scale, d)
    return DecodeCall(q=q, k_cache=k_cache, v_cache=v_cache, cache_seqlens=cache_seqlens,
                      block_table=block_table, causal=causal,
                      window=(int(window[0]), int(window[1])), softcap=softcap, scale=scale,
                      capacity=capacity)
