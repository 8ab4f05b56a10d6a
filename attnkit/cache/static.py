"""``StaticKVCache``: a preallocated per-layer KV cache ``[batch, max_seq, kv_heads, d]``.

Each sequence of the batch has its own length. A decode step is two calls: ``begin_step(n)``
reserves ``n`` positions per sequence (checking capacity first) and returns their positions; then
each layer ``write(layer, k, v)``s its new keys and values there and reads the cache through
``decode_attention(q, *cache.layer(layer), **cache.decode_kwargs())``. Buffers never move, which
suits ``torch.compile`` and CUDA graphs.
"""

from __future__ import annotations

import torch

from attnkit.cache._checks import check_dims, check_layer, check_rows
from attnkit.cache.errors import CacheOverflowError
from attnkit.ops._checks import check_int, check_tensor


class StaticKVCache:
    """Preallocated keys and values for every layer.

    Args:
        num_layers, batch, max_seq, kv_heads, head_dim: sizes (ints >= 1).
        head_dim_v: value head dim (default ``head_dim``).
        dtype, device: of the buffers.

    Attributes:
        k, v: lists (one per layer) of ``[batch, max_seq, kv_heads, d]`` / ``[.., dv]`` buffers.
        lengths: host list of each sequence's valid tokens.
        cache_seqlens: int32 ``[batch]`` on the device, the lengths after the current step.

    Raises:
        TypeError, ValueError: sizes not ints >= 1.

    Example:
        >>> import torch, attnkit
        >>> from attnkit.cache import StaticKVCache
        >>> cache = StaticKVCache(num_layers=1, batch=2, max_seq=16, kv_heads=2, head_dim=8)
        >>> positions = cache.begin_step(3)             # prefill 3 tokens: [2, 3]
        >>> cache.write(0, torch.randn(2, 3, 2, 8), torch.randn(2, 3, 2, 8))
        >>> out = attnkit.decode_attention(torch.randn(2, 3, 4, 8), *cache.layer(0),
        ...                                **cache.decode_kwargs())
        >>> out.shape, cache.lengths
        (torch.Size([2, 3, 4, 8]), [3, 3])
    """

    def __init__(self, *, num_layers: int, batch: int, max_seq: int, kv_heads: int,
                 head_dim: int, head_dim_v: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        head_dim_v = head_dim if head_dim_v is None else head_dim_v
        check_dims(num_layers=num_layers, batch=batch, max_seq=max_seq, kv_heads=kv_heads,
                   head_dim=head_dim, head_dim_v=head_dim_v)
        self.num_layers, self.batch, self.max_seq = num_layers, batch, max_seq
        self.dtype = dtype
        # torch.empty resolves "cuda" to "cuda:<current>", the device tensors report
        self.device = torch.empty(0, device=device or "cpu").device
        shape = (batch, max_seq, kv_heads)
        self.k = [torch.zeros(*shape, head_dim, dtype=dtype, device=self.device)
                  for _ in range(num_layers)]
        self.v = [torch.zeros(*shape, head_dim_v, dtype=dtype, device=self.device)
                  for _ in range(num_layers)]
        self.lengths = [0] * batch
        self.cache_seqlens = torch.zeros(batch, dtype=torch.int32, device=self.device)
        self._positions: torch.Tensor | None = None  # [b, n] of the current step

    @property
    def step_positions(self) -> torch.Tensor | None:
        """int64 ``[batch, n]`` positions of the current step's new tokens (None before one)."""
        return self._positions

    @property
    def bytes_per_token(self) -> int:
        """Bytes of K and V stored per token, all layers."""
        per = sum(k.shape[2] * k.shape[3] + v.shape[2] * v.shape[3]
                  for k, v in zip(self.k, self.v))
        return per * self.k[0].element_size()

    def begin_step(self, n: int) -> torch.Tensor:
        """Reserve ``n`` new positions per sequence; returns them, int64 ``[batch, n]``.

        Raises:
            CacheOverflowError: a sequence would pass ``max_seq`` (nothing changes).
        """
        check_int("n", n, minimum=1)
        longest = max(self.lengths)
        if longest + n > self.max_seq:
            worst = self.lengths.index(longest)
            raise CacheOverflowError(
                f"sequence {worst} holds {longest} tokens; {n} more exceed max_seq "
                f"({self.max_seq}); nothing was written")
        start = torch.tensor(self.lengths, dtype=torch.int64, device=self.device)
        self._positions = start[:, None] + torch.arange(n, device=self.device)  # [b, n]
        self.lengths = [length + n for length in self.lengths]
        self.cache_seqlens = torch.tensor(self.lengths, dtype=torch.int32, device=self.device)
        return self._positions

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor,
              positions: torch.Tensor | None = None) -> None:
        """Write ``k [b, n, hk, d]`` and ``v [b, n, hk, dv]`` of one layer in place.

        ``positions`` (int ``[b, n]``) defaults to the current step's; explicit positions must
        lie in ``[0, max_seq)`` (they do not change the lengths).

        Raises:
            CacheOverflowError: a position is outside the cache (nothing is written).
            ValueError, TypeError: wrong layer, shapes, dtypes or devices; no step begun.
        """
        check_layer(layer, self.num_layers)
        positions = self._resolve_positions(positions)
        n = positions.shape[1]
        kb, vb = self.k[layer], self.v[layer]
        k = check_rows("k", k, (self.batch, n, kb.shape[2], kb.shape[3]), self.dtype,
                       self.device, "[batch, n, kv_heads, head_dim]")
        v = check_rows("v", v, (self.batch, n, vb.shape[2], vb.shape[3]), self.dtype,
                       self.device, "[batch, n, kv_heads, head_dim_v]")
        rows = torch.arange(self.batch, device=self.device)[:, None].expand(-1, n)  # [b, n]
        kb[rows, positions] = k
        vb[rows, positions] = v

    def _resolve_positions(self, positions: torch.Tensor | None) -> torch.Tensor:
        """The step's positions, or checked explicit ones, int64 ``[b, n]`` on the device."""
        if positions is None:
            if self._positions is None:
                raise ValueError("positions is required before the first begin_step(n)")
            positions = self._positions
        else:
            check_tensor("positions", positions)
            if positions.dtype.is_floating_point or positions.dtype == torch.bool:
                raise TypeError(f"positions must be an int tensor, got {positions.dtype}")
            if positions.ndim != 2 or positions.shape[0] != self.batch:
                raise ValueError(f"positions must be [batch, n] with batch {self.batch}, got "
                                 f"{list(positions.shape)}")
            if positions.numel():
                low, high = int(positions.min()), int(positions.max())
                if low < 0 or high >= self.max_seq:
                    raise CacheOverflowError(
                        f"positions must lie in [0, {self.max_seq - 1}], got [{low}, {high}]; "
                        "nothing was written")
            positions = positions.to(self.device, torch.int64)
        return positions

    def step_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's slots as int64 ``(batch index, position)``, each ``[b * n]``."""
        if self._positions is None:
            raise ValueError("call begin_step(n) first")
        b, n = self._positions.shape
        rows = torch.arange(b, device=self.device).repeat_interleave(n)
        return rows, self._positions.reshape(-1)

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k_cache, v_cache)`` of one layer, for ``decode_attention``."""
        check_layer(layer, self.num_layers)
        return self.k[layer], self.v[layer]

    def decode_kwargs(self) -> dict:
        """``cache_seqlens`` (and no block table) for ``decode_attention``."""
        return dict(cache_seqlens=self.cache_seqlens)

    def reset(self) -> None:
        """Forget every sequence (lengths to 0); buffers are kept."""
        self.lengths = [0] * self.batch
        self.cache_seqlens.zero_()
        self._positions = None
