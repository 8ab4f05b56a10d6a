"""KV caches for decoding: static (preallocated), paged (block tables, copy-on-write forks),
and the MLA latent cache. Each raises ``CacheOverflowError`` before writing past capacity.

RoPE fused with the cache write is the op ``attnkit.ops.write_rotated``."""

from attnkit.cache.errors import CacheOverflowError
from attnkit.cache.latent import LatentKVCache, PagedLatentKVCache
from attnkit.cache.paged import PagedKVCache
from attnkit.cache.static import StaticKVCache

__all__ = ["CacheOverflowError", "LatentKVCache", "PagedKVCache", "PagedLatentKVCache",
           "StaticKVCache"]
