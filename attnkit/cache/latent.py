"""``LatentKVCache``: the MLA cache, one latent vector and one shared rope key per token.

Multi-head latent attention caches, per token, the compressed KV latent ``[kv_lora_rank]`` and
the rotary key ``[rope_dim]`` shared by all heads, instead of per-head keys and values: for
DeepSeek-V2/V3 (512 + 64) that is 576 values per token and layer against 2 x 128 x 128 for the
heads it replaces. Both live in one buffer ``[batch, max_seq, kv_lora_rank + rope_dim]`` per
layer; ``layer(l)`` returns the two views for ``attnkit.mla_decode_attention``.
"""

from __future__ import annotations

import torch

from attnkit.cache._checks import check_dims, check_layer, check_rows
from attnkit.cache.paged import PagedKVCache
from attnkit.cache.static import StaticKVCache


class LatentKVCache(StaticKVCache):
    """Preallocated latent + rope-key cache for every MLA layer (per-sequence lengths).

    Args:
        num_layers, batch, max_seq, kv_lora_rank, rope_dim: sizes (ints >= 1).
        dtype, device: of the buffers.

    Steps work as in ``StaticKVCache``: ``begin_step(n)``, then per layer
    ``write(layer, latent, rope_key)`` and
    ``mla_decode_attention(q_latent, q_rope, *cache.layer(layer), **cache.decode_kwargs())``.

    Raises:
        TypeError, ValueError: bad sizes.

    Example:
        >>> import torch, attnkit
        >>> from attnkit.cache import LatentKVCache
        >>> cache = LatentKVCache(num_layers=1, batch=1, max_seq=8, kv_lora_rank=16, rope_dim=4)
        >>> _ = cache.begin_step(2)
        >>> cache.write(0, torch.randn(1, 2, 16), torch.randn(1, 2, 4))
        >>> latent, rope_key = cache.layer(0)
        >>> out = attnkit.mla_decode_attention(torch.randn(1, 2, 3, 16), torch.randn(1, 2, 3, 4),
        ...                                    latent, rope_key, **cache.decode_kwargs())
        >>> out.shape, cache.bytes_per_token
        (torch.Size([1, 2, 3, 16]), 80)
    """

    def __init__(self, *, num_layers: int, batch: int, max_seq: int, kv_lora_rank: int,
                 rope_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        check_dims(num_layers=num_layers, batch=batch, max_seq=max_seq,
                   kv_lora_rank=kv_lora_rank, rope_dim=rope_dim)
        super().__init__(num_layers=num_layers, batch=batch, max_seq=1, kv_heads=1,
                         head_dim=1, dtype=dtype, device=device)
        self.max_seq, self.kv_lora_rank, self.rope_dim = max_seq, kv_lora_rank, rope_dim
        self.buffers = [torch.zeros(batch, max_seq, kv_lora_rank + rope_dim, dtype=dtype,
                                    device=self.device) for _ in range(num_layers)]
        self.k = self.v = []  # no per-head keys or values: the latent replaces them

    @property
    def bytes_per_token(self) -> int:
        """Bytes stored per token, all layers (latent + rope key)."""
        return self.num_layers * (self.kv_lora_rank + self.rope_dim) \
            * self.buffers[0].element_size()

    def write(self, layer: int, latent: torch.Tensor, rope_key: torch.Tensor,
              positions: torch.Tensor | None = None) -> None:
        """Write one layer's ``latent [b, n, kv_lora_rank]`` and ``rope_key [b, n, rope_dim]``
        (RoPE already applied) at the step's positions (or explicit int ``positions [b, n]``).

        Raises:
            CacheOverflowError: a position is outside the cache (nothing is written).
            ValueError, TypeError: no step begun, wrong layer, shapes, dtypes or devices.
        """
        check_layer(layer, self.num_layers)
        positions = self._resolve_positions(positions)
        n = positions.shape[1]
        latent = check_rows("latent", latent, (self.batch, n, self.kv_lora_rank), self.dtype,
                            self.device, "[batch, n, kv_lora_rank]")
        rope_key = check_rows("rope_key", rope_key, (self.batch, n, self.rope_dim), self.dtype,
                              self.device, "[batch, n, rope_dim]")
        rows = torch.arange(self.batch, device=self.device)[:, None].expand(-1, n)
        self.buffers[layer][rows, positions] = torch.cat([latent, rope_key], dim=-1)

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latent [b, max_seq, r], rope_key [b, max_seq, p])`` views of one layer."""
        check_layer(layer, self.num_layers)
        buf = self.buffers[layer]
        return buf[..., :self.kv_lora_rank], buf[..., self.kv_lora_rank:]


class PagedLatentKVCache(PagedKVCache):
    """The MLA latent cache in pages: ``[num_blocks, block_size, kv_lora_rank + rope_dim]`` per
    layer, with ``PagedKVCache``'s allocator (grow, free, fork with copy-on-write).

    Args:
        num_layers, num_blocks, block_size, kv_lora_rank, rope_dim: sizes (ints >= 1).
        dtype, device: of the pools.

    A step: ``begin_step(n, seq_ids)``, then per layer ``write(layer, latent, rope_key)`` and
    ``mla_decode_attention(q_latent, q_rope, *cache.layer(layer), **cache.decode_kwargs())``.

    Raises:
        TypeError, ValueError: bad sizes.

    Example:
        >>> import torch, attnkit
        >>> from attnkit.cache import PagedLatentKVCache
        >>> cache = PagedLatentKVCache(num_layers=1, num_blocks=4, block_size=4,
        ...                            kv_lora_rank=16, rope_dim=4)
        >>> a = cache.add_sequence()
        >>> _ = cache.begin_step(3, [a])
        >>> cache.write(0, torch.randn(1, 3, 16), torch.randn(1, 3, 4))
        >>> b = cache.fork(a)
        >>> out = attnkit.mla_decode_attention(torch.randn(1, 3, 2, 16), torch.randn(1, 3, 2, 4),
        ...                                    *cache.layer(0), **cache.decode_kwargs())
        >>> out.shape, cache.bytes_per_token
        (torch.Size([1, 3, 2, 16]), 80)
    """

    def __init__(self, *, num_layers: int, num_blocks: int, block_size: int, kv_lora_rank: int,
                 rope_dim: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        check_dims(num_layers=num_layers, num_blocks=num_blocks, block_size=block_size,
                   kv_lora_rank=kv_lora_rank, rope_dim=rope_dim)
        super().__init__(num_layers=num_layers, num_blocks=1, block_size=1, kv_heads=1,
                         head_dim=1, dtype=dtype, device=device)
        self.num_blocks, self.block_size = num_blocks, block_size
        self.kv_lora_rank, self.rope_dim = kv_lora_rank, rope_dim
        self._free = list(range(num_blocks - 1, -1, -1))
        self._refs = [0] * num_blocks
        # One pool per layer; copy-on-write copies every pool in self.k and self.v.
        self.k = [torch.zeros(num_blocks, block_size, kv_lora_rank + rope_dim, dtype=dtype,
                              device=self.device) for _ in range(num_layers)]
        self.v = []

    @property
    def bytes_per_token(self) -> int:
        """Bytes stored per token, all layers (latent + rope key)."""
        return self.num_layers * (self.kv_lora_rank + self.rope_dim) * self.k[0].element_size()

    def write(self, layer: int, latent: torch.Tensor, rope_key: torch.Tensor) -> None:
        """Write one layer's ``latent [b, n, kv_lora_rank]`` and ``rope_key [b, n, rope_dim]``
        (RoPE applied) at the step's slots.

        Raises:
            ValueError, TypeError: no step begun, wrong layer, shapes, dtypes or devices.
        """
        check_layer(layer, self.num_layers)
        if self._step is None:
            raise ValueError("call begin_step(n, seq_ids) before write (the step reserves the "
                             "pages written)")
        ids, n, pages, offsets, _ = self._step
        latent = check_rows("latent", latent, (len(ids), n, self.kv_lora_rank), self.dtype,
                            self.device, "[batch, n, kv_lora_rank]")
        rope_key = check_rows("rope_key", rope_key, (len(ids), n, self.rope_dim), self.dtype,
                              self.device, "[batch, n, rope_dim]")
        rows = torch.cat([latent, rope_key], dim=-1).reshape(len(ids) * n, -1)  # [b * n, r + p]
        self.k[layer][pages, offsets] = rows

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(latent [num_blocks, bs, r], rope_key [num_blocks, bs, p])`` views of one layer."""
        check_layer(layer, self.num_layers)
        pool = self.k[layer]
        return pool[..., :self.kv_lora_rank], pool[..., self.kv_lora_rank:]
