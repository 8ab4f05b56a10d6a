"""``PagedKVCache``: a pool of fixed-size pages per layer, block tables, and a block allocator.

Memory is a pool ``[num_blocks, block_size, kv_heads, d]`` per layer. Each sequence owns a list
of pages (its block table row); pages are reference-counted, so ``fork`` shares every page of a
sequence with a new one in O(pages) without copying. The first write into a shared page copies
it (copy-on-write), so forks never see each other's new tokens, and a common prefix (a system
prompt, beam or speculative branches) is stored once. ``free`` returns a sequence's pages to the
pool when their last user is gone.

A step: ``begin_step(n, seq_ids)`` reserves ``n`` positions for each listed sequence (growing or
copying pages; if the pool cannot hold them it raises before changing anything), then each layer
``write(layer, k, v)``s and reads through
``decode_attention(q, *cache.layer(layer), **cache.decode_kwargs())``.

With ``window=W`` (sliding-window layers), pages that fall entirely before the last ``W`` tokens
of a sequence are released at each step, so memory is bounded by the window; their block-table
entries point to page 0 and are never read by a windowed ``decode_attention``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from attnkit.cache._checks import check_dims, check_layer, check_rows
from attnkit.cache.errors import CacheOverflowError
from attnkit.ops._checks import check_int


@dataclass
class _Sequence:
    pages: list[int] = field(default_factory=list)  # -1 = released (out of the window)
    length: int = 0


class PagedKVCache:
    """Paged keys and values for every layer, with a growing, freeing, forking allocator.

    Args:
        num_layers, num_blocks, block_size, kv_heads, head_dim: sizes (ints >= 1).
        head_dim_v: value head dim (default ``head_dim``).
        window: keep only the last ``window`` tokens of each sequence (None = all).
        dtype, device: of the pools.

    Attributes:
        k, v: lists (one per layer) of pools ``[num_blocks, block_size, kv_heads, d]``.
        cache_seqlens: int32 ``[b]``, lengths of the current step's sequences (after it).
        block_table: int32 ``[b, max_pages]`` of the current step (unused entries are 0).

    Raises:
        TypeError, ValueError: bad sizes.

    Example:
        >>> import torch, attnkit
        >>> from attnkit.cache import PagedKVCache
        >>> cache = PagedKVCache(num_layers=1, num_blocks=8, block_size=4, kv_heads=1,
        ...                      head_dim=8)
        >>> a = cache.add_sequence()
        >>> _ = cache.begin_step(6, [a])                       # prompt of 6 tokens
        >>> cache.write(0, torch.randn(1, 6, 1, 8), torch.randn(1, 6, 1, 8))
        >>> b = cache.fork(a)                                  # shares both pages
        >>> _ = cache.begin_step(1, [a, b])                    # copies the shared last page
        >>> cache.write(0, torch.randn(2, 1, 1, 8), torch.randn(2, 1, 1, 8))
        >>> out = attnkit.decode_attention(torch.randn(2, 1, 2, 8), *cache.layer(0),
        ...                                **cache.decode_kwargs())
        >>> cache.free(b); cache.free_blocks
        6
    """

    def __init__(self, *, num_layers: int, num_blocks: int, block_size: int, kv_heads: int,
                 head_dim: int, head_dim_v: int | None = None, window: int | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        head_dim_v = head_dim if head_dim_v is None else head_dim_v
        check_dims(num_layers=num_layers, num_blocks=num_blocks, block_size=block_size,
                   kv_heads=kv_heads, head_dim=head_dim, head_dim_v=head_dim_v)
        if window is not None:
            check_int("window", window, minimum=1)
        self.num_layers, self.num_blocks, self.block_size = num_layers, num_blocks, block_size
        self.window = window
        self.dtype = dtype
        # torch.empty resolves "cuda" to "cuda:<current>", the device tensors report
        self.device = torch.empty(0, device=device or "cpu").device
        shape = (num_blocks, block_size, kv_heads)
        self.k = [torch.zeros(*shape, head_dim, dtype=dtype, device=self.device)
                  for _ in range(num_layers)]
        self.v = [torch.zeros(*shape, head_dim_v, dtype=dtype, device=self.device)
                  for _ in range(num_layers)]
        self._free = list(range(num_blocks - 1, -1, -1))  # a stack: pop() gives 0 first
        self._refs = [0] * num_blocks
        self._seqs: dict[int, _Sequence] = {}
        self._next_id = 0
        self._step: tuple | None = None  # (ids, n, pages, offsets, positions)
        self.cache_seqlens = torch.zeros(0, dtype=torch.int32, device=self.device)
        self.block_table = torch.zeros(0, 1, dtype=torch.int32, device=self.device)

    # -- the allocator ------------------------------------------------------------------------

    @property
    def free_blocks(self) -> int:
        """Pages not used by any sequence."""
        return len(self._free)

    @property
    def sequences(self) -> list[int]:
        """Ids of the live sequences, in creation order."""
        return list(self._seqs)

    @property
    def step_positions(self) -> torch.Tensor | None:
        """int64 ``[b, n]`` positions of the current step's new tokens (None before one)."""
        return None if self._step is None else self._step[4]

    @property
    def bytes_per_token(self) -> int:
        """Bytes of K and V stored per token, all layers (pages amortised)."""
        per = sum(k.shape[2] * k.shape[3] + v.shape[2] * v.shape[3]
                  for k, v in zip(self.k, self.v))
        return per * self.k[0].element_size()

    def length(self, seq_id: int) -> int:
        """Tokens held by sequence ``seq_id``."""
        return self._get(seq_id).length

    def pages(self, seq_id: int) -> list[int]:
        """The page ids of a sequence, in order (-1 for pages released out of the window)."""
        return list(self._get(seq_id).pages)

    def add_sequence(self) -> int:
        """Start an empty sequence; returns its id (no page is taken until it is written)."""
        seq_id = self._next_id
        self._next_id += 1
        self._seqs[seq_id] = _Sequence()
        return seq_id

    def fork(self, seq_id: int) -> int:
        """A new sequence sharing every page (and the length) of ``seq_id``; returns its id.

        Nothing is copied now: a shared page is copied when either sequence first writes into
        it (copy-on-write).

        Raises:
            ValueError: unknown ``seq_id``.
        """
        src = self._get(seq_id)
        for page in src.pages:
            if page >= 0:
                self._refs[page] += 1
        new = self.add_sequence()
        self._seqs[new] = _Sequence(pages=list(src.pages), length=src.length)
        return new

    def free(self, seq_id: int) -> None:
        """Drop a sequence; its pages return to the pool when no other sequence shares them.

        Raises:
            ValueError: unknown ``seq_id``.
        """
        seq = self._get(seq_id)
        for page in seq.pages:
            if page >= 0:
                self._release(page)
        del self._seqs[seq_id]
        self._step = None

    def _get(self, seq_id: object) -> _Sequence:
        check_int("seq_id", seq_id)
        if seq_id not in self._seqs:
            raise ValueError(f"seq_id must be a live sequence (one of {list(self._seqs)}), "
                             f"got {seq_id}")
        return self._seqs[seq_id]

    def _release(self, page: int) -> None:
        self._refs[page] -= 1
        if self._refs[page] == 0:
            self._free.append(page)

    def _take(self) -> int:
        page = self._free.pop()
        self._refs[page] = 1
        return page

    # -- a step -------------------------------------------------------------------------------

    def begin_step(self, n: int, seq_ids: Sequence[int] | None = None) -> torch.Tensor:
        """Reserve ``n`` new positions for each of ``seq_ids`` (default: every live sequence).

        Grows page lists, copies shared pages about to be written (all layers), and, with a
        window, releases pages no longer visible. Sets ``cache_seqlens`` and ``block_table``
        for this batch (in the order of ``seq_ids``).

        Returns:
            int64 ``[b, n]``, the positions of the new tokens (for RoPE).

        Raises:
            CacheOverflowError: the pool has too few free pages for the step (nothing changes).
            ValueError: unknown or repeated sequence ids, empty batch.
        """
        check_int("n", n, minimum=1)
        ids = self.sequences if seq_ids is None else [int(i) for i in seq_ids]
        if not ids:
            raise ValueError("seq_ids must name at least one live sequence, got none")
        if len(set(ids)) != len(ids):
            raise ValueError(f"seq_ids must not repeat a sequence, got {ids}")
        seqs = [self._get(i) for i in ids]
        bs = self.block_size
        need, refs = 0, {}
        for seq in seqs:
            first, last = seq.length // bs, (seq.length + n - 1) // bs
            need += max(0, last + 1 - len(seq.pages))  # new pages
            page = seq.pages[first] if first < len(seq.pages) else -1
            if page >= 0 and refs.get(page, self._refs[page]) > 1:
                need += 1  # copy-on-write of the shared page being written
                refs[page] = refs.get(page, self._refs[page]) - 1
        if need > len(self._free):
            raise CacheOverflowError(
                f"the step needs {need} free pages of {bs} tokens for {len(ids)} sequences, "
                f"but the pool has {len(self._free)} of {self.num_blocks}; nothing was written "
                "(free finished sequences or build the cache with more num_blocks)")
        for seq in seqs:
            first = seq.length // bs
            if first < len(seq.pages) and seq.pages[first] >= 0 \
                    and self._refs[seq.pages[first]] > 1:
                old, new = seq.pages[first], self._take()
                for pool in (*self.k, *self.v):
                    pool[new].copy_(pool[old])
                self._release(old)
                seq.pages[first] = new
            while len(seq.pages) * bs < seq.length + n:
                seq.pages.append(self._take())
        starts = [seq.length for seq in seqs]
        for seq in seqs:
            seq.length += n
            if self.window is not None:
                self._trim(seq, n)
        positions = torch.tensor(starts, dtype=torch.int64, device=self.device)[:, None] \
            + torch.arange(n, device=self.device)  # [b, n]
        self.block_table = self._table(seqs)
        self.cache_seqlens = torch.tensor([seq.length for seq in seqs], dtype=torch.int32,
                                          device=self.device)
        flat_pos = positions.reshape(-1)  # [b * n]
        rows = torch.arange(len(seqs), device=self.device).repeat_interleave(n)
        pages = self.block_table[rows, flat_pos // bs].long()
        self._step = (ids, n, pages, flat_pos % bs, positions)
        return positions

    def _trim(self, seq: _Sequence, n: int) -> None:
        """Release pages entirely before the oldest key any of the ``n`` new tokens can see."""
        oldest = seq.length - n - self.window + 1  # first visible key of the first new token
        for index in range(max(0, oldest) // self.block_size):
            if seq.pages[index] >= 0:
                self._release(seq.pages[index])
                seq.pages[index] = -1

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write one layer's ``k [b, n, hk, d]`` and ``v [b, n, hk, dv]`` at the step's slots.

        Raises:
            ValueError, TypeError: no step begun, wrong layer, shapes, dtypes or devices.
        """
        check_layer(layer, self.num_layers)
        if self._step is None:
            raise ValueError("call begin_step(n, seq_ids) before write (the step reserves the "
                             "pages written)")
        ids, n, pages, offsets, _ = self._step
        kp, vp = self.k[layer], self.v[layer]
        k = check_rows("k", k, (len(ids), n, kp.shape[2], kp.shape[3]), self.dtype,
                       self.device, "[batch, n, kv_heads, head_dim]")
        v = check_rows("v", v, (len(ids), n, vp.shape[2], vp.shape[3]), self.dtype,
                       self.device, "[batch, n, kv_heads, head_dim_v]")
        kp[pages, offsets] = k.reshape(-1, kp.shape[2], kp.shape[3])  # [b * n, hk, d]
        vp[pages, offsets] = v.reshape(-1, vp.shape[2], vp.shape[3])

    def step_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's slots as int64 ``(page, offset)``, each ``[b * n]``."""
        if self._step is None:
            raise ValueError("call begin_step(n, seq_ids) first")
        return self._step[2], self._step[3]

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(k_pool, v_pool)`` of one layer, for ``decode_attention``."""
        check_layer(layer, self.num_layers)
        return self.k[layer], self.v[layer]

    def decode_kwargs(self, seq_ids: Sequence[int] | None = None) -> dict:
        """``cache_seqlens`` and ``block_table`` of the current step, or of ``seq_ids`` as they
        stand (to read sequences without writing to them)."""
        if seq_ids is None:
            return dict(cache_seqlens=self.cache_seqlens, block_table=self.block_table)
        seqs = [self._get(i) for i in seq_ids]
        return dict(cache_seqlens=torch.tensor([s.length for s in seqs], dtype=torch.int32,
                                               device=self.device),
                    block_table=self._table(seqs))

    def _table(self, seqs: list[_Sequence]) -> torch.Tensor:
        """int32 ``[b, max_pages]`` of the sequences' pages (released and unused entries 0)."""
        width = max(1, max(len(seq.pages) for seq in seqs))
        rows = [[max(p, 0) for p in seq.pages] + [0] * (width - len(seq.pages)) for seq in seqs]
        return torch.tensor(rows, dtype=torch.int32).to(self.device)  # one host-to-device copy
