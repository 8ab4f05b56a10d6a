"""Functional API: validation at the boundary, dispatch to a backend, autograd wiring."""

from attnkit.ops.attention import attention

__all__ = ["attention"]
