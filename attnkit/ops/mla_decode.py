"""``attnkit.mla_decode_attention``: absorbed multi-head latent attention over a latent cache.

See ``attnkit.reference.mla_decode`` for the math. Backends: ``"triton"``
(``attnkit.kernels.mla_decode``, every head of a tile sharing one read of the latent) on CUDA,
``"reference"`` everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from attnkit.ops._checks import (
    check_choice,
    check_float,
    check_ndim,
    check_same_device,
    check_same_dtype,
    check_scale,
    check_tensor,
)
from attnkit.ops.backends import Backend
from attnkit.ops.decode import validate as _validate_decode
from attnkit.reference import mla_decode as _reference

__all__ = ["MLADecodeCall", "mla_decode_attention"]


@dataclass(frozen=True)
class MLADecodeCall:
    """One validated ``mla_decode_attention`` call (shapes as in its docstring)."""

    q_latent: torch.Tensor
    q_rope: torch.Tensor
    latent_cache: torch.Tensor
    rope_cache: torch.Tensor
    cache_seqlens: torch.Tensor
    block_table: torch.Tensor | None
    causal: bool
    scale: float
    capacity: int

    @property
    def paged(self) -> bool:
        return self.block_table is not None


def _reference_run(call: MLADecodeCall):
    return _reference.mla_decode_attention(
        call.q_latent, call.q_rope, call.latent_cache, call.rope_cache,
        cache_seqlens=call.cache_seqlens, block_table=call.block_table, causal=call.causal,
        scale=call.scale)


def _triton_reason(call: MLADecodeCall) -> str | None:
    try:
        from attnkit.kernels import mla_decode as _kernel  # noqa: F401
    except Exception as exc:
        return f"the Triton MLA kernel cannot be imported ({type(exc).__name__}: {exc})"
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    if call.q_latent.device.type != "cuda" and not interpreting:
        return (f"needs CUDA tensors (got {call.q_latent.device.type}); use "
                "backend='reference'")
    if call.q_latent.dtype == torch.float64:
        return "float64 is not supported by the Triton kernel; use backend='reference'"
    return None


def _triton_run(call: MLADecodeCall):
    from attnkit.kernels import mla_decode as _kernel
    return _kernel.mla_decode_fwd(call)


BACKENDS: dict[str, Backend] = {
    "triton": Backend(name="triton", unsupported_reason=_triton_reason, run=_triton_run),
    "reference": Backend(name="reference", unsupported_reason=lambda call: None,
                         run=_reference_run),
}


def mla_decode_attention(q_latent: torch.Tensor, q_rope: torch.Tensor,
                         latent_cache: torch.Tensor, rope_cache: torch.Tensor, *,
                         cache_seqlens: torch.Tensor, block_table: torch.Tensor | None = None,
                         causal: bool = True, scale: float | None = None,
                         return_lse: bool = False, backend: str = "auto"):
    """Absorbed MLA decode: ``n`` new tokens per sequence against the latent and rope caches.

    Every head attends to the same per-token key ``[latent, rope_key]`` and value ``latent``
    (multi-query attention in latent space); ``cache_seqlens[i]`` counts sequence i's valid
    tokens, new ones included, and new tokens are aligned bottom-right (see
    ``attnkit.decode_attention``).

    Args:
        q_latent: ``[b, n, h, r]``: ``q_nope`` multiplied by each head's ``W_uk`` (absorbed).
        q_rope: ``[b, n, h, p]``: the rotary part of the queries (RoPE applied).
        latent_cache: ``[b, max_seq, r]`` or paged ``[num_blocks, block_size, r]``.
        rope_cache: ``[b, max_seq, p]`` or paged ``[num_blocks, block_size, p]`` (rope applied).
        cache_seqlens: int32 ``[b]``.
        block_table: int32 ``[b, max_blocks]`` for paged caches.
        causal: mask keys after each new token.
        scale: score scale; MLA uses ``1 / sqrt(qk_nope_dim + rope_dim)`` of the un-absorbed
            head, so pass it; the default ``1 / sqrt(r + p)`` is only a placeholder.
        return_lse: also return the LSE ``[b, h, n]``.
        backend: ``"auto"``, ``"triton"`` or ``"reference"``.

    Returns:
        out ``[b, n, h, r]`` in latent space (multiply by ``W_uv`` per head next); with
        ``return_lse`` also lse float32 ``[b, h, n]``.

    Raises:
        TypeError, ValueError: as ``attnkit.decode_attention``, naming these arguments.

    Example:
        >>> import torch, attnkit
        >>> out = attnkit.mla_decode_attention(
        ...     torch.randn(2, 1, 16, 64), torch.randn(2, 1, 16, 16),
        ...     torch.randn(2, 9, 64), torch.randn(2, 9, 16),
        ...     cache_seqlens=torch.tensor([4, 9], dtype=torch.int32), scale=0.1)
        >>> out.shape
        torch.Size([2, 1, 16, 64])
    """
    call = validate(q_latent, q_rope, latent_cache, rope_cache, cache_seqlens=cache_seqlens,
                    block_table=block_table, causal=causal, scale=scale, backend=backend,
                    return_lse=return_lse)
    reasons = {name: b.unsupported_reason(call) for name, b in BACKENDS.items()}
    chosen = None
    if backend == "auto":
        on_gpu = call.q_latent.device.type == "cuda"
        chosen = next((BACKENDS[n] for n, r in reasons.items()
                       if r is None and (n != "triton" or on_gpu)), None)
    elif reasons[backend] is None:
        chosen = BACKENDS[backend]
    if chosen is None:
        listed = "; ".join(f"{n}: {r or 'can serve it'}" for n, r in reasons.items())
        raise ValueError(f"backend={backend!r} cannot serve this MLA decode call ({listed})")
    out, lse = chosen.run(call)
    return (out, lse) if return_lse else out


def validate(q_latent, q_rope, latent_cache, rope_cache, *, cache_seqlens, block_table, causal,
             scale, backend, return_lse) -> MLADecodeCall:
    """Check every input of ``mla_decode_attention``; raise naming argument, expected, received."""
    names = ("q_latent", "q_rope", "latent_cache", "rope_cache")
    tensors = (q_latent, q_rope, latent_cache, rope_cache)
    for name, t in zip(names, tensors):
        check_tensor(name, t)
        check_float(name, t)
    check_same_dtype(names, tensors)
    check_same_device(names, tensors)
    check_choice("backend", backend, ["auto", *BACKENDS])
    check_ndim("q_latent", q_latent, 4, "[batch, n_new, heads, kv_lora_rank]")
    check_ndim("q_rope", q_rope, 4, "[batch, n_new, heads, rope_dim]")
    layout = "[num_blocks, block_size, {}]" if block_table is not None else "[batch, max_seq, {}]"
    check_ndim("latent_cache", latent_cache, 3, layout.format("kv_lora_rank"))
    check_ndim("rope_cache", rope_cache, 3, layout.format("rope_dim"))
    if q_rope.shape[:3] != q_latent.shape[:3]:
        raise ValueError(f"q_rope must match q_latent's [batch, n_new, heads] "
                         f"{list(q_latent.shape[:3])}, got {list(q_rope.shape[:3])}")
    if latent_cache.shape[2] != q_latent.shape[3]:
        raise ValueError(f"latent_cache's last dim must equal q_latent's kv_lora_rank "
                         f"({q_latent.shape[3]}), got {latent_cache.shape[2]}")
    if rope_cache.shape[2] != q_rope.shape[3]:
        raise ValueError(f"rope_cache's last dim must equal q_rope's rope_dim "
                         f"({q_rope.shape[3]}), got {rope_cache.shape[2]}")
    if rope_cache.shape[:2] != latent_cache.shape[:2]:
        raise ValueError(f"rope_cache must match latent_cache in its first two dims "
                         f"{list(latent_cache.shape[:2])}, got {list(rope_cache.shape[:2])}")
    width = q_latent.shape[3] + q_rope.shape[3]
    scale = check_scale(scale, width)
    # Lengths, block table, flags: the checks of decode_attention on an MQA view.
    q = q_latent[..., :1]  # [b, n, h, 1]: shapes only
    kv = latent_cache[..., None, :1]  # [.., .., 1, 1]
    call = _validate_decode(q, kv, kv, cache_seqlens=cache_seqlens, block_table=block_table,
                            causal=causal, window=(-1, -1), softcap=0.0, scale=scale,
                            return_lse=return_lse, backend="auto")
    return MLADecodeCall(q_latent=q_latent, q_rope=q_rope, latent_cache=latent_cache,
                         rope_cache=rope_cache, cache_seqlens=cache_seqlens,
                         block_table=block_table, causal=causal, scale=float(scale),
                         capacity=call.capacity)
