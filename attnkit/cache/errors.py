"""The error every attnkit cache raises when a write would not fit."""

from __future__ import annotations


class CacheOverflowError(ValueError):
    """A write would go past the cache's capacity; nothing was written or allocated.

    A ``ValueError``, so callers catching bad input catch it too. The message names the
    sequence, what it needs and what is left.
    """
