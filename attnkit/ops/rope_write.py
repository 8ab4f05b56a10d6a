"""``write_rotated``: RoPE at each sequence's own positions, fused with the KV-cache write.

In decode every sequence sits at its own position (the cache's per-sequence lengths: the seeds'
``rope_dynamic_offset``, with the offset read at run time). The step's positions come from
``cache.begin_step(n)``; ``RotaryEmbedding(positions)`` gives the tables. This writes the
rotated keys and the values to the step's slots of a static or paged cache: on CUDA through one
Triton kernel (``attnkit.kernels.rope_write``), elsewhere as ``apply_rope`` then ``write`` (the
reference; both give the same numbers up to float32 rounding).
"""

from __future__ import annotations

import os

import torch

from attnkit.cache._checks import check_layer, check_rows  # plain helpers, no cache state
from attnkit.ops._checks import check_choice, check_tensor
from attnkit.ops.rope import apply_rope, check_style, resolve_rotary_dim


def write_rotated(cache, layer: int, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                  sin: torch.Tensor, *, style: str = "half", rotary_dim: int | None = None,
                  backend: str = "auto") -> None:
    """Rotate this step's keys by RoPE and write keys and values to ``cache`` at ``layer``.

    Args:
        cache: a ``StaticKVCache`` or ``PagedKVCache`` after ``begin_step(n)``.
        layer: the layer index.
        k: ``[b, n, hk, d]`` keys before RoPE; v: ``[b, n, hk, dv]``.
        cos, sin: half-width tables ``[b, n, r/2]`` (or ``[b, n, 1, r/2]``), e.g.
            ``RotaryEmbedding(...)(cache.step_positions)``.
        style: ``"half"`` or ``"interleaved"``. rotary_dim: leading dims rotated (default d).
        backend: ``"auto"`` (Triton on CUDA), ``"triton"`` or ``"reference"``.

    Raises:
        TypeError, ValueError: wrong shapes, dtypes or devices; no step begun; a backend that
            cannot serve the call.

    Example:
        >>> import torch
        >>> from attnkit.cache import StaticKVCache
        >>> from attnkit.ops import write_rotated
        >>> from attnkit.nn import RotaryEmbedding
        >>> cache = StaticKVCache(num_layers=1, batch=2, max_seq=8, kv_heads=1, head_dim=8)
        >>> positions = cache.begin_step(3)                          # [2, 3]
        >>> cos, sin = RotaryEmbedding(8)(positions)                 # [2, 3, 4]
        >>> write_rotated(cache, 0, torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 8), cos, sin)
    """
    if hasattr(cache, "kv_lora_rank"):
        raise TypeError("cache must be a StaticKVCache or PagedKVCache; an MLA LatentKVCache "
                        "stores the rotated rope key itself (write(layer, latent, rope_key))")
    check_layer(layer, cache.num_layers)
    check_choice("backend", backend, ["auto", "triton", "reference"])
    check_style(style)
    positions = cache.step_positions
    if positions is None:
        raise ValueError("call cache.begin_step(n) before write_rotated")
    b, n = positions.shape
    kc, vc = cache.layer(layer)
    hk, d, dv = kc.shape[2], kc.shape[3], vc.shape[3]
    k = check_rows("k", k, (b, n, hk, d), cache.dtype, cache.device,
                   "[batch, n, kv_heads, head_dim]")
    v = check_rows("v", v, (b, n, hk, dv), cache.dtype, cache.device,
                   "[batch, n, kv_heads, head_dim_v]")
    r = resolve_rotary_dim(d, rotary_dim)
    for name, t in (("cos", cos), ("sin", sin)):
        check_tensor(name, t)
        if t.shape[-1] != r // 2 or t.numel() != b * n * (r // 2):
            raise ValueError(f"{name} must be [batch, n, rotary_dim // 2] = [{b}, {n}, {r // 2}] "
                             f"(or with a heads axis of 1), got {list(t.shape)}")
        if t.device != k.device:
            raise ValueError(f"{name} must be on the cache's device ({k.device}), got {t.device}")
    interpreting = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    use_triton = backend == "triton" or (backend == "auto" and k.is_cuda)
    if use_triton and not (k.is_cuda or interpreting):
        raise ValueError(f"backend='triton' needs CUDA tensors (got {k.device.type}); use "
                         "backend='reference'")
    if use_triton and k.dtype == torch.float64:
        raise ValueError("backend='triton' does not take float64; use backend='reference'")
    if not use_triton:
        tables = (cos.reshape(b, n, 1, r // 2), sin.reshape(b, n, 1, r // 2))
        cache.write(layer, apply_rope(k, *tables, style=style, rotary_dim=r), v)
        return
    from attnkit.kernels.rope_write import rope_write
    slot0, slot1 = cache.step_slots()
    rope_write(k.reshape(b * n, hk, d).contiguous(), v.reshape(b * n, hk, dv).contiguous(),
               cos.reshape(b * n, r // 2).contiguous(), sin.reshape(b * n, r // 2).contiguous(),
               kc, vc, slot0, slot1, interleaved=style == "interleaved", rotary_dim=r)
