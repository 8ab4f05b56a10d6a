"""``attnkit.attention``: the public attention op for training and prefill."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from attnkit.ops import backends
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
from attnkit.ops._cu_seqlens import longest_segment
from attnkit.ops.call import AttentionCall


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    window: Sequence[int] = (-1, -1),
    scale: float | None = None,
    softcap: float = 0.0,
    key_padding_mask: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    cu_seqlens_q: torch.Tensor | None = None,
    cu_seqlens_k: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    dropout_p: float = 0.0,
    generator: torch.Generator | None = None,
    return_lse: bool = False,
    deterministic: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention with every mask a transformer uses.

    ``softmax(softcap(scale * q @ k^T) + additive_mask, masked) @ v`` per head, with grouped
    query heads (query head ``h`` reads KV head ``h // (hq // hk)``; K/V are never repeated).

    Causal alignment is bottom-right when ``sq != sk``: query ``i`` sees key ``j`` when
    ``j <= i + sk - sq``. For ``sq = 2, sk = 4`` (``x`` = attend)::

        causal            window=(1, 0), causal
        x x x .           . x x .
        x x x x           . . x x

    Args:
        q: queries ``[b, sq, hq, d]``, or packed ``[total_q, hq, d]`` with ``cu_seqlens_q``.
        k: keys ``[b, sk, hk, d]``, or packed ``[total_k, hk, d]``; ``hq % hk == 0``.
        v: values ``[b, sk, hk, dv]``, or packed ``[total_k, hk, dv]``; ``dv`` may differ from d.
        causal: mask keys after the (bottom-right aligned) diagonal.
        window: ``(left, right)`` sliding window around the aligned diagonal, ``-1`` = unbounded.
            "The last N positions" is ``window=(N - 1, 0)`` with ``causal=True``.
        scale: score scale; default ``1 / sqrt(d)``.
        softcap: when > 0, scores become ``softcap * tanh(scores / softcap)`` (Gemma 2, Grok).
        key_padding_mask: bool ``[b, sk]``, True = attend. Dense inputs only.
        attn_mask: a mask broadcastable to ``[b, hq, sq, sk]`` (rank 2 to 4): bool (True =
            attend) or float (added to the scores after softcap: ALiBi, a Hugging Face 4-D mask).
            Combined with every other mask. Dense inputs only.
        cu_seqlens_q, cu_seqlens_k: int32 ``[n + 1]`` cumulative segment lengths of a packed
            batch (segment ``i`` is rows ``cu[i]:cu[i+1]``); empty segments are allowed.
        max_seqlen_q, max_seqlen_k: the longest segment, when the caller knows it; must not be
            smaller than the true maximum. Eagerly the ``cu_seqlens`` values are read and
            checked once per tensor and version. Under ``torch.compile`` they are not read (a
            graph break): the kernels take ``max_seqlen_*`` as given, or the packed total when
            None (correct, with idle programs); the reference path still reads them.
        dropout_p: probability of dropping an attention probability (training); the mask comes
            from a counter-based Philox stream, the same in forward and backward.
        generator: where the dropout seed is drawn from (default: torch's global generator, so
            ``torch.manual_seed`` makes dropout reproducible).
        return_lse: also return the log-sum-exp of the scores of each row.
        deterministic: make the backward bitwise reproducible. The Triton backward then
            computes dq in its own kernel instead of adding it with float32 atomics, which
            recomputes the scores once more (7 instead of 5 matmuls per tile pair). Its cost,
            measured on an H200: none where the default takes that path anyway, which on
            Hopper is every shape whose backward reads through TMA descriptors (4k+ tokens,
            16-bit inputs, no dense mask), and GQA, sliding windows, short or wide-head shapes
            everywhere; for MHA at d <= 128 and 4k+ tokens on pointer loads (pre-Hopper GPUs,
            dense masks) up to 12% slower (16k causal). Also on whenever
            ``torch.use_deterministic_algorithms(True)`` is set. The reference is always
            deterministic.
        backend: ``"auto"`` (Triton on CUDA when it can serve the call, else the reference),
            ``"triton"`` or ``"reference"``.

    Returns:
        out ``[b, sq, hq, dv]`` (packed ``[total_q, hq, dv]``) in q's dtype; with
        ``return_lse``, also lse float32 ``[b, hq, sq]`` (packed ``[hq, total_q]``), natural log.
        A row that sees no key gives zeros and lse ``-inf``, with finite (zero) gradients.

    Raises:
        TypeError: a non-tensor input, non-float dtypes, mismatched dtypes, non-bool
            key_padding_mask, non-int32 cu_seqlens, non-int window entries.
        ValueError: wrong ranks or shapes, head counts not divisible, mismatched devices, window
            entries below -1, cu_seqlens out of range, masks given with packed inputs, dropout_p
            outside [0, 1), a requested backend that cannot serve the call (with each reason).

    Example:
        >>> import torch, attnkit
        >>> q = torch.randn(2, 7, 8, 64)
        >>> k, v = torch.randn(2, 7, 2, 64), torch.randn(2, 7, 2, 64)
        >>> out, lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
        >>> out.shape, lse.shape
        (torch.Size([2, 7, 8, 64]), torch.Size([2, 8, 7]))
    """
    call = _validate(q, k, v, causal=causal, window=window, scale=scale, softcap=softcap,
                     key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                     cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k,
                     max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, dropout_p=dropout_p,
                     generator=generator, return_lse=return_lse, backend=backend,
                     deterministic=deterministic)
    chosen = backends.select(call, backend)
    out, lse = chosen.run(call)
    return (out, lse) if return_lse else out


def _validate(q, k, v, *, causal, window, scale, softcap, key_padding_mask, attn_mask,
              cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, generator,
              return_lse, backend, deterministic=False) -> AttentionCall:
    """Check every input once and resolve defaults; raise with argument, expected, received."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t)
        check_float(name, t)
    check_same_dtype(("q", "k", "v"), (q, k, v))
    check_same_device(("q", "k", "v"), (q, k, v))
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not isinstance(return_lse, bool):
        raise TypeError(f"return_lse must be a bool, got {type(return_lse).__name__}")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    check_choice("backend", backend, ["auto", *backends.known_backends()])

    packed = cu_seqlens_q is not None or cu_seqlens_k is not None
    if packed:
        check_ndim("q", q, 3, "packed [total_q, heads, head_dim] when cu_seqlens are given")
        check_ndim("k", k, 3, "packed [total_k, kv_heads, head_dim] when cu_seqlens are given")
        check_ndim("v", v, 3, "packed [total_k, kv_heads, head_dim_v] when cu_seqlens are given")
        if cu_seqlens_q is None or cu_seqlens_k is None:
            missing = "cu_seqlens_q" if cu_seqlens_q is None else "cu_seqlens_k"
            raise ValueError(f"{missing} is required with packed inputs: give both "
                             "cu_seqlens_q and cu_seqlens_k")
        if key_padding_mask is not None or attn_mask is not None:
            raise ValueError("key_padding_mask and attn_mask apply to dense [b, s, h, d] inputs; "
                             "with cu_seqlens, pack only the valid tokens instead")
        seq_axis = 0
    else:
        check_ndim("q", q, 4, "[batch, seq_q, heads, head_dim]")
        check_ndim("k", k, 4, "[batch, seq_k, kv_heads, head_dim]")
        check_ndim("v", v, 4, "[batch, seq_k, kv_heads, head_dim_v]")
        if k.shape[0] != q.shape[0] or v.shape[0] != q.shape[0]:
            raise ValueError(f"q, k and v must share the batch size, got q {q.shape[0]}, "
                             f"k {k.shape[0]}, v {v.shape[0]}")
        seq_axis = 1
        for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
            if value is not None:
                raise ValueError(f"{name} applies to packed inputs (with cu_seqlens), got {value} "
                                 "for dense inputs")
    if k.shape[seq_axis] != v.shape[seq_axis]:
        raise ValueError(f"k and v must have the same number of keys, got {k.shape[seq_axis]} "
                         f"and {v.shape[seq_axis]}")
    hq, hk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if v.shape[-2] != hk:
        raise ValueError(f"v must have the kv heads of k ({hk}), got {v.shape[-2]}")
    if k.shape[-1] != d:
        raise ValueError(f"k's head_dim must equal q's ({d}), got {k.shape[-1]}")
    if d == 0 or v.shape[-1] == 0:
        raise ValueError(f"head dims must be >= 1, got q/k {d} and v {v.shape[-1]}")
    if hk == 0 or hq % hk != 0:
        raise ValueError(f"q's heads ({hq}) must be a multiple of k's heads ({hk})")

    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise ValueError(f"window must be a (left, right) pair, got {window!r}")
    for side, value in zip(("left", "right"), window):
        check_int(f"window {side}", value)
        if value < -1:
            raise ValueError(f"window {side} must be >= -1 (-1 = unbounded), got {value}")
    window = (int(window[0]), int(window[1]))
    scale = check_scale(scale, d)
    softcap = check_number("softcap", softcap, minimum=0.0)
    dropout_p = check_number("dropout_p", dropout_p, minimum=0.0, below=1.0)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")

    if packed:
        traced = torch.compiler.is_compiling()  # no host reads of cu_seqlens values
        max_q = _check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q, total=q.shape[0],
                                  read_values=not traced)
        max_k = _check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, q, total=k.shape[0],
                                  read_values=not traced)
        if cu_seqlens_k.shape[0] != cu_seqlens_q.shape[0]:
            raise ValueError(f"cu_seqlens_q and cu_seqlens_k must describe the same number of "
                             f"segments, got {cu_seqlens_q.shape[0] - 1} and "
                             f"{cu_seqlens_k.shape[0] - 1}")
        max_q = _check_max_seqlen("max_seqlen_q", max_seqlen_q, max_q, bound=traced)
        max_k = _check_max_seqlen("max_seqlen_k", max_seqlen_k, max_k, bound=traced)
    else:
        max_q, max_k = q.shape[1], k.shape[1]
        key_padding_mask = _check_key_padding(key_padding_mask, q, k)
        attn_mask = _check_attn_mask(attn_mask, q, k)

    seed = 0
    if dropout_p > 0:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    return AttentionCall(q=q, k=k, v=v, causal=causal, window=window, scale=scale,
                         softcap=softcap, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                         cu_seqlens_q=cu_seqlens_q, cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_q,
                         max_seqlen_k=max_k, dropout_p=dropout_p, dropout_seed=seed,
                         return_lse=return_lse, deterministic=deterministic
                         or torch.are_deterministic_algorithms_enabled())


def _check_cu_seqlens(name: str, cu: object, q: torch.Tensor, *, total: int,
                      read_values: bool = True) -> int:
    """Validate a cumulative-lengths tensor; return its longest segment (values read from the
    device once per tensor and version: ``attnkit.ops._cu_seqlens``), or with
    ``read_values=False`` (traced) check only its type and shape and return ``total``, an
    upper bound."""
    check_tensor(name, cu)
    if cu.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {cu.dtype}")
    if cu.ndim != 1 or cu.shape[0] < 2:
        raise ValueError(f"{name} must be 1-D [num_segments + 1] with at least 2 entries, got "
                         f"shape {tuple(cu.shape)}")
    if cu.device != q.device:
        raise ValueError(f"{name} must be on q's device ({q.device}), got {cu.device}")
    if not read_values:
        return total
    return longest_segment(name, cu, total=total)


def _check_max_seqlen(name: str, given: object, actual: int, *, bound: bool = False) -> int:
    """The longest segment: ``given`` if it covers ``actual`` (with ``bound``, ``actual`` is
    only an upper bound, the packed total, and ``given`` is trusted)."""
    if given is None:
        return actual
    check_int(name, given, minimum=0)
    if given < actual and not bound:
        raise ValueError(f"{name} ({given}) is smaller than the longest segment ({actual})")
    return given


def _check_key_padding(mask: object, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    check_tensor("key_padding_mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool (True = attend), got {mask.dtype}")
    expected = (k.shape[0], k.shape[1])
    if tuple(mask.shape) != expected:
        raise ValueError(f"key_padding_mask must be [batch, seq_k] = {list(expected)}, got "
                         f"{list(mask.shape)}")
    if mask.device != q.device:
        raise ValueError(f"key_padding_mask must be on q's device ({q.device}), got {mask.device}")
    return mask


def _check_attn_mask(mask: object, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    check_tensor("attn_mask", mask)
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise TypeError(f"attn_mask must be bool (True = attend) or float (added to scores), "
                        f"got {mask.dtype}")
    target = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])  # [b, hq, sq, sk]
    if not 2 <= mask.ndim <= 4:
        raise ValueError(f"attn_mask must have rank 2 to 4, broadcastable to [b, hq, sq, sk] = "
                         f"{list(target)}, got shape {list(mask.shape)}")
    mask4 = mask[(None,) * (4 - mask.ndim)]  # [B, H, Sq, Sk], a view
    for size, want in zip(mask4.shape, target):
        if size not in (1, want):
            raise ValueError(f"attn_mask of shape {list(mask.shape)} does not broadcast to "
                             f"[b, hq, sq, sk] = {list(target)}")
    if mask.device != q.device:
        raise ValueError(f"attn_mask must be on q's device ({q.device}), got {mask.device}")
    return mask4
